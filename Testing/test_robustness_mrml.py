"""XAIRobustness's Logic on a real MRML scene (slicer-core): a sweep, a randomisation check and a
deletion / insertion test each leave table and plot nodes, and re-running refills them.

The module file is imported with stand-ins for the application parts slicer-core lacks
(``Testing/slicer_standins.py``).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from conftest import make_image  # noqa: E402
from slicer_standins import importModule  # noqa: E402
from XAIExplainLib import mrml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def module(monkeypatch):
    yield importModule(monkeypatch, "XAIRobustness", [ROOT / "XAIExplain", ROOT / "XAIRobustness"])
    for name in ("XAIExplain", "XAIRobustness"):
        sys.modules.pop(name, None)


@pytest.fixture
def parameters(module, classifier_bundle):
    scene = slicer.vtkMRMLScene()
    inputNode = mrml.imageToVolumeNode(scene, make_image(blob_index=(25, 18, 16)), "case1")
    return types.SimpleNamespace(inputVolume=inputNode, model=str(classifier_bundle), trustModel=False, method=module.ExplanationMethod.GRADCAM,
                                 perturbation=module.Perturbation.GAUSSIAN_NOISE, maxSeverity=2, opacity=0.5,
                                 threshold=0.2, outputTable=None, outputPerturbed=None,
                                 scene=scene)  # the scene must outlive the test: nodes hold it weakly


def _nodeCounts(scene) -> dict:
    return {c: scene.GetNumberOfNodesByClass(c) for c in
            ("vtkMRMLTableNode", "vtkMRMLPlotChartNode", "vtkMRMLPlotSeriesNode", "vtkMRMLScalarVolumeNode")}


def test_logic_sweep_creates_table_plot_and_perturbed_case(module, parameters):
    logic = module.XAIRobustnessLogic()
    scene = parameters.inputVolume.GetScene()
    tableNode = logic.runSweep(parameters)
    assert tableNode.GetNumberOfRows() == 3 and parameters.outputTable is tableNode
    assert tableNode.GetColumnIndex("spearman") >= 0 and tableNode.GetColumnIndex("confidence") >= 0
    _table, chartNode = mrml.findPlotNodes(scene, f"{parameters.inputVolume.GetID()} gaussian-noise sweep")
    assert chartNode is not None and chartNode.GetNumberOfPlotSeriesNodes() >= 3
    perturbed = parameters.outputPerturbed
    assert perturbed.GetAttribute("XAI.perturbation") == "gaussian-noise"
    assert mrml.volumeNodeToImage(perturbed).GetSize() == mrml.volumeNodeToImage(parameters.inputVolume).GetSize()
    counts = _nodeCounts(scene)
    logic.runSweep(parameters)
    assert _nodeCounts(scene) == counts  # re-running replaces, never piles up


def test_logic_sanity_and_faithfulness_create_curves(module, parameters):
    logic = module.XAIRobustnessLogic()
    scene = parameters.inputVolume.GetScene()
    results, tableNode = logic.runSanity(parameters, methods=["gradcam", "gradient"])
    assert set(results) == {"gradcam", "gradient"}
    assert tableNode.GetNumberOfRows() == len(results["gradcam"].steps)
    assert tableNode.GetAttribute("XAI.sanity.gradcam") in ("pass", "fail")
    _table, chartNode = mrml.findPlotNodes(scene, f"{parameters.inputVolume.GetID()} sanity")
    assert chartNode.GetNumberOfPlotSeriesNodes() == 2

    result, curves = logic.runFaithfulness(parameters, steps=4)
    assert curves.GetNumberOfRows() == 5 and curves.GetColumnIndex("random_deletion") >= 0
    assert curves.GetAttribute("XAI.faithfulness") == ("pass" if result.passed else "fail")
    counts = _nodeCounts(scene)
    logic.runFaithfulness(parameters, steps=4)
    assert _nodeCounts(scene) == counts
    assert np.isfinite(float(curves.GetCellText(0, curves.GetColumnIndex("deletion"))))


def test_logic_measures_the_shown_map_against_a_reference_segmentation(module, parameters):
    """Per-case ground-truth metrics of the explanation on screen, with the reference given as a
    segmentation node (as a user draws it in Segment Editor) or as a label map; re-runs refill one table."""
    import SimpleITK as sitk

    scene = parameters.scene
    image = mrml.volumeNodeToImage(parameters.inputVolume, sitk.sitkFloat32)
    saliency = sitk.Image(image.GetSize(), sitk.sitkFloat32)
    saliency.CopyInformation(image)
    saliency[25, 18, 16] = 1.0  # the peak, inside the reference blob
    saliencyNode = mrml.imageToVolumeNode(scene, saliency, "case1 saliency")
    saliencyNode.SetNodeReferenceID(mrml.results.SOURCE_REFERENCE, parameters.inputVolume.GetID())
    array = sitk.GetArrayFromImage(image) * 0
    array[14:19, 16:21, 23:28] = 1
    mask = sitk.GetImageFromArray(array.astype(np.uint8))
    mask.CopyInformation(image)
    segmentation = mrml.showReferenceSegmentation(scene, parameters.inputVolume, mask)
    logic = module.XAIRobustnessLogic()
    scores, table = logic.computeLocalisation(saliencyNode, segmentation)
    assert scores.pointing_hit and scores.mass_in_lesion == pytest.approx(1.0)
    assert scores.lesion_share == pytest.approx(125 / (array.size), rel=1.0)
    assert table.GetNumberOfRows() == 5 and table.GetCellText(0, 1) == "1"
    label = mrml.imageToVolumeNode(scene, mask, "reference labels", className="vtkMRMLLabelMapVolumeNode")
    again, sameTable = logic.computeLocalisation(saliencyNode, label)
    assert again == scores and sameTable is table
    with pytest.raises(ValueError, match="empty"):
        empty = mrml.imageToVolumeNode(scene, mask * 0, "empty labels", className="vtkMRMLLabelMapVolumeNode")
        logic.computeLocalisation(saliencyNode, empty)
