"""Reading, validating and writing 3-D medical images (NIfTI, NRRD, MetaImage, DICOM series).

Everything the engine computes is on the grid of the image read here, so this module is where a bad
file is caught: every refusal is an :class:`~XAIExplainLib.errors.XAIInputError` with one sentence
saying what is wrong, before anything is computed or written.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from .errors import XAIInputError

__all__ = [
    "MAX_VOXELS",
    "MIN_EXTENT",
    "read_image",
    "read_mask",
    "validate_image",
    "validate_grid",
    "write_image",
    "staged_output_dir",
    "describe_geometry",
]

#: Above this many voxels (e.g. 1024 x 1024 x 572) a volume is refused rather than exhausting memory.
MAX_VOXELS = 600_000_000
#: A volume needs at least this many voxels along every axis to be explained in 3-D.
MIN_EXTENT = 4

def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a 3-D scalar volume as float32, refusing anything that cannot be explained.

    ``path`` is a NIfTI, NRRD or MetaImage file, a single DICOM file, or a folder holding one DICOM
    series (the series with the most files is taken when there are several).
    """
    path = Path(path)
    image = _read_volume(path)
    validate_image(image, name=path.name)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_stored_values(path)
    return sitk.Cast(image, sitk.sitkFloat32)


def read_mask(path: str | os.PathLike) -> sitk.Image:
    """Read a 3-D label or mask volume as uint8 0/1 (any voxel > 0 is inside); it may be empty."""
    path = Path(path)
    image = _read_volume(path)
    validate_grid(image, name=path.name)
    return sitk.Cast(image > 0, sitk.sitkUInt8)


def _read_volume(path: Path) -> sitk.Image:
    if not path.exists():
        raise XAIInputError(f"Input not found: {path}")
    if path.is_dir():
        return _squeeze_trailing_singletons(_read_dicom_series(path))
    if path.stat().st_size == 0:
        raise XAIInputError(f"Input file is empty (0 bytes): {path}")
    image, reason = None, ""
    with _native_stderr_captured() as native_messages:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as error:
            reason = _first_line(error).replace(f'"{path}"', path.name).replace(str(path), path.name)
    # MetaIO says "data not read completely" only on stderr and returns a half-filled image;
    # other readers' stderr lines are warnings about readable files.
    truncated_meta = path.suffix.lower() in (".mha", ".mhd") and native_messages
    if image is None or truncated_meta:
        reason = native_messages[-1] if truncated_meta else reason
        raise XAIInputError(
            f"Could not read {path.name} as an image ({reason[:160]}); expected NIfTI, NRRD, MetaImage or DICOM."
        )
    return _squeeze_trailing_singletons(image)


def validate_image(image: sitk.Image, name: str = "image") -> None:
    """Raise :class:`XAIInputError` unless ``image`` is a finite, non-constant 3-D scalar volume."""
    validate_grid(image, name)
    array = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(array)
    if not finite.all():
        raise _non_finite_error(name, int(array.size - np.count_nonzero(finite)))
    low, high = float(array.min()), float(array.max())
    if low == high:
        raise XAIInputError(f"{name} has the same value ({low:g}) in every voxel; there is nothing to explain.")


def validate_grid(image: sitk.Image, name: str = "image") -> None:
    """Raise :class:`XAIInputError` unless ``image`` is a scalar 3-D volume of sane size and geometry."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise XAIInputError(
            f"{name} has {image.GetNumberOfComponentsPerPixel()} values per voxel (vector or colour "
            f"image); a scalar grey-level volume is needed."
        )
    dimension = image.GetDimension()
    size = image.GetSize()
    if dimension == 4:
        raise XAIInputError(
            f"{name} is 4-D (size {_format_size(size)}); pick one 3-D volume of the series first."
        )
    if dimension != 3:
        raise XAIInputError(f"{name} is {dimension}-D (size {_format_size(size)}); a 3-D volume is needed.")
    if 0 in size:
        raise XAIInputError(f"{name} is empty (size {_format_size(size)}).")
    if min(size) < MIN_EXTENT:
        raise XAIInputError(
            f"{name} has only {min(size)} voxel(s) along one axis (size {_format_size(size)}); "
            f"a 3-D volume with at least {MIN_EXTENT} voxels along every axis is needed."
        )
    voxels = int(np.prod(size, dtype=np.int64))
    if voxels > MAX_VOXELS:
        raise XAIInputError(
            f"{name} is too large ({_format_size(size)} = {voxels / 1e6:.0f} M voxels; the limit is "
            f"{MAX_VOXELS / 1e6:.0f} M); crop or downsample it first."
        )
    spacing = np.asarray(image.GetSpacing())
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise XAIInputError(f"{name} has an invalid voxel spacing {tuple(spacing)}.")
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if not np.all(np.isfinite(direction)) or abs(np.linalg.det(direction)) < 1e-6:
        raise XAIInputError(f"{name} has an invalid (degenerate) orientation matrix.")


def write_image(image: sitk.Image, path: str | os.PathLike) -> None:
    """Write ``image`` compressed (NIfTI ``.nii.gz``, NRRD ``.nrrd`` or MetaImage ``.mha``)."""
    sitk.WriteImage(image, str(path), useCompression=True)


@contextmanager
def staged_output_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a private folder to write results into; move them into ``out_dir`` only on success.

    On any error, or a cancelled run, the staging folder is removed and ``out_dir`` is left as it was,
    so a failed run never leaves half-written results behind.
    """
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    for item in staging.iterdir():
        os.replace(item, out_dir / item.name)
    staging.rmdir()


def describe_geometry(image: sitk.Image) -> dict:
    """The grid of ``image`` as plain JSON values (LPS, as ITK and DICOM store it)."""
    return {
        "size": list(image.GetSize()),
        "spacing_mm": list(image.GetSpacing()),
        "origin_lps_mm": list(image.GetOrigin()),
        "direction_lps": list(image.GetDirection()),
    }


def _read_dicom_series(folder: Path) -> sitk.Image:
    with _native_stderr_captured():  # GDCM warns on stderr about every non-DICOM file it skips
        try:
            series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        except RuntimeError:
            series_ids = ()
    if not series_ids:
        raise XAIInputError(f"{folder} is a folder without a DICOM series; give a DICOM folder or an image file.")
    with _native_stderr_captured():
        files = max(
            (sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids), key=len
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    with _native_stderr_captured():
        try:
            return reader.Execute()
        except RuntimeError as error:
            reason = _first_line(error)
    raise XAIInputError(f"Could not read the DICOM series in {folder} ({reason}).")


@contextmanager
def _native_stderr_captured() -> Iterator[list[str]]:
    """Capture what ITK's C++ readers print on stderr (MetaIO reports a truncated file only there).

    The yielded list is filled with the captured lines when the block ends.
    """
    messages: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield messages
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode(errors="replace")
            messages.extend(line.strip() for line in text.splitlines() if line.strip())


def _check_nifti_stored_values(path: Path) -> None:
    """Read the stored voxels with nibabel: ITK's NIfTI reader fills a truncated file with garbage and
    turns NaN or infinite voxels into 0 without a word, so neither would be caught otherwise."""
    import nibabel

    try:
        stored = np.asanyarray(nibabel.load(str(path)).dataobj)
    except Exception as error:
        raise XAIInputError(
            f"Could not read {path.name}: the NIfTI file is corrupt or truncated ({_first_line(error)})."
        ) from None
    if np.issubdtype(stored.dtype, np.floating):
        bad = int(stored.size - np.count_nonzero(np.isfinite(stored)))
        if bad:
            raise _non_finite_error(path.name, bad)


def _non_finite_error(name: str, count: int) -> XAIInputError:
    return XAIInputError(f"{name} contains {count} NaN or infinite voxel value(s); fix or mask them before explaining.")


def _squeeze_trailing_singletons(image: sitk.Image) -> sitk.Image:
    """A 4-D file with a single time point (common in NIfTI) is the 3-D volume it holds."""
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        size = list(image.GetSize())
        size[3] = 0  # ExtractImage drops axes of size 0
        return sitk.Extract(image, size, [0, 0, 0, 0])
    return image


def _format_size(size: tuple[int, ...]) -> str:
    return " x ".join(str(s) for s in size)


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # ITK messages start with a file:line location; the last line says what went wrong.
    message = lines[-1] if lines else type(error).__name__
    return message[:160]
