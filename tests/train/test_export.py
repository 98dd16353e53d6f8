"""GGUF and HF export read back by the project's loaders and by transformers."""

import sysconfig
from pathlib import Path

import pytest
import torch

from codegemma.checkpoints import load
from codegemma.config import ModelConfig, preset
from codegemma.errors import CodegemmaError
from codegemma.model import Gemma
from codegemma.tokenizer import Tokenizer
from codegemma.train import tokenizer_train
from codegemma.train.export import export, write_gguf


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text(encoding="utf-8") for p in sorted((stdlib / "json").glob("*.py"))]
    path = tokenizer_train.save(tokenizer_train.train(texts, 600), tmp_path_factory.mktemp("tok") / "tokenizer.json")
    return Tokenizer.from_hf_dir(path.parent)


def random_model(name: str, vocab: int, **changes) -> tuple[Gemma, ModelConfig]:
    cfg = ModelConfig.from_dict({**preset(name).to_dict(), "vocab_size": vocab, **changes})
    torch.manual_seed(0)
    model = Gemma(cfg)
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(std=0.1)  # non-zero norms, so the (1 + w) convention is exercised
    return model.eval(), cfg


@pytest.mark.parametrize("name, changes", [
    ("tiny-gemma", {}),
    ("tiny-gemma", {"rope_scaling": 4.0}),  # the reader once kept a scaling for Gemma 3 only
    ("tiny-gemma2", {"query_pre_attn_scalar": None}),
    ("tiny-gemma3", {"query_pre_attn_scalar": None}),
    ("tiny-gemma3", {"query_pre_attn_scalar": None, "rope_scaling": 8.0}),
])
@pytest.mark.parametrize("dtype, tol", [("f32", 0.0), ("f16", 5e-3)])
def test_gguf_round_trip_through_the_project_loader(tmp_path, tokenizer, name, changes, dtype, tol):
    model, cfg = random_model(name, tokenizer.vocab_size, **changes)
    path = write_gguf(model.state_dict(), cfg, tokenizer, tmp_path / "m.gguf", dtype)
    loaded = load(str(path), progress=False)
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    with torch.no_grad():
        assert (loaded.model(x) - model(x)).abs().max().item() <= tol
    text = "for i in range(10):\n    print(i ** 2)\n"
    assert loaded.tokenizer.encode(text) == tokenizer.encode(text)
    assert loaded.config.family == cfg.family and loaded.config.layer_types == cfg.layer_types


def rounded_model(model: Gemma, cfg: ModelConfig, kind) -> Gemma:
    """`model` with every matrix rounded to GGML type `kind` and back, by the `gguf` package."""
    from gguf import quants

    rounded = Gemma(cfg).eval()
    rounded.load_state_dict({k: torch.from_numpy(quants.dequantize(quants.quantize(v.numpy(), kind), kind).copy())
                             if v.dim() > 1 else v for k, v in model.state_dict().items()})
    return rounded


@pytest.mark.parametrize("name, changes", [("tiny-gemma", {}), ("tiny-gemma3", {"query_pre_attn_scalar": None})])
@pytest.mark.parametrize("dtype", ["bf16", "q8_0"])
def test_gguf_bf16_and_q8_0_hold_the_rounded_weights(tmp_path, tokenizer, name, changes, dtype):
    """A BF16 or Q8_0 export stores each matrix in that type and every norm in F32, and reads back
    as exactly the model whose matrices `gguf` rounded to it: nothing else is lost. Q8_0 takes a
    little over half the bytes of BF16."""
    import gguf

    kind = gguf.GGMLQuantizationType[dtype.upper()]
    model, cfg = random_model(name, tokenizer.vocab_size, **changes)
    path = write_gguf(model.state_dict(), cfg, tokenizer, tmp_path / "m.gguf", dtype)
    reader = gguf.GGUFReader(path)
    types = {t.name: gguf.GGMLQuantizationType(t.tensor_type) for t in reader.tensors}
    assert {k for n, k in types.items() if "norm" in n} == {gguf.GGMLQuantizationType.F32}
    assert {k for n, k in types.items() if "norm" not in n} == {kind}
    field = reader.fields["general.file_type"]
    assert int(field.parts[field.data[0]][0]) == {"bf16": gguf.LlamaFileType.MOSTLY_BF16,
                                                  "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    with torch.no_grad():
        ours = load(str(path), progress=False).model(x)
        assert (ours - rounded_model(model, cfg, kind)(x)).abs().max().item() <= 1e-5
        assert 0 < (ours - model(x)).abs().max().item() < 0.1
    if dtype == "q8_0":
        bf16_size = write_gguf(model.state_dict(), cfg, tokenizer, tmp_path / "b.gguf", "bf16").stat().st_size
        assert path.stat().st_size < 0.65 * bf16_size


def test_q8_0_keeps_rows_that_are_no_whole_number_of_blocks_in_f16_and_names_an_overflow(tmp_path, tokenizer):
    import numpy as np

    from codegemma.train.export import _encoded

    data, kind = _encoded("w", np.ones((4, 48), dtype=np.float32), "q8_0")
    assert kind is None and data.dtype == np.float16
    data, kind = _encoded("w", np.ones((4, 64), dtype=np.float32), "q8_0")
    assert kind is not None and data.dtype == np.uint8
    big = np.full((4, 64), 1e10, dtype=np.float32)
    assert _encoded("w", big, "bf16")[1] is not None  # float32's range
    model, cfg = random_model("tiny-gemma", tokenizer.vocab_size)
    state = model.state_dict()
    state["layers.0.mlp.up_proj.weight"] = state["layers.0.mlp.up_proj.weight"] * 1e10
    with pytest.raises(CodegemmaError, match=r"layers.0.mlp.up_proj.weight has values beyond Q8_0's float16 block "
                                             r"scales \(largest [0-9.]+e\+\d+\): export with --dtype f32 or bf16"):
        write_gguf(state, cfg, tokenizer, tmp_path / "m.gguf", "q8_0")
    with pytest.raises(CodegemmaError, match=r"up_proj.weight has values beyond float16's range .*--dtype f32 or bf16"):
        write_gguf(state, cfg, tokenizer, tmp_path / "m.gguf", "f16")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(CodegemmaError, match="dtype must be one of f32, f16, bf16, q8_0, not 'q4_k'"):
        write_gguf(state, cfg, tokenizer, tmp_path / "m.gguf", "q4_k")


@pytest.mark.parametrize("dtype", ["f32", "bf16", "q8_0"])
def test_gguf_gemma3_read_by_transformers(tmp_path, tokenizer, dtype):
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers assumes query_pre_attn_scalar = 256 for GGUF files, as in every released Gemma 3
    model, cfg = random_model("tiny-gemma3", tokenizer.vocab_size, head_dim=256, query_pre_attn_scalar=None)
    write_gguf(model.state_dict(), cfg, tokenizer, tmp_path / "g3.gguf", dtype)
    if dtype != "f32":  # transformers reads the rounded matrices back as float32
        model = rounded_model(model, cfg, gguf.GGMLQuantizationType[dtype.upper()])
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="g3.gguf", torch_dtype=torch.float32)
    x = torch.randint(0, cfg.vocab_size, (1, 20))
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, model(x), atol=1e-4)
    hf_tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file="g3.gguf")
    text = "x = [1, 2, 3]\n"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text)


def test_gguf_declares_no_space_prefix(tmp_path, tokenizer):
    """Gemma's SentencePiece adds no dummy prefix; without this key llama.cpp's tokenizer adds one,
    and every prompt starting a line would begin with a space token the model never saw."""
    import gguf

    model, cfg = random_model("tiny-gemma", tokenizer.vocab_size)
    path = write_gguf(model.state_dict(), cfg, tokenizer, tmp_path / "m.gguf", "f32")
    field = gguf.GGUFReader(path).fields["tokenizer.ggml.add_space_prefix"]
    assert bool(field.parts[field.data[0]][0]) is False


@pytest.mark.parametrize("name, changes", [
    ("tiny-gemma", {}),
    ("tiny-gemma2", {"query_pre_attn_scalar": None}),
    ("tiny-gemma3", {"query_pre_attn_scalar": None}),
])
def test_gguf_read_by_llama_cpp(tmp_path, tokenizer, name, changes):
    """llama.cpp tokenizes as we do and computes the same logits, past the tiny sliding window of
    Gemma 2 and 3 too (skipped where llama-cpp-python is not installed; docs/inference.md has its build)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    model, cfg = random_model(name, tokenizer.vocab_size, **changes)
    path = write_gguf(model.state_dict(), cfg, tokenizer, tmp_path / "m.gguf", "f32")
    _check_llama_cpp_logits(llama_cpp, path, tokenizer, model, 1e-3)


@pytest.mark.parametrize("dtype", ["bf16", "q8_0"])
def test_gguf_bf16_and_q8_0_read_by_llama_cpp(tmp_path, tokenizer, dtype):
    """llama.cpp reads the rounded matrices as we do. Its BF16 and Q8_0 products also round the
    activations (to bf16, or to 8-bit blocks), so its logits sit near, not on, the rounded model's:
    within 0.05 here, where a misread tensor would be off by the logits' whole scale."""
    import gguf

    llama_cpp = pytest.importorskip("llama_cpp")
    kind = gguf.GGMLQuantizationType[dtype.upper()]
    model, cfg = random_model("tiny-gemma3", tokenizer.vocab_size, query_pre_attn_scalar=None)
    path = write_gguf(model.state_dict(), cfg, tokenizer, tmp_path / "m.gguf", dtype)
    _check_llama_cpp_logits(llama_cpp, path, tokenizer, rounded_model(model, cfg, kind), 0.05)


def _check_llama_cpp_logits(llama_cpp, path, tokenizer, model, tol):
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=1)
    text = "import json\n\n\ndef load(path):\n    return json.loads(path.read_text())\n" * 2
    ids = tokenizer.encode(text, add_bos=True)
    assert llm.tokenize(text.encode(), add_bos=True, special=False) == ids
    llm.eval(ids)
    theirs = torch.tensor(llm.scores[:len(ids)])
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0]
    assert (theirs - ours).abs().max().item() <= tol


def test_hf_directory_tokenizer_adds_bos_in_transformers_as_here(tmp_path, tokenizer):
    from transformers import AutoTokenizer

    from codegemma.checkpoints import save_hf

    model, cfg = random_model("tiny-gemma", tokenizer.vocab_size)
    save_hf(model, cfg, tokenizer, tmp_path / "hf")
    text = "    <|fim_prefix|>import json\n<|fim_suffix|>\n<|fim_middle|>"
    expected = tokenizer.encode(text, add_bos=True)
    assert expected[0] == tokenizer.bos_id
    assert AutoTokenizer.from_pretrained(tmp_path / "hf")(text)["input_ids"] == expected
    assert load(str(tmp_path / "hf")).tokenizer.encode(text, add_bos=True) == expected  # one <bos>, not two


def test_unrepresentable_config_is_refused(tmp_path, tokenizer):
    model, cfg = random_model("tiny-gemma2", tokenizer.vocab_size)  # query scalar 48 != head_dim 32
    with pytest.raises(CodegemmaError, match="query_pre_attn_scalar"):
        write_gguf(model.state_dict(), cfg, tokenizer, tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_gguf_onto_a_directory_is_refused_before_writing(tmp_path, tokenizer):
    model, cfg = random_model("tiny-gemma", tokenizer.vocab_size)
    (tmp_path / "models").mkdir()
    with pytest.raises(CodegemmaError, match="is a directory: name a .gguf file"):
        write_gguf(model.state_dict(), cfg, tokenizer, tmp_path / "models")
    assert [p.name for p in tmp_path.iterdir()] == ["models"] and not any((tmp_path / "models").iterdir())


def test_export_from_a_training_run(tmp_path, tokenizer):
    """A run's checkpoint exports to HF safetensors that transformers loads with the same logits."""
    from transformers import AutoModelForCausalLM

    from codegemma.train import checkpoint

    model, cfg = random_model("tiny-gemma", tokenizer.vocab_size)
    tokenizer.save(tmp_path / "tokenizer.json")
    checkpoint.save(tmp_path / "run" / "checkpoints", 5, {
        "step": 5, "model": model.state_dict(), "model_config": cfg.to_dict(),
        "recipe": {"tokenizer": str(tmp_path / "tokenizer.json"), "lora": {}, "model": {}}})
    out = export(tmp_path / "run", tmp_path / "hf", fmt="hf")
    hf = AutoModelForCausalLM.from_pretrained(out)
    x = torch.randint(0, cfg.vocab_size, (1, 12))
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, model(x), atol=1e-4)
    gguf_path = export(tmp_path / "run", tmp_path / "m.gguf", fmt="gguf", dtype="f32")
    with torch.no_grad():
        assert torch.equal(load(str(gguf_path), progress=False).model(x), model(x))


def test_hf_export_in_bf16_and_a_gguf_type_refused_for_it(tmp_path, tokenizer):
    """`--dtype bf16` writes bf16 safetensors that transformers loads as the model rounded to bf16;
    q8_0, a GGUF type, is refused for a HF directory before anything loads."""
    import json

    from transformers import AutoModelForCausalLM

    from codegemma.train import checkpoint

    model, cfg = random_model("tiny-gemma", tokenizer.vocab_size)
    tokenizer.save(tmp_path / "tokenizer.json")
    checkpoint.save(tmp_path / "run" / "checkpoints", 5, {
        "step": 5, "model": model.state_dict(), "model_config": cfg.to_dict(),
        "recipe": {"tokenizer": str(tmp_path / "tokenizer.json"), "lora": {}, "model": {}}})
    out = export(tmp_path / "run", tmp_path / "hf", fmt="hf", dtype="bf16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    rounded = Gemma(cfg).eval()
    rounded.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in model.state_dict().items()})
    hf = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    x = torch.randint(0, cfg.vocab_size, (1, 12))
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, rounded(x), atol=1e-4)
    with pytest.raises(CodegemmaError, match="q8_0 is a GGUF type; HF safetensors take f32, f16, bf16"):
        export(tmp_path / "nosuch", tmp_path / "hf2", fmt="hf", dtype="q8_0")
    assert not (tmp_path / "hf2").exists()


def test_hf_export_replaces_a_model_directory_but_never_deletes_other_files(tmp_path, tokenizer):
    """Exporting again over an exported model replaces it; `--out` naming a directory that holds
    anything else (here the run itself, its checkpoints included) is refused and the directory kept."""
    from codegemma.train import checkpoint

    model, cfg = random_model("tiny-gemma", tokenizer.vocab_size)
    tokenizer.save(tmp_path / "tokenizer.json")
    checkpoint.save(tmp_path / "run" / "checkpoints", 5, {
        "step": 5, "model": model.state_dict(), "model_config": cfg.to_dict(),
        "recipe": {"tokenizer": str(tmp_path / "tokenizer.json"), "lora": {}, "model": {}}})
    export(tmp_path / "run", tmp_path / "hf", fmt="hf")
    (tmp_path / "hf" / "config.json").write_text("{}")  # an older export, now replaced as a whole
    x = torch.randint(0, cfg.vocab_size, (1, 12))
    with torch.no_grad():
        assert torch.equal(load(str(export(tmp_path / "run", tmp_path / "hf", fmt="hf"))).model(x), model(x))
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*"))
    with pytest.raises(CodegemmaError, match="is not a model directory"):
        export(tmp_path / "run", tmp_path / "run", fmt="hf")
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run", "tokenizer.json"]  # no temporary left


def test_a_continued_pretraining_run_exports_its_fim_sentinels(tmp_path, tokenizer):
    """A run that trained four unused tokens as the FIM sentinels (`model.fim_sentinels_from`) exports
    them under the sentinels' names, so the completion engine sees a FIM model (the codegemma profile),
    where the exported vocabulary kept the unused names and the model got prefix-only prompts."""
    from codegemma.fim import CODEGEMMA_SENTINELS
    from codegemma.profiles import resolve_profile
    from codegemma.tokenizer import rename_tokens
    from codegemma.train import checkpoint

    spare = [f"<spare{i}>" for i in range(4)]
    plain = rename_tokens(tokenizer, dict(zip(CODEGEMMA_SENTINELS.all(), spare)))  # a vocabulary without FIM
    plain.save(tmp_path / "tokenizer.json")
    model, cfg = random_model("tiny-gemma3", tokenizer.vocab_size, query_pre_attn_scalar=None)
    checkpoint.save(tmp_path / "run" / "checkpoints", 5, {
        "step": 5, "model": model.state_dict(), "model_config": cfg.to_dict(),
        "recipe": {"tokenizer": str(tmp_path / "tokenizer.json"), "lora": {}, "model": {"fim_sentinels_from": spare}}})
    exported = load(str(export(tmp_path / "run", tmp_path / "m.gguf", fmt="gguf", dtype="f32")), progress=False)
    assert [exported.tokenizer.token_to_id(s) for s in CODEGEMMA_SENTINELS.all()] == [
        plain.token_to_id(u) for u in spare]
    assert resolve_profile(exported.tokenizer, family="gemma3").name == "codegemma"


def test_export_names_a_runs_tokenizer_it_cannot_find(tmp_path, tokenizer, monkeypatch):
    """A recipe's relative tokenizer path is resolved where the run started: exporting from another
    directory says so and how to go on, and writes nothing."""
    from codegemma.train import checkpoint

    model, cfg = random_model("tiny-gemma", tokenizer.vocab_size)
    (tmp_path / "project" / "tok").mkdir(parents=True)
    tokenizer.save(tmp_path / "project" / "tok" / "tokenizer.json")
    checkpoint.save(tmp_path / "project" / "run" / "checkpoints", 5, {
        "step": 5, "model": model.state_dict(), "model_config": cfg.to_dict(),
        "recipe": {"tokenizer": "tok/tokenizer.json", "lora": {}, "model": {}}})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CodegemmaError, match="tok/tokenizer.json is not found from here.*--tokenizer"):
        export(tmp_path / "project" / "run", tmp_path / "m.gguf", fmt="gguf")
    assert not (tmp_path / "m.gguf").exists()
    out = export(tmp_path / "project" / "run", tmp_path / "m.gguf", fmt="gguf",
                 tokenizer_spec=str(tmp_path / "project" / "tok" / "tokenizer.json"))
    assert load(str(out), progress=False).tokenizer.vocab_size == tokenizer.vocab_size
    monkeypatch.chdir(tmp_path / "project")
    assert export("run", tmp_path / "m2.gguf", fmt="gguf").is_file()


@pytest.mark.slow
@pytest.mark.real_weights
def test_default_model_exported_to_gguf_reads_the_same_in_llama_cpp(tmp_path, default_gguf_path):
    """The real 262k-entry vocabulary tokenizes the same in llama.cpp from our export, and the
    logits agree (llama.cpp keeps its KV cache in f16, hence the looser bound)."""
    import inspect
    import json

    llama_cpp = pytest.importorskip("llama_cpp")
    loaded = load(default_gguf_path, progress=False)
    path = write_gguf(loaded.model.state_dict(), loaded.config, loaded.tokenizer, tmp_path / "m.gguf", "f32")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2)
    source = inspect.getsource(json.decoder) + "x = f(1,\n" + " " * 40 + "2)\n"  # a 31 + 9 space run too
    ids = loaded.tokenizer.encode(source, add_bos=True)
    assert llm.tokenize(source.encode(), add_bos=True, special=False) == ids
    ids = ids[:128]
    llm.eval(ids)
    theirs = torch.tensor(llm.scores[:len(ids)])
    with torch.no_grad():
        ours = loaded.model(torch.tensor([ids]))[0]
    assert (theirs - ours).abs().max().item() < 0.2
    assert (theirs.argmax(-1) == ours.argmax(-1)).float().mean().item() >= 0.98


@pytest.mark.slow
@pytest.mark.real_weights
def test_default_model_exported_to_q8_0_reads_alike_here_and_in_llama_cpp(tmp_path, default_gguf_path):
    """The default model in Q8_0: about half the F16 file, the same tensors read by both loaders. Our
    loader computes in float32 from the rounded weights; llama.cpp also rounds the activations to
    8-bit blocks, which moves Gemma 3's logits by a few units (as on the original Q4_K_M file: a max
    of 4.6 and 95% of argmaxes alike on these 128 tokens), so the bounds are about that wide."""
    import inspect
    import json

    llama_cpp = pytest.importorskip("llama_cpp")
    loaded = load(default_gguf_path, progress=False)
    path = write_gguf(loaded.model.state_dict(), loaded.config, loaded.tokenizer, tmp_path / "m.gguf", "q8_0")
    f16_bytes = 2 * sum(t.numel() for t in loaded.model.state_dict().values() if t.dim() > 1)
    assert path.stat().st_size < 0.55 * f16_bytes  # 34 bytes a block of 32 against F16's 64
    ours = load(str(path), progress=False)
    ids = ours.tokenizer.encode(inspect.getsource(json.decoder), add_bos=True)[:128]
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2)
    llm.eval(ids)
    theirs = torch.tensor(llm.scores[:len(ids)])
    with torch.no_grad():
        mine = ours.model(torch.tensor([ids]))[0].float()
        source = loaded.model(torch.tensor([ids]))[0].float()
    assert (mine.argmax(-1) == source.argmax(-1)).float().mean().item() >= 0.94
    assert (theirs.argmax(-1) == mine.argmax(-1)).float().mean().item() >= 0.9
    assert (theirs - mine).abs().max().item() < 8


def test_an_embedding_wider_than_the_tokenizer_exports_padded(tmp_path, tokenizer):
    """A model may have more embedding rows than its tokenizer has tokens (`model.overrides.vocab_size`
    rounded up, as for GPUs). Readers take the vocabulary size from the token list, so the file
    used to be unloadable (codegemma: 'tensor embed_tokens.weight has shape ...'; llama.cpp the
    same): the list is now padded with unused pieces, which leaves the encodings as they were."""
    import gguf

    model, cfg = random_model("tiny-gemma3", tokenizer.vocab_size + 40, query_pre_attn_scalar=None)
    path = write_gguf(model.state_dict(), cfg, tokenizer, tmp_path / "m.gguf", "f32")
    loaded = load(str(path), progress=False)
    assert loaded.config.vocab_size == cfg.vocab_size
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    text = "for i in range(10):\n    print(i ** 2)\n"
    assert loaded.tokenizer.encode(text, add_bos=True) == tokenizer.encode(text, add_bos=True)
    types = gguf.GGUFReader(path).fields["tokenizer.ggml.token_type"]
    assert [int(types.parts[i][0]) for i in types.data[-40:]] == [5] * 40  # UNUSED


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path, tokenizer):
    model, cfg = random_model("tiny-gemma", tokenizer.vocab_size - 8)
    with pytest.raises(CodegemmaError, match=f"tokenizer has {tokenizer.vocab_size} tokens, the model's embedding"):
        write_gguf(model.state_dict(), cfg, tokenizer, tmp_path / "m.gguf", "f32")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name, changes, message", [
    # readers give Gemma 3 five local layers per global one: these layers would attend otherwise
    ("tiny-gemma3", {"layer_types": ["local", "global"] * 3}, "layer_types="),
    ("tiny-gemma3", {"final_softcap": 30.0}, "final_softcap=30.0"),
    ("tiny-gemma3", {"qk_norm": False}, "qk_norm=False"),
    ("tiny-gemma2", {"rope_local_theta": 5000.0}, "rope_local_theta=5000.0"),
    ("tiny-gemma2", {"rope_scaling": 4.0}, "rope_scaling=4.0"),
    ("tiny-gemma2", {"attn_softcap": None}, "without soft-capping"),
    ("tiny-gemma", {"query_pre_attn_scalar": 20}, "query_pre_attn_scalar=20"),
    ("tiny-gemma", {"post_norms": True}, "post_norms=True"),  # was a ValueError from gguf: duplicated name
    ("tiny-gemma", {"attn_softcap": 20.0}, "attn_softcap=20.0"),
])
def test_configs_readers_would_change_are_refused(tmp_path, tokenizer, name, changes, message):
    """GGUF has no key for these switches; the project's reader (and llama.cpp) derive them from the
    architecture, so the files loaded as another model (for the layer types, logits off by 1.0)."""
    changes = {"query_pre_attn_scalar": None, **changes} if name != "tiny-gemma" else changes
    model, cfg = random_model(name, tokenizer.vocab_size, **changes)
    with pytest.raises(CodegemmaError, match=message):
        write_gguf(model.state_dict(), cfg, tokenizer, tmp_path / "m.gguf", "f32")
    assert not list(tmp_path.iterdir())


def test_f16_export_refuses_weights_beyond_its_range(tmp_path, tokenizer):
    """Such a weight became inf in the file without a word."""
    model, cfg = random_model("tiny-gemma", tokenizer.vocab_size)
    state = model.state_dict()
    state["layers.1.mlp.up_proj.weight"][3, 4] = 1e5
    with pytest.raises(CodegemmaError, match="layers.1.mlp.up_proj.weight has values beyond float16's range"):
        write_gguf(state, cfg, tokenizer, tmp_path / "m.gguf", "f16")
    assert not list(tmp_path.iterdir())
    assert write_gguf(state, cfg, tokenizer, tmp_path / "m.gguf", "f32").is_file()


def _lora_run(tmp_path, tokenizer):
    """A LoRA run's checkpoint as the trainer writes it: base weights and adapters, unmerged."""
    from codegemma.train import checkpoint
    from codegemma.train.lora import apply_lora
    from codegemma.train.recipe import LoraSection

    model, cfg = random_model("tiny-gemma3", tokenizer.vocab_size, query_pre_attn_scalar=None)
    lora = apply_lora(model, LoraSection(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    tokenizer.save(tmp_path / "tokenizer.json")
    checkpoint.save(tmp_path / "run" / "checkpoints", 3, {
        "step": 3, "model": lora.state_dict(), "model_config": cfg.to_dict(),
        "recipe": {"tokenizer": str(tmp_path / "tokenizer.json"), "model": {},
                   "lora": {"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]}}})
    return lora, cfg


def test_an_unmerged_lora_checkpoint_exports_merged(tmp_path, tokenizer):
    """Exported from the checkpoint (adapters and base apart), GGUF and HF compute what the
    adapted model computes, in codegemma and in transformers."""
    from transformers import AutoModelForCausalLM

    lora, cfg = _lora_run(tmp_path, tokenizer)
    x = torch.randint(0, cfg.vocab_size, (1, 20))
    with torch.no_grad():
        expected = lora(x)
        gguf_path = export(tmp_path / "run", tmp_path / "m.gguf", fmt="gguf", dtype="f32")
        assert (load(str(gguf_path), progress=False).model(x) - expected).abs().max().item() < 1e-5
        hf = AutoModelForCausalLM.from_pretrained(export(tmp_path / "run", tmp_path / "hf", fmt="hf"))
        assert not any("lora" in k for k in hf.state_dict())
        assert (hf(x).logits - expected).abs().max().item() < 1e-4


def test_a_run_without_checkpoints_exports_its_final_model(tmp_path, tokenizer):
    """Checkpoints deleted to save space, the run directory still names a model: its `final/`
    (it was 'run: no config.json'). A run with neither says so in one line."""
    import shutil

    from codegemma.checkpoints import save_hf

    model, cfg = random_model("tiny-gemma", tokenizer.vocab_size)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    save_hf(model, cfg, tokenizer, tmp_path / "run" / "final")
    out = export(tmp_path / "run", tmp_path / "m.gguf", fmt="gguf", dtype="f32")
    x = torch.randint(0, cfg.vocab_size, (1, 12))
    with torch.no_grad():
        assert torch.equal(load(str(out), progress=False).model(x), model(x))
    shutil.rmtree(tmp_path / "run" / "checkpoints")
    assert export(tmp_path / "run", tmp_path / "m2.gguf", fmt="gguf", dtype="f32").is_file()
    (tmp_path / "crashed").mkdir()
    (tmp_path / "crashed" / ".lock").write_text("123\n")
    with pytest.raises(CodegemmaError, match="crashed: the run has no checkpoint and no final model yet"):
        export(tmp_path / "crashed", tmp_path / "m3.gguf", fmt="gguf")


def test_gguf_export_replaces_only_a_gguf_and_refuses_a_directory_to_be(tmp_path, tokenizer, capsys):
    """An existing file that is not a GGUF was overwritten, and `exdir/` became a file `exdir`."""
    from codegemma.cli import main

    model, cfg = random_model("tiny-gemma", tokenizer.vocab_size)
    write_gguf(model.state_dict(), cfg, tokenizer, tmp_path / "a.gguf")
    write_gguf(model.state_dict(), cfg, tokenizer, tmp_path / "a.gguf")  # an earlier export is replaced
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CodegemmaError, match="notes.txt exists and is not a GGUF file; it is left as it is"):
        write_gguf(model.state_dict(), cfg, tokenizer, tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    # the CLI checks before the source model loads (the source here does not even exist)
    assert main(["train", "export", str(tmp_path / "nosuch"), "--format", "gguf", "--out", f"{tmp_path}/exdir/"]) == 1
    assert "exdir/ ends in a slash, so it names a directory: name a .gguf file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "notes.txt"]


def test_a_full_disk_during_gguf_export_names_the_file(tmp_path, tokenizer):
    import resource

    model, cfg = random_model("tiny-gemma", tokenizer.vocab_size)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # a file may not grow past 4 KB: a full disk
    try:
        with pytest.raises(CodegemmaError, match=r"cannot write .*x.gguf: "):
            write_gguf(model.state_dict(), cfg, tokenizer, tmp_path / "x.gguf")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert list(tmp_path.iterdir()) == []



def test_the_cli_offers_every_export_dtype():
    """The CLI spells the dtypes out (it imports no torch to parse its arguments); each the exporter
    writes must parse."""
    from codegemma.cli import build_parser
    from codegemma.train.export import GGUF_FILE_TYPES

    for dtype in GGUF_FILE_TYPES:
        assert build_parser().parse_args(["train", "export", "run", "--out", "m.gguf", "--dtype", dtype]).dtype == dtype
