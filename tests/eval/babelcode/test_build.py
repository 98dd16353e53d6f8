import pytest

from codegemma.eval import sandbox
from codegemma.eval.babelcode.build import Builder, _compile_log, _is_verdict, program_key
from codegemma.eval.babelcode.languages import LANGUAGES
from tests.eval.babelcode.test_languages import ADD


@pytest.mark.toolchain("csharp")
def test_compiles_are_cached_by_content_including_compile_errors(tmp_path):
    lang = LANGUAGES["csharp"]
    builder = Builder(lang, tmp_path)
    good = lang.program(ADD, lang.indent_body("return x + y;"))
    bad = lang.program(ADD, lang.indent_body("return x +;"))
    first = builder.build_many([good, bad, good])
    assert [b.ok for b in first] == [True, False, True] and not first[0].cached
    assert "Problem.cs" in first[1].log and "/tmp/codegemma-sandbox" not in first[1].log
    again = Builder(lang, tmp_path).build_many([bad, good])
    assert [b.cached for b in again] == [True, True]
    assert again[1].files == first[0].files
    entry = tmp_path / "csharp" / program_key(lang, builder.toolchain, good)[:2]
    assert any(entry.iterdir())


def test_failures_of_the_machine_are_not_cached():
    missing_tool = sandbox.RunResult("error", 127, "", "sh: 1: mcs: not found", 0.0)
    rejected = sandbox.RunResult("error", 1, "", "error CS1525", 0.0)
    slow = sandbox.RunResult("timeout", None, "", "", 60.0)
    assert not _is_verdict(missing_tool) and not _is_verdict(slow) and _is_verdict(rejected)


def test_a_long_compile_log_keeps_its_first_error():
    """rustc and g++ quote whole source lines; a runaway answer makes logs of many kilobytes, and
    the first error, which says what is wrong, comes first."""
    stderr = "error: expected `;`, found `}`\n" + " " * 9000 + "^ help: add `;` here\nerror: aborting due to 2 previous errors"
    log = _compile_log(sandbox.RunResult("error", 1, "", stderr, 0.1))
    assert log.startswith("error: expected `;`") and len(log) <= 4000
