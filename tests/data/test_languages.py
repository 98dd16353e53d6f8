from codegemma.data.languages import EXTENSIONS, FILENAMES, detect_language
from codegemma.data.licenses import identify, is_license_file, license_rank


def test_language_by_extension_name_and_shebang():
    assert detect_language("a/b.PY") == "Python"
    assert detect_language("x/Makefile") == "Makefile"
    assert detect_language("Dockerfile.dev") == "Dockerfile"
    assert detect_language("bin/tool", "#!/usr/bin/env python3.11\nprint(1)\n") == "Python"
    assert detect_language("run", "#!/bin/bash -e\n") == "Shell"
    assert detect_language("run", "#!/usr/bin/env node\n") == "JavaScript"
    assert detect_language("LICENSE", "MIT") is None
    assert len(set(EXTENSIONS.values()) | set(FILENAMES.values())) >= 30


def test_license_identification():
    assert identify("Apache License\nVersion 2.0, January 2004") == "Apache-2.0"
    assert identify("Redistribution and use in source and binary forms ... Neither the name of") == "BSD-3-Clause"
    assert identify("GNU GENERAL PUBLIC LICENSE\n Version 3, 29 June 2007") == "GPL-3.0"
    assert identify("all rights reserved") == "unknown"
    assert is_license_file("LICENSE.txt") and is_license_file("COPYING") and not is_license_file("docs/LICENSE")
    assert license_rank("MIT") > license_rank(None) > license_rank("GPL-3.0")
