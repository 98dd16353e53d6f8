import json

import pytest
import torch

from codegemma.config import preset
from codegemma.errors import CodegemmaError
from codegemma.model import Gemma
from codegemma.train import build
from codegemma.train import recipe as recipe_mod
from codegemma.train.lora import adapters_disabled, apply_lora, merge, merged_state, trainable_parameters
from codegemma.train.recipe import LoraSection
from codegemma.train.run import run


def base_model():
    torch.manual_seed(0)
    model = Gemma(preset("tiny-gemma"))
    model.init_weights()
    return model.eval()


def test_only_adapters_train_and_merge_is_exact():
    model = base_model()
    x = torch.randint(0, 512, (2, 12))
    with torch.no_grad():
        before = model(x)
    lora = apply_lora(model, LoraSection(r=4, alpha=8))
    trainable, total = trainable_parameters(lora)
    assert 0 < trainable < total / 10
    assert all("lora_" in n for n, p in lora.named_parameters() if p.requires_grad)
    with torch.no_grad():
        assert torch.allclose(lora(x), before)  # B starts at zero: the adapter is a no-op
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
        adapted = lora(x)
        with adapters_disabled(lora):
            assert torch.allclose(lora(x), before)
        assert not torch.allclose(adapted, before, atol=1e-3)
        merged = merge(lora)
        assert not any("lora" in k for k in merged.state_dict())
        assert set(merged.state_dict()) == set(base_model().state_dict())
        assert torch.allclose(merged(x), adapted, atol=1e-5)


def test_unknown_target_module():
    with pytest.raises(CodegemmaError, match="target_modules"):
        apply_lora(base_model(), LoraSection(target_modules=["query"]))


def test_lora_sft_run_exports_merged_weights(tmp_path, small_tokenizer_path):
    from transformers import AutoModelForCausalLM

    conv = tmp_path / "conv.jsonl"
    with open(conv, "w") as f:
        for i in range(16):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"square {i}"},
                                             {"role": "assistant", "content": f"{i * i}"}]}) + "\n")
    recipe = recipe_mod.from_dict({
        "objective": "sft", "out_dir": str(tmp_path / "run"), "tokenizer": str(small_tokenizer_path),
        "model": {"preset": "tiny-gemma"}, "data": {"train": str(conv), "eval": str(conv), "seq_len": 64},
        "optim": {"lr": 1e-2, "warmup_steps": 1}, "train": {"steps": 6, "batch_size": 2},
        "lora": {"enabled": True, "r": 4}, "eval": {"batches": 1},
        "log": {"every": 1, "tensorboard": False, "plots": False, "progress": False},
    })
    summary = run(recipe)
    hf = AutoModelForCausalLM.from_pretrained(summary["final"])
    assert not any("lora" in k for k in hf.state_dict())
    # the exported base weights changed only through the merged adapters
    base, _, _ = build.build_model(recipe, build.load_tokenizer(small_tokenizer_path))
    q = hf.state_dict()["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.allclose(q, base.state_dict()["layers.0.self_attn.q_proj.weight"])
    assert torch.equal(hf.state_dict()["model.embed_tokens.weight"], base.state_dict()["embed_tokens.weight"])


def test_targets_named_by_a_dotted_suffix_as_peft_matches_them():
    """peft matches a target against the end of a module's dotted name; such a target was refused
    as 'not in the model' although peft adapts exactly the projections it names."""
    lora = apply_lora(base_model(), LoraSection(r=2, target_modules=["self_attn.q_proj", "layers.1.mlp.down_proj"]))
    adapted = sorted(n.removesuffix(".lora_A.default.weight") for n, _ in lora.named_parameters() if "lora_A" in n)
    assert adapted == ["layers.0.self_attn.q_proj", "layers.1.mlp.down_proj", "layers.1.self_attn.q_proj"]


@pytest.mark.parametrize("targets, message", [
    (["norm"], "must name linear projections; these are not: norm \\(RMSNorm\\)"),
    (["mlp", "q_proj"], "these are not: mlp \\(MLP\\)"),
    ([], "lora.target_modules is empty"),
])
def test_targets_peft_cannot_adapt_are_one_line_errors(targets, message):
    """Norms and whole blocks made peft raise a ValueError (a traceback on the command line)."""
    with pytest.raises(CodegemmaError, match=message):
        apply_lora(base_model(), LoraSection(target_modules=targets))


def test_the_tied_embedding_is_refused_as_a_target():
    """The output head reads the embedding's base weight, so an adapter on `embed_tokens` trained the
    input side only, and merging it changed the head too: the merged model computed other logits
    (by 4 on the tiny model) than the one trained."""
    with pytest.raises(CodegemmaError, match="embedding is tied to the output head"):
        apply_lora(base_model(), LoraSection(target_modules=["embed_tokens", "q_proj"]))


def test_merged_state_reads_only_the_models_layout():
    """merged_state used to deep-copy the whole LoRA model (on a GPU, at the end of a run: twice the
    weights' memory, where LoRA was chosen to save it) and load the state into the copy. It now
    needs the model's structure alone, so a shell on the meta device does, and it gives exactly
    peft's merge, in the model's own tensor order."""
    lora = apply_lora(base_model(), LoraSection(r=4, alpha=8))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_" in name:
                p.normal_(std=0.05)
    state = {k: v.clone() for k, v in lora.state_dict().items()}
    before = {k: v.clone() for k, v in state.items()}
    with torch.device("meta"):
        shell = apply_lora(Gemma(preset("tiny-gemma")), LoraSection(r=4, alpha=8))
    merged = merged_state(shell, state)
    reference = merge(lora).state_dict()
    assert list(merged) == list(reference)
    assert all(torch.equal(merged[k], reference[k]) for k in reference)
    assert list(state) == list(before) and all(torch.equal(state[k], before[k]) for k in before)  # input untouched
