"""Hugging Face safetensors directories: save, load back (ours and transformers), sharding, errors."""

from __future__ import annotations

import json

import pytest
import torch

from codegemma.checkpoints import load, save_hf
from codegemma.cli import main
from codegemma.errors import CodegemmaError

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("name", ["tiny-gemma", "tiny-gemma2", "tiny-gemma3"])
def test_saved_directory_loads_in_transformers_and_back(tmp_path, name):
    src = load(name)
    out = tmp_path / "hf"
    save_hf(src.model, src.config, None, out)
    ids = torch.randint(0, src.config.vocab_size, (1, 20))
    with torch.no_grad():
        expected = src.model(ids)
        hf = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
        assert (hf(ids).logits - expected).abs().max() <= 1e-4
        back = load(out)
        assert back.config == src.config
        assert torch.equal(back.model(ids), expected)


def test_shape_alone_reads_no_weights(tmp_path, monkeypatch):
    """`load(weights=False)`: a directory's config and tokenizer, the model on the meta device,
    no weight file opened; a preset likewise."""
    from codegemma.checkpoints import hf_dir

    src = load("tiny-gemma3")
    save_hf(src.model, src.config, None, tmp_path / "hf")
    monkeypatch.setattr(hf_dir, "iter_tensors", lambda *a: pytest.fail("read the weights"))
    for spec in (tmp_path / "hf", "tiny-gemma3"):
        shape = load(spec, weights=False)
        assert shape.config == src.config
        assert all(p.is_meta for p in shape.model.parameters())
        assert shape.model.state_dict().keys() == src.model.state_dict().keys()


def test_sharded_directory(tmp_path):
    src = load("tiny-gemma3")
    out = tmp_path / "sharded"
    save_hf(src.model, src.config, None, out, max_shard_bytes=100_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert out.stat().st_mode & 0o777 == 0o755  # not the temporary directory's owner-only mode
    assert {f.stat().st_mode & 0o777 for f in out.iterdir()} == {0o644}  # safetensors alone writes 0600
    ids = torch.randint(0, 512, (1, 12))
    with torch.no_grad():
        assert torch.equal(load(out).model(ids), src.model(ids))
        hf = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
        assert (hf(ids).logits - src.model(ids)).abs().max() <= 1e-4


def test_transformers_checkpoint_loads(tmp_path):
    """A directory written by transformers itself (its own key names and config) loads here."""
    from codegemma.checkpoints.hf_config import config_to_hf
    from codegemma.config import preset

    cfg = preset("tiny-gemma2")
    hf = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**config_to_hf(cfg))).eval()
    hf.save_pretrained(tmp_path / "t")
    ours = load(tmp_path / "t")
    ids = torch.randint(0, 512, (1, 16))
    with torch.no_grad():
        hf.config._attn_implementation = "eager"
        assert (hf(ids).logits - ours.model(ids)).abs().max() <= 1e-4


def test_convert_command_writes_a_transformers_directory(tmp_path, capsys):
    assert main(["convert", "tiny-gemma", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert main(["convert", "tiny-gemma", str(tmp_path / "out")]) == 1  # refuses to overwrite
    assert "not empty" in capsys.readouterr().err


def test_save_over_a_file_is_refused_and_the_file_kept(tmp_path):
    src = load("tiny-gemma")
    (tmp_path / "notes.txt").write_text("mine")
    for replace in (False, True):
        with pytest.raises(CodegemmaError, match="is not a directory"):
            save_hf(src.model, src.config, None, tmp_path / "notes.txt", replace=replace)
    assert (tmp_path / "notes.txt").read_text() == "mine" and len(list(tmp_path.iterdir())) == 1


def saved(tmp_path):
    src = load("tiny-gemma")
    out = tmp_path / "m"
    save_hf(src.model, src.config, None, out)
    return out


def test_missing_directory_file(tmp_path):
    out = saved(tmp_path)
    (out / "model.safetensors").unlink()
    with pytest.raises(CodegemmaError, match="no model.safetensors"):
        load(out)


def test_corrupt_safetensors(tmp_path):
    out = saved(tmp_path)
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CodegemmaError, match="truncated or corrupt"):
        load(out)


def test_unknown_architecture_in_config(tmp_path):
    out = saved(tmp_path)
    cfg = json.loads((out / "config.json").read_text())
    cfg["model_type"] = "llama"
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CodegemmaError, match="unknown architecture 'llama'"):
        load(out)


def test_missing_and_misshapen_tensors(tmp_path):
    from safetensors.torch import load_file, save_file

    out = saved(tmp_path)
    state = load_file(out / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, out / "model.safetensors")
    with pytest.raises(CodegemmaError, match="missing tensor layers.1.mlp.up_proj.weight"):
        load(out)
    state["model.layers.1.mlp.up_proj.weight"] = torch.zeros(3, 3)
    save_file(state, out / "model.safetensors")
    with pytest.raises(CodegemmaError, match=r"up_proj.weight has shape \(3, 3\)"):
        load(out)


def test_unsupported_tensor_dtype(tmp_path):
    from safetensors.torch import load_file, save_file

    out = saved(tmp_path)
    state = load_file(out / "model.safetensors")
    state["model.norm.weight"] = state["model.norm.weight"].to(torch.int32)
    save_file(state, out / "model.safetensors")
    with pytest.raises(CodegemmaError, match="norm.weight has dtype int32"):
        load(out)


@pytest.mark.parametrize("config, message", [
    ([], "config.json: expected a JSON object, got list"),
    ({"hidden_size": "abc"}, r"config.json: a setting has the wrong type \(invalid literal for int"),
])
def test_a_config_of_the_wrong_shape_is_one_error(tmp_path, config, message):
    out = saved(tmp_path)
    if isinstance(config, dict):
        config = {**json.loads((out / "config.json").read_text()), **config}
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CodegemmaError, match=message):
        load(out)


def test_a_failed_weights_write_names_the_output(tmp_path, monkeypatch):
    """safetensors' error for a full disk names no file; the staging folder goes too."""
    from safetensors import SafetensorError

    def full_disk(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: File too large (os error 27)")

    monkeypatch.setattr("codegemma.checkpoints.hf_dir.save_file", full_disk)
    src = load("tiny-gemma")
    with pytest.raises(CodegemmaError, match=r"out: cannot write the weights \(.*File too large"):
        save_hf(src.model, src.config, None, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
