"""Cut a small model out of a trained Gemma: fewer layers, narrower MLPs, fewer heads, a smaller vocabulary.

Structured pruning as in Minitron (Muralidharan et al. 2024, arXiv 2407.14679): keep a contiguous
run of the first layers, keep in each of them the MLP neurons that carry the most activation on
calibration text, and give each token of a new (small) tokenizer the embedding of the same text in
the source vocabulary (an exact piece match where there is one, else the mean of the rows of the
source tokens that spell it; the FOCUS/WECHSEL idea without the similarity weighting; tokens with
no text, the FIM sentinels among them, get distinct draws from the source rows' distribution). Attention
is kept whole by default, so the source model's previous-token and induction heads, which a
5-20M-parameter model trained from scratch does not form within a CPU budget (docs/experiments),
come along; asked for fewer query heads, each layer keeps those that add the most to the residual
stream on the calibration text (key/value heads are all kept).
"""

from __future__ import annotations

import torch

from codegemma.config import ModelConfig
from codegemma.data.atomic import check_replaceable
from codegemma.errors import CodegemmaError
from codegemma.model import Gemma
from codegemma.tokenizer import Tokenizer
from codegemma.train.build import new_token_rows

# Special tokens of the new vocabulary that mean the same as the source's under another name.
_SAME_ROLE = ("pad", "eos", "bos", "unk", "mask", "start_of_turn", "end_of_turn")


def transfer_embeddings(source_embed: torch.Tensor, source_tok: Tokenizer, target_tok: Tokenizer) -> torch.Tensor:
    """[target vocab, d_model] embedding rows for `target_tok`, built from `source_embed`."""
    rows = torch.empty(target_tok.vocab_size, source_embed.shape[1], dtype=source_embed.dtype)
    fresh = []
    role_of = {tid: role for role, tid in target_tok.special.items() if tid is not None}
    for tid in range(target_tok.vocab_size):
        role = role_of.get(tid)
        if role in _SAME_ROLE and source_tok.special.get(role) is not None:
            rows[tid] = source_embed[source_tok.special[role]]
            continue
        piece = target_tok.id_to_token(tid)
        exact = source_tok.token_to_id(piece) if piece is not None else None
        if exact is not None:
            rows[tid] = source_embed[exact]
            continue
        text = target_tok.decode([tid]) if role is None and not target_tok.is_special(tid) else ""
        ids = source_tok.encode(text) if text else []
        if ids:
            rows[tid] = source_embed[ids].mean(dim=0)
        else:
            fresh.append(tid)  # sentinels and unused slots: nothing to carry over
    if fresh:
        rows[fresh] = new_token_rows(source_embed, len(fresh))
    return rows


@torch.no_grad()
def _summed_over_calibration(model: Gemma, batches: list[torch.Tensor], modules: dict[int, torch.nn.Module],
                             measure) -> dict[int, torch.Tensor]:
    """Per key of `modules`, `measure(module, input)` of that module's input summed over the calibration batches."""
    sums: dict[int, torch.Tensor] = {}
    hooks = []
    for i, module in modules.items():
        def record(module, inputs, i=i):
            sums[i] = sums.get(i, 0) + measure(module, inputs[0].detach().float())
        hooks.append(module.register_forward_pre_hook(record))
    try:
        for ids in batches:
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    return sums


def mlp_importance(model: Gemma, batches: list[torch.Tensor], layers: list[int]) -> dict[int, torch.Tensor]:
    """Per kept layer, each MLP neuron's |activation| summed over the calibration tokens, times the
    norm of its output column (what the neuron adds to the residual stream)."""
    downs = {i: model.layers[i].mlp.down_proj for i in layers}
    sums = _summed_over_calibration(model, batches, downs, lambda _, act: act.abs().flatten(0, -2).sum(dim=0))
    return {i: sums[i] * downs[i].weight.norm(dim=0) for i in layers}


def head_importance(model: Gemma, batches: list[torch.Tensor], layers: list[int]) -> dict[int, torch.Tensor]:
    """Per kept layer, the norm of what each query head adds to the residual stream (its output
    through its slice of o_proj), summed over the calibration tokens."""
    n_heads, head_dim = model.config.n_heads, model.config.head_dim

    def added(o_proj, heads_out):
        heads_out = heads_out.flatten(0, -2).unflatten(-1, (n_heads, head_dim))  # [tokens, heads, dim]
        w = o_proj.weight.float().unflatten(1, (n_heads, head_dim))  # [d_model, heads, dim]
        return torch.einsum("thd,mhd->thm", heads_out, w).norm(dim=-1).sum(dim=0)
    return _summed_over_calibration(model, batches, {i: model.layers[i].self_attn.o_proj for i in layers}, added)


def kept_heads(importance: torch.Tensor, n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """The `n_heads` most important query heads, as many from each key/value group (a query head
    reads its group's key/value head, so a group cannot lose more than the others)."""
    groups = importance.view(n_kv_heads, -1)  # [group, query heads of the group]
    within = groups.topk(n_heads // n_kv_heads, dim=1).indices.sort(dim=1).values
    return (within + torch.arange(n_kv_heads)[:, None] * groups.shape[1]).flatten()


def pruned(model: Gemma, config: ModelConfig, source_tok: Tokenizer, target_tok: Tokenizer, layers: list[int],
           d_ff: int, calibration: list[torch.Tensor], n_heads: int | None = None) -> tuple[Gemma, ModelConfig]:
    """A new float32 model: the source's `layers` (in order), `d_ff` MLP neurons and `n_heads` query
    heads (default: all) each, `target_tok`'s vocabulary."""
    if not layers or any(not 0 <= i < config.n_layers for i in layers) or sorted(set(layers)) != list(layers):
        raise CodegemmaError(f"layers must be increasing layer numbers in 0..{config.n_layers - 1}, got {layers}")
    if not 1 <= d_ff <= config.d_ff:
        raise CodegemmaError(f"d_ff must be 1..{config.d_ff}, got {d_ff}")
    n_heads = config.n_heads if n_heads is None else n_heads
    if not 1 <= n_heads <= config.n_heads or n_heads % config.n_kv_heads:
        raise CodegemmaError(f"heads must be a multiple of the {config.n_kv_heads} key/value heads in "
                             f"1..{config.n_heads}, got {n_heads}")
    importance = mlp_importance(model, calibration, layers)
    heads = head_importance(model, calibration, layers) if n_heads < config.n_heads else None
    new_config = ModelConfig.from_dict({
        **config.to_dict(), "n_layers": len(layers), "layer_types": [config.layer_types[i] for i in layers],
        "d_ff": d_ff, "n_heads": n_heads, "vocab_size": target_tok.vocab_size,
        **{f"{name}_id": target_tok.special[name] for name in ("bos", "eos", "pad")
           if target_tok.special.get(name) is not None}})
    small = Gemma(new_config)
    source = model.state_dict()
    state = {"embed_tokens.weight": transfer_embeddings(source["embed_tokens.weight"], source_tok, target_tok),
             "norm.weight": source["norm.weight"]}
    for new, i in enumerate(layers):
        keep = importance[i].topk(d_ff).indices.sort().values
        # rows of q_proj, columns of o_proj: the kept heads' slices, in order
        head_dims = None if heads is None else (
            kept_heads(heads[i], n_heads, config.n_kv_heads)[:, None] * config.head_dim
            + torch.arange(config.head_dim)).flatten()
        prefix = f"layers.{i}."
        for name, tensor in source.items():
            if not name.startswith(prefix):
                continue
            name = f"layers.{new}." + name[len(prefix):]
            if name.endswith(("mlp.gate_proj.weight", "mlp.up_proj.weight")):
                tensor = tensor[keep]
            elif name.endswith("mlp.down_proj.weight"):
                tensor = tensor[:, keep]
            elif head_dims is not None and name.endswith("self_attn.q_proj.weight"):
                tensor = tensor[head_dims]
            elif head_dims is not None and name.endswith("self_attn.o_proj.weight"):
                tensor = tensor[:, head_dims]
            state[name] = tensor
    small.load_state_dict({k: v.clone().float().contiguous() for k, v in state.items()})
    return small, new_config


# Above any model's layer count (Gemma's largest has 62), and checked before a range is expanded:
# '0-999999999999' would otherwise fill memory before the source model's count is known.
MAX_LAYERS = 1024


def parse_layers(spec: str) -> list[int]:
    """'0-5' or '0,1,2,5' -> layer numbers."""
    bad = f"--layers: expected e.g. '0-5' or '0,1,2', got {spec!r}"
    try:
        out: list[int] = []
        for part in spec.split(","):
            lo, dash, hi = part.partition("-")
            lo, hi = int(lo), int(hi) if dash else int(lo)  # int("") raises: '0-' is no range
            if hi < lo:  # it would select no layer, and the message would show only []
                raise CodegemmaError(f"{bad} ({part.strip()} runs backwards)")
            if hi >= MAX_LAYERS:
                raise CodegemmaError(f"--layers: layer {hi} is beyond any model's layers (at most {MAX_LAYERS})")
            out.extend(range(lo, hi + 1))
        return out
    except ValueError:
        raise CodegemmaError(bad) from None


def check_sizes(layers: list[int], d_ff: int, n_heads: int | None) -> None:
    """What can be checked without the source model, which takes a while to load (`pruned` checks
    them against its sizes)."""
    if not layers or layers[0] < 0 or sorted(set(layers)) != list(layers):
        raise CodegemmaError(f"layers must be increasing layer numbers from 0, got {layers}")
    if d_ff < 1:
        raise CodegemmaError(f"d_ff must be at least 1, got {d_ff}")
    if n_heads is not None and n_heads < 1:
        raise CodegemmaError(f"heads must be at least 1, got {n_heads}")


def calibration_rows(data, target_tok: Tokenizer, source_tok: Tokenizer, rows: int = 16,
                     max_tokens: int = 256) -> list[torch.Tensor]:
    """`rows` evenly spaced rows of a ShardDataset, as text re-tokenized for the source model
    ([1, <= max_tokens] each)."""
    picks = sorted({i * len(data) // rows for i in range(rows)})
    texts = [target_tok.decode(data[i]["tokens"].tolist(), skip_special=True) for i in picks]
    return [torch.tensor([source_tok.encode(text)[:max_tokens]]) for text in texts if text.strip()]


def prune_checkpoint(source: str | None, tokenizer: str, calibration: str, layers: list[int], d_ff: int,
                     out: str, n_heads: int | None = None) -> tuple[ModelConfig, int]:
    """Load `source` (default: the default model), prune it for `tokenizer`, save a HF directory at `out`."""
    from codegemma.checkpoints import load, save_hf
    from codegemma.data.shards import ShardDataset
    from codegemma.train.build import load_tokenizer

    # the inputs that do not need the source model are checked before it loads, which takes a while
    check_sizes(layers, d_ff, n_heads)
    check_replaceable(out, lambda d: False, "empty")  # what save_hf will check, before the load
    target_tok = load_tokenizer(tokenizer)
    data = ShardDataset(calibration)
    if len(data) == 0:
        raise CodegemmaError(f"{calibration}: no rows to calibrate on")
    loaded = load(source, dtype="float32")
    if loaded.tokenizer is None:
        raise CodegemmaError(f"{source or 'the default model'}: no tokenizer to transfer embeddings from")
    rows = calibration_rows(data, target_tok, loaded.tokenizer)
    small, config = pruned(loaded.model.eval(), loaded.config, loaded.tokenizer, target_tok, layers, d_ff, rows,
                           n_heads)
    save_hf(small, config, target_tok, out)
    return config, sum(p.numel() for p in small.parameters())
