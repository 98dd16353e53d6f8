"""`codegemma eval TASK` runs a benchmark; `codegemma eval-report RUN_DIR...` builds a combined report."""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from codegemma.commands import count, seconds
from codegemma.errors import CodegemmaError


# Tasks that take --languages: one combined task whose problem ids carry the language
# (`cpp/HumanEval/0`), so one run gives every row of Table 4.
MULTILINGUAL_TASKS = ("babelcode-humaneval", "babelcode-mbpp")


class _TaskNames(Sequence):
    """The registered task names, looked up only when argparse checks or shows them: importing the
    task modules (and their evaluation dependencies) must not burden every other subcommand."""

    def _names(self) -> list[str]:
        from codegemma.eval.task import task_names

        return task_names()

    def __getitem__(self, index):
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="run a benchmark (HumanEval, MBPP, infilling, BabelCode) on a model",
                              description="Generate, execute in the sandbox, score (pass@k), and report. "
                                          "Resumable: rerun the same command to finish an interrupted run.")
    p.add_argument("task", metavar="TASK", choices=_TaskNames(), help="benchmark to run: %(choices)s")
    p.add_argument("--model", default=None, help="GGUF file, Hugging Face directory or preset (default: Gemma 3 270M)")
    p.add_argument("--n", type=count, default=1, help="samples per problem (pass@k for k <= n)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--limit", type=count, default=None, help="only the first K problems")
    p.add_argument("--max-new-tokens", type=count, default=None,
                   help="default: 128 for infilling (as the paper's Table 2), 512 otherwise")
    p.add_argument("--batch-size", type=count, default=8)
    p.add_argument("--workers", type=count, default=None, help="parallel sandbox runs (default: CPU count)")
    p.add_argument("--timeout", type=seconds, default=None,
                   help="CPU seconds for one check program (default: the task's; 3 for HumanEval and its "
                        "infilling tasks, as in their reference harnesses, 10 for MBPP and BabelCode)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="benchmark data: a file, a directory (infilling) or a URL")
    p.add_argument("--profile", default=None, help="model profile override (e.g. codegemma)")
    p.add_argument("--languages", default=None,
                   help="BabelCode tasks (babelcode-humaneval, babelcode-mbpp): comma-separated languages out of "
                        "cpp,csharp,go,java,javascript,kotlin,python,rust (default: all eight)")
    p.add_argument("--fim-order", default="psm", choices=["psm", "spm", "l2r"],
                   help="FIM prompt order for infilling; l2r: the prefix alone (single-line only, any model)")
    p.add_argument("--max-prompt-tokens", type=count, default=None,
                   help="infilling: trim prefix and suffix at line starts to this many prompt tokens, as the "
                        "completion server does (for a model with a short context)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out", default=None, help="run directory (default: eval-runs/<model>/<task>); with "
                   "--validate-only, where validation-<task>.json is written")
    p.add_argument("--validate-only", action="store_true",
                   help="only check that canonical solutions pass and wrong ones fail; no model")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_command)

    r = subparsers.add_parser("eval-report", help="combine eval run directories into one report (md, json, png)")
    r.add_argument("runs", nargs="+", help="run directories holding summary.json")
    r.add_argument("--out", required=True, help="directory for results.md / results.json / results.png")
    r.add_argument("--stem", default="results")
    # dest: `command` is the subcommand's name, which error messages print
    r.add_argument("--command", dest="command_line", default=None, help="the command line to record in the report")
    r.set_defaults(func=report_command)

    c = subparsers.add_parser("eval-compare", help="two models on the same problems: what each solves alone, "
                                                   "and McNemar's exact test")
    c.add_argument("first", help="eval run directory (samples.jsonl) or infilling answers file (JSON Lines)")
    c.add_argument("second", help="the same, for the other model")
    c.add_argument("--pair", action="append", default=[], metavar="FIRST:SECOND",
                   help="compare the first's group FIRST with the second's SECOND (a task, or a prompt order: "
                        "psm, spm, l2r); repeatable; default: every group both have, each with itself")
    c.add_argument("--metric", choices=("passed", "exact"), default="passed",
                   help="eval runs: execution (passed) or exact match; answers files are scored by exact match")
    c.add_argument("--json", default=None, help="also write the results here")
    c.set_defaults(func=compare_command)


def _task_options(args) -> dict:
    options = {}
    if args.data is not None:
        options["data_path"] = args.data
    if args.task.startswith("humaneval-infill"):
        options["fim_order"] = args.fim_order
        if args.max_prompt_tokens is not None:
            options["max_prompt_tokens"] = args.max_prompt_tokens
    elif args.max_prompt_tokens is not None or args.fim_order != "psm":
        raise CodegemmaError(f"--fim-order and --max-prompt-tokens apply to the humaneval-infill tasks, not {args.task}")
    if args.languages is not None:
        if args.task not in MULTILINGUAL_TASKS:
            raise CodegemmaError(f"--languages applies to {' and '.join(MULTILINGUAL_TASKS)}, not {args.task}")
        options["languages"] = args.languages
    return options


def run_command(args) -> int:
    from codegemma.eval.report import write_report
    from codegemma.eval.runner import (GenerationSettings, default_workers, require_valid, run_eval, validate,
                                       write_json)
    from codegemma.data.atomic import dir_target
    from codegemma.eval.task import INFILLING, get_task

    task = get_task(args.task, **_task_options(args))
    if args.timeout is not None:
        task.timeout = args.timeout
    workers = args.workers or default_workers()
    if args.out:  # a file in the way is refused now, not once the work is done
        dir_target(args.out)
    if args.validate_only:
        report = validate(task, task.problems(args.limit), workers)
        print(json.dumps(report, indent=2))
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            write_json(Path(args.out) / f"validation-{task.name}.json", {"task": task.name, **report})
        require_valid(report, task.name)
        print(f"{task.name}: {report['canonical_passed']}/{report['canonical_checked']} canonical solutions pass, "
              f"{len(report['wrong_passed'])}/{report['wrong_checked']} wrong ones pass, {report['seconds']:.1f} s")
        return 0
    task.problems(args.limit)  # a missing data file fails here, before the model loads
    from codegemma.engine import SamplingParams
    from codegemma.eval.generation import model_generator

    max_new = args.max_new_tokens or (128 if task.kind == INFILLING else 512)
    settings = GenerationSettings(n=args.n, temperature=args.temperature, top_p=args.top_p, max_new_tokens=max_new,
                                  seed=args.seed, batch_size=args.batch_size)
    # the engine's checks of the sampling settings, before a run directory is started with them
    SamplingParams(max_new_tokens=max_new, temperature=args.temperature, top_p=args.top_p)
    fim = task.kind == INFILLING and args.fim_order != "l2r"
    generator = model_generator(args.model, dtype=args.dtype, profile_name=args.profile,
                                fim_order=args.fim_order if fim else None)
    if task.kind == INFILLING:
        task.count_tokens = generator.count_tokens
        # runs with other prompts must not resume each other (run.json holds this)
        if args.fim_order == "l2r":
            generator.info["fim_order"] = "l2r"
        if args.max_prompt_tokens is not None:
            generator.info["max_prompt_tokens"] = args.max_prompt_tokens
    out = Path(args.out or Path("eval-runs") / re.sub(r"[^\w.-]+", "-", generator.name).strip("-") / task.name)
    summary = run_eval(task, generator, settings, out, limit=args.limit, workers=workers,
                       progress=not args.no_progress)
    command = "codegemma " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    paths = write_report([summary], out, command=command, stem="report")
    scores = ", ".join(f"{k} {v:.4f}" for k, v in summary["scores"].items())
    if summary.get("by_language"):
        scores += "; pass@1 % by language: " + ", ".join(f"{lang} {row['pass@1']:.1f}"
                                                         for lang, row in summary["by_language"].items())
    print(f"{task.name} on {generator.name}: {scores} ({summary['problems']} problems, n={settings.n}); "
          f"report: {paths['md']}")
    return 0


def report_command(args) -> int:
    from codegemma.eval.report import check_summary, write_report
    from codegemma.textfiles import read_json

    summaries = []
    for run in args.runs:
        path = Path(run) / "summary.json"
        if not path.is_file():
            raise CodegemmaError(f"{path} not found: is {run} a finished eval run directory?")
        summaries.append(check_summary(read_json(path), path))
    paths = write_report(summaries, args.out, command=args.command_line, stem=args.stem)
    print(" ".join(str(p) for p in paths.values()))
    return 0


def compare_command(args) -> int:
    from codegemma.data.atomic import file_target, write_json
    from codegemma.eval import paired

    pairs = []
    for spec in args.pair:
        first, sep, second = spec.partition(":")
        if not sep or not first or not second:
            raise CodegemmaError(f"--pair {spec!r}: expected FIRST:SECOND, e.g. spm:l2r")
        pairs.append((first, second))
    if args.json:
        file_target(args.json, ".json file")
    results = paired.compare_files(paired.load(args.first, args.metric), paired.load(args.second, args.metric),
                                   pairs)
    print(paired.table(results, args.first, args.second))
    if args.json:
        write_json(args.json, paired.as_json(results, args.first, args.second))
    return 0
