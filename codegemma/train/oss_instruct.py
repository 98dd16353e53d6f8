"""Synthetic instruction data in the spirit of OSS-Instruct (Magicoder, Wei et al. 2023).

A served model (any OpenAI-compatible `/v1/chat/completions`, such as `codegemma serve`) is shown
a random snippet of real code and asked for a self-contained problem inspired by it, a Python
solution and tests. The CodeGemma report then post-filters with an LLM judge; here the filter is
execution: a pair is kept only if its tests pass against its solution in the evaluation sandbox.
Kept pairs are written as SFT conversations (`{"messages": [...]}` JSONL).
"""

from __future__ import annotations

import random
import re
import secrets
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from codegemma.errors import CodegemmaError
from codegemma.train.evaluate import read_files
from codegemma.train.preference import jsonl_target, write_jsonl

PROMPT = """You are exceptionally skilled at crafting high-quality programming problems and offering precise solutions.

Please gain inspiration from the following random code snippet to create a high-quality, self-contained programming problem that can be solved in Python. Then write a correct solution and tests for it.

Code snippet for inspiration:
```
{snippet}
```

Answer in exactly three sections, in this order:
[Problem Description]
(a complete, self-contained problem statement; name the function to write)
[Solution]
```python
(the solution: plain Python, standard library only)
```
[Tests]
```python
(assert statements that check the solution; the solution's names are already imported)
```"""

_SECTION = re.compile(r"\[(Problem Description|Solution|Tests)\]\s*", re.IGNORECASE)
# models write the fence's language in any case ("```Python", "```python3")
_CODE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)

# Runs the tests in the sandbox. Running the test file as a script is not enough: tests written as
# pytest functions or unittest classes would only be defined, never called, and any solution would
# pass; a solution or test that exits with status 0 early would pass too. So every `test*`
# function and TestCase of the tests is run, the tests pass only if at least one of their assert
# statements (or TestCase tests) ran, and the run must reach its last line, which prints a token
# drawn for that run.
_RUNNER = """\
import ast, builtins, inspect, sys, types, unittest

class _Counted(ast.NodeTransformer):
    def visit_Assert(self, node):
        return [node, ast.copy_location(ast.parse("__oss_checks__[0] += 1").body[0], node)]

builtins.__oss_checks__ = [0]
with open("test_solution.py", encoding="utf-8") as f:
    tree = ast.fix_missing_locations(_Counted().visit(ast.parse(f.read(), "test_solution.py")))
module = types.ModuleType("__main__")
module.__file__ = "test_solution.py"
sys.modules["__main__"] = module  # where unittest.main() looks for the TestCases
namespace = module.__dict__
try:
    exec(compile(tree, "test_solution.py", "exec"), namespace)
except SystemExit as exc:
    # unittest.main() exits: 0 when its tests pass, and (Python 3.12+) 5 when it found none, which
    # leaves the test functions to the loop below
    if exc.code not in (None, 0, 5):
        raise
for name, obj in list(namespace.items()):
    if getattr(obj, "__module__", None) != "__main__":
        continue
    if inspect.isfunction(obj) and name.startswith("test"):
        if all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in inspect.signature(obj).parameters.values()):
            obj()
    elif inspect.isclass(obj) and issubclass(obj, unittest.TestCase):
        result = unittest.TextTestRunner(stream=sys.stderr, verbosity=0).run(
            unittest.defaultTestLoader.loadTestsFromTestCase(obj))
        if not result.wasSuccessful():
            sys.exit(1)
        builtins.__oss_checks__[0] += result.testsRun
if not builtins.__oss_checks__[0]:
    sys.exit("none of the tests' assertions ran")
print(TOKEN)
"""


@dataclass
class Candidate:
    seed: str
    problem: str
    solution: str
    tests: str


def snippets(root: str | Path, n: int, seed: int = 0, min_lines: int = 3, max_lines: int = 15) -> list[tuple[str, str]]:
    """`n` random runs of consecutive lines from the source files under `root` (path, snippet)."""
    files = [(p, t) for p, t in read_files(root) if t.count("\n") >= min_lines]
    if not files:
        raise CodegemmaError(f"no seed source files under {root}")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        path, text = rng.choice(files)
        lines = text.splitlines()
        size = rng.randint(min_lines, max_lines)
        start = rng.randint(0, max(0, len(lines) - size))
        out.append((path, "\n".join(lines[start:start + size])))
    return out


def parse(response: str, seed: str = "") -> Candidate | None:
    """The three sections of a response, or None if any is missing or has no code block."""
    parts = _SECTION.split(response)
    sections = {parts[i].lower(): parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
    problem = sections.get("problem description", "")
    solution = _CODE.search(sections.get("solution", ""))
    tests = _CODE.search(sections.get("tests", ""))
    if not problem or solution is None or tests is None:
        return None
    solution_code, test_code = solution.group(1).strip(), tests.group(1).strip()
    if not solution_code or "assert" not in test_code:
        return None
    return Candidate(seed, problem, solution_code, test_code)


def passes(candidate: Candidate, timeout: float = 10.0) -> bool:
    """Run the tests against the solution in the evaluation sandbox."""
    from codegemma.eval import sandbox

    token = secrets.token_hex(16)
    files = {"solution.py": candidate.solution + "\n",
             "test_solution.py": "from solution import *\n\n" + candidate.tests + "\n",
             "run_tests.py": _RUNNER.replace("TOKEN", repr(token))}
    result = sandbox.run([sys.executable, "run_tests.py"], files=files, timeout=timeout)
    return result.status == "ok" and token in result.stdout.splitlines()


def conversation(candidate: Candidate) -> dict:
    answer = f"```python\n{candidate.solution}\n```"
    return {"messages": [{"role": "user", "content": candidate.problem}, {"role": "assistant", "content": answer}],
            "tests": candidate.tests, "seed": candidate.seed}


def generate(seed_dir: str | Path, base_url: str, model: str, n: int, out: str | Path, seed: int = 0,
             temperature: float = 0.7, max_tokens: int = 1024, timeout: float = 10.0, workers: int = 1,
             progress: bool = False, client=None, request_timeout: float = 120.0) -> dict:
    """Ask the served model about `n` seed snippets; keep the test-passing pairs. Returns counts.

    Up to `workers` requests are in flight at once (for a server that answers chat requests in
    parallel; `codegemma serve` queues them) while the main thread tests the answers in seed order,
    so the kept pairs do not depend on `workers`. Nothing kept is an error and writes nothing; a
    server failure or Ctrl-C part way writes the pairs kept before it, then raises.
    """
    import openai
    from tqdm import tqdm

    out = jsonl_target(out)  # before any request: a wrong --out must not cost the answers
    client = client or openai.OpenAI(base_url=base_url, api_key="unused", timeout=request_timeout, max_retries=1)

    def ask(index: int, snippet: str) -> str:
        try:
            reply = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": PROMPT.format(snippet=snippet)}],
                temperature=temperature, max_tokens=max_tokens, seed=seed + index + 1)
        except openai.APITimeoutError:  # a subclass of the connection error, but the server is there
            raise CodegemmaError(f"the model server at {base_url} did not answer within {request_timeout:g} s "
                                 "(a slow server, or requests queued behind others: fewer --workers or a "
                                 "smaller --max-tokens)") from None
        except openai.APIConnectionError as exc:
            raise CodegemmaError(f"cannot reach the model server at {base_url}: {exc}") from None
        except openai.APIStatusError as exc:
            raise CodegemmaError(f"model server at {base_url} answered {exc.status_code}: {exc.message}") from None
        return reply.choices[0].message.content or ""

    seeds = snippets(seed_dir, n, seed)
    stats = {"seeds": len(seeds), "responses": 0, "parsed": 0, "passed": 0, "kept": 0}
    kept, seen = [], set()
    pool = ThreadPoolExecutor(max(1, workers))
    replies = [pool.submit(ask, i, snippet) for i, (_, snippet) in enumerate(seeds)]
    try:
        with tqdm(total=len(seeds), desc="oss-instruct", unit="seed", disable=not progress) as bar:
            for (path, _), reply in zip(seeds, replies):
                text = reply.result()
                stats["responses"] += 1
                bar.update()
                candidate = parse(text, path)
                if candidate is None:
                    continue
                stats["parsed"] += 1
                if not passes(candidate, timeout):
                    continue
                stats["passed"] += 1
                if candidate.problem not in seen:
                    seen.add(candidate.problem)
                    kept.append(conversation(candidate))
                    bar.set_postfix(kept=len(kept))
    except (CodegemmaError, KeyboardInterrupt) as exc:  # the pairs kept so far are not lost
        pool.shutdown(wait=False, cancel_futures=True)
        if not kept:
            raise
        write_jsonl(out, kept)
        where = (f"after {stats['responses']} of {len(seeds)} seeds; the pairs kept before it ({len(kept)}) "
                 f"are in {out}")
        raise type(exc)(f"{exc} ({where})" if str(exc) else where) from None
    pool.shutdown()
    stats["kept"] = len(kept)
    if not kept:  # an SFT run could not start from it: refused, nothing written
        raise CodegemmaError(f"no pair passed its tests, nothing written to {out}: {stats} (a stronger model, "
                             "more seeds, or a lower --temperature may help)")
    write_jsonl(out, kept)
    return stats
