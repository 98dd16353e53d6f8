"""The FIM format: prompt layouts, training examples, and that serving and training agree token for token."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from codegemma.fim import (CODEGEMMA_SENTINELS, PSM, SPM, encode_literal, encode_pieces, fim_example, fim_prompt,
                           repo_fim_prompt, sentinel_ids, split_points, transform_file, undo_fim)
from codegemma.tokenizer import Tokenizer
from codegemma.train import tokenizer_train

S = CODEGEMMA_SENTINELS


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    root = Path(json.__file__).parent.parent
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(root.glob("[a-c]*.py"))[:20]]
    return Tokenizer(tokenizer_train.train(texts, vocab_size=800))


def test_psm_layout_matches_the_codegemma_report():
    # [PS]: prefix "import " keeps its trailing space; nothing is added around the sentinels
    pieces = fim_prompt("import ", "\nif __name__ == '__main__':\nsys.exit(0)", PSM)
    assert "".join(pieces) == ("<|fim_prefix|>import <|fim_suffix|>\nif __name__ == '__main__':\nsys.exit(0)"
                               "<|fim_middle|>")


def test_path_line_and_repo_context_layout():
    pieces = repo_fim_prompt([("utils.py", "def helper():\n    pass\n")], "x = ", "\n", PSM, path="main.py")
    assert "".join(pieces) == ("utils.py\ndef helper():\n    pass\n<|file_separator|>main.py\n"
                               "<|fim_prefix|>x = <|fim_suffix|>\n<|fim_middle|>")


def test_spm_puts_the_suffix_first_and_prefix_after_the_middle_sentinel():
    pieces = fim_prompt("a = ", "\nb = 2", SPM, path="m.py")
    assert pieces == ["m.py\n", S.prefix, S.suffix, "\nb = 2", S.middle, "a = "]


@pytest.mark.parametrize("order", [PSM, SPM])
@pytest.mark.parametrize("path", [None, "src/pkg/module.py"])
def test_inference_prompt_and_training_example_are_token_identical_up_to_the_middle(tokenizer, order, path):
    text = "def area(radius):\n    return 3.14159 * radius ** 2\n\n\nprint(area(2))\n"
    rng = random.Random(7)
    ids = sentinel_ids(tokenizer)
    for _ in range(50):
        prefix, middle, suffix = split_points(text, rng)
        prompt = encode_pieces(tokenizer, fim_prompt(prefix, suffix, order, path), ids)
        example = encode_pieces(tokenizer, fim_example(prefix, middle, suffix, order, path), ids)
        if order == PSM or not prefix:
            assert example[:len(prompt)] == prompt
        else:
            # SPM: prefix and middle are one run of text, so only the prompt's last text token may
            # merge with the middle; everything through <|fim_middle|> is identical
            cut = prompt.index(ids[S.middle]) + 1
            assert example[:cut] == prompt[:cut]
            assert tokenizer.decode(example[cut:]) == prefix + middle


def test_transform_file_round_trips(tokenizer):
    rng = random.Random(1)
    text = "import os\n\n\ndef main():\n    print(os.getcwd())\n"
    for _ in range(100):
        pieces = transform_file(text, rng, fim_rate=0.9, path="a.py")
        path, restored = undo_fim(pieces)
        assert restored == text or restored == "a.py\n" + text


def test_suffix_line_rate_moves_the_suffix_to_a_line_start_and_keeps_the_prefix_edge():
    text = "import os\n\n\ndef main():\n    print(os.getcwd())\n    return 0"
    plain, snapped = random.Random(3), random.Random(3)
    prefix_edges_mid_line = 0
    for _ in range(200):
        prefix, middle, suffix = split_points(text, snapped, suffix_line_rate=1.0)
        assert prefix + middle + suffix == text
        start = len(prefix) + len(middle)
        assert start in (0, len(text)) or text[start - 1] == "\n", (prefix, middle, suffix)
        prefix_edges_mid_line += bool(prefix) and not prefix.endswith("\n")
        # the draws of the two points are those of the plain split; only the suffix edge moves
        p_prefix, p_middle, _ = split_points(text, plain)
        plain.random()  # the snapped stream's extra draw
        assert p_prefix == prefix and len(prefix) + len(middle) >= len(p_prefix) + len(p_middle)
    assert prefix_edges_mid_line > 50  # the cursor still lands inside lines


def test_suffix_line_rate_zero_draws_exactly_the_character_level_splits():
    text = "x = 1\ny = 2\n"
    a, b = random.Random(5), random.Random(5)
    assert [split_points(text, a) for _ in range(50)] == [split_points(text, b, 0.0, 0.0) for _ in range(50)]


def test_line_rate_makes_the_middle_whole_lines():
    text = "import os\n\n\ndef main():\n    print(os.getcwd())\n    return 0"
    rng = random.Random(7)
    middles = set()
    for _ in range(200):
        prefix, middle, suffix = split_points(text, rng, line_rate=1.0)
        assert prefix + middle + suffix == text
        for edge in (len(prefix), len(prefix) + len(middle)):  # both at a line start (or an end)
            assert edge in (0, len(text)) or text[edge - 1] == "\n", (prefix, middle, suffix)
        middles.add(middle)
    assert "    print(os.getcwd())\n" in middles and len(middles) > 5


def test_line_rate_applies_to_its_share_of_examples_only():
    text = "".join(f"value_{i} = {i}\n" for i in range(40))
    rng = random.Random(0)
    mid_line = sum(not p.endswith("\n") and p != "" for p, _, _ in
                   (split_points(text, rng, line_rate=0.5) for _ in range(1000)))
    assert 400 < mid_line < 520  # about half the prefixes end inside a line, ~1 in 13 of those by chance at one


def test_single_line_rate_masks_one_nonblank_line_drawn_uniformly():
    text = "import os\n\n\ndef main():\n    print(os.getcwd())\n  \n    return 0"
    rng = random.Random(11)
    counts = {}
    for _ in range(3000):
        prefix, middle, suffix = split_points(text, rng, single_line_rate=1.0)
        assert prefix + middle + suffix == text
        assert prefix == "" or prefix.endswith("\n")  # the hole starts a line ...
        assert middle.strip() and middle.count("\n") == middle.endswith("\n")  # ... and is one non-blank line
        counts[middle] = counts.get(middle, 0) + 1
    # every non-blank line, the last (no newline) included, about equally often whatever its length
    assert set(counts) == {"import os\n", "def main():\n", "    print(os.getcwd())\n", "    return 0"}
    assert all(650 < n < 850 for n in counts.values()), counts


def test_single_line_rate_applies_to_its_share_and_leaves_texts_without_a_line_alone():
    text = "".join(f"value_{i} = {i}\n" for i in range(40))
    rng = random.Random(2)
    one_line = sum(m.count("\n") == 1 and p.endswith("\n") and m.startswith("value_")
                   for p, m, _ in (split_points(text, rng, single_line_rate=0.5) for _ in range(1000)))
    assert 470 < one_line < 560  # half, and a few character-level middles that happen to be one line
    blank = "\n  \n\n"
    a, b = random.Random(4), random.Random(4)
    for _ in range(20):  # no line to mask: the character-level split, after the rate's one draw
        got = split_points(blank, a, single_line_rate=1.0)
        want = split_points(blank, b)
        b.random()
        assert got == want


def test_fim_config_rejects_a_suffix_line_rate_outside_zero_one():
    from codegemma.data.samples import FimConfig
    from codegemma.errors import CodegemmaError

    with pytest.raises(CodegemmaError, match="suffix_line_rate=1.5"):
        FimConfig(suffix_line_rate=1.5)
    with pytest.raises(CodegemmaError, match="line_rate=-0.1"):
        FimConfig(line_rate=-0.1)
    with pytest.raises(CodegemmaError, match="single_line_rate=2"):
        FimConfig(single_line_rate=2)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab <|>_fimprexsuodl\n\t€")), max_size=60))
def test_literal_text_never_becomes_a_sentinel(tokenizer, text):
    ids = sentinel_ids(tokenizer)
    text = text + S.prefix + text + S.file_separator
    encoded = encode_literal(tokenizer, text, ids)
    assert not set(encoded) & set(ids.values())
    assert tokenizer.decode(encoded) == text


def test_encode_pieces_default_behaviour_is_unchanged(tokenizer):
    ids = sentinel_ids(tokenizer)
    plain = encode_pieces(tokenizer, ["x = 1"], ids)
    assert plain == tokenizer.encode("x = 1")
    assert encode_pieces(tokenizer, ["x", S.prefix], ids, literal_text=True)[-1] == ids[S.prefix]


def test_missing_sentinel_is_a_clear_error():
    class NoFim:
        def token_to_id(self, token):
            return None

    with pytest.raises(ValueError, match="cannot infill"):
        sentinel_ids(NoFim())
