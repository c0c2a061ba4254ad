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
