"""Reading inputs: DICOM series folders, 4-D files with one volume, and refusals with one sentence."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image, rotation

from XAIExplainLib.errors import XAIInputError
from XAIExplainLib.imageio import check_output_location, read_image, staged_output_dir, validate_image


def _write_dicom_series(image: sitk.Image, folder) -> None:
    """Write ``image`` as a CT series, one file per slice, with the geometry in the standard tags."""
    folder.mkdir()
    image = sitk.Cast(image, sitk.sitkInt16)
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series = "1.2.826.0.1.3680043.2.1125.1.12345"
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        tags = {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1.1",
            "0020|000e": series,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))),
            "0020|0037": "\\".join(map(str, (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7]))),
            "0028|0030": f"{image.GetSpacing()[1]}\\{image.GetSpacing()[0]}",
            "0018|0050": str(image.GetSpacing()[2]),
            "0008|0018": f"{series}.{k + 1}",
        }
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_image)


def test_dicom_series_folder_is_read_with_its_geometry(tmp_path):
    image = make_image(size=(24, 20, 12), spacing=(0.8, 0.8, 2.5), direction=rotation("z", 10), origin=(-10.0, 5.0, 30.0))
    _write_dicom_series(image, tmp_path / "series")
    read = read_image(tmp_path / "series")
    assert read.GetSize() == image.GetSize()
    np.testing.assert_allclose(read.GetSpacing(), image.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(read.GetOrigin(), image.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(read.GetDirection(), image.GetDirection(), atol=1e-4)
    assert read.GetPixelID() == sitk.sitkInt16  # the stored type is kept (no full-size float copy)


def test_a_4d_file_with_one_volume_is_that_volume(tmp_path):
    import nibabel

    array = np.random.default_rng(0).random((14, 12, 10, 1)).astype(np.float32)  # x, y, z, t
    path = tmp_path / "one-timepoint.nii.gz"
    nibabel.save(nibabel.Nifti1Image(array, np.diag([2.0, 2.0, 3.0, 1.0])), str(path))
    image = read_image(path)
    assert image.GetSize() == (14, 12, 10) and image.GetSpacing() == (2.0, 2.0, 3.0)


def test_huge_volumes_are_refused_before_anything_is_computed(monkeypatch):
    import XAIExplainLib.imageio as imageio

    monkeypatch.setattr(imageio, "MAX_VOXELS", 1000)
    with pytest.raises(XAIInputError, match="too large"):
        validate_image(make_image(size=(20, 20, 20)))


def test_staged_output_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "results"
    with pytest.raises(RuntimeError):
        with staged_output_dir(out) as staging:
            (staging / "saliency.nii.gz").write_bytes(b"half")
            raise RuntimeError("model crashed")
    assert list(tmp_path.iterdir()) == []
    with staged_output_dir(out) as staging:
        (staging / "result.json").write_text("{}", encoding="utf-8")
        (staging / "uncertainty.nii.gz").write_bytes(b"first run")
    assert sorted(p.name for p in out.iterdir()) == [".slicer-xai-results", "result.json", "uncertainty.nii.gz"]
    # A second run into the same folder replaces it whole: no file of the first run survives.
    with staged_output_dir(out) as staging:
        (staging / "result.json").write_text("{}", encoding="utf-8")
    assert sorted(p.name for p in out.iterdir()) == [".slicer-xai-results", "result.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_an_output_folder_of_other_files_is_refused_before_work(tmp_path):
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "thesis.tex").write_text("mine", encoding="utf-8")
    with pytest.raises(XAIInputError, match="not slicer-xai results"):
        check_output_location(folder)
    with pytest.raises(XAIInputError, match="Cannot write to /proc"):
        check_output_location("/proc/slicer-xai-results")  # not writable, even for root
    assert (folder / "thesis.tex").read_text(encoding="utf-8") == "mine"


def _series_with(tmp_path, edit) -> Path:
    image = make_image(size=(16, 14, 8), spacing=(0.8, 0.8, 2.5))
    folder = tmp_path / "series"
    _write_dicom_series(image, folder)
    edit(sorted(folder.iterdir()))
    return folder


def _retag(path, tag: str, value: str) -> None:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.LoadPrivateTagsOn()
    image = reader.Execute()
    for key in reader.GetMetaDataKeys():
        image.SetMetaData(key, reader.GetMetaData(key))
    image.SetMetaData(tag, value)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(path))
    writer.Execute(image)


def test_a_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    folder = _series_with(tmp_path, lambda files: files[3].unlink())
    with pytest.raises(XAIInputError, match="unevenly spaced"):
        read_image(folder)


def test_a_dicom_series_with_a_duplicated_slice_is_refused(tmp_path):
    folder = _series_with(tmp_path, lambda files: _retag(files[4], "0020|0032", _position(files[3])))
    with pytest.raises(XAIInputError, match="same position"):
        read_image(folder)


def test_a_dicom_series_of_mixed_orientations_is_refused(tmp_path):
    folder = _series_with(tmp_path, lambda files: _retag(files[2], "0020|0037", "1\\0\\0\\0\\0\\1"))
    with pytest.raises(XAIInputError, match="different orientations"):
        read_image(folder)


def _position(path) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetMetaData("0020|0032")


def test_voxels_keep_their_stored_type(tmp_path):
    """A uint8 volume stays one byte per voxel when read (no full-size float32 copy)."""
    image = sitk.Cast(make_image(size=(20, 20, 20)) > 50, sitk.sitkUInt8) * 3
    sitk.WriteImage(image, str(tmp_path / "bytes.nii.gz"))
    assert read_image(tmp_path / "bytes.nii.gz").GetPixelID() == sitk.sitkUInt8
