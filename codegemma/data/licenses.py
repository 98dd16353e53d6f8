"""License of a repository, read from its license file by the distinctive phrases of common licenses."""

from __future__ import annotations

import re

LICENSE_FILES = re.compile(r"^(licen[cs]e|copying|unlicense)([.-][\w.-]*)?$", re.IGNORECASE)

# (SPDX id, phrases that must all appear, case- and whitespace-insensitive); first match wins,
# so the more specific licenses come first
_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("AGPL-3.0", ("gnu affero general public license",)),
    ("LGPL-3.0", ("gnu lesser general public license", "version 3")),
    ("LGPL-2.1", ("gnu lesser general public license",)),
    ("LGPL-2.0", ("gnu library general public license",)),
    ("GPL-3.0", ("gnu general public license", "version 3")),
    ("GPL-2.0", ("gnu general public license", "version 2")),
    ("MPL-2.0", ("mozilla public license", "2.0")),
    ("EPL-2.0", ("eclipse public license", "2.0")),
    ("Apache-2.0", ("apache license", "version 2.0")),
    ("PSF-2.0", ("python software foundation license",)),
    ("BSL-1.0", ("boost software license",)),
    ("Unlicense", ("free and unencumbered software released into the public domain",)),
    ("CC0-1.0", ("cc0 1.0 universal",)),
    ("BSD-3-Clause", ("redistribution and use in source and binary forms", "neither the name")),
    ("BSD-2-Clause", ("redistribution and use in source and binary forms",)),
    ("ISC", ("permission to use, copy, modify, and/or distribute this software for any purpose",)),
    ("MIT", ("permission is hereby granted, free of charge",)),
    ("Zlib", ("this software is provided 'as-is'", "altered source versions must be plainly marked")),
]

PERMISSIVE = frozenset({"Apache-2.0", "MIT", "BSD-2-Clause", "BSD-3-Clause", "ISC", "PSF-2.0", "BSL-1.0",
                        "Unlicense", "CC0-1.0", "Zlib"})


def identify(text: str) -> str:
    """SPDX id of a license text, or "unknown" when no rule matches."""
    flat = " ".join(text.lower().split())
    for spdx, phrases in _RULES:
        if all(p in flat for p in phrases):
            return spdx
    return "unknown"


def is_license_file(path: str) -> bool:
    return "/" not in path and bool(LICENSE_FILES.match(path))


def license_rank(spdx: str | None) -> int:
    """Survivor priority of a license (higher is kept): permissive > none found > other."""
    if spdx in PERMISSIVE:
        return 2
    if spdx is None:
        return 1
    return 0
