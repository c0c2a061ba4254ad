"""MRML glue on a real vtkMRMLScene (slicer-core): geometry, result nodes, layers, provenance,
subject hierarchy, re-runs, and a save / load round trip."""

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
import vtk  # noqa: E402

from XAIExplainLib import mrml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "XAIExplain" / "XAIExplainLib" / "Resources"
SAMPLE_CASE = RESOURCES / "SampleData" / "brain-lesion-case1.nii.gz"
SAMPLE_MODEL = RESOURCES / "Models" / "brain-lesion-classifier"

# An oblique, anisotropic, left-handed-free grid: rotation about an oblique axis, odd origin.
_ANGLE = np.deg2rad(23.0)
_AXIS = np.array([1.0, 2.0, 0.5]) / np.linalg.norm([1.0, 2.0, 0.5])


def _rotation(axis, angle):
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _obliqueImage(size=(11, 9, 7), spacing=(0.7, 1.3, 3.1), pixelType=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    array = rng.normal(100, 20, size=size[::-1]).astype(pixelType)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-12.25, 33.5, 7.125))
    image.SetDirection(tuple(_rotation(_AXIS, _ANGLE).ravel()))
    return image


def _geometry(image):
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


class FakeResult:
    """The shape of ``XAIExplainLib.pipeline`` results, computed from the input without a model."""

    def __init__(self, image, uncertainty=True, segmentation=False, seed=1):
        rng = np.random.default_rng(seed)
        array = sitk.GetArrayFromImage(image)
        k, j, i = np.indices(array.shape)
        center = np.array(array.shape) / 2
        blob = np.exp(-(((k - center[0]) ** 2) + ((j - center[1]) ** 2) + ((i - center[2]) ** 2)) / 8.0)
        self.saliency = self._like(blob.astype(np.float32), image)
        self.uncertainty = self._like(rng.random(array.shape).astype(np.float32), image) if uncertainty else None
        self.segmentation = self._like((blob > 0.5).astype(np.uint8), image) if segmentation else None
        self.prediction = {
            "task": "classification",
            "class_names": ["background", "lesion"],
            "probabilities": [0.2, 0.8],
            "predicted_class": 1,
            "predicted_label": "lesion",
            "confidence": 0.8,
        }
        # As XAIExplainLib.pipeline writes it (nested).
        self.provenance = {
            "software": "slicer-xai 0.1.0",
            "time_utc": "2025-01-01T00:00:00+00:00",
            "model": {"id": "brain-lesion-classifier@1.0", "sha256": "0" * 64, "class_names": ["background", "lesion"]},
            "method": "gradcam",
            "parameters": {"samples": 8},
            "target": {"class_index": 1, "class_name": "lesion", "description": "class lesion"},
            "uncertainty": {"method": "mc-dropout", "samples": 8},
            "seed": 0,
        }

    @staticmethod
    def _like(array, image):
        result = sitk.GetImageFromArray(array)
        result.CopyInformation(image)
        return result


@pytest.fixture()
def scene():
    scene = slicer.vtkMRMLScene()
    colorLogic = slicer.vtkMRMLColorLogic()
    colorLogic.SetMRMLScene(scene)
    # The three slice views of Slicer's conventional layout, as the layout manager makes them.
    for name in ("Red", "Yellow", "Green"):
        sliceNode = scene.AddNewNodeByClass("vtkMRMLSliceNode")
        sliceNode.SetLayoutName(name)
        sliceNode.SetName(name)
        compositeNode = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        compositeNode.SetLayoutName(name)
    yield scene
    colorLogic.SetMRMLScene(None)
    scene.Clear(1)


@pytest.fixture()
def inputNode(scene):
    node = mrml.imageToVolumeNode(scene, _obliqueImage(), "case1")
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode").SetBackgroundVolumeID(node.GetID())
    return node


def _compositeNodes(scene):
    return [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]


# --- geometry --------------------------------------------------------------------------------------


@pytest.mark.parametrize("pixelType", [np.float32, np.int16, np.uint8])
def test_image_volume_round_trip_is_exact(scene, pixelType):
    image = _obliqueImage(pixelType=pixelType)
    node = mrml.imageToVolumeNode(scene, image, "oblique")
    back = mrml.volumeNodeToImage(node)
    assert _geometry(back) == _geometry(image)  # bit-exact, not approximately
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert back.GetPixelID() == image.GetPixelID()


def test_geometry_matches_slicer_ijk_to_ras(scene):
    """A voxel's RAS position from Slicer's IJK->RAS equals ITK's LPS position with x, y negated."""
    image = _obliqueImage()
    node = mrml.imageToVolumeNode(scene, image, "oblique")
    ijkToRAS = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijkToRAS)
    for index in [(0, 0, 0), (10, 8, 6), (3, 7, 2)]:
        ras = ijkToRAS.MultiplyPoint((*index, 1.0))[:3]
        lps = image.TransformIndexToPhysicalPoint(index)
        np.testing.assert_allclose(ras, (-lps[0], -lps[1], lps[2]), atol=1e-9)


def test_node_to_image_from_a_node_made_by_slicer(scene):
    """Geometry set the Slicer way (IJK->RAS matrix) comes out in LPS as ITK states it."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "made in slicer")
    slicer.util.updateVolumeFromArray(node, np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6))
    matrix = np.eye(4)
    matrix[:3, :3] = _rotation(_AXIS, _ANGLE) @ np.diag([0.5, 0.9, 2.5])
    matrix[:3, 3] = (10.0, -20.0, 30.0)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    image = mrml.volumeNodeToImage(node)
    assert image.GetSize() == (6, 5, 4)
    np.testing.assert_allclose(image.GetSpacing(), (0.5, 0.9, 2.5), atol=1e-12)
    np.testing.assert_allclose(image.GetOrigin(), (-10.0, 20.0, 30.0), atol=1e-12)
    expected = np.diag([-1.0, -1.0, 1.0]) @ _rotation(_AXIS, _ANGLE)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), expected, atol=1e-12)
    assert image.GetPixel(5, 4, 3) == 119  # (i, j, k) = (5, 4, 3) is array[3, 4, 5]


# --- results ---------------------------------------------------------------------------------------


def test_results_on_input_grid_with_layers_provenance_and_hierarchy(scene, inputNode):
    shNode = scene.GetSubjectHierarchyNode()
    patient = shNode.CreateSubjectItem(shNode.GetSceneItemID(), "Patient 1")
    study = shNode.CreateStudyItem(patient, "MR brain")
    shNode.CreateItem(study, inputNode)

    result = FakeResult(mrml.volumeNodeToImage(inputNode))
    nodes = mrml.applyExplanationResult(scene, inputNode, result, "gradcam", opacity=0.4, threshold=0.3)

    assert nodes.saliency.GetName() == "case1 gradcam saliency"
    assert nodes.uncertainty.GetName() == "case1 uncertainty"
    assert nodes.review.IsA("vtkMRMLLabelMapVolumeNode")
    inputImage = mrml.volumeNodeToImage(inputNode)
    for node in (nodes.saliency, nodes.uncertainty, nodes.review):
        assert _geometry(mrml.volumeNodeToImage(node)) == _geometry(inputImage)
        assert shNode.GetItemParent(shNode.GetItemByDataNode(node)) == study
        assert node.GetAttribute("XAI.modelId") == "brain-lesion-classifier@1.0"
        assert node.GetAttribute("XAI.modelSha256") == "0" * 64
        assert node.GetAttribute("XAI.method") == "gradcam"
        assert node.GetAttribute("XAI.targetClassName") == "lesion"
        assert node.GetAttribute("XAI.software") == "slicer-xai 0.1.0"
        assert node.GetAttribute("XAI.timeUtc") == "2025-01-01T00:00:00+00:00"
        assert json.loads(node.GetAttribute("XAI.parametersSamples")) == 8
        assert mrml.getProvenance(node) == result.provenance
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(nodes.saliency), sitk.GetArrayFromImage(result.saliency))
    assert nodes.saliency.GetAttribute("XAI.predictedLabel") == "lesion"

    compositeNodes = _compositeNodes(scene)
    assert len(nodes.compositeNodes) == 3
    for compositeNode in compositeNodes:
        assert compositeNode.GetBackgroundVolumeID() == inputNode.GetID()
        assert compositeNode.GetForegroundVolumeID() == nodes.saliency.GetID()
        assert compositeNode.GetLabelVolumeID() == nodes.review.GetID()
        assert compositeNode.GetForegroundOpacity() == pytest.approx(0.4)

    display = nodes.saliency.GetDisplayNode()
    assert display.GetColorNode().GetAttribute("XAI.colorTable") == "saliency"
    assert display.GetApplyThreshold()
    assert display.GetLowerThreshold() == pytest.approx(0.3 * float(sitk.GetArrayViewFromImage(result.saliency).max()), rel=1e-3, abs=1e-3)
    assert not display.GetAutoWindowLevel()
    assert nodes.uncertainty.GetDisplayNode().GetColorNode().GetAttribute("XAI.colorTable") == "uncertainty"
    assert nodes.review.GetDisplayNode().GetColorNode().GetAttribute("XAI.colorTable") == "review"

    # Review regions: the top 10 % of (non-zero) uncertainty.
    review = slicer.util.arrayFromVolume(nodes.review)
    assert review.max() == mrml.REVIEW_LABEL
    assert abs(np.count_nonzero(review) / review.size - 0.10) < 0.02


def test_rerun_replaces_results_without_leaking_nodes(scene, inputNode):
    image = mrml.volumeNodeToImage(inputNode)
    first = mrml.applyExplanationResult(scene, inputNode, FakeResult(image, seed=1), "gradcam")
    counts = scene.GetNumberOfNodes()
    ids = (first.saliency.GetID(), first.uncertainty.GetID(), first.review.GetID())
    second = mrml.applyExplanationResult(scene, inputNode, FakeResult(image, seed=2), "gradcam")
    assert scene.GetNumberOfNodes() == counts
    assert (second.saliency.GetID(), second.uncertainty.GetID(), second.review.GetID()) == ids
    assert second.saliency.GetName() == "case1 gradcam saliency"

    # A run without uncertainty drops the stale uncertainty and its review regions with all their nodes.
    withoutDisplay = scene.GetNumberOfNodes() - 2 * 2  # volume + display node, twice
    mrml.applyExplanationResult(scene, inputNode, FakeResult(image, uncertainty=False), "gradcam")
    assert scene.GetNumberOfNodes() == withoutDisplay
    assert mrml.findResultNode(scene, inputNode, "uncertainty") is None
    for compositeNode in _compositeNodes(scene):
        assert compositeNode.GetLabelVolumeID() is None

    # Another method adds its own saliency map beside the first, under a unique name.
    other = mrml.applyExplanationResult(scene, inputNode, FakeResult(image, uncertainty=False), "occlusion")
    assert other.saliency.GetName() == "case1 occlusion saliency"
    assert other.saliency.GetID() != ids[0]


def test_names_stay_unique_next_to_user_nodes(scene, inputNode):
    scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "case1 gradcam saliency")
    nodes = mrml.applyExplanationResult(scene, inputNode, FakeResult(mrml.volumeNodeToImage(inputNode)), "gradcam")
    assert nodes.saliency.GetName() != "case1 gradcam saliency"
    assert nodes.saliency.GetName().startswith("case1 gradcam saliency")


def test_result_off_the_input_grid_is_refused_untouched(scene, inputNode):
    before = scene.GetNumberOfNodes()
    result = FakeResult(_obliqueImage(size=(11, 9, 6)))
    with pytest.raises(ValueError, match="not on the grid"):
        mrml.applyExplanationResult(scene, inputNode, result, "gradcam")
    assert scene.GetNumberOfNodes() == before


def test_results_follow_the_input_transform_and_segmentation(scene, inputNode):
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    inputNode.SetAndObserveTransformNodeID(transform.GetID())
    result = FakeResult(mrml.volumeNodeToImage(inputNode), segmentation=True)
    nodes = mrml.applyExplanationResult(scene, inputNode, result, "gradcam")
    assert nodes.saliency.GetTransformNodeID() == transform.GetID()
    segmentation = nodes.segmentation.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    assert segmentation.GetNthSegment(0).GetName() == "lesion"
    before = scene.GetNumberOfNodes()
    mrml.applyExplanationResult(scene, inputNode, result, "gradcam")
    assert scene.GetNumberOfNodes() == before
    assert nodes.segmentation.GetSegmentation().GetNumberOfSegments() == 1


def test_views_not_showing_the_input_are_left_alone(scene, inputNode):
    other = mrml.imageToVolumeNode(scene, _obliqueImage(seed=5), "other case")
    green = _compositeNodes(scene)[2]
    green.SetBackgroundVolumeID(other.GetID())
    nodes = mrml.applyExplanationResult(scene, inputNode, FakeResult(mrml.volumeNodeToImage(inputNode)), "gradcam")
    assert len(nodes.compositeNodes) == 2
    assert green.GetForegroundVolumeID() is None
    mrml.setForegroundOpacity(scene, inputNode, 0.9)
    assert _compositeNodes(scene)[0].GetForegroundOpacity() == pytest.approx(0.9)
    assert green.GetForegroundOpacity() != pytest.approx(0.9)


def test_scene_saved_and_loaded_keeps_results(scene, inputNode, tmp_path):
    shNode = scene.GetSubjectHierarchyNode()
    study = shNode.CreateStudyItem(shNode.CreateSubjectItem(shNode.GetSceneItemID(), "Patient"), "Study")
    shNode.CreateItem(study, inputNode)
    result = FakeResult(mrml.volumeNodeToImage(inputNode))
    mrml.applyExplanationResult(scene, inputNode, result, "gradcam", threshold=0.25)

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    applicationLogic = slicer.vtkMRMLApplicationLogic()
    applicationLogic.SetMRMLScene(scene)
    assert applicationLogic.SaveSceneToSlicerDataBundleDirectory(str(bundle), None)
    mrmlFiles = list(bundle.glob("*.mrml"))
    assert len(mrmlFiles) == 1 and any((bundle / "Data").iterdir())

    loaded = slicer.vtkMRMLScene()
    loaded.SetURL(str(mrmlFiles[0]))
    assert loaded.Import()
    loadedInput = loaded.GetFirstNodeByName("case1")
    saliency = mrml.findResultNode(loaded, loadedInput, "saliency", "gradcam")
    uncertainty = mrml.findResultNode(loaded, loadedInput, "uncertainty")
    review = mrml.findResultNode(loaded, loadedInput, "review")
    assert saliency is not None and uncertainty is not None and review is not None
    assert saliency.GetName() == "case1 gradcam saliency"
    assert _geometry(mrml.volumeNodeToImage(saliency)) == _geometry(mrml.volumeNodeToImage(loadedInput))
    np.testing.assert_allclose(slicer.util.arrayFromVolume(saliency), sitk.GetArrayFromImage(result.saliency))
    assert mrml.getProvenance(saliency) == result.provenance
    assert saliency.GetDisplayNode().GetColorNode().GetAttribute("XAI.colorTable") == "saliency"
    assert saliency.GetDisplayNode().GetApplyThreshold()
    loadedSh = loaded.GetSubjectHierarchyNode()
    studyItem = loadedSh.GetItemParent(loadedSh.GetItemByDataNode(loadedInput))
    assert loadedSh.GetItemLevel(studyItem) == "Study"
    assert loadedSh.GetItemParent(loadedSh.GetItemByDataNode(saliency)) == studyItem
    composite = [loaded.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
                 for i in range(loaded.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]
    assert composite and all(node.GetForegroundVolumeID() == saliency.GetID() for node in composite)
    # Re-running on the loaded scene refills the loaded nodes.
    before = loaded.GetNumberOfNodes()
    again = mrml.applyExplanationResult(loaded, loadedInput, result, "gradcam")
    assert again.saliency is saliency and loaded.GetNumberOfNodes() == before


# --- tables and plots ------------------------------------------------------------------------------


def test_curves_into_table_and_chart_replot_in_place(scene):
    plotView = scene.AddNewNodeByClass("vtkMRMLPlotViewNode")
    columns = {"severity": [0, 1, 2, 3], "confidence": [0.9, 0.8, 0.6, 0.4], "ssim": [1.0, 0.9, 0.7, 0.5]}
    table, chart = mrml.showCurves(scene, "noise sweep", columns, "severity", title="Noise", yAxisTitle="value")
    assert table.GetNumberOfRows() == 4 and table.GetNumberOfColumns() == 3
    np.testing.assert_allclose(slicer.util.arrayFromTableColumn(table, "confidence"), columns["confidence"])
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    assert plotView.GetPlotChartNodeID() == chart.GetID()
    before = scene.GetNumberOfNodes()
    columns = {"severity": [0, 1], "confidence": [0.9, 0.1], "label": ["a", "b"]}
    table2, chart2 = mrml.showCurves(scene, "noise sweep", columns, "severity", yColumns=["confidence"])
    assert (table2, chart2) == (table, chart)
    assert scene.GetNumberOfNodes() == before - 1  # the "ssim" series went away
    assert table.GetNumberOfRows() == 2 and table.GetCellText(1, 2) == "b"


# --- with the real engine --------------------------------------------------------------------------


def test_real_engine_result_on_sample_case(scene):
    pipeline = pytest.importorskip("XAIExplainLib.pipeline")
    models = pytest.importorskip("XAIExplainLib.models")
    if not SAMPLE_CASE.exists() or not SAMPLE_MODEL.exists():
        pytest.skip("bundled sample case or model not present yet")
    image = sitk.ReadImage(str(SAMPLE_CASE), sitk.sitkFloat32)
    inputNode = mrml.imageToVolumeNode(scene, image, "brain-lesion-case1")
    model = models.load_model(str(SAMPLE_MODEL))
    result = pipeline.explain_image(mrml.volumeNodeToImage(inputNode, sitk.sitkFloat32), model, method="gradcam")
    nodes = mrml.applyExplanationResult(scene, inputNode, result, "gradcam")
    assert _geometry(mrml.volumeNodeToImage(nodes.saliency)) == _geometry(image)
    assert nodes.saliency.GetAttribute("XAI.provenance")
    assert all(n.GetForegroundVolumeID() == nodes.saliency.GetID() for n in _compositeNodes(scene))


# --- XAIRobustness scene helpers -------------------------------------------------------------------


def test_sweep_table_and_perturbed_case(scene, inputNode):
    sweepNodes = pytest.importorskip("XAIRobustnessLib.sweepNodes")
    rows = [{"severity": s, "confidence": 0.9 - 0.1 * s, "saliency_correlation": 1.0 - 0.2 * s,
             "predicted_label": "lesion" if s < 2 else "background"} for s in range(3)]
    table, chart = sweepNodes.showSweep(scene, inputNode, "gaussian-noise", rows)
    assert table.GetNumberOfRows() == 3 and chart.GetNumberOfPlotSeriesNodes() == 2
    assert table.GetCellText(2, table.GetColumnIndex("predicted_label")) == "background"

    image = mrml.volumeNodeToImage(inputNode)
    perturbed = sitk.Cast(image, sitk.sitkFloat32) + 5.0
    perturbedNode, nodes = sweepNodes.showPerturbedCase(scene, inputNode, "gaussian-noise", perturbed,
                                                        FakeResult(perturbed, uncertainty=False), "gradcam")
    assert perturbedNode.GetName() == "case1 gaussian-noise"
    assert _geometry(mrml.volumeNodeToImage(perturbedNode)) == _geometry(image)
    assert nodes.saliency.GetName() == "case1 gaussian-noise gradcam saliency"
    # The views showed the input; the perturbed case (not shown anywhere yet) takes all of them over.
    assert all(c.GetBackgroundVolumeID() == perturbedNode.GetID() for c in _compositeNodes(scene))
    before = scene.GetNumberOfNodes()
    sweepNodes.showSweep(scene, inputNode, "gaussian-noise", rows)
    sweepNodes.showPerturbedCase(scene, inputNode, "gaussian-noise", perturbed,
                                 FakeResult(perturbed, uncertainty=False), "gradcam")
    assert scene.GetNumberOfNodes() == before


def test_signed_maps_show_only_evidence_for_the_target(scene, inputNode):
    """Occlusion and IG are signed: negative values (evidence against) must stay transparent."""
    result = FakeResult(mrml.volumeNodeToImage(inputNode), uncertainty=False)
    array = sitk.GetArrayFromImage(result.saliency) - 0.5  # about half the voxels are negative
    signed = sitk.GetImageFromArray(array.astype(np.float32))
    signed.CopyInformation(result.saliency)
    result.saliency = signed
    nodes = mrml.applyExplanationResult(scene, inputNode, result, "occlusion", threshold=0.0)
    display = nodes.saliency.GetDisplayNode()
    assert display.GetApplyThreshold()
    assert display.GetLowerThreshold() >= 0.0
    assert display.GetWindowLevelMin() >= 0.0
    mrml.setSaliencyThreshold(nodes.saliency, 0.5)
    assert display.GetLowerThreshold() == pytest.approx(0.5 * float(array.max()), rel=1e-5)
