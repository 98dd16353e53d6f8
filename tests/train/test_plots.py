import json

import matplotlib.image as mpimg
import pytest

from codegemma.errors import CodegemmaError
from codegemma.train.plots import plot_run


def _write(path, evals):
    rows = [{"step": s, "kind": "train", "loss": 5.0 - s / 10, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 100.0}
            for s in range(1, 11)]
    rows += [{"step": 10, "kind": "eval", **e} for e in evals]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_run_that_scored_infilling_gets_its_context_and_exact_match_panels(tmp_path):
    plain = plot_run(_write(tmp_path / "plain.jsonl", [{"loss": 4.5}]), tmp_path / "plain.png")
    infill = plot_run(_write(tmp_path / "infill.jsonl", [{"loss": 4.5, "fim_middle_loss": 4.0, "copy_gain": 0.1,
                                                          "fim_suffix_gain": 0.05, "infill_exact_match": 0.02}]),
                      tmp_path / "infill.png")
    plain_width, infill_width = mpimg.imread(plain).shape[1], mpimg.imread(infill).shape[1]
    assert infill_width > 1.4 * plain_width  # three columns of panels instead of two
    assert not list(tmp_path.glob(".*.tmp.png"))


def test_an_out_that_is_a_directory_is_one_error_and_leaves_no_temporary(tmp_path):
    (tmp_path / "plots").mkdir()
    with pytest.raises(CodegemmaError, match="is a directory: name a .png file"):
        plot_run(_write(tmp_path / "m.jsonl", [{"loss": 4.5}]), tmp_path / "plots")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl", "plots"]


@pytest.mark.parametrize("name, magic", [("curves.svg", b"<?xml"), ("curves.pdf", b"%PDF"), ("curves.PNG", b"\x89PNG"),
                                         ("curves", b"\x89PNG")])
def test_the_file_has_the_format_its_name_says(tmp_path, name, magic):
    """The figure went to a temporary .png name, so `--out curves.pdf` wrote a PNG called curves.pdf."""
    out = plot_run(_write(tmp_path / "m.jsonl", [{"loss": 4.5}]), tmp_path / name)
    assert out.read_bytes().startswith(magic)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.jsonl", name])  # no temporary left
