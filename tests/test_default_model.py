"""The real default model (Gemma 3 270M, Q4_K_M GGUF) against transformers loading the same file.

These load real weights and take about four minutes on two cores; CI runs them.
"""

from __future__ import annotations

import glob
import inspect
import os
import re
import subprocess
import sys

import pytest
import torch

from codegemma.checkpoints import load
from codegemma.engine import Engine, SamplingParams

pytestmark = [pytest.mark.real_weights, pytest.mark.slow, pytest.mark.usefixtures("all_cores")]
transformers = pytest.importorskip("transformers")

SOURCES = ["textwrap", "heapq", "bisect", "json.decoder", "shlex"]


def code_texts():
    import importlib

    return [inspect.getsource(importlib.import_module(name)) for name in SOURCES]


@pytest.fixture(scope="module")
def ours():
    return load()


@pytest.fixture(scope="module")
def reference(default_gguf_path):
    import functools

    import gguf

    directory, name = os.path.split(default_gguf_path)
    # transformers parses the file's metadata for the tokenizer, the config and the weights, ~30 s
    # each on a slow CPU: one parse serves all three (the reader only reads the file)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "GGUFReader", functools.cache(gguf.GGUFReader))
        tok = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
        model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32,
                                                                  attn_implementation="eager").eval()
    return tok, model


TRICKY = [
    "",
    "\tdef f():\n\t\treturn  1\n",
    "x = 1\r\ny = 2\r\n",
    "    \n        \n\n\n   spaces   everywhere    ",
    "naïve café — 日本語のテキスト 🙂 Ünïcödé",
    "def 函数(参数):\n    return 参数 * 2  # コメント",
    "<start_of_turn>user\nhi<end_of_turn>\n",
    "0123456789 3.14159 1e-10 0xFF",
]


def test_tokenizer_agrees_with_transformers_id_for_id(ours, reference):
    hf_tok, _ = reference
    # Runs of 32+ spaces are cut to 31: there transformers' GGUF conversion merges by BPE, llama.cpp
    # and we take whole pieces, and the model's loss sides with us (the tests below).
    texts = [re.sub(" {32,}", " " * 31, text) for text in TRICKY + code_texts()]
    for text in texts:
        expected = hf_tok(text, add_special_tokens=False).input_ids
        got = ours.tokenizer.encode(text)
        assert got == expected, text[:60]
        assert ours.tokenizer.decode(got) == text  # exact round trip, no added prefix space
    assert ours.tokenizer.encode("hello", add_bos=True)[0] == hf_tok.bos_token_id


def deep_indent_snippets(limit=12):
    """Stretches of standard-library code around a line indented by 32+ spaces: 600 characters
    before it, the line itself."""
    snippets = []
    for path in sorted(glob.glob(os.path.join(os.path.dirname(inspect.__file__), "*.py"))):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if m := re.search(r"\n( {32,})\S[^\n]*", text):
            snippets.append((text[max(0, m.start() - 600):m.start() + 1], text[m.start() + 1:m.end()]))
        if len(snippets) == limit:
            break
    return snippets


def test_space_runs_split_into_whole_user_defined_pieces(ours):
    """Gemma's runs of 2-31 spaces are user-defined pieces; a longer run takes the longest first."""
    tok = ours.tokenizer
    for n, pieces in [(2, ["  ", "x"]), (31, [" " * 31, "x"]), (32, [" " * 31, " x"]),
                      (34, [" " * 31, "   ", "x"]), (70, [" " * 31, " " * 31, " " * 8, "x"])]:
        assert [tok.decode([i]) for i in tok.encode(" " * n + "x")] == pieces, n


def test_the_model_prefers_our_split_of_deep_indentation(ours, reference):
    """Where transformers' GGUF conversion splits a 32+ space run by BPE merges (16 + 16, ...) and we
    take whole pieces (31 + 1, ...), the model's own loss on the line says which it was trained on."""
    hf_tok, _ = reference
    model, tok = ours.model, ours.tokenizer
    differing = 0
    for before, line in deep_indent_snippets():
        context = tok.encode(before, add_bos=True)[-150:]
        losses = []
        for ids in (tok.encode(line), hf_tok(line, add_special_tokens=False).input_ids):
            row = torch.tensor([context + ids])
            with torch.no_grad():  # the head only where the line's tokens are predicted
                hidden = model(row[:, :-1], return_hidden=True)[0, len(context) - 1:]
                logp = torch.log_softmax(model.logits(hidden), -1)
            losses.append(-logp.gather(1, row[0, len(context):, None]).sum().item())
        if losses[0] != losses[1]:
            differing += 1
            assert losses[0] < losses[1], line
    assert differing >= 5


def test_tokenizer_agrees_with_llama_cpp_on_real_code(default_gguf_path, ours):
    """llama.cpp reads the same GGUF vocabulary: identical ids on standard-library modules, deep
    indentation included (skipped where llama-cpp-python is not installed)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(default_gguf_path), vocab_only=True, verbose=False)
    texts = code_texts() + [before + line for before, line in deep_indent_snippets()]
    for text in texts:
        assert ours.tokenizer.encode(text) == llm.tokenize(text.encode(), add_bos=False, special=True), text[:60]


def teacher_forced_prompts(tokenizer, n_tokens=420):
    return [tokenizer.encode(text, add_bos=True)[:n_tokens] for text in code_texts()]


def test_teacher_forced_argmax_agreement(ours, reference):
    _, hf = reference
    agree = total = 0
    with torch.no_grad():
        for ids in teacher_forced_prompts(ours.tokenizer):
            x = torch.tensor([ids])
            a = ours.model(x)[0].argmax(-1)
            b = hf(x).logits[0].argmax(-1)
            agree += int((a == b).sum())
            total += len(ids)
    assert total >= 2000
    assert agree / total >= 0.99, f"{agree}/{total}"


@pytest.fixture(scope="module")
def teacher_forced_hidden(ours):
    """The final hidden states of the teacher-forced prompts: what the head tests below multiply."""
    with torch.no_grad():
        return [ours.model(torch.tensor([ids]), return_hidden=True)[0] for ids in teacher_forced_prompts(ours.tokenizer)]


def test_decoding_reads_the_gguf_blocks(ours, teacher_forced_hidden):
    """Every linear layer and the tied head of the float32 default model carry their GGUF block
    form (codegemma.block_weights), which gives the float32 head's argmax at every teacher-forced
    position, with logits within float32 summation error of the plain float32 product."""
    from codegemma import kernels
    from codegemma.block_weights import BlockLinear

    if not kernels.available():
        pytest.skip("no C compiler for the block kernel")
    model = ours.model
    assert model.attached_head_blocks is not None
    assert all(isinstance(m, BlockLinear) for m in model.layers.modules() if isinstance(m, torch.nn.Linear))
    positions = 0
    weight = model.embed_tokens.weight
    with torch.no_grad():
        for hidden in teacher_forced_hidden:
            full = hidden @ weight.T  # one large product: 16 rows at a time cost twice as much
            for start in range(0, len(hidden), 16):
                got, want = model.logits(hidden[start:start + 16]), full[start:start + 16]
                assert torch.equal(got.argmax(-1), want.argmax(-1))
                assert (got - want).abs().max() <= 1e-5 * want.abs().max()
            positions += len(hidden)
    assert positions >= 2000


def test_head_screen_gives_the_full_heads_argmax(ours, teacher_forced_hidden):
    """Where the block kernel cannot be built, greedy decoding screens the head instead
    (codegemma.head_screen); its argmax must be the full float32 head's at every position (of the
    first three prompts: the screen is slow on a CPU without bf16 arithmetic)."""
    from codegemma.head_screen import HeadScreen

    model = ours.model
    weight = model.embed_tokens.weight
    blocks = model.attached_head_blocks
    model.attach_head_blocks(None)
    model.attach_head_screen(HeadScreen.from_weight(weight.detach()))
    positions = 0
    try:
        with torch.no_grad():
            for hidden in teacher_forced_hidden[:3]:
                want = (hidden @ weight.T).argmax(-1)
                for start in range(0, len(hidden), 16):
                    got = model.argmax_logits(hidden[start:start + 16]).argmax(-1)
                    assert torch.equal(got, want[start:start + 16])
                positions += len(hidden)
    finally:
        model.attach_head_blocks(blocks)
    assert positions >= 1200


def test_greedy_continuations_identical(ours, reference):
    _, hf = reference
    engine = Engine(ours.model)
    same = 0
    for ids in teacher_forced_prompts(ours.tokenizer, n_tokens=200):
        got = engine.generate(ids, SamplingParams(max_new_tokens=32)).ids
        with torch.no_grad():
            out = hf.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False, eos_token_id=None,
                              pad_token_id=0)
        same += got == out[0, len(ids):].tolist()
    assert same >= 4


def test_a_fresh_process_loads_the_converted_cache(ours):
    """`ours` has written the converted cache; a new process memory-maps it instead of converting
    (the load time itself is measured by bench/generate.py, not asserted here)."""
    code = "from codegemma.checkpoints import load; print(load().config.family)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "gemma3"
    assert "converting" not in out.stderr
