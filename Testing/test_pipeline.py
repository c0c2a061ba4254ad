"""explain_image end to end on tiny bundles: targets, masks, provenance, and refusals."""

from __future__ import annotations

import types

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image, rotation

from XAIExplainLib.errors import XAIInputError, XAIModelError
from XAIExplainLib.models import load_model
from XAIExplainLib.pipeline import explain_image


@pytest.fixture(scope="module")
def image() -> sitk.Image:
    return make_image(size=(30, 28, 22), spacing=(1.2, 1.2, 1.8), direction=rotation("x", 8), blob_index=(12, 14, 11))


def test_segmentation_target_mask_is_the_region_explained(segmenter_bundle, image):
    model = load_model(segmenter_bundle)
    mask = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(image)
    mask[8:16, 10:18, 8:14] = 1
    result = explain_image(image, model, method="gradient", target_mask=mask)
    target = result.explanation["target"]
    assert "given mask" in target["description"] and target["region_voxels"] > 0
    predicted = explain_image(image, model, method="gradient")
    assert "predicted region" in predicted.explanation["target"]["description"] or "whole volume" in predicted.explanation["target"]["description"]
    assert not np.array_equal(sitk.GetArrayFromImage(result.saliency), sitk.GetArrayFromImage(predicted.saliency))


def test_a_mask_outside_the_field_of_view_is_refused(segmenter_bundle, image):
    mask = sitk.Image([10, 10, 10], sitk.sitkUInt8)
    mask.SetOrigin([500.0, 500.0, 500.0])
    mask[:, :, :] = 1
    with pytest.raises(XAIInputError, match="field of view"):
        explain_image(image, load_model(segmenter_bundle), target_mask=mask)


def test_segmentation_outputs_a_label_map_on_the_input_grid(segmenter_bundle, image):
    result = explain_image(image, load_model(segmenter_bundle))
    assert result.segmentation.GetSize() == image.GetSize()
    assert result.segmentation.GetDirection() == image.GetDirection()
    labels = np.unique(sitk.GetArrayFromImage(result.segmentation))
    assert set(labels.tolist()) <= {0, 1}
    assert abs(sum(result.prediction["probabilities"].values()) - 1) < 1e-5


def test_classifier_targets_by_name_and_index(classifier_bundle, image):
    model = load_model(classifier_bundle)
    by_name = explain_image(image, model, target="LESION")
    by_index = explain_image(image, model, target=1)
    assert by_name.explanation["target"]["class_index"] == by_index.explanation["target"]["class_index"] == 1
    np.testing.assert_array_equal(sitk.GetArrayFromImage(by_name.saliency), sitk.GetArrayFromImage(by_index.saliency))
    with pytest.raises(XAIModelError, match="not a class"):
        explain_image(image, model, target="tumour")
    with pytest.raises(XAIModelError, match="out of range"):
        explain_image(image, model, target=5)
    with pytest.raises(XAIInputError, match="only applies to segmentation"):
        explain_image(image, model, target_mask=image)


def test_provenance_records_what_produced_the_map(classifier_bundle, image):
    model = load_model(classifier_bundle)
    result = explain_image(image, model, method="smoothgrad", method_params={"n_samples": 3}, seed=5)
    provenance = result.provenance
    assert provenance["model"]["sha256"] == model.sha256
    assert provenance["method"] == "smoothgrad" and provenance["parameters"]["n_samples"] == 3
    assert provenance["seed"] == 5 and provenance["input_geometry"]["size"] == list(image.GetSize())
    assert {"torch", "monai", "captum"} <= set(provenance["libraries"])
    peak = result.explanation["statistics"]["peak_ras_mm"]
    assert len(peak) == 3 and all(np.isfinite(peak))


def test_progress_is_reported_and_cancel_stops_the_run(classifier_bundle, image):
    from XAIExplainLib.errors import XAICancelled
    from XAIExplainLib.progress import CancelToken

    seen = []
    explain_image(image, load_model(classifier_bundle), method="occlusion", method_params={"window": 6},
                  progress=lambda fraction, message: seen.append(fraction))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    token = CancelToken()

    def cancel_midway(fraction, message):
        if fraction > 0.1:
            token.cancel()

    with pytest.raises(XAICancelled):
        explain_image(image, load_model(classifier_bundle), method="occlusion", method_params={"window": 6},
                      progress=cancel_midway, cancel=token)


@pytest.mark.parametrize("scale", [1e30, 3e38 / 300])
def test_huge_but_representable_intensities_give_the_same_answer(classifier_bundle, image, scale):
    """Normalisation is in float64: values near the float32 limit used to overflow the mean and standard
    deviation into NaN probabilities (exit 0); z-scored, a rescaled image is the same image."""
    model = load_model(classifier_bundle)
    scaled = sitk.Cast(image, sitk.sitkFloat64) * scale
    if scale * 300 < 3.4e38:
        scaled = sitk.Cast(scaled, sitk.sitkFloat32)
    reference = explain_image(image, model, method="gradient").prediction
    result = explain_image(scaled, model, method="gradient").prediction
    values = np.array(list(result["probabilities"].values()))
    assert np.all(np.isfinite(values))
    np.testing.assert_allclose(values, list(reference["probabilities"].values()), atol=1e-3)


def test_values_float32_cannot_hold_are_refused(classifier_bundle, image):
    huge = sitk.Cast(image, sitk.sitkFloat64) * 1e300
    with pytest.raises(XAIInputError, match="beyond what 32-bit floats hold"):
        explain_image(huge, load_model(classifier_bundle), method="gradient")


def test_a_grid_far_larger_than_the_model_can_take_is_refused(segmenter_bundle):
    wide = make_image(size=(8, 8, 8), spacing=(300.0, 300.0, 300.0))
    with pytest.raises(XAIInputError, match="M voxels; the limit is 64 M"):
        explain_image(wide, load_model(segmenter_bundle), method="gradient")


def test_segmentation_uncertainty_is_given_per_structure(segmenter_bundle, image):
    """Each predicted structure's volume across the samples (mean and spread) and its mean entropy, computed on
    the same samples as the map."""
    import torch

    from XAIExplainLib.pipeline import structure_uncertainty

    result = explain_image(image, load_model(segmenter_bundle), method="gradient", uncertainty="tta", samples=3)
    structures = result.uncertainty_info["structures"]
    assert "background" not in structures
    for values in structures.values():
        assert values["volume_ml_mean"] >= 0 and values["volume_ml_std"] >= 0
        assert 0 <= values["mean_entropy"] <= result.uncertainty_info["max_entropy"]
    # Two samples that disagree on half of a 1000-voxel structure: 750 +- 354 voxels (1 mm voxels: ml / 1000).
    model = load_model(segmenter_bundle)
    case = types.SimpleNamespace(grid=sitk.Image([10, 10, 10], sitk.sitkUInt8))
    samples = torch.zeros(2, 2, 10, 10, 10)
    samples[:, 0] = 1.0
    samples[0, :, :, :, :10] = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)
    samples[1, :, :5] = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)
    second = structure_uncertainty(model, case, samples, torch.zeros(10, 10, 10))[model.spec.class_names[1]]
    assert second["volume_ml_mean"] == pytest.approx(0.75) and second["volume_ml_std"] == pytest.approx(0.3536, abs=1e-3)
