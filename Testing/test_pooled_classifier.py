"""Classifiers that score a case by its most suspicious voxel (``xai.output_pooling: "max"``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SEGMENTER_DEF, SEGMENTER_XAI, build, make_image, write_bundle

from XAIExplainLib.errors import XAIModelError
from XAIExplainLib.models import load_model
from XAIExplainLib.models.pooling import MaxPooledClassifier, VoxelMaxPool
from XAIExplainLib.pipeline import explain_image

#: The tiny segmenter's card, turned into a classifier that max-pools the segmenter's lesion map.
POOLED_XAI = {**SEGMENTER_XAI, "task": "classification", "class_names": ["no lesion", "lesion"],
              "output_pooling": "max", "intensity": {"kind": "none"}}


class _Brightness(torch.nn.Module):
    """Dense two-class logits: background 0, lesion = intensity − 1 (bright voxels are lesion)."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), x - 1.0], dim=1)


@pytest.mark.parametrize("shape", [(9, 11), (7, 9, 5)])
def test_case_probability_is_the_largest_voxel_probability(shape):
    torch.manual_seed(0)
    image = torch.randn(2, 1, *shape)
    head = MaxPooledClassifier(_Brightness(), positive_class=1)
    case = torch.softmax(head(image), dim=1)[:, 1]
    voxels = torch.softmax(_Brightness()(image), dim=1)[:, 1].flatten(1).max(dim=1).values
    assert torch.allclose(case, voxels)


def test_only_the_deciding_voxel_receives_gradient():
    image = torch.zeros(1, 1, 6, 6, 6, requires_grad=True)
    with torch.no_grad():
        image[0, 0, 4, 1, 2] = 3.0
    MaxPooledClassifier(_Brightness(), positive_class=1)(image)[0, 1].backward()
    nonzero = torch.nonzero(image.grad[0, 0]).tolist()
    assert nonzero == [[4, 1, 2]]


def _copies(cached, boxes):
    """Whole copies of ``cached`` with each box's values replaced, and the boxes' values."""
    copies, values = [], []
    for start, box_values in boxes:
        copy = cached.clone()
        copy[(0, slice(None), *(slice(s, s + n) for s, n in zip(start, box_values.shape[1:])))] = box_values
        copies.append(copy)
        values.append(box_values)
    return torch.cat(copies), values


def test_head_on_changed_boxes_equals_the_head_on_whole_copies():
    """Incremental occlusion scores a max-pooled classifier from boxes of its map, never whole copies:
    the case logits must be those of the head on the whole occluded maps, whichever voxel wins."""
    torch.manual_seed(0)
    head = VoxelMaxPool(positive_class=1)
    cached = torch.randn(1, 2, 9, 10, 11)
    best = np.unravel_index(int(head.evidence(cached).argmax()), (9, 10, 11))
    around_best = tuple(max(0, int(b) - 1) for b in best)
    boxes = [
        (around_best, torch.full((2, 3, 3, 3), 0.0)),  # hides the best voxel: the runner-up outside wins
        ((0, 0, 0), torch.stack([torch.zeros(3, 3, 3), torch.full((3, 3, 3), 9.0)])),  # a new best inside the box
        ((2, 3, 4), cached[0, :, 2:5, 3:6, 4:7].clone()),  # unchanged values: the cached best, wherever it is
        ((0, 0, 0), torch.zeros(2, 9, 10, 11)),  # the box is the whole map: all ties, the first voxel wins
    ]
    copies, values = _copies(cached, boxes[:3])
    reduction = head.patch_reduction(cached)
    assert torch.equal(reduction(values, [start for start, _ in boxes[:3]]), head(copies))
    whole, whole_values = _copies(cached, boxes[3:])
    assert torch.equal(reduction(whole_values, [(0, 0, 0)]), head(whole))


def test_a_tie_between_box_and_cached_map_goes_to_the_first_voxel_in_memory_order():
    head = VoxelMaxPool(positive_class=1)
    cached = torch.zeros(1, 2, 6, 6, 6)
    cached[0, 1, 5, 5, 5] = 2.0  # the cached best, late in memory order
    cached[0, 0, 5, 5, 5] = 0.5
    box = torch.zeros(2, 2, 2, 2)
    box[1, 0, 0, 0] = 2.0  # as much evidence, earlier in memory order: it wins, as argmax would pick it
    box[0, 0, 0, 0] = -1.0
    copies, values = _copies(cached, [((1, 1, 1), box)])
    assert torch.equal(head.patch_reduction(cached)(values, [(1, 1, 1)]), head(copies))
    assert head(copies)[0, 0] == -1.0


@pytest.fixture(scope="module")
def pooled_bundle(tmp_path_factory):
    return write_bundle(tmp_path_factory.mktemp("models") / "tiny-pooled", SEGMENTER_DEF, build(SEGMENTER_DEF), POOLED_XAI)


def test_pooled_bundle_sees_the_whole_image_and_explains_on_its_grid(pooled_bundle):
    model = load_model(pooled_bundle)
    assert isinstance(model.network, MaxPooledClassifier)
    assert model.network.get_submodule(model.spec.cam_target_layer) is not None
    assert model.spec.input.size is None  # the whole image, not a fixed crop
    image = make_image((37, 29, 23), spacing=(1.5, 1.5, 2.5))
    result = explain_image(image, model, method="gradcam", target=1)
    assert result.saliency.GetSize() == image.GetSize()
    probabilities = list(result.prediction["probabilities"].values())
    assert np.isfinite(probabilities).all() and abs(sum(probabilities) - 1.0) < 1e-5


def test_pooling_on_a_segmentation_task_is_refused(tmp_path):
    xai = dict(POOLED_XAI, task="segmentation")
    bundle = write_bundle(tmp_path / "bad", SEGMENTER_DEF, build(SEGMENTER_DEF), xai)
    with pytest.raises(XAIModelError, match="output_pooling"):
        load_model(bundle)
