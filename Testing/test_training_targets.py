"""What the demo models are trained towards: lesion masks on the model grid that keep every lesion, and
the detection loss that pushes every lesion's peak up and the background's peak down."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage
from torch.nn import functional as F

from XAIExplainLib.models.pooling import MaxPooledClassifier
from XAIExplainLib.training.common import bootstrap_interval, mask_to_model_grid, model_grid_for, roc_auc
from XAIExplainLib.training.segmentation import flip_patches, label_lesions, lesion_peak_loss, random_patch

SEGMENTER_3MM = {"task": "segmentation", "input": {"spacing_mm": [3.0, 3.0, 3.0], "orientation": "RAS",
                                                   "size": [16, 16, 16], "divisible_by": 16}}


def _image_with_lesions(diameters_mm, between_grid_points):
    """A 1 mm 64^3 image and its lesion mask (label k for the k-th ball); each ball centred midway between
    model-grid voxel centres of the 3 mm grid (``between_grid_points``, grid index + 0.5)."""
    image = sitk.GetImageFromArray(np.zeros((64, 64, 64), np.float32))
    grid = model_grid_for(image, SEGMENTER_3MM)
    zz, yy, xx = np.mgrid[:64, :64, :64].astype(float)
    labels = np.zeros((64, 64, 64), np.uint8)
    for k, (d, index) in enumerate(zip(diameters_mm, between_grid_points), start=1):
        point = grid.TransformContinuousIndexToPhysicalPoint([i + 0.5 for i in index])
        x, y, z = image.TransformPhysicalPointToContinuousIndex(point)
        labels[(xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2 <= (d / 2) ** 2] = k
    mask = sitk.GetImageFromArray(labels)
    mask.CopyInformation(image)
    return image, mask


def _count_lesions(mask: np.ndarray) -> int:
    return int(ndimage.label(mask)[1])


def test_a_lesion_smaller_than_the_model_voxels_keeps_one_voxel_in_the_training_target():
    image, mask = _image_with_lesions([2.0, 12.0], [(6, 6, 6), (14, 14, 14)])
    plain = mask_to_model_grid(mask, image, SEGMENTER_3MM)
    kept = mask_to_model_grid(mask, image, SEGMENTER_3MM, keep_every_lesion=True)
    assert _count_lesions(plain) == 1  # the 2 mm lesion between grid points vanishes by half-coverage
    assert _count_lesions(kept) == 2
    added = np.argwhere(kept & ~plain)
    assert len(added) == 1
    assert np.all((added[0] == 6) | (added[0] == 7))  # one of the 8 grid voxels around the small lesion
    assert np.array_equal(kept & plain, plain)  # the large lesion's target is unchanged


def _logits_from_odds(odds: torch.Tensor) -> torch.Tensor:
    """Two-class logits ``(B, 2, *spatial)`` whose lesion log-odds are ``odds`` ``(B, *spatial)``."""
    return torch.stack([torch.zeros_like(odds), odds], dim=1)


def _gradient(odds: torch.Tensor, lesions: np.ndarray) -> torch.Tensor:
    odds = odds.clone().requires_grad_(True)
    lesion_peak_loss(_logits_from_odds(odds), torch.from_numpy(np.stack(label_lesions(lesions)))).backward()
    return odds.grad


def test_a_missed_lesion_raises_its_own_peak_not_the_case_maximum():
    lesions = np.zeros((1, 12, 12, 12), bool)
    lesions[0, 2:4, 2:4, 2:4] = True
    odds = torch.full((1, 12, 12, 12), -4.0)
    odds[0, 3, 3, 3] = -1.0  # the lesion's strongest voxel, below the case maximum
    odds[0, 9, 9, 9] = 2.0  # a false alarm far from the lesion: the case maximum
    grad = _gradient(odds, lesions)
    assert grad[0, 3, 3, 3] < 0  # descent raises the lesion's peak
    assert grad[0, 9, 9, 9] > 0  # and lowers the false alarm
    others = grad.clone()
    others[0, 3, 3, 3] = others[0, 9, 9, 9] = 0
    assert torch.count_nonzero(others) == 0  # only the two peaks are touched


def test_a_small_lesion_weighs_as_much_as_a_large_one():
    lesions = np.zeros((1, 16, 16, 16), bool)
    lesions[0, 2, 2, 2] = True  # one voxel
    lesions[0, 8:13, 8:13, 8:13] = True  # 125 voxels
    odds = torch.full((1, 16, 16, 16), -3.0)
    grad = _gradient(odds, lesions)
    small = grad[0, 2, 2, 2]
    large = grad[0, 8:13, 8:13, 8:13].sum()
    assert small < 0 and torch.isclose(small, large)


def test_the_lesion_rim_is_not_background():
    lesions = np.zeros((1, 10, 10, 10), bool)
    lesions[0, 4:6, 4:6, 4:6] = True
    odds = torch.full((1, 10, 10, 10), -5.0)
    odds[0, 4:6, 4:6, 4:6] = 3.0
    odds[0, 3, 4, 4] = 2.5  # partial-volume rim, touching the lesion
    odds[0, 0, 0, 0] = -2.0  # the real background peak
    grad = _gradient(odds, lesions)
    assert grad[0, 3, 4, 4] == 0
    assert grad[0, 0, 0, 0] > 0


@pytest.mark.parametrize("shape", [(9, 7), (6, 5, 4)])
def test_on_a_lesion_free_case_it_is_the_max_pooled_classifiers_cross_entropy(shape):
    torch.manual_seed(0)
    logits = torch.randn(3, 2, *shape)
    lesions = torch.zeros(3, *shape, dtype=torch.long)
    case_logits = MaxPooledClassifier(torch.nn.Identity(), 1).pool(logits)
    expected = F.cross_entropy(case_logits, torch.zeros(3, dtype=torch.long))
    assert torch.isclose(lesion_peak_loss(logits, lesions), expected, atol=1e-6)


def _patch_centre_hits(balance_lesions: bool, draws: int = 400) -> tuple[int, int]:
    """How often lesion-centred 8^3 patches of a 48^3 case contain a 1-voxel lesion and a 7^3 one far apart."""
    labels = np.zeros((48, 48, 48), np.int16)
    labels[4:11, 4:11, 4:11] = 1  # 343 voxels
    labels[40, 40, 40] = 2  # one voxel
    image = np.zeros(labels.shape, np.float32)
    rng = np.random.default_rng(0)
    crops = [random_patch(rng, image, labels, (8, 8, 8), lesion_bias=1.0, balance_lesions=balance_lesions)[1]
             for _ in range(draws)]
    return sum(bool((c == 1).any()) for c in crops), sum(bool((c == 2).any()) for c in crops)


def test_balanced_patches_look_at_a_small_lesion_as_often_as_at_a_large_one():
    large, small = _patch_centre_hits(balance_lesions=True)
    assert large + small == 400  # the two lesions are never in one patch
    assert 0.4 < small / 400 < 0.6
    large, small = _patch_centre_hits(balance_lesions=False)
    assert small < 10  # voxel-drawn centres: the 1-voxel lesion is almost never looked at


def test_the_cards_auc_interval_holds_the_auc_and_narrows_with_more_cases():
    rng = np.random.default_rng(0)

    def interval(n):
        labels = np.arange(n) % 2
        scores = labels + rng.normal(0.0, 0.8, n)  # an imperfect detector: AUC about 0.8

        def auc_of(draw):
            return roc_auc(scores[draw], labels[draw]) if 0 < labels[draw].sum() < len(draw) else None

        return roc_auc(scores, labels), bootstrap_interval(auc_of, n)

    few_auc, (few_low, few_high) = interval(20)
    many_auc, (many_low, many_high) = interval(400)
    assert few_low <= few_auc <= few_high and many_low <= many_auc <= many_high
    assert many_high - many_low < 0.5 * (few_high - few_low)
    # a statistic never defined (one class only) gives no interval rather than a made-up one
    assert np.isnan(bootstrap_interval(lambda draw: None, 10)).all()



def _orientations(every_axis: bool, draws: int = 400) -> set[bytes]:
    """The distinct arrangements a patch with a marked corner takes under repeated random flips."""
    patch = torch.arange(2 * 2 * 2, dtype=torch.float32).reshape(1, 1, 2, 2, 2).repeat(draws, 1, 1, 1, 1)
    labels = patch[:, 0].long()
    images, labels = flip_patches(patch.clone(), labels.clone(), torch.Generator().manual_seed(0), every_axis)
    assert torch.equal(images[:, 0].long(), labels)  # the target moves with its image
    return {bytes(image.numpy().astype(np.uint8)) for image in images[:, 0]}


def test_every_axis_shows_a_patch_in_all_16_orientations_and_the_default_only_flips_left_right():
    assert len(_orientations(every_axis=True)) == 16
    plain = _orientations(every_axis=False)
    assert plain == {bytes(np.arange(8, dtype=np.uint8)), bytes(np.arange(8, dtype=np.uint8).reshape(2, 2, 2)[::-1].copy())}


class _ImageIsLogOdds(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x], dim=1)


def test_single_lesion_detection_is_counted_by_size_and_looks_one_voxel_around_the_lesion():
    from XAIExplainLib.training.datasets import ModelGridSet
    from XAIExplainLib.training.segmentation import evaluate_pooled_classifier

    images, masks, infos = [], [], []
    for diameter, peak, offset, count in ((12.0, 3.0, 0, 1), (7.0, -1.0, 0, 1), (5.0, 2.0, 1, 1), (8.0, 4.0, 0, 2),
                                          (9.0, 5.0, 3, 1)):
        image = np.full((10, 10, 10), -4.0, np.float32)
        mask = np.zeros((10, 10, 10), bool)
        mask[5, 5, 5] = True
        image[5 + offset, 5, 5] = peak  # offset 1: beside the mask (found); 3: far from it (missed)
        images.append(image)
        masks.append(mask)
        infos.append({"lesions": [{"nominal_diameter_mm": diameter}] * count})
    data = ModelGridSet(images=images, labels=np.ones(5, np.int64), masks=masks, infos=infos)
    metrics = evaluate_pooled_classifier(_ImageIsLogOdds(), data)
    # The two-lesion case is left out; the 9 mm lesion's bright voxel is three voxels away: missed (but the
    # case is called positive: the count is about lesions, sensitivity about cases).
    assert metrics["single_lesions_found"] == ">= 10 mm 1/1, 6-10 mm 0/2, < 6 mm 1/1"
    assert metrics["sensitivity"] == pytest.approx(4 / 5)
