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
