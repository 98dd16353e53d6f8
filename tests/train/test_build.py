import torch

from codegemma.fim import CODEGEMMA_SENTINELS
from codegemma.tokenizer import rename_tokens
from codegemma.train import build
from codegemma.train import recipe as recipe_mod


def test_fresh_model_takes_vocab_and_special_ids_from_the_tokenizer(small_tokenizer):
    recipe = recipe_mod.from_dict({"model": {"preset": "tiny-gemma", "overrides": {"n_layers": 3}}})
    model, config, _ = build.build_model(recipe, small_tokenizer)
    assert config.vocab_size == small_tokenizer.vocab_size == model.embed_tokens.weight.shape[0]
    assert (config.bos_id, config.eos_id, config.pad_id) == (2, 1, 0)
    assert config.n_layers == 3 and len(config.layer_types) == 3
    again, _, _ = build.build_model(recipe, small_tokenizer)
    assert torch.equal(model.embed_tokens.weight, again.embed_tokens.weight)  # seeded init


def test_unused_tokens_become_fim_sentinels(small_tokenizer):
    """Continued pretraining: a Gemma vocabulary without sentinels gets them at the unused ids."""
    sentinels = CODEGEMMA_SENTINELS.all()
    unused = [f"<spare{i}>" for i in range(4)]  # names this test vocabulary does not have yet
    plain = rename_tokens(small_tokenizer, dict(zip(sentinels, unused)))  # a vocabulary without FIM
    assert plain.token_to_id(CODEGEMMA_SENTINELS.prefix) is None
    ids = [plain.token_to_id(u) for u in unused]
    recipe = recipe_mod.from_dict({"model": {"preset": "tiny-gemma"}})
    model, _, _ = build.build_model(recipe, plain)
    tok = build.add_fim_sentinels(model, plain, unused)
    assert [tok.token_to_id(s) for s in sentinels] == ids
    assert tok.encode("<|fim_prefix|>x<|fim_suffix|>")[0] == ids[0]
    rows = model.embed_tokens.weight.detach()
    norms = rows.norm(dim=1)
    typical = norms[[i for i in range(len(rows)) if i not in ids]].median()
    cos = torch.nn.functional.cosine_similarity(rows[ids][:, None], rows[ids][None], dim=-1)
    assert (cos - torch.eye(4)).abs().max() < 0.5  # four different inputs, not four copies of one
    assert ((norms[ids] / typical - 1).abs() < 0.5).all()  # each of an ordinary size


def test_new_token_rows_follow_the_trained_rows():
    """New rows are drawn from the trained rows' mean and covariance, the same for the same seed."""
    mix = torch.randn(16, 16, generator=torch.Generator().manual_seed(1))
    trained = torch.randn(20000, 16, generator=torch.Generator().manual_seed(2)) @ mix + 3.0
    new = build.new_token_rows(trained, 20000)
    assert torch.allclose(new.mean(0), trained.mean(0), atol=0.15)
    assert torch.allclose(new.T.cov(), trained.T.cov(), rtol=0.1, atol=0.3)
    assert torch.equal(build.new_token_rows(trained, 3), build.new_token_rows(trained, 3))


def test_activation_checkpointing_gives_the_same_gradients(tmp_path):
    from codegemma.train.trainer import _enable_activation_checkpointing

    recipe = recipe_mod.from_dict({"model": {"preset": "tiny-gemma3"}})
    grads = []
    x = torch.randint(0, 512, (2, 16))
    for checkpointing in (False, True):
        model, _, _ = build.build_model(recipe, None)
        if checkpointing:
            _enable_activation_checkpointing(model)
        model(x).logsumexp(-1).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_a_start_is_checked_against_the_shape_the_recipe_gives(tmp_path, small_tokenizer):
    """With `init`, [model.overrides] is the shape the start must have: a start built otherwise is a
    one-line error naming each field, not a run of another model."""
    import pytest

    from codegemma.checkpoints import save_hf
    from codegemma.config import ModelConfig, preset
    from codegemma.errors import CodegemmaError
    from codegemma.model import Gemma

    config = ModelConfig.from_dict({**preset("tiny-gemma3").to_dict(), "vocab_size": small_tokenizer.vocab_size,
                                    "norm_eps": 9.999999974752427e-07})  # 1e-6 as float32 holds it
    save_hf(Gemma(config), config, small_tokenizer, tmp_path / "start")

    def built(overrides):
        return build.build_model(recipe_mod.from_dict(
            {"model": {"init": str(tmp_path / "start"), "overrides": overrides}}), small_tokenizer)

    _, loaded, _ = built({"n_layers": config.n_layers, "d_ff": config.d_ff, "norm_eps": 1e-6})
    assert loaded.d_ff == config.d_ff
    with pytest.raises(CodegemmaError) as e:
        built({"n_layers": config.n_layers + 1, "d_ff": config.d_ff, "d_fff": 3})
    message = str(e.value)
    assert f"n_layers = {config.n_layers + 1} (the start has {config.n_layers})" in message
    assert "d_fff is not a model field" in message and "d_ff =" not in message


def test_the_tiny_cpu_recipe_declares_its_starts_shape():
    """bench/train.py times the shape the recipe declares where the start is not built: 19.5M
    parameters, as `train prune --layers 0-5 --d-ff 384` makes (tests/train/test_prune.py)."""
    from pathlib import Path

    recipe = recipe_mod.load(Path(__file__).resolve().parents[2] / "recipes" / "tiny-cpu.toml")
    config = build.model_config(recipe, None)
    assert (config.family, config.n_layers, config.d_ff, config.vocab_size) == ("gemma3", 6, 384, 8192)
    assert config.num_params() == 19_516_032  # what `train prune` reports for the start it writes


def _without_sentinels(tokenizer):
    """The test vocabulary with its FIM sentinels spelled <spare0..3> (same ids): a Gemma-like
    vocabulary that has unused slots but no sentinels."""
    spares = [f"<spare{i}>" for i in range(4)]
    return rename_tokens(tokenizer, dict(zip(CODEGEMMA_SENTINELS.all(), spares))), spares


def test_a_fresh_model_also_turns_unused_tokens_into_fim_sentinels(small_tokenizer):
    """`model.fim_sentinels_from` without `init` (a fresh model over Gemma's vocabulary): the run's
    tokenizer gets the sentinels, as the shards built with the same setting have them. Ignored, the
    run refused those shards and asked for the setting it had been given."""
    plain, spares = _without_sentinels(small_tokenizer)
    recipe = recipe_mod.from_dict({"model": {"preset": "tiny-gemma", "fim_sentinels_from": spares}})
    _, config, tok = build.build_model(recipe, plain)
    assert [tok.token_to_id(s) for s in CODEGEMMA_SENTINELS.all()] == [plain.token_to_id(s) for s in spares]
    assert config.vocab_size == plain.vocab_size


def test_freezing_the_embedding_of_new_fim_sentinels_warns(small_tokenizer):
    """The sentinels' rows are random draws: frozen with embed_tokens, they would never train."""
    import warnings

    plain, spares = _without_sentinels(small_tokenizer)
    for frozen, warns in ((["embed_tokens.*"], True), (["layers.0.*"], False)):
        recipe = recipe_mod.from_dict({"model": {"preset": "tiny-gemma", "fim_sentinels_from": spares,
                                                 "freeze": frozen}})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            build.build_model(recipe, plain)
        assert any("sentinels' rows" in str(w.message) for w in caught) == warns, frozen


def test_fim_sentinels_are_made_only_of_unused_tokens(small_tokenizer):
    """A token the text uses (an ordinary piece, <bos>, a turn marker) or a name given twice is
    refused with one line naming it, and no embedding row changes: renamed, the ordinary piece lost
    its trained row to a random draw (or the tokenizer failed to load), <bos> became a sentinel, and
    a repeated name left one sentinel unmade and failed with an IndexError."""
    import pytest

    from codegemma.errors import CodegemmaError

    plain, spares = _without_sentinels(small_tokenizer)
    model, _, _ = build.build_model(recipe_mod.from_dict({"model": {"preset": "tiny-gemma"}}), plain)
    before = model.embed_tokens.weight.detach().clone()
    ordinary = plain.id_to_token(plain.encode("return")[0])
    cases = [("an ordinary piece of text", [ordinary, *spares[1:]]),
             ("a token the model uses", ["<bos>", *spares[1:]]),
             ("a token the model uses", [spares[0], "<start_of_turn>", *spares[2:]]),
             ("more than once", [spares[0], spares[0], *spares[2:]])]
    for expected, unused in cases:
        with pytest.raises(CodegemmaError, match=expected):
            build.add_fim_sentinels(model, plain, unused)
    assert torch.equal(model.embed_tokens.weight, before)
    with pytest.raises(CodegemmaError, match="more than once"):
        build.build_model(recipe_mod.from_dict({"model": {"preset": "tiny-gemma", "fim_sentinels_from":
                                                          [spares[0], *spares[:3]]}}), plain)
    tok = build.add_fim_sentinels(model, small_tokenizer, [ordinary, "<bos>", "<eos>", "<absent>"])
    assert tok.token_to_id(CODEGEMMA_SENTINELS.prefix) == 67  # a vocabulary with the sentinels keeps them
    assert torch.equal(model.embed_tokens.weight, before)


def test_model_overrides_are_checked_for_type_and_range(tmp_path):
    """A value of the wrong type in [model.overrides] is one line naming the key, before a start
    is loaded, where it failed inside torch (`d_model = "256"`, `n_layers = 6.0`) or built another
    model without a word (`qk_norm = "yes"`, `n_layers = true`, `post_norms = 1`)."""
    import pytest

    from codegemma.errors import CodegemmaError

    bad = [{"d_model": "256"}, {"n_layers": 6.0}, {"n_layers": True}, {"qk_norm": "yes"}, {"post_norms": 1},
           {"n_heads": 0}, {"norm_eps": -1e-6}, {"sliding_window": "8"}, {"layer_types": ["global", "loca1"]}]
    for overrides in bad:
        key = next(iter(overrides))
        recipe = recipe_mod.from_dict({"model": {"preset": "tiny-gemma", "overrides": overrides}})
        with pytest.raises(CodegemmaError, match=f"model.overrides.{key} must be"):
            build.build_model(recipe, None)
        started = recipe_mod.from_dict({"model": {"init": str(tmp_path / "absent"), "overrides": overrides}})
        with pytest.raises(CodegemmaError, match=f"model.overrides.{key} must be"):
            build.build_model(started, None)  # the shape is checked before the start is looked for
    with pytest.raises(CodegemmaError, match="model.overrides: d_fff is not a model field"):
        build.build_model(recipe_mod.from_dict({"model": {"overrides": {"d_fff": 3}}}), None)
    _, config, _ = build.build_model(recipe_mod.from_dict(
        {"model": {"preset": "tiny-gemma", "overrides": {"norm_eps": 1, "n_layers": 3}}}), None)
    assert config.norm_eps == 1.0 and isinstance(config.norm_eps, float) and config.n_layers == 3


def test_a_gguf_start_trains_without_its_decoding_aids(tmp_path, monkeypatch):
    """A GGUF start loads with block forms for decoding (codes, fused copies, a decode step): about
    two bytes a weight that training, which changes the weights they were made from, never uses.
    The training model has plain linear layers with the same parameters and computes the same."""
    import pytest
    from gguf import GGMLQuantizationType as Q

    from codegemma import kernels
    from codegemma.block_weights import BlockLinear
    from codegemma.checkpoints import load
    from codegemma.model import Gemma

    from ..checkpoints.gguf_fixtures import CONFIG, write_gguf

    if not kernels.available():
        pytest.skip("no C compiler: a GGUF start gets no block forms to leave out")
    monkeypatch.setenv("CODEGEMMA_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    source = Gemma(CONFIG)
    source.init_weights()
    path = tmp_path / "start.gguf"
    write_gguf(path, source.state_dict(), types={n: Q.Q8_0 for n, p in source.named_parameters() if p.dim() == 2})
    decoding = load(path).model
    assert any(isinstance(m, BlockLinear) for m in decoding.modules()) and decoding._decode_step is not None
    model, _, _ = build.build_model(recipe_mod.from_dict({"model": {"init": str(path)}}), None)
    assert not any(isinstance(m, BlockLinear) for m in model.modules())
    assert model._decode_step is None and model._head_blocks is None and model._head_screen is None
    assert all(block.self_attn.qkv_proj is None and block.mlp.gate_up_proj is None for block in model.layers)
    ids = torch.randint(3, CONFIG.vocab_size, (1, 9))
    with torch.no_grad():  # (the block kernel sums in another order: float32 rounding)
        assert torch.allclose(model.eval()(ids), decoding(ids), atol=1e-5)
