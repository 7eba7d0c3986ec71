"""torch.library.opcheck on the registered op family (schema, fake kernels, autograd registration)."""

import pytest
import torch

from fused_dsconv.testing import make_case

OPS = torch.ops.fused_dsconv


def cases():
    for stride, dilation, cl in ((1, 1, False), (2, 3, True)):
        for dtype in (torch.float32, torch.float64):
            yield make_case(2, 3, 5, 7, 6, stride=stride, dilation=dilation, channels_last=cl).cast(dtype)


@pytest.mark.parametrize("case", list(cases()), ids=lambda c: f"s{c.stride}d{c.dilation}{c.x.dtype}")
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(case, requires_grad):
    c = case
    for t in (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias):
        t.requires_grad_(requires_grad)
    torch.library.opcheck(
        OPS.forward_eval.default, (c.x, c.dw_weight, c.pw_weight, c.bias, c.stride, c.dilation, "reference")
    )
    for save_y in (True, False):
        torch.library.opcheck(
            OPS.forward_train.default,
            (
                c.x,
                c.dw_weight,
                c.pw_weight,
                c.bias,
                c.bn_weight,
                c.bn_bias,
                c.stride,
                c.dilation,
                1e-5,
                save_y,
                "reference",
            ),
        )


def test_opcheck_backward_ops():
    c = make_case(2, 3, 5, 6, 6, stride=2, dilation=2)
    out, y, mean, var = OPS.forward_train(
        c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, 2, 2, 1e-5, True, "reference"
    )
    g = torch.randn_like(out)
    torch.library.opcheck(
        OPS.backward_train.default,
        (g, c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, y, mean, var, 2, 2, 1e-5, "reference"),
    )
    torch.library.opcheck(
        OPS.backward_train.default,
        (g, c.x, c.dw_weight, c.pw_weight, None, None, None, None, mean, var, 2, 2, 1e-5, "reference"),
    )
    torch.library.opcheck(OPS.backward_eval.default, (g, out, c.x, c.dw_weight, c.pw_weight, 2, 2, "reference"))
    # output_mask: the fake kernels must describe the empty tensors of unwanted gradients
    train = (g, c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, y, mean, var, 2, 2, 1e-5, "reference")
    for mask in ([False, True, True], [True, True, False], [False, False, True], [False, False, False]):
        torch.library.opcheck(OPS.backward_train.default, (*train, mask))
        torch.library.opcheck(
            OPS.backward_eval.default, (g, out, c.x, c.dw_weight, c.pw_weight, 2, 2, "reference", mask)
        )
        got = OPS.backward_train(*train, mask)
        assert [t.numel() > 0 for t in got[:3]] == mask


@pytest.mark.parametrize("case", list(cases())[::3], ids=lambda c: f"s{c.stride}d{c.dilation}{c.x.dtype}")
def test_opcheck_split_passes(case):
    """The split passes of the synchronised block (no autograd of their own: fused_dsconv/distributed.py's
    function differentiates the composition)."""
    c = case
    conv = (c.x, c.dw_weight, c.pw_weight, c.bias)
    bn = (c.bn_weight, c.bn_bias)
    for save_y in (True, False):
        torch.library.opcheck(OPS.forward_stats.default, (*conv, c.stride, c.dilation, save_y, "reference"))
    y, mean, var = OPS.forward_stats(*conv, c.stride, c.dilation, True, "reference")
    for y_in in (y, None):
        torch.library.opcheck(
            OPS.forward_normalize.default, (*conv, y_in, mean, var, *bn, c.stride, c.dilation, 1e-5, "reference")
        )
    g = torch.randn_like(y)
    for affine in (bn, (None, None)):
        torch.library.opcheck(OPS.backward_reduce.default, (g, y, mean, var, *affine, 1e-5, "reference"))
        apply = (g, *conv[:3], y, mean, var, *affine, mean * 0.1, var * 0.1, c.stride, c.dilation, 1e-5, "reference")
        torch.library.opcheck(OPS.backward_apply.default, apply)
        torch.library.opcheck(OPS.backward_apply.default, (*apply, [True, False, False]))


def test_statistics_outputs_are_not_differentiable():
    c = make_case(2, 3, 4, 5, 5)
    c.x.requires_grad_()
    out, y, mean, var = OPS.forward_train(
        c.x, c.dw_weight, c.pw_weight, None, None, None, 1, 1, 1e-5, True, "reference"
    )
    assert out.requires_grad and not (y.requires_grad or mean.requires_grad or var.requires_grad)


def test_relu_propagates_nan():
    c = make_case(2, 3, 4, 5, 5)
    c.x[0, 0, 2, 2] = float("nan")
    out = OPS.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, 1, 1, "reference")
    assert out[0, :, 2, 2].isnan().all() and not out[1].isnan().any()
