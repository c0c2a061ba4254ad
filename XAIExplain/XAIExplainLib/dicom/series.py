"""Write a 3-D volume as a DICOM MR Image Storage series, one instance per axial slice.

Used to put a NIfTI/NRRD case into a PACS (and to make the demo case a DICOM study), so that the
explanation objects written later can reference real source images. Integer volumes are stored voxel for
voxel as signed 16-bit pixels; other volumes through Rescale Slope/Intercept, to 1/65535 of their range
(MR Image Storage does not list those attributes, so dciodvfy calls such a series "Standard Extended": a
warning, not an error). The geometry is the image's own: Image Position (Patient) of each slice is its first
voxel's physical point, Image Orientation (Patient) the direction's first two columns, so SimpleITK (and
Slicer) read back the very same grid.

SimpleITK and DICOM both use LPS patient coordinates, so no axis flip is involved.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from ..errors import XAIInputError
from ..imageio import validate_image

#: Implementation identity written into every file's meta header.
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.20261203"  # pydicom's root, a fixed suffix for SlicerXAI
IMPLEMENTATION_VERSION = "SLICERXAI_1"


@dataclass(frozen=True)
class SeriesIdentity:
    """Who and what the series is about. Defaults are anonymous: nothing identifying is invented."""

    patient_name: str = "Anonymous^Case"
    patient_id: str = "XAI-DEMO-0001"
    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str = field(default_factory=generate_uid)
    study_id: str = "1"
    accession_number: str = ""
    series_number: int = 1
    series_description: str = "Converted volume"
    study_description: str = "SlicerXAI case"


def _int16_exact(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Stored pixels plus (slope, intercept) that give back ``array``'s values."""
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if -32768 <= low and high <= 32767:
            return array.astype(np.int16), 1.0, 0.0
        intercept = float(low)
        if high - low <= 65535:
            return (array.astype(np.int64) - low - 32768).astype(np.int16), 1.0, intercept + 32768.0
    values = array.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    slope = (high - low) / 65535.0 if high > low else 1.0
    stored = np.round((values - low) / slope) - 32768
    return stored.astype(np.int16), slope, low + 32768.0 * slope


def write_image_series(
    image: sitk.Image, folder: str | os.PathLike, identity: SeriesIdentity | None = None
) -> list[Path]:
    """Write ``image`` (3-D, scalar) into ``folder`` (created; must be new or empty) as an MR series.

    Returns the files in slice order. Refuses, with one line, an image that :func:`validate_image` refuses.
    The slices are written into a staging folder beside ``folder`` that becomes it only once complete,
    so a failed or interrupted write leaves no partial series for a PACS upload to pick up.
    """
    validate_image(image, "The volume")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise XAIInputError("Only a 3-D scalar volume can be written as a DICOM image series.")
    identity = identity or SeriesIdentity()
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise XAIInputError(f"{folder} exists and is not a folder; give a new folder for the DICOM series.")
    if folder.exists() and any(folder.iterdir()):
        raise XAIInputError(f"{folder} is not empty; give a new folder for the DICOM series.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        names = _write_slices(image, staging, identity)
        if folder.exists():
            folder.rmdir()
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [folder / name for name in names]


def _write_slices(image: sitk.Image, folder: Path, identity: SeriesIdentity) -> list[str]:
    stored, slope, intercept = _int16_exact(sitk.GetArrayFromImage(image))
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    sx, sy, sz = image.GetSpacing()
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    names = []
    for k in range(stored.shape[0]):
        ds = _slice_dataset(identity, date, time)
        sop_uid = generate_uid()
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
        ds.SliceLocation = _ds(float(np.dot(position, np.cross(direction[:, 0], direction[:, 1]))))
        ds.PixelSpacing = [_ds(sy), _ds(sx)]  # row spacing (between rows, along y), then column spacing
        ds.SliceThickness = _ds(sz)
        ds.SpacingBetweenSlices = _ds(sz)
        pixels = np.ascontiguousarray(stored[k])
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        if (slope, intercept) != (1.0, 0.0):
            ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), _ds(intercept)
            ds.RescaleType = "US"  # unspecified: MR values carry no standard unit
        ds.PixelData = pixels.astype("<i2").tobytes()
        ds.file_meta = _file_meta(sop_uid)
        name = f"{k + 1:04d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
        names.append(name)
    return names


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters that keeps as many digits as fit."""
    for digits in range(16, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(value)


def _file_meta(sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    return meta


def _slice_dataset(identity: SeriesIdentity, date: str, time: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = MRImageStorage
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]  # converted from a research volume, not acquired here
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    ds.AccessionNumber = identity.accession_number
    ds.Modality = "MR"
    ds.Manufacturer = "SlicerXAI"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = identity.study_description
    ds.SeriesDescription = identity.series_description
    # Patient module: type 2 attributes present, empty where unknown.
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = identity.study_uid
    ds.SeriesInstanceUID = identity.series_uid
    ds.StudyID = identity.study_id
    ds.SeriesNumber = identity.series_number
    ds.FrameOfReferenceUID = identity.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.Laterality = ""  # type 2C: the body part is not recorded, so it may be paired
    # MR Image module (type 1/2 attributes).
    ds.ScanningSequence = "RM"  # research mode: the acquisition is not known
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D"
    ds.RepetitionTime = ""
    ds.EchoTime = ""
    ds.EchoTrainLength = ""
    ds.ImagedNucleus = "1H"
    ds.MagneticFieldStrength = ""
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    return ds
