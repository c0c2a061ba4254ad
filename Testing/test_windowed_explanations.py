"""Explanations of sliding-window segmentation models, window by window: the same maps as the model MONAI
runs (its sliding_window_inference), only the windows the explained region needs, one window alive."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference

from XAIExplainLib.explainers import make_explainer
from XAIExplainLib.explainers.windowed import SlidingWindows, attribute_by_windows
from XAIExplainLib.targets import region_logit_sum

PATCH, OVERLAP = (16, 16, 16), 0.25


def _windows(inputs: torch.Tensor) -> SlidingWindows:
    return SlidingWindows.plan(inputs.shape[2:], PATCH, OVERLAP)


def _network() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Tanh(),
                               torch.nn.Conv3d(4, 3, 3, padding=1)).eval()


def _case(shape=(40, 28, 12)) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(5)
    inputs = torch.randn(1, 1, *shape)
    region = torch.zeros(shape, dtype=torch.bool)
    region[4:14, 6:20, 2:10] = True  # near one corner: most windows do not see it
    return inputs, region


def _monai_gradient(network, inputs, region, class_index=2):
    """d/dx of the region's summed logits of MONAI's own sliding-window prediction (small enough to keep whole)."""
    x = inputs.clone().requires_grad_(True)
    logits = sliding_window_inference(x, roi_size=PATCH, sw_batch_size=2, predictor=network, overlap=OVERLAP,
                                      mode="gaussian")
    (gradient,) = torch.autograd.grad(region_logit_sum(class_index, region)(logits).sum(), x)
    return gradient


def test_the_windowed_gradient_is_the_gradient_of_monais_sliding_window_prediction():
    network, (inputs, region) = _network(), _case()
    expected = _monai_gradient(network, inputs, region).abs()
    explainer = make_explainer("gradient", network)
    windowed, info = attribute_by_windows(explainer, inputs, 2, region, _windows(inputs))
    assert windowed.shape == (1, 1, *inputs.shape[2:])
    assert torch.allclose(windowed, expected, atol=1e-6 * float(expected.max()))
    assert info["windows_run"] < info["windows_in_grid"]  # the far windows never ran


def test_integrated_gradients_by_windows_match_their_whole_model_form():
    network, (inputs, region) = _network(), _case()
    explainer = make_explainer("ig", network, n_steps=4)
    windowed, _ = attribute_by_windows(explainer, inputs, 2, region, _windows(inputs))

    def whole(x):  # the sliding-window model's score, differentiable as a whole
        logits = sliding_window_inference(x, roi_size=PATCH, sw_batch_size=2, predictor=network, overlap=OVERLAP,
                                          mode="gaussian")
        return region_logit_sum(2, region)(logits)

    class Whole(torch.nn.Module):
        def forward(self, x):
            return whole(x)

    expected = make_explainer("ig", Whole(), n_steps=4).attribute(inputs, lambda s: s)
    assert torch.allclose(windowed, expected, atol=1e-5 * float(expected.abs().max()))


def test_windows_that_do_not_meet_the_region_are_not_run():
    network, (inputs, region) = _network(), _case()
    calls = []
    network[0].register_forward_hook(lambda _m, i, _o: calls.append(tuple(i[0].shape[2:])))
    windows = SlidingWindows.plan(inputs.shape[2:], PATCH, OVERLAP)
    needed = len(windows.shares(region))
    attribute_by_windows(make_explainer("gradcam", network, "0"), inputs, 2, region, _windows(inputs))
    assert len(calls) == needed < len(windows.boxes)
    assert set(calls) == {PATCH}  # one window at a time, never the whole grid


def test_a_grid_thinner_than_a_window_is_padded_as_monai_pads_it():
    network, (inputs, region) = _network(), _case(shape=(40, 28, 10))  # 10 < 16 along the last axis
    expected = _monai_gradient(network, inputs, region).abs()
    windowed, _ = attribute_by_windows(make_explainer("gradient", network), inputs, 2, region, _windows(inputs))
    assert windowed.shape == expected.shape
    assert torch.allclose(windowed, expected, atol=1e-6 * float(expected.max()))


def _copying_network() -> torch.nn.Module:
    """Class 2's logit is the voxel itself: only the region's own voxels drive the region's score."""
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3, padding=1, bias=False)).eval()
    with torch.no_grad():
        network[0].weight.zero_()
        network[0].weight[2, 0, 1, 1, 1] = 1.0
    return network


def test_windowed_occlusion_finds_the_region_and_nothing_beyond_its_reach():
    _, region = _case()
    inputs = torch.ones(1, 1, *region.shape)
    inputs[0, 0][region] = 5.0  # a bright region: hiding (blurring) any of it lowers its score
    explainer = make_explainer("occlusion", _copying_network(), window=2, mode="exact")
    saliency, info = attribute_by_windows(explainer, inputs, 2, region, _windows(inputs))
    outside = saliency[0, 0].clone()
    outside[3:15, 5:21, 1:11] = 0  # the region and the windows that straddle its border
    assert float(saliency[0, 0][region].min()) > 0
    assert float(outside.abs().max()) == 0.0
    assert info["windows_run"] < info["windows_in_grid"]


def test_windowed_grad_cam_is_one_map_scaled_as_a_whole():
    inputs, region = _case()
    saliency, info = attribute_by_windows(make_explainer("gradcam", _copying_network(), "0"), inputs.abs() + 1.0, 2,
                                          region, _windows(inputs))
    assert float(saliency.max()) == pytest.approx(1.0)
    windows = SlidingWindows.plan(inputs.shape[2:], PATCH, OVERLAP)
    covered = torch.zeros(inputs.shape[2:], dtype=torch.bool)
    for box, _ in windows.shares(region):
        covered[box] = True
    assert float(saliency[0, 0][~covered].abs().max()) == 0.0  # nothing where no window ran
    assert float(saliency[0, 0][region].min()) > 0
