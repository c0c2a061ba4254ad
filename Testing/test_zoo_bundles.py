"""Bundles as the MONAI Model Zoo publishes them (no xai card, short network names, JSON or YAML) are
read as published and explained without --trust-bundle, in the input's geometry.

The bundles are written by ``Testing/zoo_bundles.py`` in the zoo's layout with random weights.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch
import pytest
import SimpleITK as sitk

from conftest import make_image, rotation
from XAIExplainLib.errors import XAIModelError
from XAIExplainLib.models import load_model, read_model_spec
from XAIExplainLib.preprocessing import normalise_intensity
from zoo_bundles import BRATS_LIKE, CLASSIFIER_LIKE, SPLEEN_LIKE, write_zoo_bundle


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "XAICommandLine", *args], capture_output=True, encoding="utf-8",
                          errors="replace", timeout=600)


@pytest.fixture(scope="module")
def spleen(tmp_path_factory):
    return write_zoo_bundle(tmp_path_factory.mktemp("zoo") / "spleen_ct_segmentation", SPLEEN_LIKE)


def test_the_card_is_read_from_the_bundle_as_published(spleen):
    spec = read_model_spec(spleen)
    assert spec.task == "segmentation" and spec.class_names == ("background", "spleen")
    assert spec.input.orientation == "RAS" and spec.input.spacing_mm == (1.5, 1.5, 2.0)
    assert spec.input.patch_size == (32, 32, 32) and spec.input.overlap == 0.5 and spec.input.divisible_by == 32
    assert spec.output_activation == "softmax"
    assert spec.intensity.kind == "scale_range"
    # MONAI's ScaleIntensityRanged(a_min=-57, a_max=164, b_min=0, b_max=1, clip=True), value by value.
    hu = np.array([-1000.0, -57.0, 53.5, 164.0, 900.0])
    assert np.allclose(normalise_intensity(hu, spec.intensity), [0.0, 0.0, 0.5, 1.0, 1.0])
    assert spec.metadata["_xai_sources"]["input.spacing_mm"] == "preprocessing Spacingd.pixdim"


def test_short_names_build_without_trust_and_a_cam_layer_is_suggested(spleen):
    model = load_model(spleen)  # "_target_": "UNet", with $ expressions elsewhere in the config
    layers = dict(model.network.named_modules())
    assert model.spec.cam_target_layer in layers
    # The bottleneck: UNet's coarsest convolution (3 strides of 2 on a 32^3 window: 4^3).
    assert "submodule" in model.spec.cam_target_layer


def test_a_zoo_bundle_explains_from_the_command_line_in_the_input_geometry(spleen, tmp_path):
    image = make_image(size=(48, 40, 30), spacing=(0.9, 1.1, 2.5), direction=rotation("z", 12),
                       origin=(-20.0, 14.0, 3.0), blob_index=(30, 20, 14))
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    done = _cli("explain", str(tmp_path / "ct.nii.gz"), "--model", str(spleen), "--method", "gradcam",
                "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text(encoding="utf-8"))
    saliency = sitk.ReadImage(str(tmp_path / "out" / result["files"]["saliency"]))
    assert saliency.GetSize() == image.GetSize()
    assert np.allclose(saliency.GetSpacing(), image.GetSpacing()) and np.allclose(saliency.GetOrigin(), image.GetOrigin())
    assert np.allclose(saliency.GetDirection(), image.GetDirection())
    preprocessing = result["provenance"]["preprocessing"]
    assert preprocessing["intensity"] == {"kind": "scale_range", "a_min": -57.0, "a_max": 164.0, "b_min": 0.0,
                                          "b_max": 1.0, "clip": True}
    assert preprocessing["sliding_window"] == {"size": [32, 32, 32], "overlap": 0.5}
    # The grid (about 29x29x37 at 1.5x1.5x2 mm) is larger than a window: explained window by window.
    windows = result["explanation"]["sliding_windows"]
    assert windows["patch_size"] == [32, 32, 32] and 1 <= windows["windows_run"] <= windows["windows_in_grid"]
    assert preprocessing["card_sources"]["intensity"] == "preprocessing ScaleIntensityRanged"


def test_yaml_config_sigmoid_labels_and_a_classifier(tmp_path):
    brats = read_model_spec(write_zoo_bundle(tmp_path / "brats", BRATS_LIKE))
    assert brats.output_activation == "sigmoid" and brats.class_names == ("tumor core", "whole tumor", "enhancing tumor")
    assert brats.intensity.kind == "zscore" and brats.intensity.params["nonzero"] is True
    classifier = load_model(write_zoo_bundle(tmp_path / "classifier", CLASSIFIER_LIKE))
    assert classifier.spec.task == "classification" and classifier.spec.input.size == (32, 32, 32)
    assert classifier.spec.cam_target_layer in dict(classifier.network.named_modules())


def test_what_cannot_be_derived_is_named_and_the_card_fills_it(tmp_path):
    steps = [dict(step) for step in SPLEEN_LIKE["preprocessing"]]
    steps[1]["pixdim"] = "$[1.5, 1.5, 2.0]"  # an expression: read-only derivation cannot take it
    bundle = write_zoo_bundle(tmp_path / "expression", SPLEEN_LIKE, preprocessing=steps)
    with pytest.raises(XAIModelError, match=r"input\.spacing_mm \(preprocessing Spacingd is an expression\)"):
        read_model_spec(bundle)
    card = _cli("models", "card", str(bundle))
    assert card.returncode == 0 and "Missing: input.spacing_mm" in card.stdout
    refused = _cli("explain", str(tmp_path / "missing.nii.gz"), "--model", str(bundle), "--out", str(tmp_path / "o"))
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    metadata["xai"] = {"input": {"spacing_mm": [1.5, 1.5, 2.0]}}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    spec = read_model_spec(bundle)
    assert spec.input.spacing_mm == (1.5, 1.5, 2.0) and spec.input.patch_size == (32, 32, 32)
    assert spec.metadata["_xai_sources"]["input.spacing_mm"] == "the bundle's xai card"


def test_models_card_prints_the_card_and_cam_layers(spleen):
    shown = _cli("models", "card", str(spleen))
    assert shown.returncode == 0, shown.stderr
    assert "Missing: nothing" in shown.stdout and "Grad-CAM layers (best first): " in shown.stdout
    card = json.loads(_cli("models", "card", str(spleen), "--json").stdout)
    assert card["class_names"] == ["background", "spleen"] and card["cam_target_layer"]


def _network(**changes):
    return {**SPLEEN_LIKE["network_def"], **changes}


@pytest.mark.parametrize("network_def, message", [
    (_network(spatial_dims=2), r"is a 2D network; SlicerXAI explains 3-D volumes"),
    ({"_target_": "VarAutoEncoder", "spatial_dims": 3, "in_shape": [1, 32, 32, 32], "out_channels": 2,
      "latent_size": 2, "channels": [4, 8], "strides": [2, 2]}, r"returns tuple, not one tensor \(a detection"),
    (_network(out_channels=3), r"returns a 1x3x32x32x32 output .* needs a 3-D map of 2 channels"),
])
def test_networks_outside_scope_get_one_line(tmp_path, network_def, message):
    bundle = write_zoo_bundle(tmp_path / "bundle", SPLEEN_LIKE, network_def=network_def)
    with pytest.raises(XAIModelError, match=message):
        load_model(bundle)


def test_a_trusted_build_failure_names_its_real_cause(tmp_path):
    bundle = write_zoo_bundle(tmp_path / "bundle", SPLEEN_LIKE)
    config = json.loads((bundle / "configs" / "inference.json").read_text(encoding="utf-8"))
    config["network_def"]["channels"] = "$[4, 8, 16, 32][:1 // 0]"
    (bundle / "configs" / "inference.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(XAIModelError, match=r"trusted bundle \(ZeroDivisionError: integer division or modulo by zero\)"):
        load_model(bundle, trust_bundle=True)


def test_the_default_target_is_the_largest_predicted_structure():
    import torch

    from XAIExplainLib.pipeline import largest_predicted_structure

    scores = torch.zeros(1, 4, 4, 4, 4)
    scores[0, 0] = 1.0  # background everywhere but where a structure wins
    scores[0, 2, :1] = 2.0  # 16 voxels of structure 2
    scores[0, 3, 1:3] = 2.0  # 32 voxels of structure 3
    assert largest_predicted_structure(torch.softmax(scores, dim=1), multilabel=False) == 3
    assert largest_predicted_structure(torch.softmax(torch.zeros(1, 4, 2, 2, 2) + torch.tensor([1.0, 0, 0, 0])[None, :, None, None, None], dim=1), False) == 1
    labels = torch.zeros(1, 3, 4, 4, 4)
    labels[0, 0] = 0.9  # multi-label: channel 0 is a structure (tumour core), not background
    labels[0, 1, :1] = 0.9
    assert largest_predicted_structure(labels, multilabel=True) == 0


def test_the_structure_at_the_cursor_is_explained_by_default():
    """A point inside the smaller structure picks it; a point on background or off the grid keeps the largest."""
    import torch

    from XAIExplainLib.pipeline import PreparedCase, structure_at

    grid = sitk.Image([4, 4, 4], sitk.sitkUInt8)
    grid.SetOrigin((10.0, 20.0, 30.0))  # LPS: the RAS point of voxel (i, j, k) is (-10 - i, -20 - j, 30 + k)
    case = PreparedCase(image=grid, grid=grid, inputs=torch.zeros(1, 1, 4, 4, 4))
    scores = torch.zeros(1, 4, 4, 4, 4)
    scores[0, 0] = 1.0
    scores[0, 2, :1] = 2.0  # structure 2 at i = 0
    scores[0, 3, 1:3] = 2.0  # structure 3 (the largest) at i = 1, 2
    probabilities = torch.softmax(scores, dim=1)
    assert structure_at(case, probabilities, (-10.0, -21.0, 31.0), multilabel=False) == 2
    assert structure_at(case, probabilities, (-13.0, -21.0, 31.0), multilabel=False) is None  # background
    assert structure_at(case, probabilities, (50.0, 0.0, 0.0), multilabel=False) is None  # off the grid


def test_a_report_for_a_bundle_that_names_no_task_uses_the_generic_one(spleen, tmp_path):
    sitk.WriteImage(make_image(size=(40, 36, 30), spacing=(1.2, 1.2, 2.0), blob_index=(20, 18, 15)),
                    str(tmp_path / "ct.nii.gz"))
    done = _cli("report", str(tmp_path / "ct.nii.gz"), "--model", str(spleen), "--samples", "2",
                "--out", str(tmp_path / "report.html"))
    assert done.returncode == 0, done.stderr
    assert "Structure segmentation (CT, any model)" in (tmp_path / "report.html").read_text(encoding="utf-8")


SWIN = {"_target_": "SwinUNETR", "in_channels": 1, "out_channels": 2, "feature_size": 12, "spatial_dims": 3}


def test_a_network_that_cannot_be_built_on_meta_is_built_within_its_weights(tmp_path):
    # SwinUNETR computes its drop-path rates with tensors while it is built: no values on the meta device.
    bundle = write_zoo_bundle(tmp_path / "swin_unetr", SPLEEN_LIKE, network_def=SWIN)
    model = load_model(bundle)
    assert model.spec.cam_target_layer in dict(model.network.named_modules())
    # The same weights under a config four times as wide: refused while it is built, not after.
    config = json.loads((bundle / "configs" / "inference.json").read_text(encoding="utf-8"))
    config["network_def"]["feature_size"] = 48
    (bundle / "configs" / "inference.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(XAIModelError, match=r"needs more than \d+ MB of tensors, more than its weights file holds"):
        load_model(bundle)


def _two_channel_case(tmp_path):
    """A BraTS-like bundle taking T1c and FLAIR, and the two volumes written to ``tmp_path``."""
    network = {**BRATS_LIKE["network_def"], "in_channels": 2}
    bundle = write_zoo_bundle(tmp_path / "brats", BRATS_LIKE, network_def=network)
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    metadata["network_data_format"]["inputs"]["image"].update(num_channels=2, channel_def={"0": "T1c", "1": "FLAIR"})
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    t1c = make_image(size=(40, 36, 30), spacing=(1.0, 1.0, 1.5), blob_index=(25, 18, 15))
    # FLAIR on its own grid (another spacing and origin, same region): resampled onto the T1c grid.
    flair = make_image(size=(30, 28, 24), spacing=(1.3, 1.3, 1.9), origin=(0.5, -0.5, 0.2), seed=3)
    for name, image in (("t1c", t1c), ("flair", flair)):
        sitk.WriteImage(image, str(tmp_path / f"{name}.nii.gz"))
    return bundle, t1c, flair


def test_a_multi_channel_model_takes_one_volume_per_channel(tmp_path):
    bundle, t1c, _flair = _two_channel_case(tmp_path)
    done = _cli("explain", str(tmp_path / "t1c.nii.gz"), str(tmp_path / "flair.nii.gz"), "--model", str(bundle),
                "--method", "gradient", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text(encoding="utf-8"))
    saliency = sitk.ReadImage(str(tmp_path / "out" / result["files"]["saliency"]))
    assert saliency.GetSize() == t1c.GetSize() and np.allclose(saliency.GetSpacing(), t1c.GetSpacing())
    shares = result["explanation"]["channel_evidence"]["shares"]
    assert set(shares) == {"T1c", "FLAIR"} and abs(sum(shares.values()) - 1.0) < 1e-6
    assert len(result["inputs"]) == 2

    one = _cli("explain", str(tmp_path / "t1c.nii.gz"), "--model", str(bundle), "--out", str(tmp_path / "one"))
    assert one.returncode == 2 and "one per channel in this order: T1c, FLAIR; 1 given" in one.stderr
    elsewhere = make_image(size=(20, 20, 20), origin=(500.0, 500.0, 500.0))
    sitk.WriteImage(elsewhere, str(tmp_path / "elsewhere.nii.gz"))
    apart = _cli("explain", str(tmp_path / "t1c.nii.gz"), str(tmp_path / "elsewhere.nii.gz"), "--model", str(bundle),
                 "--out", str(tmp_path / "apart"))
    assert apart.returncode == 2 and "input 2 (FLAIR) does not cover the centre" in apart.stderr


def test_sigmoid_structures_get_their_own_volumes_and_a_label_map(tmp_path):
    import torch

    from XAIExplainLib.pipeline import describe_prediction, prepare_case

    model = load_model(write_zoo_bundle(tmp_path / "brats", BRATS_LIKE))
    case = prepare_case(make_image(size=(32, 32, 32), spacing=(2.0, 2.0, 2.0)), model)
    logits = torch.full((1, 3, *case.inputs.shape[2:]), -8.0)
    logits[0, 1, 4:28, 4:28, 4:28] = 8.0  # whole tumour
    logits[0, 0, 10:20, 10:20, 10:20] = 9.0  # tumour core, inside it
    prediction, labels = describe_prediction(model, case, torch.sigmoid(logits))
    assert prediction["multilabel"] and prediction["label_names"] == ["", "tumor core", "whole tumor", "enhancing tumor"]
    assert prediction["predicted_label"] == "whole tumor" and prediction["volumes_ml"]["enhancing tumor"] == 0.0
    volumes = prediction["volumes_ml"]
    assert 0 < volumes["tumor core"] < volumes["whole tumor"]  # overlapping: each its own volume
    values = set(np.unique(sitk.GetArrayViewFromImage(labels)).tolist())
    assert values == {0, 1, 2}  # none, core (where it overlaps the whole tumour, the more probable), whole
    assert labels.GetSize() == case.image.GetSize()


def test_robustness_checks_explain_a_sliding_window_model_window_by_window(spleen):
    """The sweep's and the randomisation check's maps of a model predicted in windows are its windowed maps."""
    from XAIExplainLib.explainers.windowed import SlidingWindows
    from XAIExplainLib.pipeline import attribute_case
    from XAIRobustnessLib.reference import explain_reference
    from XAIRobustnessLib.sanity import sanity_check

    model = load_model(spleen)
    image = make_image(size=(48, 40, 30), spacing=(0.9, 1.1, 2.5), blob_index=(30, 20, 14))
    reference = explain_reference(image, model, "gradient")
    assert len(SlidingWindows.plan(reference.case.inputs.shape[2:], (32, 32, 32), 0.5).boxes) > 1
    windowed, info = attribute_case(model, reference.explainer, reference.case.inputs, reference.target)
    assert info is not None and torch.allclose(reference.saliency, windowed[0, 0])
    assert sanity_check(image, model, "gradient", max_steps=2).steps


def test_robustness_checks_take_every_channel(tmp_path):
    """The sweep perturbs every input volume alike; faithfulness deletes a voxel from every channel at once."""
    import torch

    from XAIRobustnessLib.faithfulness import faithfulness_test
    from XAIRobustnessLib.perturbations import get_perturbation
    from XAIRobustnessLib.reference import explain_reference

    bundle, t1c, flair = _two_channel_case(tmp_path)
    model = load_model(bundle)
    reference = explain_reference(t1c, model, "gradient", other_channels=[flair])
    noise = get_perturbation("gaussian-noise", model.spec.modality)
    perturbed = reference.perturbed_inputs(model, noise, 3, seed=0)
    assert perturbed.shape == reference.case.inputs.shape
    changed = (perturbed - reference.case.inputs).abs().flatten(2).amax(dim=2)[0]
    assert bool((changed > 0).all())  # both channels got the noise
    result = faithfulness_test(t1c, model, "gradient", steps=4, n_random=1, reference=reference)
    assert len(result.deletion) == 5 and result.deletion[-1] != result.deletion[0]
    done = _cli("robustness", str(tmp_path / "t1c.nii.gz"), str(tmp_path / "flair.nii.gz"), "--model", str(bundle),
                "--perturbations", "gaussian-noise", "--severities", "2", "--method", "gradient",
                "--out", str(tmp_path / "sweep"))
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "sweep" / "robustness.json").read_text(encoding="utf-8"))
    assert len(report["inputs"]) == 2
    one = _cli("robustness", str(tmp_path / "t1c.nii.gz"), "--model", str(bundle), "--out", str(tmp_path / "one"))
    assert one.returncode == 2 and "one per channel in this order: T1c, FLAIR; 1 given" in one.stderr
    assert torch.isfinite(reference.saliency).all()
