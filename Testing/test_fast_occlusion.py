"""Fast occlusion: incremental inference gives the full-inference map; fallback; coarse-to-fine mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from XAIExplainLib.explainers import Occlusion
from XAIExplainLib.targets import class_logit, region_logit_sum

SIZE = 32


def _image(size: int = SIZE) -> torch.Tensor:
    return torch.randn(1, 1, size, size, size, generator=torch.Generator().manual_seed(0))


def _relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / (b.max() - b.min()))


def _both(network: torch.nn.Module, target, window: int = 8, stride: int = 8, image: torch.Tensor | None = None):
    image = _image() if image is None else image
    fast = Occlusion(network, window=window, stride=stride)
    slow = Occlusion(network, window=window, stride=stride, incremental=False)
    return fast, fast.attribute(image, target), slow.attribute(image, target)


@pytest.mark.parametrize("stride", [8, 5])
def test_incremental_equals_full_inference_on_a_resnet(stride):
    from monai.networks.nets import ResNet

    torch.manual_seed(0)
    network = ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=[4, 8, 16, 32], spatial_dims=3,
                     n_input_channels=1, num_classes=2).eval()
    fast, incremental, full = _both(network, class_logit(1), stride=stride)
    assert fast.inference == "incremental"
    assert _relative_difference(incremental, full) <= 1e-4


def test_incremental_equals_full_inference_on_a_unet():
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    network = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2),
                   num_res_units=1).eval()
    region = torch.zeros(SIZE, SIZE, SIZE)
    region[8:24, 8:24, 8:24] = 1
    fast, incremental, full = _both(network, region_logit_sum(1, region))
    assert fast.inference == "incremental"  # its first convolution; instance norm then runs on full tensors
    assert _relative_difference(incremental, full) <= 1e-4


class _Branching(torch.nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x)
        if features.mean() > 0:
            features = features * 2
        return features.mean(dim=(2, 3, 4))


def test_networks_it_cannot_handle_fall_back_to_full_inference():
    torch.manual_seed(0)
    network = _Branching().eval()
    fast, incremental, full = _both(network, class_logit(1))
    assert fast.inference.startswith("full (the network cannot be traced")
    assert torch.allclose(incremental, full)

    scripted = torch.jit.script(network)
    fast, incremental, full = _both(scripted, class_logit(1))
    assert fast.inference == "full (TorchScript models cannot be traced)"
    assert torch.allclose(incremental, full)


class _BoxReader(torch.nn.Module):
    """A known answer: the 'lesion' logit is a weighted mean of smoothed intensity inside one box."""

    def __init__(self) -> None:
        super().__init__()
        self.smooth = torch.nn.Conv3d(1, 1, 3, padding=1, bias=False)
        torch.nn.init.constant_(self.smooth.weight, 1.0 / 27)
        weights = torch.zeros(1, 1, SIZE, SIZE, SIZE)
        weights[0, 0, 4:20, 8:24, 12:28] = torch.linspace(0.5, 1.5, 16)
        self.register_buffer("weights", weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lesion = (F.relu(self.smooth(x)) * self.weights).flatten(1).sum(dim=1) / self.weights.sum()
        return torch.stack([-lesion, lesion], dim=1)


def _approximate_and_exact() -> tuple[torch.Tensor, torch.Tensor]:
    network = _BoxReader().eval()
    image = _image().abs() + 1.0
    exact = Occlusion(network, window=4).attribute(image, class_logit(1))
    approximate = Occlusion(network, window=4, mode="approximate")
    assert approximate.parameters()["mode"] == "approximate"
    return approximate.attribute(image, class_logit(1)), exact


def test_approximate_mode_finds_the_evidence_and_keeps_its_exact_values():
    fast, exact = _approximate_and_exact()
    peak = divmod(int(fast[0, 0].argmax()), SIZE * SIZE)[0]
    assert 4 <= peak < 20  # the peak lies in the box's slab along the first axis
    refined = (fast - exact).abs() < 1e-6
    strongest = exact >= exact.flatten().quantile(0.99)
    assert refined[strongest].float().mean() > 0.75  # most of the strongest evidence gets its exact value


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="occlusion mode"):
        Occlusion(torch.nn.Identity(), mode="fast")
