"""Uncertainty: samples that differ, measures in their valid range, augmentations that invert."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import make_image, rotation

from XAIExplainLib.errors import XAIInputError, XAIModelError
from XAIExplainLib.models import load_model
from XAIExplainLib.pipeline import explain_image
from XAIExplainLib.uncertainty import Augmentation, entropy, mc_dropout, mutual_information, tta_augmentations


def test_augmentations_invert_on_spatial_outputs():
    x = torch.arange(3 * 4 * 5, dtype=torch.float32).reshape(1, 1, 3, 4, 5).repeat(1, 2, 1, 1, 1)
    for augmentation in tta_augmentations(8, spatial_dims=3, seed=0):
        undone = augmentation.invert_spatial((augmentation.apply(x) - augmentation.shift) / augmentation.scale)
        torch.testing.assert_close(undone, x)
    assert tta_augmentations(4, 3, seed=0)[0] == Augmentation()
    assert len({a.flip_axes for a in tta_augmentations(8, 3, seed=0)}) == 8


def test_entropy_and_mutual_information_bounds():
    certain = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]]).permute(0, 2, 1)  # [N=2, K=2, 1]
    disagree = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]).permute(0, 2, 1)
    assert float(entropy(certain.mean(0, keepdim=True))) == pytest.approx(0.0, abs=1e-6)
    assert float(entropy(disagree.mean(0, keepdim=True))) == pytest.approx(math.log(2), abs=1e-6)
    assert float(mutual_information(disagree)) == pytest.approx(math.log(2), abs=1e-6)
    assert float(mutual_information(certain)) == pytest.approx(0.0, abs=1e-6)


def test_mc_dropout_needs_dropout_and_restores_eval_mode(classifier_bundle, segmenter_bundle):
    with pytest.raises(XAIModelError, match="no active dropout"):
        with mc_dropout(load_model(classifier_bundle).network):
            pass
    network = load_model(segmenter_bundle).network
    with mc_dropout(network):
        assert any(m.training for m in network.modules() if isinstance(m, torch.nn.Dropout))
        assert not any(m.training for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase))
    assert not any(m.training for m in network.modules())


@pytest.mark.parametrize("kind", ["mc-dropout", "tta"])
def test_segmentation_uncertainty_map_on_the_input_grid(segmenter_bundle, kind):
    image = make_image(size=(33, 29, 21), spacing=(1.1, 1.3, 2.2), direction=rotation("y", 12), blob_index=(16, 14, 10))
    result = explain_image(image, load_model(segmenter_bundle), uncertainty=kind, samples=4)
    assert result.uncertainty.GetSize() == image.GetSize()
    assert result.uncertainty.GetDirection() == image.GetDirection()
    values = sitk.GetArrayFromImage(result.uncertainty)
    assert values.min() >= 0 and values.max() <= math.log(2) + 1e-5 and values.max() > 0
    assert result.uncertainty_info["method"] == kind


def test_classifier_uncertainty_reports_the_spread_of_the_probability(classifier_bundle):
    image = make_image(size=(30, 30, 30), spacing=(1.5, 1.5, 1.5), blob_index=(10, 15, 15))
    result = explain_image(image, load_model(classifier_bundle), uncertainty="tta", samples=6)
    info = result.uncertainty_info
    assert info["samples"] == 6 and 0 <= info["predicted_class_std"] <= 0.5
    assert sum(info["mean_probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert "Grad-CAM" in info["map"]
    assert result.uncertainty.GetSize() == image.GetSize()


def test_ensemble_of_models_with_other_classes_is_refused(classifier_bundle, segmenter_bundle):
    image = make_image()
    with pytest.raises(XAIModelError, match="same task"):
        explain_image(image, load_model(classifier_bundle), uncertainty="ensemble", ensemble=[load_model(segmenter_bundle)])
    with pytest.raises(XAIInputError, match="more model"):
        explain_image(image, load_model(classifier_bundle), uncertainty="ensemble")


def test_ensemble_disagreement_is_zero_for_identical_members(segmenter_bundle):
    image = make_image(size=(30, 30, 30), blob_index=(10, 15, 15))
    model = load_model(segmenter_bundle)
    result = explain_image(image, model, uncertainty="ensemble", ensemble=[load_model(segmenter_bundle)])
    assert result.uncertainty_info["mean_mutual_information"] == pytest.approx(0.0, abs=1e-6)
    assert np.isfinite(sitk.GetArrayFromImage(result.uncertainty)).all()
