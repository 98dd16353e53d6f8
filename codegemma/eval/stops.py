"""Stop strings shared by the Python completion tasks.

A base model asked to complete a function keeps writing after it: another top-level definition,
a test, a print. Cutting at the first line that starts at column 0 with one of these keeps the
function and nothing else. The list is bigcode-evaluation-harness's for HumanEval (Codex's
`\nclass \ndef \n# \nif \nprint`, with decorators and a closing code fence), as is, so that scores
compare with its: a column-0 `if` or `print` after the function is cut, not run, and a column-0
`assert` the model writes is run. The model's own stop tokens are applied by id during generation;
their text forms are added here in case they leak as plain text.
"""

from __future__ import annotations

from typing import Any

PYTHON_FUNCTION_STOPS = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```")


def sentinel_texts(profile: Any) -> tuple[str, ...]:
    """The text of the profile's FIM sentinels and turn markers, as stop strings."""
    texts = ["<eos>", "<end_of_turn>", "<|file_separator|>"]
    sentinels = getattr(profile, "sentinels", None) if profile is not None else None
    if sentinels is not None:
        texts += list(sentinels.all())
    return tuple(dict.fromkeys(texts))
