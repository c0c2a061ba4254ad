"""`explain --format dicom` on files and folders: a source series when there was none, SEG segments for a
segmentation model's structures, and a refusal when the results are not on the referenced series' grid."""

from __future__ import annotations

import json
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import make_image

from XAICommandLine.main import main
from XAIExplainLib.dicom import read_source_series, write_dicom_results, write_image_series
from XAIExplainLib.errors import XAIInputError
from XAIExplainLib.models import load_model
from XAIExplainLib.pipeline import explain_image
from XAIExplainLib.resources import sample_case_path

DCIODVFY = shutil.which("dciodvfy")


def test_a_nifti_input_gets_a_source_series_that_every_result_object_references(tmp_path):
    assert main(["explain", str(sample_case_path()), "--model", "brain-lesion-classifier", "--format", "dicom",
                 "--out", str(tmp_path / "out")]) == 0
    files = json.loads((tmp_path / "out" / "result.json").read_text())["files"]
    assert files["source"] == "source/" and files["saliency"] == "dicom/saliency.dcm" and "uncertainty" not in files
    source = read_source_series(tmp_path / "out" / "source")
    saliency = pydicom.dcmread(tmp_path / "out" / "dicom" / "saliency.dcm")
    report = pydicom.dcmread(tmp_path / "out" / "dicom" / "report.dcm")
    assert saliency.StudyInstanceUID == report.StudyInstanceUID == source[0].StudyInstanceUID
    assert {item.SeriesInstanceUID for item in saliency.ReferencedSeriesSequence} == {source[0].SeriesInstanceUID}
    assert saliency.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    assert sorted(p.name for p in (tmp_path / "out" / "dicom").iterdir()) == ["report.dcm", "saliency.dcm"]


@pytest.fixture(scope="module")
def segmenter_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("segmenter")
    write_image_series(sitk.ReadImage(str(sample_case_path())), folder / "source")
    image = sitk.ReadImage(str(sample_case_path()))
    result = explain_image(image, load_model("brain-lesion-segmenter"), method="gradient", uncertainty="tta", samples=2)
    export = write_dicom_results(result, read_source_series(folder / "source"), folder / "dicom")
    return result, export, read_source_series(folder / "source")


def test_a_segmentation_models_structures_become_seg_segments_frame_for_frame(segmenter_export):
    result, export, source = segmenter_export
    seg = hd.seg.segread(export.files["segmentation"])
    assert [seg.get_segment_description(n).SegmentLabel for n in seg.get_segment_numbers()] == ["lesion"]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=[ds.SOPInstanceUID for ds in source],
                                               segment_numbers=[1], ignore_spatial_locations=True)[..., 0]
    expected = sitk.GetArrayFromImage(result.segmentation) == 1
    assert expected.any() and np.array_equal(frames.astype(bool), expected)


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy missing: `make test` installs Debian's dicom3tools")
def test_the_segmenters_objects_pass_dciodvfy_without_errors(segmenter_export):
    for path in segmenter_export[1].files.values():
        run = subprocess.run([DCIODVFY, str(path)], capture_output=True, encoding="utf-8", errors="replace")
        assert [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")] == [], path.name


def test_results_of_another_grid_are_not_written_against_a_series(segmenter_export, tmp_path):
    result, _, source = segmenter_export
    other = make_image(size=(40, 36, 32))
    moved = type(result)(**{**result.__dict__, "saliency": other})
    with pytest.raises(XAIInputError, match="not on the grid"):
        write_dicom_results(moved, source, tmp_path / "dicom")
    assert not (tmp_path / "dicom").exists()
