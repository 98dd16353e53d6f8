import pytest

from codegemma.errors import CodegemmaError
from codegemma.train import recipe


def test_load_with_overrides(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('objective = "sft"\n[train]\nsteps = 5\n[optim]\nbetas = [0.9, 0.99]\n')
    r = recipe.load(path, ["train.steps=7", "optim.lr=1e-3", "out_dir=runs/x", "eval.infill_orders=['spm','l2r']"])
    assert (r.name, r.objective, r.train.steps, r.optim.lr, r.out_dir) == ("r", "sft", 7, 1e-3, "runs/x")
    assert r.eval.infill_orders == ["spm", "l2r"]
    assert r.optim.betas == (0.9, 0.99)


@pytest.mark.parametrize("text, message", [
    ("[train]\nstepz = 5\n", "unknown key"),
    ("objective = 'rl'\n", "objective"),
    ("[train]\nsteps = 0\n", "train.steps"),
    ("[data]\nfim_rate = 1.5\n", "fim_rate"),
    ("[eval]\ninfill_orders = ['psm', 'lr']\n", "infill_orders .*'lr'"),
    ("[train\n", "invalid TOML"),
    ("[optim]\nlr = -1e-3\n", "optim.lr must be positive"),
    ("[optim]\nbetas = [0.9, 1.5]\n", "optim.betas must be two numbers in"),
    ("[optim]\nmin_lr_ratio = 2\n", "optim.min_lr_ratio must be in"),
    ("[log]\nevery = 0\n", "log.every must be at least 1"),
    ("[eval]\nbatches = 0\n", "eval.batches"),
    ("[lora]\ndropout = 1.0\n", "lora.dropout"),
    ("[dpo]\nbeta = 0\n", "dpo.beta must be positive"),
])
def test_bad_recipes_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(CodegemmaError, match=message):
        recipe.load(path)


def test_missing_recipe():
    with pytest.raises(CodegemmaError, match="not found"):
        recipe.load("does/not/exist.toml")


def test_shipped_recipes_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "recipes"
    names = sorted(p.name for p in root.glob("*.toml"))
    assert {"tiny-cpu.toml", "codegemma-2b.toml", "codegemma-7b.toml", "continue-gemma.toml"} <= set(names)
    for path in root.glob("*.toml"):
        recipe.load(path)


def test_missing_inputs_skip_presets_and_the_default_model(tmp_path):
    r = recipe.Recipe()
    for start in ("gemma3-270m", "default", None):
        r.model.init = start
        assert recipe.missing_inputs(r) == []
    r.tokenizer = "default"  # the default model's tokenizer
    assert recipe.missing_inputs(r) == []
    r.model.init = str(tmp_path / "start")
    r.data.train = str(tmp_path)
    r.eval.infill_files = str(tmp_path / "heldout")
    assert recipe.missing_inputs(r) == [f"model.init {tmp_path / 'start'}", f"eval.infill_files {tmp_path / 'heldout'}"]
