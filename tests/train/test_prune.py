import json

import pytest
import torch

from codegemma.config import ModelConfig, preset
from codegemma.errors import CodegemmaError
from codegemma.fim import sentinel_ids
from codegemma.model import Gemma
from codegemma.train import prune, tokenizer_train
from codegemma.train.evaluate import CopyProbe


def small_model(tokenizer, n_layers: int = 3, seed: int = 0, n_kv_heads: int = 1) -> tuple[Gemma, ModelConfig]:
    config = ModelConfig.from_dict({**preset("tiny-gemma3").to_dict(), "vocab_size": tokenizer.vocab_size,
                                    "n_layers": n_layers, "layer_types": ["local", "local", "global"][:n_layers],
                                    "n_kv_heads": n_kv_heads})
    model = Gemma(config)
    model.init_weights(generator=torch.Generator().manual_seed(seed))
    return model.eval(), config


def calibration(tokenizer) -> list[torch.Tensor]:
    return [torch.tensor([tokenizer.encode("def load(path):\n    with open(path) as f:\n        return f.read()\n")])]


def test_keeping_everything_reproduces_the_model(small_tokenizer):
    model, config = small_model(small_tokenizer)
    same, same_config = prune.pruned(model, config, small_tokenizer, small_tokenizer, [0, 1, 2], config.d_ff,
                                     calibration(small_tokenizer))
    assert same_config == config
    x = torch.tensor([small_tokenizer.encode("import json\nprint(json.dumps({'a': 1}))\n")])
    with torch.no_grad():
        assert torch.equal(same.eval()(x), model(x))


def test_dead_neurons_are_the_ones_cut(small_tokenizer):
    """Half the MLP neurons of every layer never fire: pruning to the other half keeps exactly them,
    so the outputs do not change."""
    model, config = small_model(small_tokenizer)
    live = torch.arange(0, config.d_ff, 2)
    with torch.no_grad():
        for layer in model.layers:
            dead = torch.ones(config.d_ff, dtype=torch.bool)
            dead[live] = False
            layer.mlp.gate_proj.weight[dead] = 0  # gelu(0) = 0: these neurons output nothing
    importance = prune.mlp_importance(model, calibration(small_tokenizer), [0, 1, 2])
    for i in range(3):
        assert torch.equal(importance[i].topk(len(live)).indices.sort().values, live)
    small, small_config = prune.pruned(model, config, small_tokenizer, small_tokenizer, [0, 1, 2], len(live),
                                       calibration(small_tokenizer))
    assert small_config.d_ff == len(live)
    x = torch.tensor([small_tokenizer.encode("for key, value in items:\n    print(key)\n")])
    with torch.no_grad():
        assert torch.allclose(small.eval()(x), model(x), atol=1e-5)


@pytest.mark.parametrize("n_kv_heads", [1, 2])
def test_silent_heads_are_the_ones_cut(small_tokenizer, n_kv_heads):
    """Query heads 1 and 2 of 4 add nothing to the residual stream (their o_proj columns are 0):
    pruning to 2 heads keeps heads 0 and 3 (one per key/value group when there are 2), and the
    outputs do not change."""
    model, config = small_model(small_tokenizer, n_kv_heads=n_kv_heads)
    assert config.n_heads == 4
    with torch.no_grad():
        for layer in model.layers:
            layer.self_attn.o_proj.weight[:, config.head_dim:3 * config.head_dim] = 0
    importance = prune.head_importance(model, calibration(small_tokenizer), [0, 1, 2])
    for i in range(3):
        assert prune.kept_heads(importance[i], 2, n_kv_heads).tolist() == [0, 3]
    small, small_config = prune.pruned(model, config, small_tokenizer, small_tokenizer, [0, 1, 2], config.d_ff,
                                       calibration(small_tokenizer), n_heads=2)
    assert small_config.n_heads == 2 and small_config.n_kv_heads == n_kv_heads
    assert small.layers[0].self_attn.q_proj.weight.shape == (2 * config.head_dim, config.d_model)
    x = torch.tensor([small_tokenizer.encode("for key, value in items:\n    print(key)\n")])
    with torch.no_grad():
        assert torch.allclose(small.eval()(x), model(x), atol=1e-5)


@pytest.mark.parametrize("n_kv_heads, n_heads", [(1, 0), (1, 5), (2, 3)])
def test_bad_head_counts_name_the_problem(small_tokenizer, n_kv_heads, n_heads):
    model, config = small_model(small_tokenizer, n_kv_heads=n_kv_heads)
    with pytest.raises(CodegemmaError, match="heads must be"):
        prune.pruned(model, config, small_tokenizer, small_tokenizer, [0], config.d_ff, calibration(small_tokenizer),
                     n_heads=n_heads)


def test_first_layers_are_kept_in_order(small_tokenizer):
    model, config = small_model(small_tokenizer)
    small, small_config = prune.pruned(model, config, small_tokenizer, small_tokenizer, [0, 1], config.d_ff,
                                       calibration(small_tokenizer))
    assert small_config.n_layers == 2 and small_config.layer_types == config.layer_types[:2]
    for i in range(2):
        assert torch.equal(small.layers[i].self_attn.q_proj.weight, model.layers[i].self_attn.q_proj.weight)


def test_embeddings_of_a_new_vocabulary(small_tokenizer, tmp_path):
    """A piece the source vocabulary has gets its row; one it lacks gets the mean of the rows of the
    source tokens that spell it; special tokens keep their role's row."""
    from codegemma.tokenizer import Tokenizer

    texts = ["parse_arguments = parse_arguments(argv)\n" * 50, "reconfigure_everything()\n" * 50]
    target = Tokenizer.from_file(tokenizer_train.save(tokenizer_train.train(texts, 400), tmp_path / "t.json"))
    source_embed = torch.randn(small_tokenizer.vocab_size, 8, generator=torch.Generator().manual_seed(0))
    rows = prune.transfer_embeddings(source_embed, small_tokenizer, target)
    assert rows.shape == (target.vocab_size, 8)
    exact = absent = 0
    for tid in range(target.vocab_size):
        piece = target.id_to_token(tid)
        if target.is_special(tid):
            continue
        source_id = small_tokenizer.token_to_id(piece)
        if source_id is not None:
            assert torch.equal(rows[tid], source_embed[source_id])
            exact += 1
        elif not piece.startswith("<"):
            spelled = small_tokenizer.encode(target.decode([tid]))
            assert torch.allclose(rows[tid], source_embed[spelled].mean(0))
            absent += 1
    assert exact > 100 and absent > 0
    assert torch.equal(rows[target.special["bos"]], source_embed[small_tokenizer.special["bos"]])
    sentinels = rows[list(sentinel_ids(target).values())]  # nothing to carry over: distinct draws
    apart = torch.cdist(sentinels, sentinels)[~torch.eye(4, dtype=torch.bool)]
    assert apart.min() > 0.5


@pytest.mark.parametrize("layers, d_ff, message", [
    ([0, 5], 64, "layers must be"), ([1, 0], 64, "layers must be"), ([], 64, "layers must be"),
    ([0], 0, "d_ff must be"), ([0], 10**6, "d_ff must be"),
])
def test_bad_sizes_name_the_problem(small_tokenizer, layers, d_ff, message):
    model, config = small_model(small_tokenizer)
    with pytest.raises(CodegemmaError, match=message):
        prune.pruned(model, config, small_tokenizer, small_tokenizer, layers, d_ff, calibration(small_tokenizer))


def test_parse_layers():
    assert prune.parse_layers("0-5") == [0, 1, 2, 3, 4, 5]
    assert prune.parse_layers("0,2,4-5") == [0, 2, 4, 5]
    with pytest.raises(CodegemmaError, match="--layers"):
        prune.parse_layers("first six")


def test_cli_writes_a_model_the_loader_reads(small_tokenizer, small_tokenizer_path, tmp_path, shards, capsys):
    from codegemma.checkpoints import load, save_hf
    from codegemma.cli import main

    model, config = small_model(small_tokenizer)
    save_hf(model, config, small_tokenizer, tmp_path / "source")
    out = tmp_path / "small"
    args = ["train", "prune", "--source", str(tmp_path / "source"), "--tokenizer", str(small_tokenizer_path),
            "--calibration", str(shards), "--layers", "0-1", "--d-ff", "32", "--heads", "2", "--out", str(out)]
    assert main(args) == 0
    assert "2 layers, 2 heads, d_ff 32" in capsys.readouterr().out
    loaded = load(str(out), progress=False)
    assert (loaded.config.n_layers, loaded.config.n_heads, loaded.config.d_ff) == (2, 2, 32)
    hf_config = json.loads((out / "config.json").read_text())
    assert (hf_config["intermediate_size"], hf_config["num_attention_heads"]) == (32, 2)
    assert main(args) != 0  # the output exists: refused, nothing overwritten
    assert "exists" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("mine")  # a file as --out: refused before the source loads
    assert main(args[:-1] + [str(tmp_path / "notes.txt")]) == 1
    assert "notes.txt exists and is not a directory" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert load(str(out), progress=False).config.d_ff == 32


@pytest.mark.slow
@pytest.mark.real_weights
def test_the_default_models_first_layers_still_copy(default_gguf_path, small_tokenizer):
    """Gemma 3 270M's first six layers hold its previous-token and induction heads: cut down to
    ~10M parameters and moved onto a 600-token vocabulary it still predicts a repeated span from its
    first copy, which a model that size trained from scratch on a CPU does not learn (docs/experiments)."""
    import inspect
    import json as json_module

    from codegemma.checkpoints import load

    loaded = load(default_gguf_path, progress=False)
    text = inspect.getsource(json_module.decoder)
    rows = [torch.tensor([loaded.tokenizer.encode(text[:2000])[:256]])]
    small, _ = prune.pruned(loaded.model.eval(), loaded.config, loaded.tokenizer, small_tokenizer, list(range(6)),
                            256, rows)
    probe = CopyProbe(small_tokenizer, [("scanner.py", inspect.getsource(json_module.scanner))], span=96)
    fresh, _ = small_model(small_tokenizer)
    assert probe.copy_gain(small.eval(), torch.device("cpu")) > 0.5
    assert abs(probe.copy_gain(fresh, torch.device("cpu"))) < 0.1


@pytest.mark.real_weights
def test_the_tiny_cpu_recipes_declared_shape_is_what_prune_builds(default_gguf_path, small_tokenizer):
    """tiny-cpu.toml's [model] preset and overrides, which `train run` checks its start against and
    bench/train.py times before the start is built, are the model `train prune --layers 0-5 --d-ff 384`
    cuts out of the default model (on this test's vocabulary instead of the recipe's 8192 tokens)."""
    from pathlib import Path

    from codegemma.checkpoints import load
    from codegemma.train import build
    from codegemma.train import recipe as recipe_mod

    loaded = load(default_gguf_path, progress=False)
    rows = [torch.tensor([loaded.tokenizer.encode("def f(x):\n    return x + 1\n")])]
    _, config = prune.pruned(loaded.model.eval(), loaded.config, loaded.tokenizer, small_tokenizer,
                             prune.parse_layers("0-5"), 384, rows)
    recipe = recipe_mod.load(Path(__file__).resolve().parents[2] / "recipes" / "tiny-cpu.toml",
                             [f"model.overrides.vocab_size={small_tokenizer.vocab_size}"])
    declared = build.model_config(recipe, small_tokenizer)
    build.check_start_shape(recipe, config)
    assert {**config.to_dict(), "norm_eps": 1e-6} == declared.to_dict()  # GGUF holds 1e-6 as float32


@pytest.mark.parametrize("spec", ["0-", "5-3", "-", "0,,1"])
def test_parse_layers_refuses_open_and_backward_ranges(spec):
    """'0-' used to mean layer 0 alone, and '5-3' no layer at all (reported as `got []` once the
    source model had loaded)."""
    with pytest.raises(CodegemmaError, match="--layers"):
        prune.parse_layers(spec)


@pytest.mark.parametrize("layers, d_ff, heads, message", [
    ([0, 1], 0, None, "d_ff must be at least 1"), ([0], 64, 0, "heads must be at least 1"),
    ([], 64, None, "layers must be"), ([1, 0], 64, None, "layers must be"),
])
def test_sizes_are_checked_before_the_source_loads(small_tokenizer_path, shards, tmp_path, layers, d_ff, heads,
                                                   message):
    """Sizes no model can have are refused before the source (by default the 270M model, a long
    load) is read: the source here does not exist, and the error is about the size."""
    with pytest.raises(CodegemmaError, match=message):
        prune.prune_checkpoint(str(tmp_path / "no-such-model"), str(small_tokenizer_path), str(shards), layers,
                               d_ff, str(tmp_path / "out"), heads)


def test_parse_layers_checks_a_range_before_expanding_it():
    """'0-999999999999' was expanded into a list first, and exhausted the memory."""
    with pytest.raises(CodegemmaError, match="layer 999999999999 is beyond any model's layers"):
        prune.parse_layers("0-999999999999")
