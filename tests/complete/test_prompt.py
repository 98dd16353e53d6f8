"""Prompts: FIM layouts through codegemma.fim, prefix-only for models without sentinels, budgets."""

from __future__ import annotations

import pytest

from codegemma.complete.budget import Budget
from codegemma.complete.language import syntax_for
from codegemma.complete.prompt import FIM, PREFIX_ONLY, build_prompt
from codegemma.errors import CodegemmaError
from codegemma.fim import PSM, SPM, encode_pieces, repo_fim_prompt
from codegemma.profiles import resolve_profile

PREFIX = "import os\n\n\ndef list_dir(path):\n    return "
SUFFIX = "\n\n\nif __name__ == '__main__':\n    print(list_dir('.'))\n"


@pytest.mark.parametrize("order", [PSM, SPM])
def test_fim_prompt_is_the_fim_module_layout(fim_tokenizer, order):
    profile = resolve_profile(fim_tokenizer)
    context = [("util.py", "def helper():\n    return os.sep\n")]
    prompt = build_prompt(fim_tokenizer, profile, PREFIX, SUFFIX, path="pkg/main.py", context=context, order=order)
    expected = [profile.bos_id] + encode_pieces(fim_tokenizer, repo_fim_prompt(context, PREFIX, SUFFIX, order,
                                                                                  "pkg/main.py"),
                                                dict(profile.sentinel_ids))
    assert prompt.ids == expected
    assert prompt.mode == FIM and prompt.order == order and not prompt.truncated
    assert prompt.context_paths == ["util.py"]


def test_default_order_is_spm(fim_tokenizer):
    prompt = build_prompt(fim_tokenizer, resolve_profile(fim_tokenizer), PREFIX, SUFFIX)
    assert prompt.order == SPM
    middle = fim_tokenizer.token_to_id("<|fim_middle|>")
    assert fim_tokenizer.decode(prompt.ids[prompt.ids.index(middle) + 1:]) == PREFIX


def test_prefix_only_mode_without_sentinels(plain_tokenizer):
    profile = resolve_profile(plain_tokenizer)
    assert not profile.fim_supported
    prompt = build_prompt(plain_tokenizer, profile, PREFIX, SUFFIX, path="main.py", syntax=syntax_for("main.py"),
                          context=[("util.py", "X = 1\n")])
    assert prompt.mode == PREFIX_ONLY and prompt.order is None
    text = plain_tokenizer.decode(prompt.ids[1:])
    assert text == "# Path: util.py\nX = 1\n\n# Path: main.py\n" + PREFIX
    with pytest.raises(CodegemmaError, match="no FIM sentinels"):
        build_prompt(plain_tokenizer, profile, PREFIX, SUFFIX, mode=FIM)


def test_budget_is_respected_and_reported(fim_tokenizer):
    profile = resolve_profile(fim_tokenizer)
    prefix = "".join(f"a_{i} = {i}\n" for i in range(500)) + "b = "
    suffix = "".join(f"c_{i} = {i}\n" for i in range(500))
    context = [(f"m{i}.py", "".join(f"d_{j} = {j}\n" for j in range(100))) for i in range(5)]
    prompt = build_prompt(fim_tokenizer, profile, prefix, suffix, path="x.py", context=context,
                          budget=Budget(max_prompt_tokens=600))
    assert len(prompt.ids) <= 600 and prompt.truncated
    assert prompt.prefix.endswith("b = ") and suffix.startswith(prompt.suffix)
    assert len(prompt.context_paths) >= 1


def test_sentinel_text_in_user_code_is_not_a_sentinel(fim_tokenizer):
    profile = resolve_profile(fim_tokenizer)
    prompt = build_prompt(fim_tokenizer, profile, "s = '<|fim_middle|>' + ", "\n", order=PSM)
    middle = fim_tokenizer.token_to_id("<|fim_middle|>")
    assert prompt.ids.count(middle) == 1 and prompt.ids[-1] == middle


def test_middle_start_continues_the_prefix(fim_tokenizer):
    profile = resolve_profile(fim_tokenizer)
    psm = build_prompt(fim_tokenizer, profile, "x = ", "\n", order=PSM, middle_start="foo")
    assert fim_tokenizer.decode(psm.ids[-1:]) != "" and fim_tokenizer.decode(psm.ids).endswith("<|fim_middle|>foo")
    spm = build_prompt(fim_tokenizer, profile, "x = ", "\n", order=SPM, middle_start="foo")
    assert fim_tokenizer.decode(spm.ids).endswith("<|fim_middle|>x = foo")
