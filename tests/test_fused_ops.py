"""The fused training kernels (codegemma.fused_ops) against PyTorch's ops: values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from codegemma import fused_ops, kernels

pytestmark = pytest.mark.skipif(not kernels.available(), reason="no C compiler for the kernels")


def _eager_geglu(gate, up):
    return F.gelu(gate, approximate="tanh") * up


def _eager_rms_norm(x, w, eps):
    return F.rms_norm(x, (x.shape[-1],), 1.0 + w, eps)


def _grads(fn, inputs, grad_out):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.backward(grad_out.to(out.dtype))
    return out.detach(), [t.grad for t in leaves]


def _assert_close_to_reference(fused, eager, reference):
    """The fused result is as close to the float64 reference as PyTorch's float32 one, within 2x."""
    scale = reference.abs().max()
    err_fused = (fused.double() - reference).abs().max() / scale
    err_eager = (eager.double() - reference).abs().max() / scale
    assert err_fused <= max(2 * err_eager, 1e-6), (err_fused, err_eager)


@pytest.mark.parametrize("shape", [(2, 7, 96), (3, 4099)])  # a ragged tail past the 4096-element blocks
def test_geglu_matches_pytorch(shape):
    torch.manual_seed(0)
    gate, up, grad = torch.randn(shape) * 4, torch.randn(shape), torch.randn(shape)
    fused, fused_grads = _grads(fused_ops.geglu, (gate, up), grad)
    eager, eager_grads = _grads(_eager_geglu, (gate, up), grad)
    ref, ref_grads = _grads(_eager_geglu, (gate.double(), up.double()), grad)
    _assert_close_to_reference(fused, eager, ref)
    for f, e, r in zip(fused_grads, eager_grads, ref_grads):
        _assert_close_to_reference(f, e, r)


def test_geglu_extreme_gates_stay_finite():
    gate = torch.tensor([-1e4, -100.0, -20.0, -5.0, 0.0, 5.0, 20.0, 100.0, 1e4]).requires_grad_()
    up = torch.ones_like(gate).requires_grad_()
    out = fused_ops.geglu(gate, up)
    out.sum().backward()
    expected = F.gelu(gate.detach().double(), approximate="tanh")
    torch.testing.assert_close(out.detach().double(), expected, rtol=1e-6, atol=1e-30)
    assert torch.isfinite(gate.grad).all() and torch.isfinite(up.grad).all()


@pytest.mark.parametrize("shape", [(2, 5, 64), (130, 256)])  # rows past one 64-row block of the weight gradient
def test_rms_norm_matches_pytorch(shape):
    torch.manual_seed(0)
    x, w, grad = torch.randn(shape) * 3, torch.randn(shape[-1]) * 0.1, torch.randn(shape)
    fused, fused_grads = _grads(lambda a, b: fused_ops.rms_norm(a, b, 1e-6), (x, w), grad)
    eager, eager_grads = _grads(lambda a, b: _eager_rms_norm(a, b, 1e-6), (x, w), grad)
    ref, ref_grads = _grads(lambda a, b: _eager_rms_norm(a, b, 1e-6), (x.double(), w.double()), grad)
    _assert_close_to_reference(fused, eager, ref)
    for f, e, r in zip(fused_grads, eager_grads, ref_grads):
        _assert_close_to_reference(f, e, r)


def test_results_do_not_depend_on_the_thread_count():
    torch.manual_seed(0)
    x, w, grad = torch.randn(300, 128), torch.randn(128), torch.randn(300, 128)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            z_t, nll = x.t().contiguous() * 5, torch.empty(300)
            scale = fused_ops.softmax_xent_columns_(z_t, torch.arange(300) % 128, torch.ones(300), nll)
            runs.append(_grads(lambda a, b: fused_ops.rms_norm(a, b, 1e-6), (x, w), grad)[1]
                        + _grads(fused_ops.geglu, (x, w.expand_as(x).contiguous()), grad)[1]
                        + _grads(lambda a, b, c: fused_ops.residual_rms_norm(a, b, c, c.flip(0), 1e-6)[1],
                                 (x, x.flip(0), w), grad)[1] + [z_t, nll, scale])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def _eager_residual_rms_norm(x, h, w1, w2, eps):
    y = x + _eager_rms_norm(h, w1, eps)
    return y if w2 is None else (y, _eager_rms_norm(y, w2, eps))


@pytest.mark.parametrize("second_norm", [True, False])
@pytest.mark.parametrize("shape", [(2, 5, 64), (130, 96)])  # rows past one 64-row block of the weight gradients
def test_residual_rms_norm_matches_pytorch(shape, second_norm):
    torch.manual_seed(0)
    x, h = torch.randn(shape), torch.randn(shape) * 3
    w1, w2 = torch.randn(shape[-1]) * 0.1, torch.randn(shape[-1]) * 0.1
    grads = torch.randn(shape), torch.randn(shape)
    inputs = (x, h, w1, w2) if second_norm else (x, h, w1)

    def run(fn, tensors):
        leaves = [t.detach().clone().requires_grad_() for t in tensors]
        out = fn(*leaves[:3], leaves[3] if second_norm else None, 1e-6)
        outs = out if second_norm else (out,)
        sum((o * g.to(o.dtype)).sum() for o, g in zip(outs, grads)).backward()
        return [o.detach() for o in outs] + [t.grad for t in leaves], outs

    fused, outs = run(fused_ops.residual_rms_norm, inputs)
    assert type(outs[0].grad_fn).__name__ == "_ResidualRmsNormBackward"
    eager, _ = run(_eager_residual_rms_norm, inputs)
    ref, _ = run(_eager_residual_rms_norm, [t.double() for t in inputs])
    assert len(fused) == len(ref)
    for f, e, r in zip(fused, eager, ref):
        _assert_close_to_reference(f, e, r)


def test_pytorch_ops_without_autograd():
    """Inference keeps PyTorch's ops, bit for bit (its parity with transformers depends on it)."""
    x, w = torch.randn(4, 32), torch.randn(32)
    with torch.no_grad():
        assert torch.equal(fused_ops.rms_norm(x, w, 1e-6), _eager_rms_norm(x, w, 1e-6))
        assert torch.equal(fused_ops.geglu(x, x.flip(0)), _eager_geglu(x, x.flip(0)))


def test_training_takes_the_kernels(monkeypatch):
    """With autograd recording, the model's MLP and norms run the fused kernels (else the tests
    above would compare PyTorch with itself)."""
    from codegemma.config import preset
    from codegemma.model import Gemma

    model = Gemma(preset("tiny-gemma"))
    model.init_weights()
    x = torch.randn(1, 3, model.config.d_model, requires_grad=True)
    mlp_inner = []
    model.layers[0].mlp.down_proj.register_forward_hook(lambda module, args, out: mlp_inner.append(args[0]))
    model.layers[0].mlp(x)
    assert type(mlp_inner[0].grad_fn).__name__ == "_GegluBackward"
    assert type(model.layers[0].input_layernorm(x).grad_fn).__name__ == "_RmsNormBackward"
    rotated, rope = [], fused_ops.rope
    monkeypatch.setattr(fused_ops, "rope", lambda *args: rotated.append(rope(*args)) or rotated[-1])
    model(torch.randint(0, 50, (2, 5))).sum().backward()
    assert rotated and all(type(t.grad_fn).__name__ == "_RopeBackward" for t in rotated)
    post_norm_model = Gemma(preset("tiny-gemma3"))  # Gemma 2/3 blocks: residual adds with their norms
    post_norm_model.init_weights()
    blocks_out = []
    post_norm_model.layers[0].register_forward_hook(lambda module, args, out: blocks_out.append(out))
    post_norm_model(torch.randint(0, 50, (2, 5)))
    assert type(blocks_out[0].grad_fn).__name__ == "_ResidualRmsNormBackward"


@pytest.mark.parametrize("shape", [(2, 5, 3, 64), (1, 7, 1, 6)])  # [B, T, heads, head_dim]
def test_rope_matches_pytorch(shape):
    from codegemma.model import rope_cos_sin, rope_inv_freq, signed_sin

    torch.manual_seed(0)
    B, T, H, D = shape
    positions = torch.stack([torch.arange(T) + 3 * b for b in range(B)])  # rows at different offsets
    cos, sin = rope_cos_sin(positions, rope_inv_freq(D, 10000.0))
    sin = signed_sin(sin)
    x, grad = torch.randn(shape), torch.randn(B, H, T, D)

    def eager(t, c, s):
        return fused_ops.apply_rope(t.transpose(1, 2), c, s)

    fused, fused_grads = _grads(lambda t: fused_ops.rope(t, cos, sin), (x,), grad)
    plain, plain_grads = _grads(lambda t: eager(t, cos, sin), (x,), grad)
    ref, ref_grads = _grads(lambda t: eager(t, cos.double(), sin.double()), (x.double(),), grad)
    assert fused.shape == (B, H, T, D)
    _assert_close_to_reference(fused, plain, ref)
    _assert_close_to_reference(fused_grads[0], plain_grads[0], ref_grads[0])


def test_softmax_xent_columns_matches_float64():
    torch.manual_seed(0)
    z = torch.randn(37, 1003) * 8  # more rows than one thread's share, a vocabulary no multiple of 64
    z[0, 5] = 80.0  # a confident row: exp would overflow without the max subtracted
    targets = torch.randint(0, 1003, (37,))
    weights = (torch.rand(37) > 0.3).float() * 2.0  # masked rows get no gradient
    ref = z.double().requires_grad_()
    ref_nll = torch.nn.functional.cross_entropy(ref, targets, reduction="none")
    (ref_nll * weights.double()).sum().backward()
    nll, z_t = torch.empty(37), z.t().contiguous()
    scale = fused_ops.softmax_xent_columns_(z_t, targets, weights, nll)
    torch.testing.assert_close(nll.double(), ref_nll.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close((z_t.t() * scale[:, None]).double(), ref.grad, rtol=1e-5, atol=1e-7)
    assert not scale[weights == 0].any()
    with pytest.raises(IndexError, match="vocabulary of 1003"):
        fused_ops.softmax_xent_columns_(z_t, targets + 1003, weights, nll)
    with pytest.raises(ValueError, match="contiguous"):
        fused_ops.softmax_xent_columns_(z_t.t(), targets, weights, nll)


def _grouped(q, groups):
    """[B, T, H, D] -> causal_attention's [B, H / G, T * G, D]."""
    B, T, H, D = q.shape
    return q.transpose(1, 2).reshape(B, H // groups, groups, T, D).transpose(2, 3).reshape(B, H // groups, T * groups, D)


def _ungrouped(y, groups):
    B, Hkv, TG, D = y.shape
    T = TG // groups
    return y.view(B, Hkv, T, groups, D).transpose(2, 3).reshape(B, Hkv * groups, T, D)


def _attention_mask(kind, B, T):
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    if kind == "causal":
        return None
    if kind == "documents":  # packed rows: a query sees earlier keys of its own document
        seg = torch.randint(0, 4, (B, T)).sort(dim=-1).values
        return (causal & (seg[:, :, None] == seg[:, None, :]))[:, None]
    i = torch.arange(T)  # a sliding window of 50 (Gemma 2/3 local layers)
    return (causal & (i[:, None] - i[None, :] < 50)).expand(B, T, T)[:, None]


@pytest.mark.parametrize("B,H,Hkv,T,D,kind", [
    (2, 4, 1, 150, 64, "causal"),     # multi-query, three query blocks of 64, the last ragged
    (2, 4, 2, 130, 32, "documents"),  # grouped-query, document mask
    (1, 3, 3, 260, 16, "window"),     # multi-head, five blocks, sliding window
    (3, 2, 1, 9, 8, "documents"),     # one short block
])
def test_causal_attention_matches_sdpa(B, H, Hkv, T, D, kind):
    torch.manual_seed(0)
    G, scale = H // Hkv, D ** -0.5
    q, k, v = torch.randn(B, T, H, D), torch.randn(B, T, Hkv, D), torch.randn(B, T, Hkv, D)
    mask, grad = _attention_mask(kind, B, T), torch.randn(B, H, T, D)
    assert fused_ops.causal_attention_applies(q.requires_grad_(), k, mask)

    def fused(q, k, v):
        y = fused_ops.causal_attention(_grouped(q, G), k.transpose(1, 2), v.transpose(1, 2), mask, scale)
        return _ungrouped(y, G)

    def sdpa(q, k, v):
        m = None if mask is None else mask
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=m,
                                              is_causal=m is None, scale=scale, enable_gqa=G > 1)

    out, grads = _grads(fused, (q, k, v), grad)
    plain, plain_grads = _grads(sdpa, (q, k, v), grad)
    ref, ref_grads = _grads(sdpa, (q.double(), k.double(), v.double()), grad)
    _assert_close_to_reference(out, plain, ref)
    for f, p, r in zip(grads, plain_grads, ref_grads):
        _assert_close_to_reference(f, p, r)


def test_causal_attention_only_for_causal_masks_in_training():
    q, k = torch.randn(2, 6, 4, 8, requires_grad=True), torch.randn(2, 6, 1, 8)
    causal = torch.ones(2, 1, 6, 6, dtype=torch.bool).tril()
    assert fused_ops.causal_attention_applies(q, k, causal) and fused_ops.causal_attention_applies(q, k, None)
    later = causal.clone()
    later[1, 0, 2, 4] = True  # a query that may see a later key: the kernel's blocks would drop it
    assert not fused_ops.causal_attention_applies(q, k, later)
    with torch.no_grad():
        assert not fused_ops.causal_attention_applies(q, k, causal)


def test_rope_grouped_layout():
    from codegemma.model import rope_cos_sin, rope_inv_freq, signed_sin

    torch.manual_seed(0)
    B, T, H, D, G = 2, 5, 4, 8, 2
    cos, sin = rope_cos_sin(torch.arange(T).expand(B, T), rope_inv_freq(D, 10000.0))
    sin = signed_sin(sin)
    x, grad = torch.randn(B, T, H, D), torch.randn(B, H // G, T * G, D)
    grouped, grouped_grads = _grads(lambda t: fused_ops.rope(t, cos, sin, G), (x,), grad)
    plain, plain_grads = _grads(lambda t: _grouped(fused_ops.rope(t, cos, sin).transpose(1, 2), G), (x,), grad)
    assert grouped.shape == (B, H // G, T * G, D)
    assert torch.equal(grouped, plain) and torch.equal(grouped_grads[0], plain_grads[0])


def _graph_node_names(t: torch.Tensor) -> set[str]:
    seen, names, stack = set(), set(), [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        names.add(type(node).__name__)
        stack.extend(f for f, _ in node.next_functions)
    return names


def test_model_training_step_with_and_without_the_attention_kernel(monkeypatch):
    """A model's loss and gradients agree whether its attention runs causal_attention or SDPA, on
    packed rows of several documents."""
    from codegemma.config import preset
    from codegemma.model import Gemma

    torch.manual_seed(0)
    model = Gemma(preset("tiny-gemma"))
    model.init_weights()
    ids = torch.randint(0, 100, (2, 140))
    segments = torch.cat([torch.zeros(2, 60, dtype=torch.long), torch.ones(2, 80, dtype=torch.long)], dim=1)
    runs = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(fused_ops, "causal_attention_applies", lambda *args: False)
        model.zero_grad()
        logits = model(ids, segment_ids=segments)
        if fused:
            assert "_CausalAttentionBackward" in _graph_node_names(logits)  # the kernel is what ran
        logits.float().logsumexp(-1).mean().backward()
        runs.append([logits.detach()] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
