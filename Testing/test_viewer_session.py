"""The viewer's session on a bare slicer-core scene: uploads are validated, a run leaves a clean scene."""

from __future__ import annotations

import io
import zipfile

import pytest
import SimpleITK as sitk
from conftest import make_image, rotation
from test_imageio import _write_dicom_series

slicer = pytest.importorskip("slicer")

from XAIExplainLib.errors import XAIInputError  # noqa: E402
from XAIViewer.session import MAX_UPLOAD_BYTES, RunSettings, ViewerSession  # noqa: E402


def _nifti_bytes(image: sitk.Image, tmp_path) -> bytes:
    path = tmp_path / "case.nii.gz"
    sitk.WriteImage(image, str(path))
    return path.read_bytes()


def test_upload_loads_a_case_with_its_geometry(tmp_path):
    image = make_image(size=(20, 22, 18), spacing=(1.1, 0.9, 2.0), direction=rotation("z", 15))
    session = ViewerSession(slicer.vtkMRMLScene())
    node = session.load_upload("patient scan.nii.gz", _nifti_bytes(image, tmp_path))
    assert node.GetName() == "patient_scan"
    assert node.GetImageData().GetDimensions() == image.GetSize()


@pytest.mark.parametrize("filename, content, message", [
    ("notes.txt", b"hello", "unsupported file type"),
    ("empty.nii.gz", b"", "is empty"),
    ("garbage.nii.gz", b"\x00\x01not an image" * 10, "Could not read garbage.nii.gz"),
    ("broken.zip", b"PK\x03\x04 not really", "not a readable zip"),
])
def test_bad_uploads_are_refused_and_the_case_stays(tmp_path, filename, content, message):
    session = ViewerSession(slicer.vtkMRMLScene())
    first = session.load_upload("case.nii.gz", _nifti_bytes(make_image(), tmp_path))
    with pytest.raises(XAIInputError, match=message):
        session.load_upload(filename, content)
    assert session.input_node is first and session.scene.IsNodePresent(first)


def test_oversized_upload_is_refused_before_it_is_written(monkeypatch, tmp_path):
    import XAIViewer.session as module

    monkeypatch.setattr(module, "MAX_UPLOAD_BYTES", 100)
    with pytest.raises(XAIInputError, match="the limit is"):
        ViewerSession(slicer.vtkMRMLScene()).load_upload("big.nii.gz", b"x" * 101)
    assert MAX_UPLOAD_BYTES > 100


def test_a_zipped_dicom_series_uploads(tmp_path):
    image = make_image(size=(16, 14, 8), spacing=(0.8, 0.8, 2.5))
    _write_dicom_series(image, tmp_path / "series")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for path in sorted((tmp_path / "series").iterdir()):
            bundle.write(path, f"../../evil/{path.name}")  # names in the archive are never used as paths
    node = ViewerSession(slicer.vtkMRMLScene()).load_upload("series.zip", buffer.getvalue())
    assert node.GetImageData().GetDimensions() == image.GetSize()
    assert not (tmp_path.parent / "evil").exists()


def _case_nodes(scene) -> list[str]:
    """Nodes that belong to a case (colour tables and the subject hierarchy are shared by all)."""
    shared = ("vtkMRMLColorTableNode", "vtkMRMLSubjectHierarchyNode")
    nodes = (scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()))
    return sorted(n.GetClassName() for n in nodes if n.GetClassName() not in shared)


def test_a_run_then_a_new_case_leaves_no_result_nodes(classifier_bundle, tmp_path):
    scene = slicer.vtkMRMLScene()
    session = ViewerSession(scene)
    session.load_upload("case.nii.gz", _nifti_bytes(make_image(size=(30, 30, 30), blob_index=(10, 15, 15)), tmp_path))
    just_the_case = _case_nodes(scene)
    settings = RunSettings(model=str(classifier_bundle), method="gradcam", uncertainty="tta", samples=3)
    runs, reused = [], []
    for _ in range(2):  # a re-run replaces, never piles up
        result, facts = session.compute(session.input_image(), settings)
        session.apply(result, facts, settings, opacity=0.5, threshold=0.2)
        runs.append(_case_nodes(scene))
        reused.append(result.reused)
    assert runs[0] == runs[1] and len(runs[0]) > len(just_the_case)
    assert reused == [(), ("forward", "map", "uncertainty")]  # the same case and settings: nothing recomputed
    session.load_upload("other.nii.gz", _nifti_bytes(make_image(size=(24, 24, 24)), tmp_path))
    assert _case_nodes(scene) == just_the_case
    assert session.result is None and session.facts is None
    assert session.compute(session.input_image(), settings)[0].reused == ()  # a new case: computed afresh


def test_a_zoo_bundle_runs_in_the_viewer_with_the_generic_task(tmp_path):
    from zoo_bundles import SPLEEN_LIKE, write_zoo_bundle

    bundle = write_zoo_bundle(tmp_path / "spleen_ct_segmentation", SPLEEN_LIKE)
    session = ViewerSession(slicer.vtkMRMLScene())
    case = make_image(size=(40, 36, 30), spacing=(1.2, 1.2, 2.0), blob_index=(20, 18, 15))
    node = session.load_upload("ct.nii.gz", _nifti_bytes(case, tmp_path))
    settings = RunSettings(model=str(bundle), method="gradcam", uncertainty="none", samples=2)
    result, facts = session.compute(session.input_image(), settings)
    session.apply(result, facts, settings, opacity=0.5, threshold=0.2)
    assert facts is not None and facts.task.id == "ct-structure-segmentation"
    assert result.saliency.GetSize() == case.GetSize()
    assert node.GetImageData().GetDimensions() == case.GetSize()


def _zip_bytes(members: dict, **options) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", **options) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def _lying_zip(real_size: int) -> bytes:
    """A zip whose directory says 10 bytes for a member that inflates to ``real_size``."""
    data = bytearray(_zip_bytes({"a.dcm": bytes(real_size)}, compression=zipfile.ZIP_DEFLATED))
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(signature)
        data[at + offset:at + offset + 4] = (10).to_bytes(4, "little")
    return bytes(data)


@pytest.mark.parametrize("content, message", [
    (_zip_bytes({"a.dcm": b"x"})[:-30], "not a readable zip"),
    (b"PK\x03\x04" + b"\0" * 200, "not a readable zip"),
    ("text, not bytes", "did not arrive as a file"),
    ([1, 2, 3], "did not arrive as a file"),
    (None, "did not arrive as a file"),
])
def test_broken_uploads_get_one_clear_message(content, message):
    session = ViewerSession(slicer.vtkMRMLScene())
    with pytest.raises(XAIInputError, match=message):
        session.read_upload("series.zip", content)


def test_zip_bombs_stop_at_the_limit(monkeypatch):
    """What is written is counted as it is inflated, a block at a time: neither a zip that declares its
    true size nor one that lies about it gets past the limit (nor is ever held in memory whole)."""
    import XAIViewer.session as module

    monkeypatch.setattr(module, "MAX_UPLOAD_BYTES", 4 << 20)
    honest = _zip_bytes({f"{i}.dcm": bytes(1 << 20) for i in range(6)}, compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(XAIInputError, match="unpacks to more than 4 MB"):
        ViewerSession.read_upload("bomb.zip", honest)
    with pytest.raises(XAIInputError, match="not a readable zip"):
        ViewerSession.read_upload("liar.zip", _lying_zip(16 << 20))


def test_an_encrypted_zip_is_refused():
    data = bytearray(_zip_bytes({"a.dcm": b"secret"}))
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # set the "encrypted" flag bit
        at = data.find(signature)
        data[at + offset] |= 0x1
    with pytest.raises(XAIInputError, match="encrypted"):
        ViewerSession.read_upload("locked.zip", bytes(data))


def test_an_upload_may_not_name_another_file_for_its_voxels():
    header = (b"NRRD0004\ntype: float\ndimension: 3\nsizes: 8 8 8\nencoding: raw\nendian: little\n"
              b"data file: /etc/hostname\n\n")
    with pytest.raises(XAIInputError, match="keeps its voxels in another file"):
        ViewerSession.read_upload("scan.nrrd", header)


def test_upload_messages_name_the_upload_not_a_temporary_folder():
    with pytest.raises(XAIInputError) as refused:
        ViewerSession.read_upload("../../My Scan.zip", _zip_bytes({"a.txt": b"not dicom"}))
    assert "My_Scan.zip" in str(refused.value) and "slicer-xai-upload" not in str(refused.value)
    assert "/tmp" not in str(refused.value)


def test_the_browser_can_only_ask_for_offered_models(classifier_bundle):
    session = ViewerSession(slicer.vtkMRMLScene(), allowed_models={"brain-lesion-classifier"})
    for asked in (str(classifier_bundle), "/etc", "../Models/brain-lesion-classifier"):
        with pytest.raises(XAIInputError, match="not one this viewer offers") as refused:
            session.model(asked)
        assert asked not in str(refused.value)  # nothing said about whether that path exists
    assert session.model("brain-lesion-classifier").spec.task == "classification"


def test_state_guard_lets_the_browser_change_only_offered_choices():
    from XAIViewer.security import StateGuard, number_in, one_of

    offered = [{"title": "Demo", "value": "demo"}]
    guard = StateGuard({"model", "opacity", "running", "report_href"},
                       {"model": one_of(lambda: offered), "opacity": number_in(0, 1)})
    changes = [{"key": "model", "value": "demo"}, {"key": "model", "value": "/etc/passwd"},
               {"key": "opacity", "value": 0.3}, {"key": "opacity", "value": float("nan")},
               {"key": "opacity", "value": "0.3"}, {"key": "running", "value": False},
               {"key": "report_href", "value": "javascript:alert(1)"}, {"key": "trame__busy", "value": 1},
               "not a change", {"key": ["model"]}]
    assert guard.filter(changes) == [{"key": "model", "value": "demo"}, {"key": "opacity", "value": 0.3},
                                     {"key": "trame__busy", "value": 1}]


def test_the_structure_picker_lists_predicted_structures_largest_first():
    import types

    from XAIViewer.app import structure_choices

    result = types.SimpleNamespace(
        prediction={"task": "segmentation", "class_names": ["background", "liver", "spleen", "kidney"],
                    "volumes_ml": {"background": 900.0, "liver": 1500.0, "spleen": 150.0, "kidney": 0.0}},
        explanation={"target": {"class_name": "liver"}},
        uncertainty_info={"structures": {"spleen": {"volume_ml_mean": 151.2, "volume_ml_std": 4.0}}})
    assert structure_choices(result) == [{"title": "liver (1500.0 ml)", "value": "liver"},
                                         {"title": "spleen (151.2 ± 4.0 ml)", "value": "spleen"}]
    result.prediction["volumes_ml"]["spleen"] = 0.0  # one structure: nothing to pick
    assert structure_choices(result) == []
    result.prediction = {"task": "classification"}
    assert structure_choices(result) == []


def test_a_multi_channel_run_takes_the_uploaded_volumes_in_card_order(tmp_path):
    from test_zoo_bundles import _two_channel_case

    bundle, t1c, flair = _two_channel_case(tmp_path)
    session = ViewerSession(slicer.vtkMRMLScene())
    session.load_case(tmp_path / "t1c.nii.gz")
    settings = RunSettings(model=str(bundle), method="gradient", uncertainty="none", samples=2)
    with pytest.raises(XAIInputError, match=r"upload FLAIR \(input 2\) as well"):
        session.compute(session.input_image(), settings)
    session.set_channel(2, *session.read_upload("flair.nii.gz", (tmp_path / "flair.nii.gz").read_bytes()))
    result, _facts = session.compute(session.input_image(), settings)
    assert set(result.explanation["channel_evidence"]["shares"]) == {"T1c", "FLAIR"}
    assert result.saliency.GetSize() == t1c.GetSize()
    session.load_case(tmp_path / "t1c.nii.gz")  # a new case has none of its other volumes
    assert session.channels == {}


def test_a_run_explains_the_structure_under_the_cursor_the_user_moved(tmp_path):
    import numpy as np
    from scipy import ndimage

    from zoo_bundles import BRATS_LIKE, write_zoo_bundle

    bundle = write_zoo_bundle(tmp_path / "brats", BRATS_LIKE)
    scene = slicer.vtkMRMLScene()
    scene.AddNewNodeByClass("vtkMRMLCrosshairNode")  # the viewer's scene has Slicer's cursor
    session = ViewerSession(scene)
    image = make_image(size=(40, 36, 30), spacing=(1.0, 1.0, 1.0), blob_index=(20, 18, 15))
    session.load_upload("mr.nii.gz", _nifti_bytes(image, tmp_path))
    assert session.user_cursor() is None  # nothing moved yet
    settings = RunSettings(model=str(bundle), method="gradient", uncertainty="none", samples=2)
    first, facts = session.compute(session.input_image(), settings)
    session.apply(first, facts, settings, opacity=0.5, threshold=0.2)
    assert session.user_cursor() is None  # the viewer put the cursor on the peak itself
    default = first.explanation["target"]["class_index"]
    labels = sitk.GetArrayFromImage(first.segmentation)  # (k, j, i); value = structure + 1
    other = next(v for v in np.unique(labels) if v not in (0, default + 1))
    depth = ndimage.distance_transform_edt(labels == other)  # the voxel deepest inside that structure
    k, j, i = np.unravel_index(int(np.argmax(depth)), depth.shape)
    lps = first.segmentation.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))
    session.crosshair().SetCrosshairRAS(-lps[0], -lps[1], lps[2])  # the user's Shift + mouse move
    cursor = session.user_cursor()
    assert cursor is not None
    moved = RunSettings(model=str(bundle), method="gradient", uncertainty="none", samples=2, point_ras=cursor)
    result, _ = session.compute(session.input_image(), moved)
    assert result.explanation["target"]["class_index"] == other - 1
    assert "the structure at the cursor" in result.explanation["target"]["description"]
