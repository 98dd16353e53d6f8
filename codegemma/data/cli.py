"""`codegemma data ...`: build, demo-corpus, order, inspect."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from codegemma.errors import CodegemmaError


def register(subparsers) -> None:
    from codegemma.commands import non_negative

    data = subparsers.add_parser("data", help="pretraining data pipeline: build shards from repositories")
    sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    sub.required = True

    build = sub.add_parser("build", help="run a data recipe end to end (resumes an interrupted run)")
    build.add_argument("recipe", help="recipes/data/*.toml")
    build.add_argument("--fresh", action="store_true", help="discard the intermediate results of an earlier run")
    build.add_argument("--workers", type=non_negative, help="worker processes (default: the recipe's, 0 = every core)")
    build.add_argument("--executor", choices=("local", "ray"), help="override the recipe's executor")
    build.add_argument("--out-dir", help="override the recipe's out_dir")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.set_defaults(func=_build)

    demo = sub.add_parser("demo-corpus", help="collect real code on this machine into a repository collection")
    demo.add_argument("out", help="directory to create (each child becomes one repository)")
    demo.add_argument("--max-mb", type=float, default=50.0, help="stop after this much source (default 50; 0: no limit)")
    demo.add_argument("--no-stdlib", action="store_true", help="leave out the Python standard library")
    demo.add_argument("--stdlib-tests", action="store_true", help="include the standard library's test package")
    demo.add_argument("--site-packages", action="store_true", help="add installed distributions' sources")
    demo.add_argument("--debian", nargs="+", metavar="PACKAGE", help="add Debian source packages (apt-get source)")
    demo.add_argument("--max-file-kb", type=float, help="leave out source files larger than this")
    demo.add_argument("--language", action="append", metavar="NAME",
                      help="take only files of this language (repeatable; default: any the pipeline knows)")
    demo.set_defaults(func=_demo)

    order = sub.add_parser("order", help="print the multi-file packing order of one repository")
    order.add_argument("repository", help="directory, git repository, tarball or zip")
    order.add_argument("--strategy", default="codegemma", help="codegemma | deepseek | random | alphabetical")
    order.add_argument("--seed", type=int, default=0)
    order.add_argument("--edges", action="store_true", help="also print the import edges")
    order.set_defaults(func=_order)

    inspect = sub.add_parser("inspect", help="summarise a shard directory")
    inspect.add_argument("shards")
    inspect.add_argument("--decode", type=int, metavar="I", help="print sequence I decoded with the shards' tokenizer")
    inspect.set_defaults(func=_inspect)


def _build(args) -> int:
    import dataclasses

    from codegemma.data.pipeline import build
    from codegemma.data.recipe import load_recipe, validate

    recipe = load_recipe(args.recipe)
    changes = {k: v for k, v in (("workers", args.workers), ("executor", args.executor), ("out_dir", args.out_dir))
               if v is not None}
    recipe = validate(dataclasses.replace(recipe, **changes), args.recipe)
    report = build(recipe, fresh=args.fresh, progress=not args.quiet)
    stages = report["stages"]
    print(f"{stages['repositories']} repositories, {stages['files_in']} files in, {stages['files_out']} files out, "
          f"{stages['sample_tokens']} tokens; {report['throughput_mb_s']} MB/s")
    for split, meta in report["splits"].items():
        print(f"{split}: {meta['sequences']} sequences of {meta['seq_len']} tokens -> {Path(recipe.out_dir) / split}")
    if recipe.eval_fraction > 0 and "eval" not in report["splits"]:
        print(f"no eval split: eval_fraction {recipe.eval_fraction} held out none of the {stages['repositories']} "
              "repositories (whole repositories are held out)")
    print(f"report: {Path(recipe.out_dir) / 'report.md'}")
    return 0


def _demo(args) -> int:
    from codegemma.data.demo_corpus import build_demo_corpus

    counts = build_demo_corpus(args.out, args.max_mb, stdlib=not args.no_stdlib, site_packages=args.site_packages,
                               debian=args.debian, include_tests=args.stdlib_tests, max_file_kb=args.max_file_kb,
                               languages=args.language)
    print(f"{counts['repositories']} repositories, {counts['bytes'] / 1e6:.1f} MB in {args.out}")
    return 0


def _order(args) -> int:
    from codegemma.data.ordering import order_files
    from codegemma.data.repo_graph import dependency_graph
    from codegemma.data.sources import SourceSpec, list_repositories, load_repository

    path = Path(args.repository)
    if not path.exists():
        raise CodegemmaError(f"{path} does not exist")
    spec = SourceSpec(name="cli", path=str(path), layout="repository")
    repo = load_repository(next(list_repositories(spec)))
    graph = dependency_graph({d.path: (d.language, d.content) for d in repo.documents})
    for p in order_files(graph, args.strategy, args.seed):
        print(p)
    if args.edges:
        for a, b, data in sorted(graph.edges(data=True)):
            print(f"# {a} -> {b} (strength {data['strength']}, count {data['count']})", file=sys.stderr)
    return 0


def _inspect(args) -> int:
    from codegemma.data.shards import ShardDataset

    ds = ShardDataset(args.shards)
    print(json.dumps({"sequences": len(ds), "seq_len": ds.seq_len, **ds.meta}, indent=1))
    if args.decode is not None:
        from codegemma.data.samples import load_tokenizer

        if not 0 <= args.decode < len(ds):
            raise CodegemmaError(f"--decode {args.decode}: {args.shards} holds sequences 0..{len(ds) - 1}")

        tokenizer = load_tokenizer(ds.meta["tokenizer"], fim_sentinels_from=ds.meta.get("fim_sentinels_from", ()))
        item = ds[args.decode]
        print(tokenizer.decode([int(t) for t in item["tokens"][item["loss_mask"]]]))
    return 0
