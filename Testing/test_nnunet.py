"""nnU-Net v2 results folders explain as published: nnU-Net's own preprocessing, network and sliding window, the
checkpoint read without running pickled code, maps in the input's geometry — from the command line, the viewer
and the Slicer Logic, with no hand-written card and no --trust-bundle.

The results folder is made by nnunetv2's own planning, preprocessing and (shortened) training on generated
cases (``Testing/nnunet_results.py``), once for this module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import rotation
from nnunet_results import blob_case, build_nnunet_results
from XAIExplainLib.errors import XAIModelError
from XAIExplainLib.models import load_model, read_model_spec
from XAIExplainLib.pipeline import explain_image, predict_probabilities, prepare_case


@pytest.fixture(scope="module")
def nnunet(tmp_path_factory):
    return build_nnunet_results(tmp_path_factory.mktemp("nnunet"))


def _case(spacing=(0.8, 0.9, 3.0), degrees=10.0) -> sitk.Image:
    """A blob case of another scanner: other spacing, rotated axes, so every resampling step shows."""
    image, _ = blob_case(seed=999, size=(48, 40, 16), spacing=spacing)
    image.SetDirection(rotation("z", degrees).flatten().tolist())
    return image


def test_the_card_comes_from_dataset_and_plans(nnunet):
    spec = read_model_spec(nnunet)
    assert spec.task == "segmentation" and spec.class_names == ("background", "blob")
    assert spec.channel_names == ("CT",) and spec.modality == "CT"
    # plans.json's 3d_fullres: patch (z, y, x) = (20, 40, 40), spacing (2.5, 1, 1) -> the engine's (x, y, z)
    assert spec.input.patch_size == (40, 40, 20) and spec.input.spacing_mm == (1.0, 1.0, 2.5)
    assert spec.domain.spacing_min == (1.0, 1.0, 2.5)  # the fingerprint's training spacings
    assert spec.domain.intensity_range == (-1024.0, 3071.0)  # CT: Hounsfield units
    done = subprocess.run([sys.executable, "-m", "XAICommandLine", "models", "card", str(nnunet)], capture_output=True,
                          encoding="utf-8", errors="replace", timeout=600)
    assert done.returncode == 0, done.stderr
    assert "read from dataset.json and plans.json" in done.stdout and "Grad-CAM layers (best first): network." in done.stdout


def test_predictions_are_nnunets_own_in_the_input_geometry(nnunet):
    """The engine's segmentation probabilities on the input grid agree with nnU-Net's own export of the same case."""
    model = load_model(nnunet)
    image = _case()
    case = prepare_case(image, model)
    with torch.no_grad():
        ours = case.probabilities_to_input_grid(predict_probabilities(model, case.inputs)[0])[1]  # (z, y, x)
    predictor = model.runtime.predictor(model.network.network)
    props = {"spacing": list(image.GetSpacing())[::-1]}
    _, theirs = predictor.predict_single_npy_array(sitk.GetArrayFromImage(image)[None].astype(np.float32), props,
                                                   None, None, True)
    theirs = theirs[1]
    assert ours.shape == theirs.shape
    # nnU-Net resamples an anisotropic axis nearest-neighbour, the engine linearly: close, not identical.
    assert float(np.abs(ours - theirs).mean()) < 0.03
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.95


def test_the_command_line_explains_it_without_trust(nnunet, tmp_path):
    image = _case()
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    done = subprocess.run([sys.executable, "-m", "XAICommandLine", "explain", str(tmp_path / "ct.nii.gz"), "--model",
                           str(nnunet), "--method", "gradcam", "--out", str(tmp_path / "out")],
                          capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text(encoding="utf-8"))
    for name in ("saliency", "segmentation"):
        written = sitk.ReadImage(str(tmp_path / "out" / result["files"][name]))
        assert written.GetSize() == image.GetSize()
        assert np.allclose(written.GetDirection(), image.GetDirection())
        assert np.allclose(written.GetOrigin(), image.GetOrigin()) and np.allclose(written.GetSpacing(), image.GetSpacing())
    preprocessing = result["provenance"]["preprocessing"]
    assert preprocessing["framework"] == "nnU-Net v2" and preprocessing["normalization"] == ["CTNormalization"]
    assert preprocessing["checkpoint"] == "fold_0/checkpoint_final.pth"
    assert result["explanation"]["sliding_windows"]["windows_run"] >= 1
    assert result["provenance"]["model"]["source"] == "nnunet"
    assert result["applicability"]["checks"][0]["check"] == "spacing"  # 0.8 x 0.9 x 3 mm: not the training 1 x 1 x 2.5
    assert result["applicability"]["inside"] is False


@pytest.mark.parametrize("method", ["gradient", "occlusion"])
def test_maps_are_on_the_input_grid_for_every_method(nnunet, method):
    image = _case(spacing=(1.0, 1.0, 2.5), degrees=0.0)
    result = explain_image(image, load_model(nnunet), method=method,
                           method_params={"window": 8} if method == "occlusion" else None)
    saliency = sitk.GetArrayFromImage(result.saliency)
    assert result.saliency.GetSize() == image.GetSize() and np.isfinite(saliency).all() and saliency.any()


def test_a_checkpoint_with_pickled_code_is_refused(nnunet, tmp_path):
    folder = shutil.copytree(nnunet, tmp_path / "copy")
    checkpoint = folder / "fold_0" / "checkpoint_final.pth"
    state = torch.load(str(checkpoint), map_location="cpu", weights_only=False)
    state["trainer_name"] = _RunsCode()
    torch.save(state, str(checkpoint))
    with pytest.raises(XAIModelError, match="not a plain nnU-Net checkpoint"):
        load_model(folder)
    assert not (tmp_path / "ran").exists()


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch ran",))


def test_plans_that_name_other_code_are_refused_unless_trusted(nnunet, tmp_path):
    folder = shutil.copytree(nnunet, tmp_path / "copy")
    plans = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "subprocess.Popen"
    (folder / "plans.json").write_text(json.dumps(plans), encoding="utf-8")
    with pytest.raises(XAIModelError, match="refused — pass --trust-bundle"):
        load_model(folder)


def test_the_viewer_explains_it(nnunet, tmp_path):
    slicer = pytest.importorskip("slicer")
    from test_viewer_session import _nifti_bytes
    from XAIViewer.session import RunSettings, ViewerSession

    session = ViewerSession(slicer.vtkMRMLScene())
    image = _case()
    node = session.load_upload("ct.nii.gz", _nifti_bytes(image, tmp_path))
    settings = RunSettings(model=str(nnunet), method="gradcam", uncertainty="none", samples=2)
    result, facts = session.compute(session.input_image(), settings)
    session.apply(result, facts, settings, opacity=0.5, threshold=0.2)
    assert facts.task.id == "ct-structure-segmentation"
    assert result.saliency.GetSize() == image.GetSize() == node.GetImageData().GetDimensions()


def test_the_slicer_logic_explains_it(nnunet, monkeypatch):
    slicer = pytest.importorskip("slicer")
    from slicer_standins import explainParameters, importModule
    from XAIExplainLib import mrml

    module = importModule(monkeypatch, "XAIExplain", [Path(__file__).resolve().parents[1] / "XAIExplain"])
    try:
        logic = module.XAIExplainLogic()
        assert logic.modelClassNames(str(nnunet)) == ["background", "blob"]
        scene = slicer.vtkMRMLScene()
        inputNode = mrml.imageToVolumeNode(scene, _case(), "ct")
        nodes = logic.explain(explainParameters(module, inputNode, str(nnunet)))
        assert nodes.saliency.GetImageData().GetDimensions() == inputNode.GetImageData().GetDimensions()
        assert nodes.segmentation is not None
    finally:
        sys.modules.pop("XAIExplain", None)
