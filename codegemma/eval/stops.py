"""Stop strings shared by the Python completion tasks.

A base model asked to complete a function keeps writing after it: another top-level definition,
a test, a print. Cutting at the first line that starts at column 0 with one of these keeps the
function and nothing else (bigcode-evaluation-harness's list, with `\\nif` narrowed to
`\\nif __name__` and `\\nprint` to `\\nprint(` so valid names are not cut). The model's own stop
tokens are applied by id during generation; their text forms are added here in case they leak
as plain text.
"""

from __future__ import annotations

from typing import Any

PYTHON_FUNCTION_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n@", "\nassert ",
                         "\n```")


def sentinel_texts(profile: Any) -> tuple[str, ...]:
    """The text of the profile's FIM sentinels and turn markers, as stop strings."""
    texts = ["<eos>", "<end_of_turn>", "<|file_separator|>"]
    sentinels = getattr(profile, "sentinels", None) if profile is not None else None
    if sentinels is not None:
        texts += list(sentinels.all())
    return tuple(dict.fromkeys(texts))
