import json

import numpy as np
import pytest

from codegemma.data.shards import ShardDataset
from codegemma.errors import CodegemmaError
from codegemma.train import sft

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Add one to x."},
    {"role": "assistant", "content": "x + 1"},
    {"role": "user", "content": "And two?"},
    {"role": "assistant", "content": "x + 2"},
]


def test_only_model_turns_are_trained(small_tokenizer):
    tok = small_tokenizer
    ids, trained = sft.tokenize_conversation(CONVERSATION, tok)
    text = tok.decode(ids)
    assert text == ("<bos><start_of_turn>user\nBe brief.\n\nAdd one to x.<end_of_turn>\n<start_of_turn>model\n"
                    "x + 1<end_of_turn>\n<start_of_turn>user\nAnd two?<end_of_turn>\n<start_of_turn>model\n"
                    "x + 2<end_of_turn>\n")
    trained_text = tok.decode([i for i, t in zip(ids, trained) if t])
    assert trained_text == "x + 1<end_of_turn>x + 2<end_of_turn>"


def test_turn_text_is_trimmed_as_the_template_writes_it(small_tokenizer):
    tok = small_tokenizer
    padded = [{"role": m["role"], "content": m["content"] if m["role"] == "system" else f"\n {m['content']}\n\n"}
              for m in CONVERSATION]
    assert sft.tokenize_conversation(padded, tok) == sft.tokenize_conversation(CONVERSATION, tok)


def test_same_prompt_as_the_chat_template_at_inference(small_tokenizer):
    """The context before the first trained token is exactly the served chat prompt."""
    from codegemma.fim import encode_pieces
    from codegemma.profiles import resolve_profile

    tok = small_tokenizer
    template = resolve_profile(tok, instruction_tuned=True).chat_template
    ids, trained = sft.tokenize_conversation(CONVERSATION[:3], tok)
    pieces = template.pieces(CONVERSATION[:2], add_generation_prompt=True)
    turn_ids = {t: tok.token_to_id(t) for t in (template.turn_start, template.turn_end)}
    assert ids[:trained.index(True)] == [tok.bos_id] + encode_pieces(tok, pieces, turn_ids)


def test_prepare_packs_conversations(tmp_path, small_tokenizer):
    path = tmp_path / "conv.jsonl"
    with open(path, "w") as f:
        for i in range(6):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                             {"role": "assistant", "content": f"a{i} " * (i + 1)}]}) + "\n")
    out = sft.prepare(path, small_tokenizer, 64, tmp_path / "shards")
    ds = ShardDataset(out)
    rows = [ds[i] for i in range(len(ds))]
    assert len(rows) < 6  # several conversations per row
    assert sum(len(set(r["segment_ids"][r["segment_ids"] > 0].tolist())) for r in rows) == 6
    for r in rows:
        assert not r["loss_mask"][r["segment_ids"] == 0].any()
        assert np.all(r["tokens"][r["loss_mask"]] != small_tokenizer.token_to_id("<start_of_turn>"))


def test_conversations_longer_than_seq_len_are_cut_or_left_out_with_a_warning(tmp_path, small_tokenizer):
    path = tmp_path / "conv.jsonl"
    short = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    long_answer = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a " * 100}]}
    long_question = {"messages": [{"role": "user", "content": "q " * 100}, {"role": "assistant", "content": "a"}]}
    path.write_text("".join(json.dumps(c) + "\n" for c in (short, long_answer, long_question)))
    with pytest.warns(UserWarning, match="2 of 3 conversations are longer than seq_len=32 tokens: 1 cut there, "
                                         r"1 left out \(no model turn starts within it\)"):
        out = sft.prepare(path, small_tokenizer, 32, tmp_path / "shards")
    assert json.loads((out / "index.json").read_text())["meta"]["conversations"] == 2


@pytest.mark.parametrize("line, message", [
    ("not json", "not valid JSON"),
    ('{"text": "x"}', "expected"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant turn"),
    # a model turn without text content: one line, not a KeyError or AttributeError traceback
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}',
     r"messages\[1\].content must be a string"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": null}]}',
     r"messages\[1\].content must be a string"),
    ('{"messages": [{"role": "user", "content": "hi"}, '
     '{"role": "assistant", "content": [{"type": "text", "text": "a"}]}]}',
     r"messages\[1\].content must be a string"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, '
     '{"role": "system", "content": "late"}, {"role": "user", "content": "q2"}, '
     '{"role": "assistant", "content": "b"}]}',
     "a system message after a model turn: Gemma has no system role"),
])
def test_bad_conversations_name_the_line(tmp_path, small_tokenizer, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(CodegemmaError, match=f"bad.jsonl:1.*{message}|{message}"):
        sft.prepare(path, small_tokenizer, 64, tmp_path / "out")


def _sft_recipe(tmp_path, conv, small_tokenizer_path, steps, seq_len=32, batch_size=1, eval_conv=None):
    from codegemma.train import recipe as recipe_mod

    return recipe_mod.from_dict({
        "objective": "sft", "out_dir": str(tmp_path / "run"), "tokenizer": str(small_tokenizer_path),
        "model": {"preset": "tiny-gemma"},
        "data": {"train": str(conv), "eval": str(eval_conv or ""), "seq_len": seq_len}, "eval": {"batches": 1},
        "optim": {"lr": 1e-3, "warmup_steps": 1}, "train": {"steps": steps, "batch_size": batch_size},
        "checkpoint": {"every": 2},
        "log": {"every": 1, "tensorboard": False, "plots": False, "progress": False},
    })


def _write_conversations(path, n):
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"square {i}"},
                                                     {"role": "assistant", "content": f"{i * i}"}]}) + "\n"
                            for i in range(n)))


def test_a_changed_conversations_file_is_tokenized_again(tmp_path, small_tokenizer_path):
    """The tokenized copy under the run directory must follow its source: never train on a stale one,
    nor resume a checkpoint on the new one."""
    from codegemma.train.run import run

    conv = tmp_path / "conv.jsonl"
    index = tmp_path / "run" / "data" / "train" / "index.json"
    _write_conversations(conv, 4)
    with pytest.raises(CodegemmaError, match="cannot fill one batch"):  # after tokenizing, before a checkpoint
        run(_sft_recipe(tmp_path, conv, small_tokenizer_path, steps=2, seq_len=64, batch_size=8))
    assert json.loads(index.read_text())["seq_len"] == 64
    run(_sft_recipe(tmp_path, conv, small_tokenizer_path, steps=2))  # another seq_len, no checkpoint yet: again
    assert json.loads(index.read_text())["seq_len"] == 32
    _write_conversations(conv, 6)  # the file changes under a run whose checkpoints trained on the old one
    with pytest.raises(CodegemmaError, match=r"cannot resume data reader: .*data/train holds other sequences"):
        run(_sft_recipe(tmp_path, conv, small_tokenizer_path, steps=4))
    assert json.loads(index.read_text())["meta"]["conversations"] == 6
    _write_conversations(conv, 4)  # the file as it was: tokenized as it was, and the run continues
    run(_sft_recipe(tmp_path, conv, small_tokenizer_path, steps=4))


def test_changed_evaluation_conversations_are_tokenized_again(tmp_path, small_tokenizer_path):
    from codegemma.train.run import run

    conv, held_out = tmp_path / "conv.jsonl", tmp_path / "held_out.jsonl"
    _write_conversations(conv, 4)
    _write_conversations(held_out, 2)
    run(_sft_recipe(tmp_path, conv, small_tokenizer_path, steps=2, eval_conv=held_out))
    _write_conversations(held_out, 3)  # evaluation data does not move the training stream
    run(_sft_recipe(tmp_path, conv, small_tokenizer_path, steps=4, eval_conv=held_out))
    index = tmp_path / "run" / "data" / "eval" / "index.json"
    assert json.loads(index.read_text())["meta"]["conversations"] == 3


def test_conversations_that_are_not_utf8_name_the_line(tmp_path, small_tokenizer):
    path = tmp_path / "conv.jsonl"
    path.write_bytes(b'\n{"messages": "\xe9"}\n')  # Latin-1, not UTF-8
    with pytest.raises(CodegemmaError, match=r"conv.jsonl:2: not UTF-8 text \(byte 15\)"):
        sft.prepare(path, small_tokenizer, 64, tmp_path / "out")
