"""The build report: counts per stage and language, tokens, timings, plots (report.json, report.md)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from codegemma.data import stages
from codegemma.data.atomic import write_json, write_text


def _collect(pipeline, entries: list[dict], dedup: dict) -> dict:
    work = pipeline.work
    dropped, pii = Counter(), Counter()
    languages = defaultdict(lambda: {"files_in": 0, "bytes_in": 0, "dropped": 0, "files_out": 0, "tokens": 0})
    decontaminated = []
    totals = Counter()
    per_source = defaultdict(Counter)
    for e in entries:
        part = stages.read_json_gz(stages.clean_path(work, e["key"]))
        st = part["stats"]
        totals.update({"repositories": 1, "files_in": st["files_in"], "bytes_in": st["bytes_in"],
                       "files_after_filters": st["files_kept"]})
        per_source[e["source"]].update({"repositories": 1, "files_in": st["files_in"], "bytes_in": st["bytes_in"]})
        dropped.update(st["dropped"])
        pii.update(st["pii"])
        decontaminated += st["decontaminated"]
        for language, (files, size) in st["languages_in"].items():
            languages[language]["files_in"] += files
            languages[language]["bytes_in"] += size
        for language, reasons in st["languages_dropped"].items():
            languages[language]["dropped"] += sum(reasons.values())
        if e["key"] in dedup["dropped_repos"]:
            continue
        _, manifest = stages.load_samples(work, e["key"])
        sample_stats = manifest["stats"]
        totals.update({"files_out": sample_stats["files"], "tokens": sample_stats["tokens"],
                       "fim_psm": sample_stats["fim_psm"], "fim_spm": sample_stats["fim_spm"]})
        per_source[e["source"]].update({"files_out": sample_stats["files"], "tokens": sample_stats["tokens"]})
        for language, n in sample_stats["languages_tokens"].items():
            languages[language]["tokens"] += n
        paths_out = set(manifest["files"])
        for doc in part["documents"]:
            if doc["path"] in paths_out:
                languages[doc["language"] or ("unknown" if part["kind"] == "code" else "text")]["files_out"] += 1
    return {"totals": dict(totals), "dropped": dict(dropped.most_common()), "pii": dict(pii),
            "decontaminated": decontaminated, "languages": dict(languages), "sources": {k: dict(v) for k, v in per_source.items()}}


def build_report(pipeline, entries: list[dict], dedup: dict, summary: dict) -> dict:
    data = _collect(pipeline, entries, dedup)
    totals = data["totals"]
    seconds = sum(pipeline.timings.values())
    report = {
        "recipe": pipeline.recipe.name,
        "stages": {
            "repositories": totals.get("repositories", 0),
            "files_in": totals.get("files_in", 0),
            "bytes_in": totals.get("bytes_in", 0),
            "dropped_by_filter": data["dropped"],
            "pii_redactions": data["pii"],
            "decontaminated_files": len(data["decontaminated"]),
            "dedup": {**dedup["counts"], "clusters": dedup["clusters"]},
            "files_out": totals.get("files_out", 0),
            "fim_files": {"psm": totals.get("fim_psm", 0), "spm": totals.get("fim_spm", 0)},
            "sample_tokens": totals.get("tokens", 0),
        },
        "splits": {k: {key: v for key, v in s.items() if key != "fill"} for k, s in summary.items()},
        "languages": dict(sorted(data["languages"].items(), key=lambda kv: -kv[1]["files_in"])),
        "sources": data["sources"],
        "decontaminated": data["decontaminated"],
        "timings_s": {k: round(v, 3) for k, v in pipeline.timings.items()},
        "throughput_mb_s": round(totals.get("bytes_in", 0) / 1e6 / seconds, 3) if seconds else None,
    }
    out = pipeline.out
    write_json(out / "report.json", report)
    write_text(out / "report.md", _markdown(report))
    try:
        _plots(report, summary, out / "plots")
    except ImportError:
        pass  # matplotlib missing: the numbers are in report.json
    return report


def _markdown(r: dict) -> str:
    s = r["stages"]
    lines = [f"# Data build report: {r['recipe']}", "", "| stage | count |", "|---|---|",
             f"| repositories | {s['repositories']} |", f"| files in | {s['files_in']} ({s['bytes_in'] / 1e6:.2f} MB) |"]
    lines += [f"| dropped: {reason} | {n} |" for reason, n in s["dropped_by_filter"].items()]
    d = s["dedup"]
    lines += [f"| dedup: repositories exact / near | {d['repository_exact']} / {d['repository_near']} |",
              f"| dedup: files exact / near | {d['file_exact']} / {d['file_near']} |",
              f"| PII redactions | {', '.join(f'{k} {v}' for k, v in sorted(s['pii_redactions'].items())) or 0} |",
              f"| files out | {s['files_out']} |",
              f"| FIM files PSM / SPM | {s['fim_files']['psm']} / {s['fim_files']['spm']} |",
              f"| sample tokens | {s['sample_tokens']} |"]
    for split, meta in r["splits"].items():
        lines.append(f"| {split}: sequences x seq_len, padding | {meta['sequences']} x {meta.get('seq_len', '')}, "
                     f"{meta['padding_fraction']:.1%} |")
    lines += ["", "| language | files in | dropped | files out | tokens |", "|---|---|---|---|---|"]
    for language, v in r["languages"].items():
        lines.append(f"| {language} | {v['files_in']} | {v['dropped']} | {v['files_out']} | {v['tokens']} |")
    if r["decontaminated"]:
        lines += ["", "Removed by decontamination:", ""]
        lines += [f"- {d['repo']}/{d['path']}: {d['benchmark']} {d['task_id']} ({d['field']}, {d['how']})"
                  for d in r["decontaminated"]]
    lines += ["", f"Time per stage (s): {json.dumps(r['timings_s'])}; input throughput {r['throughput_mb_s']} MB/s", ""]
    return "\n".join(lines)


def _plots(report: dict, summary: dict, directory: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    s = report["stages"]
    d = s["dedup"]
    funnel = [("files in", s["files_in"]),
              ("after filters", s["files_in"] - sum(s["dropped_by_filter"].values())),
              ("after dedup", s["files_in"] - sum(s["dropped_by_filter"].values()) - d["file_exact"] - d["file_near"]
               - d["files_in_dropped_repositories"]),
              ("files out", s["files_out"])]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].bar([k for k, _ in funnel], [v for _, v in funnel], color="tab:blue")
    axes[0].set_title("files per stage")
    reasons = list(s["dropped_by_filter"].items()) + [("exact dup", d["file_exact"]), ("near dup", d["file_near"])]
    axes[1].barh([k for k, _ in reasons], [v for _, v in reasons], color="tab:red")
    axes[1].set_title("files dropped, by reason")
    top = sorted(report["languages"].items(), key=lambda kv: -kv[1]["tokens"])[:12]
    axes[2].barh([k for k, _ in top][::-1], [v["tokens"] for _, v in top][::-1], color="tab:green")
    axes[2].set_title("tokens by language")
    fig.tight_layout()
    _save(fig, directory / "stages.png")
    for split, meta in summary.items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(meta["fill"], bins=30, color="tab:purple")
        ax.set_xlabel("real tokens per sequence")
        ax.set_ylabel("sequences")
        ax.set_title(f"{split}: best-fit packing fill (padding {meta['padding_fraction']:.1%})")
        fig.tight_layout()
        _save(fig, directory / f"fill-{split}.png")


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
