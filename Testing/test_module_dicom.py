"""XAI Explain's Save as DICOM, through the module's Logic on a real MRML scene: a volume from Slicer's DICOM
database gets results that reference its own images; any other volume gets a new series to reference."""

from __future__ import annotations

import random
import shutil
import types

import pydicom
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

from slicer_standins import explainParameters  # noqa: E402
from XAIExplainLib import mrml  # noqa: E402
from XAIExplainLib.dicom import write_image_series  # noqa: E402
from XAIExplainLib.errors import XAIInputError  # noqa: E402
from XAIExplainLib.resources import sample_case_path  # noqa: E402


def _explained(module, scene, uncertainty="NONE"):
    node = mrml.imageToVolumeNode(scene, sitk.ReadImage(str(sample_case_path())), "brain")
    logic = module.XAIExplainLogic()
    parameters = explainParameters(module, node, "brain-lesion-classifier",
                                   uncertaintyMethod=getattr(module.UncertaintyMethod, uncertainty))
    logic.explain(parameters)
    return logic, parameters, node


def test_a_volume_from_the_dicom_database_gets_results_referencing_its_own_images(explainModule, monkeypatch, tmp_path):
    files = write_image_series(sitk.ReadImage(str(sample_case_path())), tmp_path / "database" / "series")
    by_uid = {pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID: str(path) for path in files}
    database = types.SimpleNamespace(fileForInstance=lambda uid: by_uid.get(uid, ""))
    monkeypatch.setattr(slicer, "dicomDatabase", database, raising=False)
    logic, parameters, node = _explained(explainModule, slicer.vtkMRMLScene(), uncertainty="TTA")
    uids = list(by_uid)
    random.Random(0).shuffle(uids)  # the loader's order is not the slices' order
    node.SetAttribute("DICOM.instanceUIDs", " ".join(uids))
    export = logic.saveResultsAsDicom(parameters, str(tmp_path / "out"))
    assert sorted(export.files) == ["report", "review", "saliency", "uncertainty"]
    assert not (tmp_path / "out" / "source").exists()
    saliency = pydicom.dcmread(export.files["saliency"])
    series_uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    assert [item.SeriesInstanceUID for item in saliency.ReferencedSeriesSequence] == [series_uid]
    referenced = {frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                  for frame in saliency.PerFrameFunctionalGroupsSequence}
    assert referenced == set(by_uid)


def test_any_other_volume_is_first_written_as_a_series_and_a_used_folder_is_refused(explainModule, tmp_path):
    logic, parameters, _node = _explained(explainModule, slicer.vtkMRMLScene())
    export = logic.saveResultsAsDicom(parameters, str(tmp_path / "out"))
    assert sorted(export.files) == ["report", "saliency"] and not export.imported
    source = sorted((tmp_path / "out" / "source").glob("*.dcm"))
    assert len(source) == 83
    report = pydicom.dcmread(export.files["report"])
    assert report.StudyInstanceUID == pydicom.dcmread(source[0], stop_before_pixels=True).StudyInstanceUID
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(XAIInputError, match="not slicer-xai results"):
        logic.saveResultsAsDicom(parameters, str(tmp_path / "mine"))
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    shutil.rmtree(tmp_path / "out")


def test_save_as_dicom_installs_highdicom_only_after_asking(explainModule, monkeypatch):
    import importlib.util

    asked, installed = [], []
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text: asked.append(text) or False, raising=False)
    monkeypatch.setattr(slicer.util, "pip_install", lambda requirements: installed.append(requirements), raising=False)
    logic = explainModule.XAIExplainLogic()
    assert logic.ensureDicomDependencies(askConfirmation=True)  # here highdicom is there: nothing asked
    assert asked == [] and installed == []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "highdicom" else real(name, *a))
    assert not logic.ensureDicomDependencies(askConfirmation=True)  # declined: nothing installed
    assert len(asked) == 1 and "highdicom==0.28.2" in asked[0] and installed == []
