"""A volume written as a DICOM MR series: read back on the same grid with the same values, and valid DICOM."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import make_image, rotation

from XAIExplainLib.dicom import SeriesIdentity, write_image_series
from XAIExplainLib.errors import XAIInputError
from XAIExplainLib.imageio import read_image
from XAIExplainLib.resources import sample_case_path

DCIODVFY = shutil.which("dciodvfy")


def _assert_same_grid(read: sitk.Image, image: sitk.Image) -> None:
    assert read.GetSize() == image.GetSize()
    np.testing.assert_allclose(read.GetSpacing(), image.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(read.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(read.GetDirection(), image.GetDirection(), atol=1e-6)


def test_the_demo_case_comes_back_voxel_for_voxel(tmp_path):
    image = sitk.ReadImage(str(sample_case_path()))
    files = write_image_series(image, tmp_path / "series")
    assert len(files) == image.GetSize()[2]
    read = read_image(tmp_path / "series")
    _assert_same_grid(read, image)
    assert read.GetPixelID() == sitk.sitkInt16
    assert np.array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(image))


def test_an_oblique_float_volume_keeps_its_geometry_and_values_to_the_rescale_step(tmp_path):
    image = make_image(size=(24, 20, 12), spacing=(0.8, 0.9, 2.5), direction=rotation("x", 20), origin=(-10.0, 5.0, 30.0))
    write_image_series(image, tmp_path / "series")
    read = read_image(tmp_path / "series")
    _assert_same_grid(read, image)
    values = sitk.GetArrayFromImage(image).astype(np.float64)
    step = (values.max() - values.min()) / 65535
    np.testing.assert_allclose(sitk.GetArrayFromImage(read), values, atol=step)


def test_one_series_of_one_study_with_the_identity_given_and_fresh_instance_uids(tmp_path):
    identity = SeriesIdentity(patient_id="CASE-7", series_description="Brain MR")
    files = write_image_series(make_image(size=(8, 8, 4)), tmp_path / "series", identity)
    slices = [pydicom.dcmread(path) for path in files]
    assert {ds.StudyInstanceUID for ds in slices} == {identity.study_uid}
    assert {ds.SeriesInstanceUID for ds in slices} == {identity.series_uid}
    assert len({ds.SOPInstanceUID for ds in slices}) == len(slices)
    assert {ds.PatientID for ds in slices} == {"CASE-7"}
    assert [ds.InstanceNumber for ds in slices] == [1, 2, 3, 4]


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy missing: `make test` installs Debian's dicom3tools")
def test_every_instance_passes_dciodvfy_without_errors(tmp_path):
    files = write_image_series(sitk.ReadImage(str(sample_case_path())), tmp_path / "series")
    for path in (files[0], files[len(files) // 2], files[-1]):
        run = subprocess.run([DCIODVFY, str(path)], capture_output=True, encoding="utf-8", errors="replace")
        errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], errors


def test_bad_volumes_and_a_used_folder_are_refused(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(XAIInputError, match="not empty"):
        write_image_series(make_image(size=(8, 8, 4)), tmp_path / "used")
    nan_image = sitk.GetImageFromArray(np.full((4, 8, 8), np.nan, dtype=np.float32))
    with pytest.raises(XAIInputError):
        write_image_series(nan_image, tmp_path / "nan")
    assert not (tmp_path / "nan").exists()


def test_data_to_dicom_writes_a_series_the_explain_command_reads_on_the_source_grid(tmp_path, capsys):
    from XAICommandLine.main import main

    assert main(["data", "to-dicom", str(sample_case_path()), "--out", str(tmp_path / "series")]) == 0
    assert "DICOM slice(s) of study" in capsys.readouterr().out
    assert main(["explain", str(tmp_path / "series"), "--model", "brain-lesion-classifier", "--method", "gradcam",
                 "--out", str(tmp_path / "out")]) == 0
    saliency = sitk.ReadImage(str(tmp_path / "out" / "saliency.nii.gz"))
    _assert_same_grid(saliency, sitk.ReadImage(str(sample_case_path())))
    assert main(["data", "to-dicom", str(sample_case_path()), "--out", str(tmp_path / "series")]) == 2
    assert "not empty" in capsys.readouterr().err
