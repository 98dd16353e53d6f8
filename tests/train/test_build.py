import torch

from codegemma.fim import CODEGEMMA_SENTINELS
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
    plain = build.rename_tokens(small_tokenizer, dict(zip(sentinels, unused)))  # a vocabulary without FIM
    assert plain.token_to_id(CODEGEMMA_SENTINELS.prefix) is None
    ids = [plain.token_to_id(u) for u in unused]
    recipe = recipe_mod.from_dict({"model": {"preset": "tiny-gemma"}})
    model, _, _ = build.build_model(recipe, plain)
    tok = build.add_fim_sentinels(model, plain, unused)
    assert [tok.token_to_id(s) for s in sentinels] == ids
    assert tok.encode("<|fim_prefix|>x<|fim_suffix|>")[0] == ids[0]
    mean = model.embed_tokens.weight.mean(0)
    for i in ids:
        assert torch.allclose(model.embed_tokens.weight[i], mean, atol=1e-3)


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
