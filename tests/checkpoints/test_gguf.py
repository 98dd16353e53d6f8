"""GGUF loading: every dequantizable tensor type, and a clear error for each kind of bad file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from codegemma.checkpoints import load
from codegemma.errors import CodegemmaError
from codegemma.model import Gemma

from .gguf_fixtures import CONFIG, write_gguf

TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K,
         Q.IQ4_NL, Q.IQ4_XS]
QUANTIZED = ["layers.0.self_attn.q_proj.weight", "layers.0.mlp.gate_proj.weight", "layers.1.mlp.down_proj.weight",
             "embed_tokens.weight"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CODEGEMMA_CACHE", str(tmp_path / "cache"))


def random_state(seed=0):
    torch.manual_seed(seed)
    model = Gemma(CONFIG)
    model.init_weights()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
    return model.state_dict()


@pytest.mark.parametrize("kind", TYPES, ids=lambda k: k.name)
def test_every_tensor_type_loads_to_its_dequantized_values(tmp_path, kind):
    state = random_state()
    path = tmp_path / "m.gguf"
    expected = write_gguf(path, state, types={name: kind for name in QUANTIZED})
    loaded = load(path)
    got = dict(loaded.model.state_dict())
    for name, value in expected.items():
        assert torch.equal(got[name], torch.from_numpy(np.asarray(value, dtype=np.float32)).reshape(got[name].shape)), name
    # the loaded model computes exactly what a model built from those arrays computes
    reference = Gemma(CONFIG).eval()
    reference.load_state_dict({k: torch.from_numpy(np.asarray(v, dtype=np.float32)).reshape(state[k].shape)
                               for k, v in expected.items()})
    ids = torch.tensor([[2, 270, 280, 290, 5, 6, 7, 8, 9, 10, 11, 12]])
    with torch.no_grad():
        got_logits, want = loaded.model(ids), reference(ids)
    # block-quantized types run through the block kernel (the same weights, summed in another
    # order): float32 rounding relative to the largest logit (these random weights give ~1e5)
    assert (got_logits - want).abs().max() <= 1e-6 * want.abs().max() + 1e-5
    # a second load comes from the converted cache and is identical
    again = load(path)
    assert all(torch.equal(again.model.state_dict()[k], v) for k, v in got.items())


def test_gguf_tokenizer_and_config(tmp_path):
    path = tmp_path / "m.gguf"
    write_gguf(path, random_state())
    loaded = load(path)
    assert loaded.config.family == "gemma3" and loaded.config.layer_types == CONFIG.layer_types
    assert loaded.config.sliding_window == 8 and loaded.config.query_pre_attn_scalar == 64
    tok = loaded.tokenizer
    assert tok.special["bos"] == 2 and tok.special["eos"] == 1
    ids = tok.encode("def self return é")
    assert tok.decode(ids) == "def self return é"


def test_shape_alone_reads_no_weights(tmp_path, monkeypatch):
    """`load(weights=False)`, for the processes of a distributed run that get their weights sent:
    the config and tokenizer of a full load, the model on the meta device, nothing dequantized,
    from the file and from its converted cache alike."""
    from codegemma.checkpoints import gguf_file

    path = tmp_path / "m.gguf"
    write_gguf(path, random_state())
    real_dequantize = gguf_file.dequantize
    monkeypatch.setattr(gguf_file, "dequantize", lambda *a: pytest.fail("dequantized a tensor"))
    shape = load(path, weights=False)
    monkeypatch.setattr(gguf_file, "dequantize", real_dequantize)
    full = load(path)  # also writes the converted cache
    cached = load(path, weights=False)
    for got in (shape, cached):
        assert got.config == full.config
        assert all(p.is_meta for p in got.model.parameters())
        assert got.tokenizer.backend.to_str() == full.tokenizer.backend.to_str()
        assert got.tokenizer.add_bos_default == full.tokenizer.add_bos_default
        assert got.model.state_dict().keys() == full.model.state_dict().keys()


def test_missing_file():
    with pytest.raises(CodegemmaError, match="not found"):
        load("no/such/model.gguf")


def test_truncated_file(tmp_path):
    path = tmp_path / "m.gguf"
    write_gguf(path, random_state())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CodegemmaError, match="truncated or corrupt"):
        load(path)


def test_corrupt_file(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    with pytest.raises(CodegemmaError, match="truncated or corrupt|metadata"):
        load(path)


def test_unknown_architecture(tmp_path):
    path = tmp_path / "m.gguf"
    write_gguf(path, random_state(), arch="llama")
    with pytest.raises(CodegemmaError, match="unknown architecture 'llama'"):
        load(path)


def test_missing_tensor(tmp_path):
    path = tmp_path / "m.gguf"
    write_gguf(path, random_state(), skip={"layers.1.mlp.up_proj.weight"})
    with pytest.raises(CodegemmaError, match="missing tensor layers.1.mlp.up_proj.weight"):
        load(path)


def test_wrong_shape(tmp_path):
    path = tmp_path / "m.gguf"
    write_gguf(path, random_state(), reshape={"layers.0.self_attn.k_proj.weight": (32, 512)})
    with pytest.raises(CodegemmaError, match=r"layers.0.self_attn.k_proj.weight has shape \(32, 512\)"):
        load(path)


def test_unsupported_tensor_type(tmp_path, monkeypatch):
    from codegemma.checkpoints import gguf_file

    path = tmp_path / "m.gguf"
    write_gguf(path, random_state(), types={"layers.0.mlp.up_proj.weight": Q.Q8_0})

    def refuse(data, kind):  # as the gguf package does for a type it has no dequantizer for
        raise NotImplementedError(kind)

    monkeypatch.setattr("gguf.quants.dequantize", refuse)
    with pytest.raises(CodegemmaError, match="has type Q8_0, which cannot be dequantized"):
        load(path)
    assert gguf_file  # the loader module is what reports it


def test_the_cache_drops_the_conversions_of_files_that_are_gone_or_changed(tmp_path):
    """Each GGUF file gets a converted entry; without a sweep the cache kept every file ever loaded
    (a run's exports in temporary directories, each a full float32 copy). Writing a new entry drops
    those whose file is gone or has changed since, and keeps the others."""
    converted = tmp_path / "cache" / "converted"
    kept, deleted, changed = (tmp_path / f"{name}.gguf" for name in ("kept", "deleted", "changed"))
    for i, path in enumerate((kept, deleted, changed)):
        write_gguf(path, random_state(seed=i))
        load(path)
    entries = {p.name.rsplit("-", 1)[0]: p for p in converted.iterdir()}
    assert sorted(entries) == ["changed", "deleted", "kept"]
    (converted / ".half-written.123").mkdir()  # another process's entry in the making
    deleted.unlink()
    write_gguf(changed, random_state(seed=7))  # rewritten in place: another size or time
    load(changed)  # a new entry for the new contents
    names = sorted(p.name for p in converted.iterdir())
    assert entries["kept"].name in names and entries["deleted"].name not in names
    assert entries["changed"].name not in names and len([n for n in names if n.startswith("changed-")]) == 1
    assert ".half-written.123" in names
