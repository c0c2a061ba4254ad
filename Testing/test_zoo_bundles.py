"""Bundles as the MONAI Model Zoo publishes them (no xai card, short network names, JSON or YAML) are
read as published and explained without --trust-bundle, in the input's geometry.

The bundles are written by ``Testing/zoo_bundles.py`` in the zoo's layout with random weights.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_image, rotation
from XAIExplainLib.errors import XAIModelError
from XAIExplainLib.models import load_model, read_model_spec
from XAIExplainLib.preprocessing import normalise_intensity
from zoo_bundles import BRATS_LIKE, CLASSIFIER_LIKE, SPLEEN_LIKE, write_zoo_bundle


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "XAICommandLine", *args], capture_output=True, text=True, timeout=600)


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
