"""Export: the BN-folded plain model matches JointNet, and the ONNX file runs in onnxruntime."""

import pytest
import torch
from torch import nn

from fused_dsconv import JointNet
from fused_dsconv import checkpoint as ckpt
from fused_dsconv.cli import main as cli
from fused_dsconv.export import PlainJointNet


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _trained_like(num_classes=10, alpha=0.25, dilation=3):
    """A JointNet with non-trivial BN statistics and affine parameters, in eval mode."""
    torch.manual_seed(0)
    model = JointNet(num_classes, alpha=alpha, rho=32 / 224, dilation=dilation)
    with torch.no_grad():
        for block in model.blocks:
            block.bn.running_mean.uniform_(-0.5, 0.5)
            block.bn.running_var.uniform_(0.5, 2.0)
            block.bn.weight.uniform_(0.5, 1.5)
            block.bn.bias.uniform_(-0.2, 0.2)
    return model.eval()


def test_plain_model_has_no_batchnorm_and_matches():
    model = _trained_like(dilation=2)
    plain = PlainJointNet(model)
    kinds = {type(m) for m in plain.modules()}
    assert nn.BatchNorm2d not in kinds
    assert kinds <= {PlainJointNet, nn.Sequential, nn.Conv2d, nn.ReLU, nn.AdaptiveAvgPool2d, nn.Linear}
    assert plain.blocks[0][0].dilation == (2, 2) and plain.blocks[0][1].bias is not None
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), atol=1e-5, rtol=1e-5)


def test_onnx_round_trip_through_onnxruntime(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from fused_dsconv.export import onnx_logits

    model = _trained_like()
    config = ckpt.model_config(
        model,
        model="jointnet_a025_d3",
        dataset="digits",
        classes=[str(i) for i in range(10)],
        mean=[0.3] * 3,
        std=[0.4] * 3,
    )
    ckpt.save_weights(model, tmp_path / "best.safetensors", config)
    path = tmp_path / "model.onnx"
    assert cli(["export", str(tmp_path), "--onnx", str(path), "--check"]) == 0
    assert "max abs logit difference" in capsys.readouterr().out

    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops and ops <= {
        "Conv",
        "Relu",
        "GlobalAveragePool",
        "ReduceMean",
        "Flatten",
        "Gemm",
        "Reshape",
        "MatMul",
        "Add",
    }, ops
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["resolution"] == "32" and meta["mean"] == "[0.3, 0.3, 0.3]"

    x = torch.randn(5, 3, 32, 32)  # batch size other than the export example's: dynamic axis
    with torch.no_grad():
        ref = model(x)
    got = onnx_logits(path, x)
    assert got.shape == (5, 10)
    assert (got - ref).abs().max().item() < 1e-4


@pytest.mark.slow
def test_onnx_dynamo_exporter(tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from fused_dsconv.export import export_onnx, onnx_logits

    model = _trained_like(dilation=4)
    path = export_onnx(model, tmp_path / "m.onnx", dynamo=True)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert (onnx_logits(path, x) - model(x)).abs().max().item() < 1e-4
