"""The open case's cache: switching method or target reuses the forward pass, activations and maps;
a different image or model starts afresh; cached results equal computed ones."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image

from XAIExplainLib.casecache import CaseCache, image_fingerprint
from XAIExplainLib.models import load_model
from XAIExplainLib.pipeline import explain_image


@pytest.fixture(scope="module")
def image() -> sitk.Image:
    return make_image(size=(30, 28, 22), spacing=(1.2, 1.2, 1.8), blob_index=(12, 14, 11))


class _ForwardCounter:
    """Counts forward passes of a network (a hook on the whole network)."""

    def __init__(self, network) -> None:
        self.calls = 0
        self.handle = network.register_forward_hook(self._count)

    def _count(self, *_args) -> None:
        self.calls += 1


def _array(result) -> np.ndarray:
    return sitk.GetArrayFromImage(result.saliency)


def test_fingerprint_follows_voxels_and_geometry(image):
    copy = sitk.GetImageFromArray(sitk.GetArrayFromImage(image))
    copy.CopyInformation(image)
    assert image_fingerprint(copy) == image_fingerprint(image)
    moved = sitk.Image(copy)
    moved.SetOrigin((1.0, 0.0, 0.0))
    changed = sitk.Image(copy)
    changed[3, 4, 5] = 1000.0
    assert len({image_fingerprint(image), image_fingerprint(moved), image_fingerprint(changed)}) == 3


def test_switching_target_and_method_reuses_forward_pass_activations_and_maps(classifier_bundle, image):
    model = load_model(classifier_bundle)
    cache = CaseCache()
    counter = _ForwardCounter(model.network)

    first = explain_image(image, model, method="gradcam", target=1, cache=cache)
    assert first.reused == () and counter.calls == 1  # one forward pass served prediction and Grad-CAM

    other_class = explain_image(image, model, method="gradcam", target=0, cache=cache)
    assert other_class.reused == ("forward",)
    assert counter.calls == 1  # the kept activations and graph: one backward pass, no forward pass
    uncached = explain_image(image, model, method="gradcam", target=0)
    np.testing.assert_allclose(_array(other_class), _array(uncached), atol=1e-6)

    counter.calls = 0
    again = explain_image(image, model, method="gradcam", target=1, cache=cache)
    assert again.reused == ("forward", "map") and counter.calls == 0
    np.testing.assert_array_equal(_array(again), _array(first))
    assert again.to_json()["reused_from_cache"] == ["forward", "map"]

    gradient = explain_image(image, model, method="gradient", target=1, cache=cache)
    assert gradient.reused == ("forward",) and counter.calls == 1  # a new method: only its own pass
    assert cache.hits == {"forward": 3, "map": 1, "uncertainty": 0}


def test_uncertainty_is_reused_and_a_new_image_or_model_starts_afresh(classifier_bundle, segmenter_bundle, image):
    model = load_model(classifier_bundle)
    cache = CaseCache()
    first = explain_image(image, model, method="gradcam", uncertainty="tta", samples=4, cache=cache)
    second = explain_image(image, model, method="gradcam", uncertainty="tta", samples=4, cache=cache)
    assert second.reused == ("forward", "map", "uncertainty")
    assert second.uncertainty_info == first.uncertainty_info
    assert "uncertainty" not in explain_image(image, model, method="gradcam", uncertainty="tta", samples=6,
                                              cache=cache).reused  # other settings: computed

    other = make_image(size=(30, 28, 22), spacing=(1.2, 1.2, 1.8), blob_index=(20, 10, 8))
    assert explain_image(other, model, method="gradcam", cache=cache).reused == ()
    assert explain_image(other, load_model(segmenter_bundle), method="gradient", cache=cache).reused == ()
