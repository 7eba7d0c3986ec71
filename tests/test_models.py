"""The paper's classifier: architecture counts, training step, compile, registry."""

import pytest
import torch

from fused_dsconv import JointBlock, JointNet, complexity, create_model, list_models
from fused_dsconv.models import complexity_table

# Pinned counts (produced by fused_dsconv.models.complexity_table; README's table is the same).
# params at (alpha, classes); multiply-adds per image at (alpha, resolution) with 1000 classes.
# Checked by hand for (0.75, 10): stem 648 + blocks 1,201,704 + fc 7,690 = 1,210,042; and for the
# alpha-1 multiply-adds at 224: stem 43,352,064 + blocks 347,744,768 + fc 1,024,000 = 392,120,832.
PARAMS = {
    (1.0, 10): 2_136_138,
    (1.0, 200): 2_330_888,
    (1.0, 1000): 3_150_888,
    (0.75, 10): 1_210_042,
    (0.75, 1000): 1_971_352,
    (0.5, 10): 545_322,
    (0.5, 1000): 1_053_192,
}
MACS = {
    (1.0, 224): 392_120_832,
    (1.0, 192): 288_360_448,
    (1.0, 160): 200_563_200,
    (0.75, 224): 231_470_976,
    (0.5, 224): 112_567_552,
}


def test_parameter_counts_are_pinned():
    for (alpha, n), params in PARAMS.items():
        assert complexity(JointNet(num_classes=n, alpha=alpha), 224)["params"] == params, (alpha, n)
    # The conference paper reports 3.1M parameters for the 1000-class network at alpha 1.
    assert abs(PARAMS[(1.0, 1000)] - 3.1e6) < 0.1e6


def test_multiply_adds_are_pinned():
    for (alpha, res), macs in MACS.items():
        model = JointNet(num_classes=1000, alpha=alpha, rho=res / 224)
        assert model.resolution == res
        assert complexity(model, res)["macs"] == macs, (alpha, res)
    rows = complexity_table(alphas=(1.0,), rhos=(1.0, 0.857, 0.714), classes=(1000,))
    assert [r["resolution"] for r in rows] == [224, 192, 160]


def test_architecture_follows_table1():
    model = create_model("jointnet_a100_d3", num_classes=10)
    blocks = list(model.blocks)
    assert len(blocks) == 9 and all(isinstance(b, JointBlock) for b in blocks)
    assert [(b.dw.in_channels, b.pw.out_channels, b.stride) for b in blocks] == [
        (32, 64, 2),
        (64, 128, 2),
        (128, 128, 1),
        (128, 256, 2),
        (256, 256, 1),
        (256, 512, 2),
        (512, 512, 1),
        (512, 1024, 2),
        (1024, 1024, 1),
    ]
    assert all(b.dilation == 3 for b in blocks)
    per_block = JointNet(num_classes=10, dilation=[1, 2, 3, 4, 1, 2, 3, 4, 1])
    assert [b.dilation for b in per_block.blocks] == [1, 2, 3, 4, 1, 2, 3, 4, 1]


@pytest.mark.parametrize("alpha", [0.5, 0.25])
def test_forward_backward_and_resize(alpha):
    model = JointNet(num_classes=10, alpha=alpha, rho=0.25, dilation=2, backend="reference")  # 56x56 input side
    x = torch.randn(2, 3, 32, 32)  # resized inside forward to 56x56
    logits = model.train()(x)
    assert logits.shape == (2, 10)
    torch.nn.functional.cross_entropy(logits, torch.tensor([1, 2])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert model.blocks[0].last_backend == "reference"
    with pytest.raises(ValueError, match="resize_input=False"):
        JointNet(num_classes=10, rho=0.25, resize_input=False)(x)


def test_registry():
    names = list_models()
    assert "jointnet_a100_d3" in names and "jointnet_a050_d1" in names and len(names) == 12
    m = create_model("jointnet_a075_d2", num_classes=200, rho=0.857)
    assert (m.alpha, m.dilations[0], m.num_classes, m.resolution) == (0.75, 2, 200, 192)
    with pytest.raises(ValueError, match="did you mean jointnet_a100_d3"):
        create_model("jointnet_a100_d30")


@pytest.mark.slow
def test_torch_compile_classifier_fullgraph():
    model = JointNet(num_classes=10, alpha=0.25, rho=0.25, dilation=3, backend="reference")
    compiled = torch.compile(model, fullgraph=True)  # inductor on CPU
    x = torch.randn(2, 3, 56, 56)
    out = compiled(x)
    out.sum().backward()
    ref = JointNet(num_classes=10, alpha=0.25, rho=0.25, dilation=3, backend="reference")
    ref.load_state_dict(model.state_dict())
    torch.testing.assert_close(out, ref(x), rtol=1e-4, atol=1e-4)
