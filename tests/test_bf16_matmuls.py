"""bf16 products with float32 everything else (codegemma.bf16_matmuls): exactly bf16 products where
promised, float32 results, the CPU kernels still in use, and a training step close to float32's."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from codegemma import bf16_matmuls, head_loss, kernels
from codegemma.config import preset
from codegemma.model import Gemma

from .test_fused_ops import _graph_node_names


def _bf16(t):
    return t.detach().to(torch.bfloat16)


def test_linear_runs_bf16_products_and_returns_float32():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 48, requires_grad=True)
    w = torch.randn(32, 48, requires_grad=True)
    b = torch.randn(32, requires_grad=True)
    g = torch.randn(3, 5, 32)
    with bf16_matmuls.enabled():
        assert bf16_matmuls.active()
        y = F.linear(x, w, b)
    assert not bf16_matmuls.active()
    y.backward(g)  # backward outside the context still takes the bf16 products
    assert y.dtype == torch.float32
    assert torch.equal(y, F.linear(_bf16(x), _bf16(w)).float() + b)
    assert torch.equal(x.grad, (_bf16(g) @ _bf16(w)).float())
    assert torch.equal(w.grad, (_bf16(g).reshape(-1, 32).t() @ _bf16(x).reshape(-1, 48)).float())
    torch.testing.assert_close(b.grad, g.sum((0, 1)))


def test_outside_the_context_products_stay_float32():
    torch.manual_seed(0)
    x, w = torch.randn(4, 48), torch.randn(32, 48)
    with bf16_matmuls.enabled():
        pass
    assert torch.equal(F.linear(x, w), x @ w.t())
    assert torch.equal(bf16_matmuls.mm(x, w.t()), x @ w.t())


def test_head_loss_takes_bf16_products():
    torch.manual_seed(0)
    h = torch.randn(70, 64, requires_grad=True)
    w = torch.randn(300, 64, requires_grad=True)
    targets = torch.randint(0, 300, (70,))
    weights = torch.ones(70)
    ref_total, _ = head_loss.weighted_nll(h, w, targets, weights)
    ref_total.backward()
    ref_grads = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    with bf16_matmuls.enabled():
        total, _ = head_loss.weighted_nll(h, w, targets, weights)
    total.backward()
    assert total.dtype == torch.float32 and total != ref_total  # the products were rounded
    torch.testing.assert_close(total, ref_total, rtol=2e-3, atol=0)
    for got, want in zip((h.grad, w.grad), ref_grads):
        assert F.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.999


@pytest.mark.skipif(not kernels.available(), reason="no C compiler for the kernels")
def test_training_step_keeps_the_float32_kernels_and_follows_float32():
    torch.manual_seed(0)
    model = Gemma(preset("tiny-gemma"))
    model.init_weights()
    ids = torch.randint(0, 100, (2, 141))
    segments = torch.cat([torch.ones(2, 61, dtype=torch.long), 2 * torch.ones(2, 80, dtype=torch.long)], dim=1)
    weights = torch.ones(2, 140, dtype=torch.bool)
    runs = []
    for low in (False, True):
        model.zero_grad()
        with bf16_matmuls.enabled() if low else torch.autocast("cpu", enabled=False):
            total, _ = model(ids[:, :-1], segment_ids=segments[:, :-1], targets=ids[:, 1:], loss_weights=weights)
        names = _graph_node_names(total)
        assert {"_CausalAttentionBackward", "_RmsNormBackward", "_GegluBackward"} <= names
        assert ("_LinearBackward" in names) == low
        total.backward()
        runs.append((total.item(), [p.grad.clone() for p in model.parameters()]))
    (loss32, grads32), (loss16, grads16) = runs
    assert loss16 == pytest.approx(loss32, rel=2e-3) and loss16 != loss32
    for a, b in zip(grads32, grads16):
        assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.995


class _ProductDtypes(TorchDispatchMode):
    """The operand dtypes of every matrix product run under it."""

    PRODUCTS = {"mm", "bmm", "addmm", "linear", "matmul"}

    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.PRODUCTS:
            self.dtypes |= {a.dtype for a in args if isinstance(a, torch.Tensor)}
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("native", [True, False], ids=["bf16-hardware", "emulated"])
def test_bf16_products_run_in_bf16_only_where_the_cpu_has_bf16_arithmetic(monkeypatch, native):
    # Without AMX or AVX512-BF16 PyTorch's bf16 products are ~80x slower than float32 ones: a
    # training step must then take none, and compute the same rounding in float32 instead.
    monkeypatch.setattr(bf16_matmuls, "native_on_this_cpu", lambda: native)
    torch.manual_seed(0)
    model = Gemma(preset("tiny-gemma"))
    model.init_weights()
    ids = torch.randint(0, 100, (2, 33))
    products = _ProductDtypes()
    with products:
        with bf16_matmuls.enabled():
            total, _ = model(ids[:, :-1], targets=ids[:, 1:], loss_weights=torch.ones(2, 32, dtype=torch.bool))
        total.backward()
    assert products.dtypes == {torch.bfloat16 if native else torch.float32}


def test_emulated_bf16_products_round_as_bf16_products_do(monkeypatch):
    torch.manual_seed(0)
    a, b = torch.randn(4, 24, 96), torch.randn(4, 96, 40)
    monkeypatch.setattr(bf16_matmuls, "native_on_this_cpu", lambda: True)
    native = bf16_matmuls.product(a, b)
    monkeypatch.setattr(bf16_matmuls, "native_on_this_cpu", lambda: False)
    emulated = bf16_matmuls.product(a, b)
    assert emulated.dtype == torch.float32
    # bf16 operands multiply exactly in float32; the float32 sum is rounded to bf16 like the kernel's
    assert torch.equal(emulated, torch.bmm(_bf16(a).float(), _bf16(b).float()).to(torch.bfloat16).float())
    assert torch.equal(emulated, emulated.to(torch.bfloat16).float())
    # the bf16 kernel sums in another order: at most one bf16 rounding step apart
    torch.testing.assert_close(emulated, native, rtol=2 ** -7, atol=1e-6)
    assert not torch.equal(emulated, bf16_matmuls.mm(a[0], b[0]))  # outside enabled(): float32 products


def test_emulated_head_loss_follows_the_bf16_one(monkeypatch):
    torch.manual_seed(0)
    h = torch.randn(70, 64, requires_grad=True)
    w = torch.randn(300, 64, requires_grad=True)
    targets = torch.randint(0, 300, (70,))
    runs = []
    for native in (True, False):
        monkeypatch.setattr(bf16_matmuls, "native_on_this_cpu", lambda native=native: native)
        h.grad = w.grad = None
        with bf16_matmuls.enabled():
            total, _ = head_loss.weighted_nll(h, w, targets, torch.ones(70))
        total.backward()
        runs.append((total, h.grad.clone(), w.grad.clone()))
    (total16, h16, w16), (total_em, h_em, w_em) = runs
    torch.testing.assert_close(total_em, total16, rtol=1e-4, atol=0)
    torch.testing.assert_close(h_em, h16, rtol=2e-2, atol=1e-5)
    torch.testing.assert_close(w_em, w16, rtol=2e-2, atol=1e-5)


@pytest.mark.parametrize("flags, native", [("flags : fpu avx2 avx512f", False), ("flags : avx512f amx_bf16", True),
                                           ("flags : avx512f avx512_bf16", True)])
def test_the_cpu_flags_decide_between_bf16_and_emulated_products(monkeypatch, flags, native):
    monkeypatch.setattr(bf16_matmuls, "cpu_flags", lambda: flags)
    bf16_matmuls.native_on_this_cpu.cache_clear()
    try:
        assert bf16_matmuls.native_on_this_cpu() == native
        assert bf16_matmuls.operand(torch.ones(2)).dtype == (torch.bfloat16 if native else torch.float32)
    finally:
        bf16_matmuls.native_on_this_cpu.cache_clear()
