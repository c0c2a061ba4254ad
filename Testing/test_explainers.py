"""Each explainer on networks whose answer is known: they read only one box of the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from XAIExplainLib.errors import XAIInputError, XAIModelError
from XAIExplainLib.explainers import EXPLAINERS, make_explainer
from XAIExplainLib.targets import class_logit, region_logit_sum

SHAPE = (24, 20, 22)
BOX = (slice(4, 10), slice(12, 18), slice(6, 12))       # the only region the network reads
DECOY = (slice(14, 20), slice(2, 8), slice(12, 18))      # equally bright, but ignored by the network


class RegionReader(torch.nn.Module):
    """A classifier whose 'lesion' logit is the mean intensity inside BOX (and nothing else)."""

    def __init__(self, dims: int = 3) -> None:
        super().__init__()
        conv = {2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[dims]
        self.features = conv(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.weight[(0, 0, *([1] * dims))] = 1.0  # identity filter
        shape = SHAPE[:dims]
        mask = torch.zeros(1, 1, *shape)
        mask[(0, 0, *BOX[:dims])] = 1.0
        self.register_buffer("mask", mask)
        self.gate = torch.nn.Identity()  # the CAM layer: features seen through the mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.gate(F.relu(self.features(x)) * self.mask)
        lesion = features.flatten(1).sum(dim=1) / self.mask.sum()
        return torch.stack([-lesion, lesion], dim=1)


class RegionSegmenter(torch.nn.Module):
    """A segmenter: lesion logit = intensity - 1, but only inside BOX (elsewhere background wins)."""

    def __init__(self) -> None:
        super().__init__()
        self.reader = RegionReader()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lesion = self.reader.gate(F.relu(self.reader.features(x)) * self.reader.mask) - 1.0
        return torch.cat([-lesion, lesion], dim=1)


def _image(dims: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    shape = SHAPE[:dims]
    image = 0.1 * torch.rand(1, 1, *shape, generator=generator)
    image[(0, 0, *BOX[:dims])] += 2.0
    image[(0, 0, *DECOY[:dims])] += 2.0
    return image


def _dilated(box: tuple, margin: int, dims: int) -> tuple:
    return tuple(slice(max(s.start - margin, 0), s.stop + margin) for s in box[:dims])


def _params(method: str) -> dict:
    return {"occlusion": {"window": 3}, "smoothgrad": {"n_samples": 8}, "ig": {"n_steps": 16}}.get(method, {})


@pytest.mark.parametrize("method", list(EXPLAINERS))
def test_classifier_map_peaks_where_the_network_reads(method):
    network = RegionReader().eval()
    explainer = make_explainer(method, network, "gate", **_params(method))
    attribution = explainer.attribute(_image(), class_logit(1))
    assert attribution.shape == (1, 1, *SHAPE)
    positive = attribution[0, 0].clamp(min=0).numpy()
    peak = np.unravel_index(int(positive.argmax()), positive.shape)
    inside = _dilated(BOX, 1, 3)
    assert all(s.start <= p < s.stop for p, s in zip(peak, inside)), f"{method} peaks at {peak}"
    share = positive[_dilated(BOX, 3, 3)].sum() / positive.sum()
    assert share > 0.95, f"{method}: only {share:.2f} of the evidence is near the region the network reads"
    assert positive[DECOY].sum() < 0.01 * positive.sum(), f"{method} highlights the ignored decoy"


@pytest.mark.parametrize("method", list(EXPLAINERS))
def test_segmentation_target_over_a_region(method):
    network = RegionSegmenter().eval()
    image = _image()
    with torch.no_grad():
        region = network(image)[0].argmax(dim=0) == 1
    assert region[BOX].all() and not region[DECOY].any()
    layer = "reader.gate"
    explainer = make_explainer(method, network, layer, **_params(method))
    attribution = explainer.attribute(image, region_logit_sum(1, region))[0, 0].clamp(min=0).numpy()
    share = attribution[_dilated(BOX, 3, 3)].sum() / attribution.sum()
    assert share > 0.95


@pytest.mark.parametrize("method", ["gradcam", "gradient", "occlusion"])
def test_the_same_code_explains_2d_images(method):
    network = RegionReader(dims=2).eval()
    attribution = make_explainer(method, network, "gate", **_params(method)).attribute(_image(2), class_logit(1))
    assert attribution.shape == (1, 1, *SHAPE[:2])
    positive = attribution[0, 0].clamp(min=0).numpy()
    peak = np.unravel_index(int(positive.argmax()), positive.shape)
    assert all(s.start <= p < s.stop for p, s in zip(peak, _dilated(BOX, 1, 2)))


def test_batches_are_explained_sample_by_sample():
    network = RegionReader().eval()
    image = _image()
    batch = torch.cat([image, image.flip(dims=[2])])  # the second one moves the box's content away
    maps = make_explainer("gradcam", network, "gate").attribute(batch, class_logit(1))
    assert maps.shape == (2, 1, *SHAPE)
    assert not torch.allclose(maps[0], maps[1])
    single = make_explainer("gradcam", network, "gate").attribute(image, class_logit(1))
    torch.testing.assert_close(maps[:1], single)


def test_grad_cam_needs_a_layer_that_exists():
    with pytest.raises(XAIModelError, match="no layer named"):
        make_explainer("gradcam", RegionReader(), "layer9")
    with pytest.raises(XAIModelError, match="target layer"):
        make_explainer("gradcampp", RegionReader(), None)


def test_unknown_method_is_refused():
    with pytest.raises(XAIInputError, match="Unknown explanation method"):
        make_explainer("lime", RegionReader())


def test_smoothgrad_is_reproducible_for_a_seed():
    torch.manual_seed(0)  # a non-linear network, so that the noise changes the gradients
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.Tanh(), torch.nn.Flatten(),
                                  torch.nn.LazyLinear(2)).eval()
    network(_image())
    first = make_explainer("smoothgrad", network, n_samples=4, seed=3).attribute(_image(), class_logit(1))
    second = make_explainer("smoothgrad", network, n_samples=4, seed=3).attribute(_image(), class_logit(1))
    other = make_explainer("smoothgrad", network, n_samples=4, seed=4).attribute(_image(), class_logit(1))
    torch.testing.assert_close(first, second)
    assert not torch.allclose(first, other)


def test_integrated_gradients_completeness():
    """IG's attributions add up to the score difference between input and baseline (the axiom)."""
    network = RegionReader().eval()
    image = _image()
    attribution = make_explainer("ig", network, n_steps=64).attribute(image, class_logit(1))
    with torch.no_grad():
        difference = network(image)[0, 1] - network(torch.full_like(image, float(image.min())))[0, 1]
    assert abs(float(attribution.sum()) - float(difference)) < 0.02 * abs(float(difference))


def test_integrated_gradients_equal_captums_whatever_the_batch():
    from captum.attr import IntegratedGradients as CaptumIG

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.Tanh(), torch.nn.Flatten(),
                                  torch.nn.LazyLinear(2)).eval()
    image = _image()
    network(image)
    reference = CaptumIG(lambda x: network(x)[:, 1]).attribute(image, baselines=torch.full_like(image, float(image.min())),
                                                               n_steps=12)
    for batch in (None, 1, 5):  # None: as many path steps at once as the memory budget holds
        ours = make_explainer("ig", network, n_steps=12, internal_batch_size=batch).attribute(image, class_logit(1))
        torch.testing.assert_close(ours, reference.detach(), rtol=1e-4, atol=1e-6 * float(reference.abs().max()))


class _TwoReaders(torch.nn.Module):
    """Reads its input through two convolutions (as a MONAI residual unit does), one strided."""

    def __init__(self, shared: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv3d(1, 3, 3, padding=1)
        self.b = self.a if shared else torch.nn.Conv3d(1, 3, 3, stride=2, padding=1)
        self.head = torch.nn.Conv3d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.tanh(self.a(x))
        b = torch.nn.functional.interpolate(torch.tanh(self.b(x)), size=a.shape[2:])
        return self.head(a * b).mean(dim=(2, 3, 4))


@pytest.mark.parametrize("shared, expected", [(False, 2), (True, 0)])
def test_summed_gradients_through_the_first_convolutions_equal_the_plain_sum(shared, expected):
    from XAIExplainLib.explainers.gradients import input_gradients, input_convolutions, weighted_input_gradient

    network = _TwoReaders(shared).eval()
    assert len(input_convolutions(network)) == expected  # a convolution called twice is not summed through
    inputs = torch.randn(3, 1, 9, 8, 7, generator=torch.Generator().manual_seed(1))
    weights = torch.tensor([0.2, 0.5, 0.3])
    plain = (input_gradients(network, inputs, class_logit(1)) * weights.view(-1, 1, 1, 1, 1)).sum(dim=0, keepdim=True)
    torch.testing.assert_close(weighted_input_gradient(network, inputs, weights, class_logit(1)), plain)
