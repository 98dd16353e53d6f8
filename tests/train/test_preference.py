import json

import pytest
import torch

from codegemma.errors import CodegemmaError
from codegemma.train import preference
from codegemma.train import recipe as recipe_mod
from codegemma.train.run import run


def samples():
    out = []
    for task in ("t1", "t2", "t3"):
        for k in range(3):
            out.append({"task_id": task, "prompt": f"write {task}", "completion": f"{task} try {k}",
                        "passed": task != "t3" and k == 0})
    out.append({"task_id": "t2", "prompt": "write t2", "completion": "t2 try 0", "status": "error"})  # duplicate text
    return out


def test_pairs_need_one_pass_and_one_fail():
    pairs = preference.pairs_from_samples(samples(), max_pairs_per_task=5, seed=0)
    assert {p["task_id"] for p in pairs} == {"t1", "t2"}  # t3 never passed
    assert all(p["chosen"].endswith("try 0") and p["chosen"] != p["rejected"] for p in pairs)
    assert len(pairs) == 4
    assert pairs == preference.pairs_from_samples(samples(), max_pairs_per_task=5, seed=0)
    assert len(preference.pairs_from_samples(samples(), max_pairs_per_task=1)) == 2


def test_repeated_samples_make_each_pair_once():
    """Sampling at a temperature repeats texts; the same pair several times would weigh it several
    times and use up the task's pairs on copies."""
    repeated = [{"task_id": "t", "prompt": "p", "completion": text, "passed": ok}
                for text, ok in [("good", True), ("good", True), ("good", True), ("bad", False), ("bad", False),
                                 ("worse", False)]]
    pairs = preference.pairs_from_samples(repeated, max_pairs_per_task=4)
    assert sorted((p["chosen"], p["rejected"]) for p in pairs) == [("good", "bad"), ("good", "worse")]


def test_empty_completions_make_no_pairs(tmp_path, small_tokenizer):
    """A model that stops at once fails with an empty completion; a pair holding it could not be
    tokenized, so the pairs file would stop the DPO run."""
    found = [{"task_id": "t", "prompt": "p", "completion": text, "passed": ok}
             for text, ok in [("good", True), ("", False), ("bad", False)]]
    pairs = preference.pairs_from_samples(found)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("good", "bad")]
    preference.prepare(preference.write_jsonl(tmp_path / "pairs.jsonl", pairs), small_tokenizer, 32, tmp_path / "out")


def test_sandbox_style_verdicts():
    assert preference.passed({"status": "ok"}) and not preference.passed({"result": "failed: boom"})
    with pytest.raises(CodegemmaError, match="no verdict"):
        preference.passed({"task_id": "x"})


def write_pairs(path, n=8, chat=False):
    with open(path, "w") as f:
        for i in range(n):
            prompt = [{"role": "user", "content": f"Return {i}."}] if chat else f"Return {i}.\n"
            f.write(json.dumps({"prompt": prompt, "chosen": f"return {i}", "rejected": "pass"}) + "\n")
    return path


def test_text_pairs_continue_the_prompt_and_conversational_pairs_use_the_chat_template(tmp_path, small_tokenizer):
    from codegemma.train.sft import tokenize_conversation

    tok = small_tokenizer
    prompt = "def add(a, b):\n"
    tokens, trained = preference.tokenize_pair_side(prompt, "    return a + b\n", tok, "x")
    context = [tok.bos_id] + tok.encode(prompt)  # as `codegemma eval` prompts the model
    assert tokens == context + tok.encode("    return a + b\n")  # the response as sampled, nothing after it
    assert trained == [False] * len(context) + [True] * (len(tokens) - len(context))

    messages = [{"role": "user", "content": "Add a and b."}]
    expected = tokenize_conversation(messages + [{"role": "assistant", "content": "a + b"}], tok)
    assert preference.tokenize_pair_side(messages, "a + b", tok, "x") == expected

    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": messages, "chosen": [{"role": "assistant", "content": "a + b"}],
                                "rejected": "a - b"}) + "\n" + json.dumps({"prompt": 3, "chosen": "a", "rejected": "b"}))
    with pytest.raises(CodegemmaError, match=r"pairs.jsonl:2: prompt must be a string"):
        preference.prepare(path, tok, 64, tmp_path / "out")
    path.write_text(json.dumps({"prompt": [{"role": "tool", "content": "x"}], "chosen": "y", "rejected": "z"}))
    with pytest.raises(CodegemmaError, match=r"pairs.jsonl:1: messages\[0\].role 'tool'"):
        preference.prepare(path, tok, 64, tmp_path / "out")
    path.write_text(json.dumps({"prompt": "x", "chosen": {"text": "y"}, "rejected": "z"}) + "\n")
    with pytest.raises(CodegemmaError, match=r"pairs.jsonl:1: chosen: must be a string"):
        preference.prepare(path, tok, 64, tmp_path / "out")


def test_model_turns_inside_a_conversational_prompt_are_not_the_response(small_tokenizer):
    """Only the answer being compared counts in the log-probabilities, not earlier model turns of
    the prompt (they would add to both sides' rewards and to their logged values)."""
    tok = small_tokenizer
    prompt = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "earlier answer"},
              {"role": "user", "content": "again"}]
    tokens, trained = preference.tokenize_pair_side(prompt, "final answer", tok, "x")
    assert tok.decode([t for t, on in zip(tokens, trained) if on]) == "final answer<end_of_turn>"
    assert "earlier answer" in tok.decode(tokens)


def test_pairs_the_template_makes_identical_are_refused(tmp_path, small_tokenizer):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": "Add."}], "chosen": "a + b",
                                "rejected": "\n  a + b\n"}) + "\n")
    with pytest.raises(CodegemmaError, match=r"pairs.jsonl:1: chosen and rejected are the same response"):
        preference.prepare(path, small_tokenizer, 64, tmp_path / "out")


def test_pairs_longer_than_seq_len_are_left_out_with_a_warning(tmp_path, small_tokenizer):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n"
                    + json.dumps({"prompt": "p", "chosen": "a " * 100, "rejected": "b"}) + "\n")
    with pytest.warns(UserWarning, match="1 of 2 pairs are longer than seq_len=32 tokens and are left out"):
        out = preference.prepare(path, small_tokenizer, 32, tmp_path / "out")
    assert json.loads((out / "chosen" / "index.json").read_text())["meta"]["pairs"] == 1


def test_pair_reader_keeps_pairs_aligned(tmp_path, small_tokenizer):
    out = preference.prepare(write_pairs(tmp_path / "pairs.jsonl"), small_tokenizer, 48, tmp_path / "pairs")
    reader = preference.PairReader(out, batch_size=4, seed=3)
    batch = next(reader)
    for row in range(4):
        chosen = small_tokenizer.decode(batch["chosen"]["tokens"][row][batch["chosen"]["loss_mask"][row]].tolist())
        prompt = small_tokenizer.decode(batch["rejected"]["tokens"][row].tolist())
        number = chosen.split()[1].split("<")[0]
        assert f"Return {number}." in prompt  # the same pair on both sides
    state = reader.state_dict()
    after = next(reader)
    reader.load_state_dict(state)
    assert torch.equal(next(reader)["chosen"]["tokens"], after["chosen"]["tokens"])


@pytest.mark.parametrize("lora, chat", [(False, False), (True, True)])
def test_dpo_run_raises_the_preference_margin(tmp_path, small_tokenizer_path, lora, chat):
    pairs = write_pairs(tmp_path / "pairs.jsonl", chat=chat)
    recipe = recipe_mod.from_dict({
        "objective": "dpo", "out_dir": str(tmp_path / "run"), "tokenizer": str(small_tokenizer_path),
        "model": {"preset": "tiny-gemma"}, "data": {"train": str(pairs), "eval": str(pairs), "seq_len": 48},
        "optim": {"lr": 5e-3 if lora else 1e-3, "warmup_steps": 1},
        "train": {"steps": 8, "batch_size": 4}, "dpo": {"beta": 0.5},
        "lora": {"enabled": lora, "r": 4}, "eval": {"every": 4, "batches": 2},
        "log": {"every": 1, "tensorboard": False, "plots": False, "progress": False},
    })
    run(recipe)
    from codegemma.train import metrics

    records = metrics.read(tmp_path / "run" / "metrics.jsonl")
    assert records[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at the start
    assert records[-1]["loss"] < 0.6
    assert records[-1]["reward_accuracy"] == 1.0 and records[-1]["pairs"] == 4
    # the pairs of data.eval (here the same 8), scored at steps 4 and 8: DPO loss and preference accuracy
    held_out = metrics.read(tmp_path / "run" / "metrics.jsonl", kind="eval")
    assert [r["step"] for r in held_out] == [4, 8]
    assert 0.6931 > held_out[0]["loss"] > held_out[1]["loss"]
    assert held_out[1]["reward_accuracy"] == 1.0 and held_out[1]["reward_chosen"] > held_out[1]["reward_rejected"]
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_a_changed_pairs_file_is_refused_once_checkpoints_trained_on_it(tmp_path, small_tokenizer_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=4)

    def recipe(steps):
        return recipe_mod.from_dict({
            "objective": "dpo", "out_dir": str(tmp_path / "run"), "tokenizer": str(small_tokenizer_path),
            "model": {"preset": "tiny-gemma"}, "data": {"train": str(pairs), "seq_len": 48},
            "optim": {"lr": 1e-3, "warmup_steps": 1}, "train": {"steps": steps, "batch_size": 2},
            "checkpoint": {"every": 2},
            "log": {"every": 1, "tensorboard": False, "plots": False, "progress": False},
        })

    run(recipe(2))
    chosen = tmp_path / "run" / "data" / "train" / "chosen" / "index.json"
    write_pairs(pairs, n=6)
    with pytest.raises(CodegemmaError, match=r"cannot resume data reader: .*chosen holds other sequences"):
        run(recipe(4))
    assert json.loads(chosen.read_text())["meta"]["pairs"] == 6  # tokenized again, not trained on


@pytest.mark.parametrize("pair, message", [
    ({"prompt": "p", "chosen": "a"}, "a pair needs prompt, chosen and rejected"),
    ({"prompt": "p", "chosen": "a", "rejected": "a"}, "chosen and rejected are the same response"),
])
def test_bad_pairs_name_the_line(tmp_path, small_tokenizer, pair, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "b", "rejected": "c"}) + "\n" + json.dumps(pair) + "\n")
    with pytest.raises(CodegemmaError) as error:
        preference.prepare(path, small_tokenizer, 32, tmp_path / "out")
    assert str(error.value).startswith(f"{path}:2: {message}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("line, message", [
    ("5", "expected a JSON object, got int"),
    ('{"prompt": [{"role": "user", "content": "q"}, {"role": "assistant"}], "chosen": "a", "rejected": "b"}',
     r"messages\[1\].content must be a string"),
    ('{"prompt": "p", "chosen": "a", "rejected": "a"}', "chosen and rejected are the same response"),
])
def test_malformed_pairs_name_the_line_an_editor_shows(tmp_path, small_tokenizer, line, message):
    """One line naming file and line (blank lines counted), never a traceback."""
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "b", "rejected": "c"}) + "\n\n" + line + "\n")
    with pytest.raises(CodegemmaError, match=rf"pairs.jsonl:3: {message}"):
        preference.prepare(path, small_tokenizer, 32, tmp_path / "out")


def test_samples_that_are_not_utf8_are_one_line(tmp_path, capsys):
    from codegemma.cli import main

    path = tmp_path / "samples.jsonl"
    path.write_bytes(b"\xff\xfe\n")
    assert main(["train", "dpo-pairs", str(path), "--out", str(tmp_path / "pairs.jsonl")]) == 1
    assert capsys.readouterr().err == f"codegemma train: error: {path}:1: not UTF-8 text (byte 0)\n"
