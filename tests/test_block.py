"""JointBlock against the unfused modules it replaces: same numbers, same state, same errors."""

import copy

import pytest
import torch
import torch.nn as nn

from fused_dsconv import JointBlock, backends
from fused_dsconv.backends.reference import ReferenceBackend
from fused_dsconv.testing import assert_close

D = torch.float64
# The block semantics are backend-independent; the reference backend keeps these tests exact
# (float64) and fast. Each fused backend is compared with the reference in its own test file.
BACKEND = "reference"


def pair(c, k, stride=1, dilation=1, **kw):
    block = JointBlock(c, k, stride, dilation, backend=BACKEND, dtype=D, **kw)
    with torch.no_grad():
        for p in block.parameters():
            p.uniform_(0.3, 1.2) if p.dim() == 1 else p.normal_(0, 0.5)
    return block, block.to_unfused()


def run_steps(module, xs, lr=0.1):
    """A few SGD steps; returns outputs and grads per step."""
    opt = torch.optim.SGD(module.parameters(), lr=lr)
    record = []
    for x in xs:
        x = x.clone().requires_grad_()
        out = module(x)
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
        opt.zero_grad()
        loss.backward()
        record.append((out.detach(), x.grad, [p.grad.clone() for p in module.parameters()]))
        opt.step()
    return record


def assert_same_run(block, seq, xs):
    for step, (a, b) in enumerate(zip(run_steps(block, xs), run_steps(seq, xs))):
        assert_close(a[0], b[0], D, f"step {step} out", verbose=False)
        assert_close(a[1], b[1], D, f"step {step} grad x", verbose=False)
        for i, (ga, gb) in enumerate(zip(a[2], b[2])):
            assert_close(ga, gb, D, f"step {step} grad param {i}", verbose=False)
    sa, sb = block.state_dict(), seq.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert_close(sa[key].double(), sb[key].double(), D, key, verbose=False)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dilation", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("channels_last", [False, True])
def test_training_steps_match_unfused(stride, dilation, channels_last):
    block, seq = pair(5, 7, stride, dilation)
    mf = torch.channels_last if channels_last else torch.contiguous_format
    xs = [torch.randn(3, 5, 9, 11, dtype=D).add(0.3).contiguous(memory_format=mf) for _ in range(3)]
    assert_same_run(block.train(), seq.train(), xs)
    assert_same_run(block.eval(), seq.eval(), xs)  # eval after training: running stats in use
    out = block(xs[0])
    assert out.is_contiguous(memory_format=mf)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("track_running_stats", [True, False])
@pytest.mark.parametrize("bias", [False, True])
def test_batch_norm_options_match_unfused(momentum, affine, track_running_stats, bias):
    block, seq = pair(4, 6, 2, 3, momentum=momentum, affine=affine, track_running_stats=track_running_stats, bias=bias)
    xs = [torch.randn(2, 4, 7, 7, dtype=D) for _ in range(3)]
    assert_same_run(block.train(), seq.train(), xs)
    assert_same_run(block.eval(), seq.eval(), xs)
    if track_running_stats:
        assert int(block.bn.num_batches_tracked) == int(seq[2].num_batches_tracked)


def test_recompute_mode_gives_the_same_gradients():
    block, _ = pair(4, 6, 1, 2)
    again = copy.deepcopy(block)
    again.recompute = True
    xs = [torch.randn(2, 4, 6, 6, dtype=D)]
    for a, b in zip(run_steps(block, xs), run_steps(again, xs)):
        for ga, gb in zip(a[2], b[2]):
            assert_close(ga, gb, D, "grad", verbose=False)


def test_one_value_per_channel_in_training_raises_like_batchnorm():
    block, seq = pair(3, 4)
    x = torch.randn(1, 3, 1, 1, dtype=D)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        seq(x)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        block(x)
    assert block.eval()(x).shape == (1, 4, 1, 1)


@pytest.mark.parametrize("training", [False, True])
def test_empty_batch(training):
    block, seq = pair(3, 4, 2)
    block.train(training), seq.train(training)
    x = torch.randn(0, 3, 5, 5, dtype=D, requires_grad=True)
    out = block(x)
    assert out.shape == seq(x.detach()).shape == (0, 4, 3, 3)
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert_close(block.bn.running_mean, seq[2].running_mean, D, "running_mean", verbose=False)
    assert int(block.bn.num_batches_tracked) == int(seq[2].num_batches_tracked)


def test_state_dict_round_trips_both_ways():
    block, seq = pair(4, 6, 2, 3, bias=True)
    run_steps(block.train(), [torch.randn(2, 4, 6, 6, dtype=D)])
    fresh_seq = nn.Sequential(
        nn.Conv2d(4, 4, 3, 2, 3, 3, groups=4), nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6), nn.ReLU()
    ).double()
    fresh_seq.load_state_dict(block.state_dict())  # strict: exactly the same keys and shapes
    fresh_block = JointBlock(4, 6, 2, 3, bias=True, backend=BACKEND, dtype=D)
    fresh_block.load_state_dict(fresh_seq.state_dict())
    x = torch.randn(2, 4, 6, 6, dtype=D)
    block.eval(), fresh_seq.eval(), fresh_block.eval()
    assert_close(fresh_block(x), fresh_seq(x), D, "round trip", verbose=False)
    assert_close(block(x), fresh_block(x), D, "round trip", verbose=False)


def test_from_unfused_and_back():
    seq = nn.Sequential(
        nn.Conv2d(6, 6, 3, 1, 2, 2, groups=6, bias=False),
        nn.Conv2d(6, 3, 1),
        nn.BatchNorm2d(3, momentum=None),
        nn.ReLU(),
    ).double()
    block = JointBlock.from_unfused(seq, backend=BACKEND)
    assert (block.stride, block.dilation, block.bn.momentum) == (1, 2, None)
    assert list(block.state_dict()) == list(seq.state_dict())
    xs = [torch.randn(2, 6, 5, 5, dtype=D) for _ in range(2)]
    assert_same_run(block, seq, xs)
    back = block.to_unfused()
    assert list(back.state_dict()) == list(seq.state_dict())
    x = torch.randn(2, 6, 5, 5, dtype=D)
    assert_close(back.eval()(x), block.eval()(x), D, "to_unfused", verbose=False)


@pytest.mark.parametrize(
    "layers,match",
    [
        (lambda: (nn.Conv2d(4, 4, 5, padding=2, groups=4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)), "kernel_size"),
        (lambda: (nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)), "depthwise"),
        (lambda: (nn.Conv2d(4, 4, 3, padding=1, groups=4, stride=3), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)), "stride"),
        (lambda: (nn.Conv2d(4, 4, 3, padding=0, groups=4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)), "padding"),
        (lambda: (nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)), "1x1"),
        (lambda: (nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 5, 1), nn.BatchNorm2d(4)), "num_features"),
        (lambda: (nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 4, 1), nn.LayerNorm(4)), "BatchNorm2d"),
    ],
)
def test_from_unfused_rejects_what_it_cannot_fuse(layers, match):
    with pytest.raises((ValueError, TypeError), match=match):
        JointBlock.from_unfused(*layers())


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match=r"stride must be 1 or 2 \(an int\), got 3"):
        JointBlock(4, 4, stride=3)
    with pytest.raises(ValueError, match="dilation must be an integer >= 1, got 0"):
        JointBlock(4, 4, dilation=0)
    with pytest.raises(ValueError, match="in_channels must be a positive integer"):
        JointBlock(0, 4)
    with pytest.raises(ValueError, match="backend must be one of"):
        JointBlock(4, 4, backend="cudnn")
    block = JointBlock(4, 6)
    with pytest.raises(ValueError, match="4-D input"):
        block(torch.randn(4, 8, 8))
    with pytest.raises(ValueError, match="expects 4 input channels"):
        block(torch.randn(2, 3, 8, 8))
    with pytest.raises(TypeError, match="floating-point"):
        block(torch.ones(2, 4, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="is on meta but the block's parameters are on cpu"):
        block(torch.empty(2, 4, 8, 8, device="meta"))


def test_op_rejects_bad_inputs_by_name():
    from fused_dsconv import ops

    x, dw, pw, b = torch.randn(2, 4, 5, 5), torch.randn(4, 1, 3, 3), torch.randn(6, 4), torch.randn(6)
    with pytest.raises(ValueError, match="dw_weight must have shape"):
        ops.forward_eval(x, torch.randn(4, 1, 5, 5), pw, b, 1, 1)
    with pytest.raises(ValueError, match="pw_weight must have shape"):
        ops.forward_eval(x, dw, torch.randn(6, 3), b, 1, 1)
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\)"):
        ops.forward_eval(x, dw, pw, torch.randn(5), 1, 1)
    with pytest.raises(TypeError, match="pw_weight must have x's dtype"):
        ops.forward_eval(x, dw, pw.double(), b, 1, 1)
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        ops.forward_eval(x, dw, pw, b, 0, 1)
    with pytest.raises(ValueError, match="dilation must be an integer >= 1"):
        ops.forward_eval(x, dw, pw, b, 1, 0)
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.forward_eval(x, dw, pw, b, 1, 1, "nope")


def test_forced_backend_that_cannot_run_says_why(monkeypatch):
    block = JointBlock(4, 6, backend="native")
    with pytest.raises(RuntimeError, match="backend 'native' was requested but cannot run this input"):
        block(torch.randn(2, 4, 5, 5))
    monkeypatch.setenv("FUSED_DSCONV_BACKEND", "reference")
    auto = JointBlock(4, 6)
    auto(torch.randn(2, 4, 5, 5))
    assert auto.last_backend == "reference"
    monkeypatch.setenv("FUSED_DSCONV_BACKEND", "bogus")
    with pytest.raises(ValueError, match="FUSED_DSCONV_BACKEND='bogus' is not a backend"):
        auto(torch.randn(2, 4, 5, 5))


def test_sync_batchnorm_conversion_does_not_skip_synchronisation(monkeypatch):
    model = nn.Sequential(JointBlock(4, 6, backend=BACKEND), JointBlock(6, 6, backend=BACKEND)).double()
    expected = nn.Sequential(model[0].to_unfused(), model[1].to_unfused())
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert all(isinstance(b.bn, nn.SyncBatchNorm) for b in converted)
    calls = []
    original = nn.SyncBatchNorm.forward
    monkeypatch.setattr(nn.SyncBatchNorm, "forward", lambda self, x: calls.append(self) or original(self, x))
    x = torch.randn(2, 4, 5, 5, dtype=D)
    out = converted.train()(x)
    # The SyncBatchNorm layers themselves ran (they synchronise when a process group exists).
    assert len(calls) == 2 and all(b.last_backend == "unfused" for b in converted)
    assert_close(out, expected.train()(x), D, "sync bn out", verbose=False)


def test_eval_does_not_touch_module_parameters():
    block, _ = pair(4, 6)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    block.eval()(torch.randn(2, 4, 5, 5, dtype=D))
    for k, v in block.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_in_the_autocast_dtype(dtype):
    block = JointBlock(4, 6, backend=BACKEND)
    x = torch.randn(2, 4, 6, 6)
    with torch.autocast("cpu", dtype=dtype):
        out = block.train()(x)
    assert out.dtype == dtype
    out.float().sum().backward()
    assert block.pw.weight.grad.dtype == torch.float32 and block.bn.weight.grad.dtype == torch.float32
    ref = block.to_unfused()
    with torch.autocast("cpu", dtype=dtype):
        expected = ref.eval()(x)
    with torch.autocast("cpu", dtype=dtype):
        got = block.eval()(x)
    assert_close(got.float(), expected.float(), dtype, "autocast eval")


@pytest.mark.slow
@pytest.mark.parametrize("training", [True, False])
def test_torch_compile_fullgraph(training):
    block, seq = pair(4, 6, 2, 2, momentum=None)
    block.train(training), seq.train(training)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 4, 7, 7, dtype=D, requires_grad=True)
    out = compiled(x)
    out.sum().backward()
    x2 = x.detach().clone().requires_grad_()
    expected = seq(x2)
    expected.sum().backward()
    assert_close(out, expected, D, "compiled out", verbose=False)
    assert_close(x.grad, x2.grad, D, "compiled grad", verbose=False)
    assert_close(block.bn.running_var, seq[2].running_var, D, "compiled running_var", verbose=False)


def test_saved_activation_bytes_fused_vs_unfused():
    """What a training step keeps for backward, per block (N=4, C=8, K=16, 12x12 -> 6x6, float32).

    unfused Sequential(dw, pw, bn, ReLU) saves x, t = dw(x), y = pw(t), the BN output and the ReLU
    output; the fused op saves x and y (recompute mode: x only), plus per-channel statistics.
    """
    from fused_dsconv.saved_activations import module_saved_bytes

    block = JointBlock(8, 16, 2, 3, backend=BACKEND).train()
    x = torch.randn(4, 8, 12, 12)
    x_bytes, t_bytes, y_bytes = x.numel() * 4, 4 * 8 * 6 * 6 * 4, 4 * 16 * 6 * 6 * 4
    fused = module_saved_bytes(block, x)
    unfused = module_saved_bytes(block.to_unfused().train(), x)
    block.recompute = True
    recompute = module_saved_bytes(block, x)
    stats = 2 * 16 * 4
    assert fused == x_bytes + y_bytes + stats
    assert recompute == x_bytes + stats
    assert unfused >= x_bytes + t_bytes + 2 * y_bytes


class _CountingBackend(ReferenceBackend):
    """The reference backend, recording which primitives run."""

    name = "counting"

    def __init__(self):
        self.calls = []

    def __getattribute__(self, attr):
        value = super().__getattribute__(attr)
        if attr in (
            "forward_eval",
            "forward_train",
            "backward_eval",
            "backward_train",
            "forward_stats",
            "backward_reduce",
        ):
            self.calls.append(attr)
        return value


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("recompute", [False, True], ids=["saved", "recompute"])
def test_frozen_convolutions_run_no_convolution_gradient(monkeypatch, train, recompute):
    """With both conv weights frozen (in eval also the BN scale, folded into the 1x1 weight) and an input that
    needs no gradient, backward runs no convolution-gradient primitive, only per-channel sums, and the
    remaining gradients are still those of the unfused layers."""
    counting = _CountingBackend()
    monkeypatch.setattr(backends, "_REGISTRY", [counting, *backends._REGISTRY])
    block, seq = pair(4, 6, 2, 2, bias=True, recompute=recompute)
    block.backend = "counting"
    for m in (block, seq):
        m.train(train)
        m[0].weight.requires_grad_(False)
        m[1].weight.requires_grad_(False)
        if not train:  # eval folds the BN scale into the 1x1 weight: a trainable scale makes it need a gradient
            m[2].weight.requires_grad_(False)
    x = torch.randn(2, 4, 7, 9, dtype=D)
    w = torch.linspace(-1, 1, 2 * 6 * 4 * 5, dtype=D).view(2, 6, 4, 5)
    (block(x) * w).sum().backward()
    (seq(x) * w).sum().backward()
    assert "backward_train" not in counting.calls and "backward_eval" not in counting.calls, counting.calls
    assert ("backward_reduce" in counting.calls) == train
    for name, p in block.named_parameters():
        q = dict(seq.named_parameters())[name]
        assert (p.grad is None) == (q.grad is None) == (not p.requires_grad), name
        if p.grad is not None:
            assert_close(p.grad, q.grad, D, name)
    # Unfreezing one weight brings the full backward back (the check above could fail).
    counting.calls.clear()
    block[1].weight.requires_grad_(True)
    (block(x) * w).sum().backward()
    assert ("backward_train" if train else "backward_eval") in counting.calls
