"""The spec and the reference backend against the unfused PyTorch modules, in float64."""

import pytest
import torch
import torch.nn as nn

from fused_dsconv import ops, spec
from fused_dsconv.testing import assert_close, make_case

D = torch.float64


def unfused(c, k, stride, dilation, bias=False):
    return nn.Sequential(
        nn.Conv2d(c, c, 3, stride, dilation, dilation, groups=c, bias=bias),
        nn.Conv2d(c, k, 1, bias=bias),
        nn.BatchNorm2d(k),
        nn.ReLU(),
    ).double()


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dilation", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("training", [True, False])
def test_spec_equals_unfused_modules(stride, dilation, training):
    seq = unfused(5, 7, stride, dilation, bias=True).train(training)
    with torch.no_grad():
        seq[2].running_mean.normal_()
        seq[2].running_var.uniform_(0.5, 2)
        seq[2].weight.uniform_(0.5, 1.5)
        seq[2].bias.normal_()
    rm, rv = seq[2].running_mean.clone(), seq[2].running_var.clone()
    x = torch.randn(3, 5, 11, 9, dtype=D)
    expected = seq(x)
    got = spec.joint_block(
        x,
        seq[0].weight,
        seq[1].weight,
        seq[2].weight,
        seq[2].bias,
        rm,
        rv,
        stride=stride,
        dilation=dilation,
        training=training,
        dw_bias=seq[0].bias,
        pw_bias=seq[1].bias,
    )
    assert_close(got, expected, D, "out")
    assert_close(rm, seq[2].running_mean, D, "running_mean")
    assert_close(rv, seq[2].running_var, D, "running_var")


@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 3), (1, 4)])
@pytest.mark.parametrize("affine", [True, False])
def test_reference_backend_gradcheck_train(stride, dilation, affine):
    c = make_case(2, 2, 3, 5, 4, stride=stride, dilation=dilation, affine=affine).cast(D)
    params = [
        t.requires_grad_() for t in (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias) if t is not None
    ]

    def f(*ts):
        x, dw, pw, b, *bn = ts
        g, be = bn if bn else (None, None)
        return ops.forward_train(x, dw, pw, b, g, be, stride, dilation, 1e-5, True, "reference")[0]

    assert torch.autograd.gradcheck(f, params)


@pytest.mark.parametrize("save_y", [True, False])
def test_reference_backend_gradcheck_recompute_and_eval(save_y):
    c = make_case(2, 2, 3, 5, 4, stride=2, dilation=2, channels_last=True).cast(D)
    for t in (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias):
        t.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda *ts: ops.forward_train(*ts, 2, 2, 1e-5, save_y, "reference")[0],
        (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias),
    )
    assert torch.autograd.gradcheck(
        lambda *ts: ops.forward_eval(*ts, 2, 2, "reference"), (c.x, c.dw_weight, c.pw_weight, c.bias)
    )


def test_fold_bn_matches_eval_batch_norm():
    seq = unfused(4, 6, 1, 2, bias=True).eval()
    with torch.no_grad():
        seq[2].running_mean.normal_()
        seq[2].running_var.uniform_(0.5, 2)
    x = torch.randn(2, 4, 8, 8, dtype=D)
    w, b = spec.fold_bn(
        seq[1].weight, seq[1].bias, seq[2].weight, seq[2].bias, seq[2].running_mean, seq[2].running_var, seq[2].eps
    )
    t = seq[0](x)
    got = torch.relu(torch.nn.functional.conv2d(t, w.double()[:, :, None, None], b.double()))
    assert_close(got, seq(x), D, "folded")
