"""Bad input is refused with an error naming the argument, before anything runs or any state changes."""

import pytest
import torch
import torch.nn as nn

from fused_dsconv import JointBlock, create_model, ops
from fused_dsconv.testing import make_case

OPS = torch.ops.fused_dsconv


def _train_case():
    c = make_case(2, 3, 5, 7, 6, stride=2, dilation=2)
    out, y, mean, var = OPS.forward_train(
        c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, 2, 2, 1e-5, True, "reference"
    )
    return c, out, y, mean, var


def _backward_train(c, g, y, mean, var, /, **override):
    args = dict(
        grad_out=g,
        x=c.x,
        dw_weight=c.dw_weight,
        pw_weight=c.pw_weight,
        bias=c.bias,
        bn_weight=c.bn_weight,
        bn_bias=c.bn_bias,
        y=y,
        mean=mean,
        var=var,
        stride=2,
        dilation=2,
        eps=1e-5,
    )
    args.update(override)
    return OPS.backward_train(*args.values(), "reference")


# -- the backward ops validate every input (issue: a wrong-batch grad_out was silently broadcast) -----
@pytest.mark.parametrize("device", ["cpu", "meta"])  # meta: the fake kernels run the same checks
def test_backward_train_checks_every_input(device):
    c, out, y, mean, var = _train_case()
    c = type(c)(*(t.to(device) if isinstance(t, torch.Tensor) else t for t in c.__dict__.values()))
    out, y, mean, var = (t.to(device) for t in (out, y, mean, var))
    g = torch.randn_like(out)
    bad = [
        (
            ValueError,
            r"grad_out must have the forward output's shape \[N, K, Ho, Wo\] = \(2, 5, 4, 3\)",
            dict(grad_out=g[:1]),
        ),
        (ValueError, r"grad_out must have the forward output's shape", dict(grad_out=g[..., :2])),
        (TypeError, r"grad_out must have x's dtype torch.float32", dict(grad_out=g.double())),
        (ValueError, r"y must have the forward output's shape", dict(y=y[:, :4])),
        (TypeError, r"y must have x's dtype", dict(y=y.half())),
        (ValueError, r"mean must have shape \(5,\)", dict(mean=mean[:4])),
        (TypeError, r"var must be torch.float32", dict(var=var.double())),
        (ValueError, r"dw_weight must have shape", dict(dw_weight=c.dw_weight[:2])),
        (ValueError, r"pw_weight must have shape", dict(pw_weight=c.pw_weight[:, :2])),
        (ValueError, r"bn_weight must have shape \(5,\)", dict(bn_weight=c.bn_weight[:3])),
        (ValueError, r"bn_weight and bn_bias must be given together", dict(bn_bias=None)),
        (ValueError, r"stride must be 1 or 2", dict(stride=3)),
    ]
    for exc, match, override in bad:
        with pytest.raises(exc, match=match):
            _backward_train(c, g, y, mean, var, **override)


def test_backward_train_device_mismatch_is_named():
    c, out, y, mean, var = _train_case()
    with pytest.raises(ValueError, match=r"grad_out is on meta but x is on cpu"):
        _backward_train(c, torch.empty(out.shape, device="meta"), y, mean, var)


def test_backward_train_accepts_recompute_markers():
    """y None (recompute) and the empty y that forward_train(save_y=False) returns mean the same."""
    c, out, y, mean, var = _train_case()
    g = torch.randn_like(out)
    a = _backward_train(c, g, None, mean, var)
    b = _backward_train(c, g, torch.empty(0), mean, var)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    with pytest.raises(ValueError, match="y must have the forward output's shape"):
        _backward_train(c, g, torch.empty(0, 5), mean, var)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_backward_eval_checks_every_input(device):
    c = make_case(2, 3, 5, 7, 6, stride=1, dilation=1, device=device)
    out = OPS.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, 1, 1, "reference")
    g = torch.randn_like(out)

    def call(**o):
        args = dict(grad_out=g, out=out, x=c.x, dw_weight=c.dw_weight, pw_weight=c.pw_weight, stride=1, dilation=1)
        return OPS.backward_eval(*{**args, **o}.values(), "reference")

    with pytest.raises(ValueError, match=r"grad_out must have the forward output's shape .* got \(1, 5, 7, 6\)"):
        call(grad_out=g[:1])
    with pytest.raises(ValueError, match=r"out must have the forward output's shape"):
        call(out=out[:, :4])
    with pytest.raises(TypeError, match=r"out must have x's dtype"):
        call(out=out.double())
    with pytest.raises(ValueError, match=r"dw_weight must have shape"):
        call(dw_weight=c.dw_weight[:, :, :2])
    call()  # and the valid call runs


def test_strided_grad_out_is_accepted():
    """Backward reads activations through their strides: an expanded gradient is valid input."""
    c, out, y, mean, var = _train_case()
    g = torch.ones(1, 1, 1, 1).expand_as(out)
    a = _backward_train(c, g, y, mean, var)
    b = _backward_train(c, g.contiguous(), y, mean, var)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)


# -- a forward that raises leaves the module unchanged ---------------------------------------------
def _state(block):
    return {k: v.clone() for k, v in block.state_dict().items()}


def _assert_same_state(block, before):
    after = block.state_dict()
    assert list(after) == list(before)
    for k in before:
        assert torch.equal(after[k], before[k]), k


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize(
    "x",
    [torch.randn(2, 4, 0, 5), torch.randn(1, 4, 1, 1), torch.randn(2, 4, 5, 5).double()],
    ids=["zero-height", "one-value-per-channel", "dtype-mismatch"],
)
def test_failed_training_forward_changes_no_state(x, momentum):
    block = JointBlock(4, 6, backend="reference", momentum=momentum).train()
    block(torch.randn(2, 4, 5, 5))  # some history, so a wrong update would show
    before = _state(block)
    with pytest.raises((ValueError, RuntimeError)):
        block(x)
    _assert_same_state(block, before)


def test_backend_that_cannot_run_changes_no_state():
    block = JointBlock(4, 6, backend="native").train()  # a CPU input: native cannot run it
    before = _state(block)
    with pytest.raises(RuntimeError, match="cannot run this input"):
        block(torch.randn(2, 4, 5, 5))
    _assert_same_state(block, before)


def test_failing_op_changes_no_state(monkeypatch):
    """An error inside the op itself (after every check passed) also leaves the counters alone."""
    block = JointBlock(4, 6, backend="reference", momentum=None).train()
    before = _state(block)

    def boom(*a, **k):
        raise RuntimeError("kernel failed")

    monkeypatch.setattr(ops, "forward_train", boom)
    with pytest.raises(RuntimeError, match="kernel failed"):
        block(torch.randn(2, 4, 5, 5))
    _assert_same_state(block, before)


# -- dtypes: as nn.Sequential outside autocast ------------------------------------------------------
@pytest.mark.parametrize(
    "block_dtype,x_dtype",
    [(torch.float64, torch.float32), (torch.float32, torch.float64), (torch.float32, torch.bfloat16)],
)
def test_dtype_mismatch_raises_like_nn_sequential(block_dtype, x_dtype):
    block = JointBlock(4, 6, backend="reference", dtype=block_dtype)
    x = torch.randn(2, 4, 5, 5, dtype=x_dtype)
    with pytest.raises(RuntimeError):
        block.to_unfused()(x)  # what the unfused layers do
    with pytest.raises(
        RuntimeError, match=f"input dtype {x_dtype} does not match the block's parameter dtype {block_dtype}"
    ):
        block(x)


def test_autocast_leaves_float64_alone_like_nn_sequential():
    block = JointBlock(4, 6, backend="reference", dtype=torch.float64).eval()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = block(x), block.to_unfused()(x)
        assert out.dtype == ref.dtype == torch.float64
        torch.testing.assert_close(out, ref)
        with pytest.raises(RuntimeError):
            block.to_unfused()(x.float())
        with pytest.raises(RuntimeError, match="does not match"):
            block(x.float())


# -- clear errors naming the argument ---------------------------------------------------------------
def test_unknown_backend_in_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv("FUSED_DSCONV_BACKEND", "cudnn")
    with pytest.raises(
        ValueError,
        match=r"FUSED_DSCONV_BACKEND='cudnn' is not a backend: set it to one of "
        r"\['auto', 'native', 'triton', 'reference'\]",
    ):
        JointBlock(4, 6)(torch.randn(2, 4, 5, 5))


@pytest.mark.parametrize("stride", [2.0, True, "2", 3])
def test_block_rejects_non_int_stride(stride):
    with pytest.raises(ValueError, match=r"stride must be 1 or 2 \(an int\)"):
        JointBlock(4, 6, stride=stride)


@pytest.mark.parametrize("dilation", [2.0, True, 0])
def test_block_rejects_bad_dilation(dilation):
    with pytest.raises(ValueError, match="dilation must be an integer >= 1"):
        JointBlock(4, 6, dilation=dilation)


def test_create_model_checks_its_numbers():
    with pytest.raises(TypeError, match=r"alpha must be a number \(int or float\), got str '0.5'"):
        create_model("jointnet_a050_d1", alpha="0.5")
    with pytest.raises(TypeError, match="rho must be a number"):
        create_model("jointnet_a050_d1", rho=True)
    with pytest.raises(ValueError, match=r"rho=0.001 gives an input side of round\(224 \* rho\) = 0 pixels"):
        create_model("jointnet_a050_d1", rho=0.001)
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        create_model("jointnet_a050_d1", num_classes=True)
    assert create_model("jointnet_a050_d1", rho=0.003).resolution == 1  # the smallest valid side runs
    assert isinstance(create_model("jointnet_a050_d1", alpha=1), nn.Module)  # an int is a number


def test_model_refuses_a_batch_its_last_block_cannot_train_on_before_any_block_updates():
    model = create_model("jointnet_a050_d1", num_classes=3, rho=0.1).train()  # 22x22 -> 1x1 in the last block
    before = _state(model)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model(torch.randn(1, 3, 22, 22))
    _assert_same_state(model, before)
    model(torch.randn(2, 3, 22, 22))  # batch 2 trains
