"""The traffic/FLOP MODEL's byte counts checked by hand for one small case."""
import pytest

from fused_dsconv import perf_model as pm

# x [1, 2, 4, 4], stride 1 -> t [1, 2, 4, 4], y [1, 4, 4, 4]; float32 everywhere.
L = pm.Layer("tiny", n=1, c=2, k=4, h=4, w=4, stride=1, dilation=3)
X, T, Y = 1 * 2 * 16 * 4, 1 * 2 * 16 * 4, 1 * 4 * 16 * 4  # 128, 128, 256 bytes
WD, WP, PC = 9 * 2 * 4, 4 * 2 * 4, 4 * 4  # 72, 32, 16 bytes


def test_unfused_eval_bytes_by_hand():
    tr = pm.unfused(L, "eval")
    assert [k.name for k in tr.kernels] == ["dw_conv", "pw_conv", "bn_eval", "relu"]
    assert [k.bytes for k in tr.kernels] == [X + WD + T, T + WP + Y, Y + 4 * PC + Y, 2 * Y]
    assert tr.bytes == 328 + 416 + 576 + 512 == 1832


def test_fused_eval_bytes_by_hand():
    tr = pm.fused(L, "eval")
    assert len(tr.kernels) == 1
    assert tr.bytes == X + WD + WP + PC + Y == 504
    # FLOPs: depthwise 2*9*C*M, pointwise 2*K*C*M (M = 16), bias + ReLU 2 per y element.
    assert tr.flops == 2 * 9 * 2 * 16 + 2 * 4 * 2 * 16 + 2 * 64


def test_train_forward_bytes_by_hand():
    assert pm.unfused(L, "train_fwd").bytes == (X + WD + T) + (T + WP + Y) + (Y + 2 * PC) + (Y + 4 * PC + Y) + 2 * Y
    part = 1 * 2 * PC  # one 64-pixel tile: (sum, sum of squares) per channel
    tr = pm.fused(L, "train_fwd")
    assert [k.bytes for k in tr.kernels] == [X + WD + WP + PC + Y + part, part + 2 * PC, Y + 4 * PC + Y]
    assert tr.bytes == 536 + 64 + 576


def test_backward_bytes_by_hand():
    unf = pm.unfused(L, "train_fwd_bwd").bytes - pm.unfused(L, "train_fwd").bytes
    assert unf == (3 * Y) + (2 * Y + 4 * PC) + (3 * Y + 5 * PC) + (Y + WP + T) + (Y + T + WP) + (T + WD + X) + (T + X + WD)
    part, wpart = 2 * PC, (4 * 2 + 9 * 2) * 4  # one tile of stats partials and of [K, C] + [C, 9] weight partials
    fus = pm.fused(L, "train_fwd_bwd").bytes - pm.fused(L, "train_fwd").bytes
    assert fus == (2 * Y + 4 * PC + part) + (part + 2 * PC) + (X + 2 * Y + WD + WP + 6 * PC + T + wpart) \
        + (wpart + WP + WD) + (T + WD + X)
    rec = pm.fused(L, "train_fwd_bwd", recompute=True).bytes - pm.fused(L, "train_fwd_bwd").bytes
    assert rec == X + WD + WP + PC + Y


def test_stride_two_shapes_and_classifier_layers():
    l2 = pm.Layer("s2", 2, 8, 16, 5, 5, stride=2)
    assert (l2.ho, l2.wo, l2.m) == (3, 3, 18)
    layers = pm.classifier_layers(batch=1, alpha=1.0, rho=1.0, dilation=3)
    assert [l.name for l in layers] == [f"b{i}" for i in range(1, 10)]
    assert (layers[0].c, layers[0].h, layers[-1].k, layers[-1].h) == (32, 224, 1024, 7)


def test_roofline_is_max_of_bandwidth_and_compute_per_kernel():
    gpu = pm.GPUS["GTX 1080 Ti"]
    mem_bound = pm.Kernel("m", int(484e9), 0, 1)
    compute_bound = pm.Kernel("c", 0, 0, int(11.34e12))
    assert pm.roofline_s([mem_bound], gpu) == pytest.approx(1.0)
    assert pm.roofline_s([mem_bound, compute_bound], gpu) == pytest.approx(2.0)


def test_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        pm.unfused(L, "training")
