import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from codegemma.cli import build_parser
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
    ("[eval]\ninfill_orders = ['PSM']\n", r"infill_orders must list some of 'psm', 'spm', 'l2r', not \['PSM'\]"),
    ("[eval]\ninfill_orders = ['psm', 'spm', 'psm']\n", r"eval.infill_orders lists \['psm'\] more than once"),
    ("[eval]\ninfill_files = 'heldout'\ninfill_orders = []\n",
     "eval.infill_orders is empty while eval.infill_files is set"),
    ("[train\n", "invalid TOML"),
    ("[optim]\nlr = -1e-3\n", "optim.lr must be positive"),
    ("[optim]\nbetas = [0.9, 1.5]\n", "optim.betas must be two numbers in"),
    ("[optim]\nmin_lr_ratio = 2\n", "optim.min_lr_ratio must be in"),
    ("[log]\nevery = 0\n", "log.every must be at least 1"),
    ("[eval]\nbatches = 0\n", "eval.batches"),
    ("[lora]\ndropout = 1.0\n", "lora.dropout"),
    ("[dpo]\nbeta = 0\n", "dpo.beta must be positive"),
    ("[data]\npsm_first_token_weight = -1\n", "data.psm_first_token_weight must be 0 or more"),
    ("[data]\npsm_prefix_distill_weight = -0.5\n", "data.psm_prefix_distill_weight must be 0 or more"),
    ("[data]\npsm_prefix_distill_tokens = 0\n", "data.psm_prefix_distill_tokens must be at least 1"),
    ("[data]\npsm_prefix_distill_tokens = 1.5\n", "psm_prefix_distill_tokens must be int"),
    ("[optim]\nbetas = ['a', 'b']\n", r"\[optim\]: betas\[0\] must be float, got 'a'"),
    ("[model]\nfreeze = [1]\n", r"freeze\[0\] must be str, got 1"),
    ("[eval]\ninfill_orders = [['psm']]\n", r"infill_orders\[0\] must be str"),
    ("[optim]\nlr = inf\n", "lr must be a finite number, got inf"),
    ("[optim]\nbetas = [0.9, nan]\n", r"betas\[1\] must be a finite number"),
    ("seed = -1\n", r"seed must be in \[0, 2\*\*32\)"),
    ("[train]\ndevice = 'gpu'\n", "train.device must be auto, cpu, cuda or cuda:N .* not 'gpu'"),
    # with init set, the preset still gives tools the shape: a typo there was silently ignored
    ("[model]\npreset = 'gemma3-207m'\ninit = 'start.gguf'\n", "model.preset 'gemma3-207m' is not one of"),
])
def test_bad_recipes_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(CodegemmaError, match=message):
        recipe.load(path)


def test_no_infill_orders_without_infill_files_is_accepted(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text("[eval]\ninfill_orders = []\n")  # nothing to infill: no order needed
    assert recipe.load(path).eval.infill_orders == []


def test_missing_recipe():
    with pytest.raises(CodegemmaError, match="not found"):
        recipe.load("does/not/exist.toml")


def test_shipped_recipes_load():
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


def test_a_recipe_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "r.toml"
    path.write_bytes(b"\xff\xfe[train]\n")
    with pytest.raises(CodegemmaError, match="r.toml: not a UTF-8 text file"):
        recipe.load(path)


def test_list_items_of_a_number_field_become_floats(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("[optim]\nbetas = [0, 0.95]\n[train]\ndevice = 'cuda:1'\n")
    r = recipe.load(path)
    assert r.optim.betas == (0.0, 0.95) and isinstance(r.optim.betas[0], float) and r.train.device == "cuda:1"


@pytest.mark.parametrize("size, fim_rate, shape", [
    ("2b", 0.9, dict(d_model=2048, n_layers=18, n_heads=8, n_kv_heads=1, head_dim=256, d_ff=16384)),
    ("7b", 0.8, dict(d_model=3072, n_layers=28, n_heads=16, n_kv_heads=16, head_dim=256, d_ff=24576)),
])
def test_codegemma_recipes_match_the_paper_and_their_data(size, fim_rate, shape):
    """The Gemma 1 shape (google/gemma-2b, -7b configs), checked against the start when it loads;
    FIM 0.9 (2B v1.1) / 0.8 (7B), PSM/SPM 50/50, 8192 tokens; and every data path where the data
    recipe's pipeline writes it."""
    from codegemma import toml_compat as tomllib
    from codegemma.train.build import model_config

    root = Path(__file__).resolve().parents[2] / "recipes"
    r = recipe.load(root / f"codegemma-{size}.toml")
    data = tomllib.loads((root / "data" / f"codegemma-{size}.toml").read_text())
    config = model_config(r, None)
    assert {k: getattr(config, k) for k in shape} == shape
    assert (config.vocab_size, config.max_seq_len, config.family) == (256000, 8192, "gemma")
    assert {k: r.model.overrides[k] for k in shape} == shape  # declared, so `train run` checks the start
    assert (r.data.fim_rate, r.data.spm_rate, r.data.seq_len) == (fim_rate, 0.5, 8192)
    assert (data["fim"]["rate"], data["fim"]["spm_rate"], data["seq_len"]) == (fim_rate, 0.5, 8192)
    out = data["out_dir"]
    assert (r.data.train, r.data.eval, r.eval.infill_files) == (f"{out}/train", f"{out}/eval", f"{out}/heldout")


def test_tiny_cpu_script_builds_what_the_recipe_reads_with_valid_commands(tmp_path):
    """recipes/tiny-cpu.sh, run in an empty directory with `codegemma` and `torchrun` replaced by
    stubs that record their arguments: every command parses with the real CLI, the paths it builds
    are the recipe's inputs, and the training command's overrides load."""
    root = Path(__file__).resolve().parents[2]
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    for name in ("codegemma", "torchrun"):
        stub = bin_dir / name
        stub.write_text(f"#!{sys.executable}\nimport json, sys\n"
                        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
        stub.chmod(0o755)
    work = tmp_path / "work"
    (work / "recipes").mkdir(parents=True)
    (work / "recipes" / "tiny-cpu.toml").write_text((root / "recipes" / "tiny-cpu.toml").read_text())
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", str(root / "recipes" / "tiny-cpu.sh"), "--set", "train.steps=3"], cwd=work, env=env,
                   check=True)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c[:2] for c in calls[:4]] == [["data", "demo-corpus"], ["train", "tokenizer"], ["train", "demo-data"],
                                          ["train", "prune"]]
    parser = build_parser()
    corpus, tokenizer, shards, prune = (parser.parse_args(argv) for argv in calls[:4])  # unknown flags exit
    norm = os.path.normpath
    shards_dir = norm(shards.out or os.path.join(shards.root, "shards"))
    assert [norm(p) for p in tokenizer.corpus] == [norm(corpus.out)]
    assert norm(prune.tokenizer) == norm(tokenizer.out) and norm(prune.calibration).startswith(shards_dir)
    launch = calls[4]
    assert launch[:4] == ["--nproc_per_node", "2", "-m", "codegemma"], shlex.join(launch)
    args = parser.parse_args(launch[4:])
    r = recipe.load(work / args.recipe, args.overrides)
    assert (r.train.batch_size, r.train.steps) == (4, 3)  # two processes of 4: the global batch of 8
    assert (norm(r.model.init), norm(r.tokenizer)) == (norm(prune.out), norm(tokenizer.out))
    for path in (r.data.train, r.data.eval, r.eval.infill_files):
        assert norm(path).startswith(shards_dir + os.sep), path
