"""Reading, validating and writing 3-D medical images (NIfTI, NRRD, MetaImage, DICOM series).

Everything the engine computes is on the grid of the image read here, so this module is where a bad
file is caught: every refusal is an :class:`~XAIExplainLib.errors.XAIInputError` with one sentence
saying what is wrong, before anything is computed or written.

Files are untrusted. The header is read and checked (size, pixel type, geometry) before any pixel is,
so a 100-byte file claiming a billion voxels costs nothing; a detached-header file (NRRD ``data file``,
MetaImage ``ElementDataFile``) may name only regular files in its own folder; pixels keep their stored
type (a uint8 volume stays one byte per voxel) until they are resampled onto the model's grid.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import SimpleITK as sitk

from .errors import XAIInputError

__all__ = [
    "MAX_VOXELS",
    "MIN_EXTENT",
    "dicom_series_files",
    "read_image",
    "read_mask",
    "validate_image",
    "validate_grid",
    "write_image",
    "staged_output_dir",
    "check_output_location",
    "RESULTS_MARKER",
    "describe_geometry",
    "FLOAT32_MAX",
]

#: Above this many voxels (e.g. 1024 x 1024 x 572) a volume is refused rather than exhausting memory.
MAX_VOXELS = 600_000_000
#: A volume needs at least this many voxels along every axis to be explained in 3-D.
MIN_EXTENT = 4
#: Voxel spacings outside this range (mm) are not a medical image's; they overflow the model grid.
SPACING_RANGE_MM = (1e-3, 1e3)
#: Largest magnitude a voxel value may have: maps, the viewer and Slicer hold 32-bit floats.
FLOAT32_MAX = float(np.finfo(np.float32).max)
_MAX_HEADER_BYTES = 1 << 16
_COMPLEX_PIXELS = {sitk.sitkComplexFloat32, sitk.sitkComplexFloat64}

def read_image(path: str | os.PathLike, name: Optional[str] = None, allow_detached: bool = True) -> sitk.Image:
    """Read a 3-D scalar volume, refusing anything that cannot be explained.

    ``path`` is a NIfTI, NRRD or MetaImage file, a single DICOM file, or a folder holding one DICOM
    series (the series with the most files is taken when there are several). Voxels keep their stored
    type. ``name`` is what messages call the file (an upload's own name, never a temporary path);
    ``allow_detached=False`` refuses headers whose voxels are in another file (uploads).
    """
    path = Path(path)
    name = name or path.name
    image = _read_volume(path, name, allow_detached)
    validate_image(image, name=name)
    return image


def read_mask(path: str | os.PathLike, name: Optional[str] = None) -> sitk.Image:
    """Read a 3-D label or mask volume as uint8 0/1 (any voxel > 0 is inside); it may be empty."""
    path = Path(path)
    image = _read_volume(path, name or path.name, allow_detached=True)
    validate_grid(image, name=name or path.name)
    return sitk.Cast(image > 0, sitk.sitkUInt8)


def _read_volume(path: Path, name: str, allow_detached: bool) -> sitk.Image:
    if not path.exists():
        raise XAIInputError(f"Input not found: {name}")
    if path.is_dir():
        return _squeeze_trailing_singletons(_read_dicom_series(path, name))
    if not stat.S_ISREG(path.stat().st_mode):
        raise XAIInputError(f"{name} is not a regular file (a device, pipe or socket); give an image file.")
    if path.stat().st_size == 0:
        raise XAIInputError(f"Input file is empty (0 bytes): {name}")
    _check_data_files(path, name, allow_detached)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    with _native_stderr_captured():
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            raise _unreadable(path, name, _first_line(error)) from None
    _check_header(reader, name)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_stored_values(path, name)
    image, reason = None, ""
    with _native_stderr_captured() as native_messages:
        try:
            image = reader.Execute()
        except RuntimeError as error:
            reason = _first_line(error)
    # MetaIO says "data not read completely" only on stderr and returns a half-filled image;
    # other readers' stderr lines are warnings about readable files.
    truncated_meta = path.suffix.lower() in (".mha", ".mhd") and native_messages
    if image is None or truncated_meta:
        raise _unreadable(path, name, native_messages[-1] if truncated_meta else reason)
    return _squeeze_trailing_singletons(image)


def _unreadable(path: Path, name: str, reason: str) -> XAIInputError:
    reason = reason.replace(f'"{path}"', name).replace(str(path), name)
    return XAIInputError(
        f"Could not read {name} as an image ({reason[:160]}); expected NIfTI, NRRD, MetaImage or DICOM."
    )


def _check_header(reader: sitk.ImageFileReader, name: str) -> None:
    """The checks :func:`validate_grid` makes, on the header alone (before any pixel is read)."""
    if reader.GetPixelID() in _COMPLEX_PIXELS:
        raise XAIInputError(f"{name} holds complex numbers; a real-valued grey-level volume is needed.")
    size = list(reader.GetSize())
    dimension = reader.GetDimension()
    spacing, direction = list(reader.GetSpacing()), list(reader.GetDirection())
    if dimension == 4 and size[3] == 1:  # one time point: the 3-D volume it holds
        size, spacing = size[:3], spacing[:3]
        direction = [direction[r * 4 + c] for r in range(3) for c in range(3)]
        dimension = 3
    _check_geometry(name, dimension, size, reader.GetNumberOfComponents(), spacing, direction, reader.GetOrigin()[:3])


def _check_data_files(path: Path, name: str, allow_detached: bool) -> None:
    """Refuse a detached header (NRRD ``data file``, MetaImage ``ElementDataFile``) that names anything but
    regular files in its own folder: an absolute path, ``..``, a device or a link out of the folder would
    make the reader disclose or block on a file the user never gave."""
    lowered = path.name.lower()
    if lowered.endswith((".nrrd", ".nhdr")):
        pattern, kind = r"^data ?file\s*:\s*(.*)$", "NRRD"
    elif lowered.endswith((".mha", ".mhd")):
        pattern, kind = r"^ElementDataFile\s*=\s*(.*)$", "MetaImage"
    else:
        return
    with open(path, "rb") as handle:
        head = handle.read(_MAX_HEADER_BYTES).decode("latin-1")
    header = re.split(r"\n\r?\n", head, maxsplit=1)[0] if kind == "NRRD" else head
    lines = header.splitlines()
    for number, line in enumerate(lines):
        match = re.match(pattern, line.strip(), flags=re.IGNORECASE)
        if not match:
            continue
        value = match.group(1).strip()
        if kind == "MetaImage" and value.upper() == "LOCAL":
            return
        if not allow_detached:
            raise XAIInputError(f"{name} keeps its voxels in another file ({kind} detached header); upload a "
                                f"single-file image (.nrrd with attached data, .mha, .nii.gz) instead.")
        words = value.split()
        if words and words[0].upper() == "LIST":
            names = [item.strip() for item in lines[number + 1:] if item.strip()]
        elif "%" in value or len(words) > 1:
            raise XAIInputError(f"{name} names its voxel files by a pattern ({value[:60]}); not supported — "
                                f"convert it to a single-file image first.")
        else:
            names = [value]
        for data_name in names:
            _check_data_file(path, name, data_name)
        return


def _check_data_file(header: Path, name: str, data_name: str) -> None:
    folder = header.parent.resolve()
    refusal = f"{name} names its voxel file '{data_name[:60]}', which is not a file beside it; refused."
    if not data_name or os.path.isabs(data_name) or ".." in Path(data_name).parts or data_name.startswith("~"):
        raise XAIInputError(refusal)
    target = (header.parent / data_name).resolve()
    if not target.is_relative_to(folder) or not target.exists() or not stat.S_ISREG(target.stat().st_mode):
        raise XAIInputError(refusal)


def validate_image(image: sitk.Image, name: str = "image") -> None:
    """Raise :class:`XAIInputError` unless ``image`` is a finite, non-constant 3-D scalar volume whose
    values 32-bit floats can hold."""
    validate_grid(image, name)
    if image.GetPixelID() in _COMPLEX_PIXELS:
        raise XAIInputError(f"{name} holds complex numbers; a real-valued grey-level volume is needed.")
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating):
        bad = sum(int(plane.size - np.count_nonzero(np.isfinite(plane))) for plane in array)  # a slice at a time
        if bad:
            raise _non_finite_error(name, bad)
    low, high = float(array.min()), float(array.max())
    if max(abs(low), abs(high)) > FLOAT32_MAX:
        raise XAIInputError(
            f"{name} has values up to {max(abs(low), abs(high)):.3g}, beyond what 32-bit floats hold (±3.4e38); "
            f"rescale it first."
        )
    if low == high:
        raise XAIInputError(f"{name} has the same value ({low:g}) in every voxel; there is nothing to explain.")


def validate_grid(image: sitk.Image, name: str = "image") -> None:
    """Raise :class:`XAIInputError` unless ``image`` is a scalar 3-D volume of sane size and geometry."""
    _check_geometry(name, image.GetDimension(), image.GetSize(), image.GetNumberOfComponentsPerPixel(),
                    image.GetSpacing(), image.GetDirection(), image.GetOrigin())


def _check_geometry(name: str, dimension: int, size, components: int, spacing, direction, origin) -> None:
    if components != 1:
        raise XAIInputError(
            f"{name} has {components} values per voxel (vector or colour image); a scalar grey-level volume is needed."
        )
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
    voxels = int(np.prod(np.asarray(size, dtype=np.int64)))
    if voxels > MAX_VOXELS:
        raise XAIInputError(
            f"{name} is too large ({_format_size(size)} = {voxels / 1e6:.0f} M voxels; the limit is "
            f"{MAX_VOXELS / 1e6:.0f} M); crop or downsample it first."
        )
    spacing = np.asarray(spacing, dtype=float)
    low, high = SPACING_RANGE_MM
    if not np.all(np.isfinite(spacing)) or np.any(spacing < low) or np.any(spacing > high):
        raise XAIInputError(
            f"{name} has a voxel spacing of {_format_size(tuple(f'{s:g}' for s in spacing))} mm; a medical image's "
            f"lies between {low:g} and {high:g} mm."
        )
    if not np.all(np.isfinite(np.asarray(origin, dtype=float))) or np.max(np.abs(origin)) > 1e7:
        raise XAIInputError(f"{name} has an invalid origin {tuple(float(o) for o in origin)}.")
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-6:
        raise XAIInputError(f"{name} has an invalid (degenerate) orientation matrix.")
    if not np.allclose(matrix.T @ matrix, np.eye(3), atol=1e-4):
        raise XAIInputError(
            f"{name} has a sheared or scaled orientation matrix (its axes are not perpendicular unit vectors); "
            f"resample it onto an orthogonal grid first."
        )


def write_image(image: sitk.Image, path: str | os.PathLike) -> None:
    """Write ``image`` compressed (NIfTI ``.nii.gz``, NRRD ``.nrrd`` or MetaImage ``.mha``)."""
    sitk.WriteImage(image, str(path), useCompression=True)


#: Written into every results folder: an existing folder is replaced only when it holds this (or nothing).
RESULTS_MARKER = ".slicer-xai-results"


def check_output_location(out: str | os.PathLike, folder: bool = True) -> Path:
    """Refuse an output location that cannot be written, before any computation (one line, exit 2).

    A results folder may be new, empty or an earlier slicer-xai result (which is replaced whole); a
    folder holding anything else is refused rather than mixed with or deleted.
    """
    out = Path(out).absolute()
    if out.exists():
        if folder and not out.is_dir():
            raise XAIInputError(f"--out {out} exists and is not a folder.")
        if not folder and out.is_dir():
            raise XAIInputError(f"--out {out} is a folder; give a file name.")
        if folder and any(out.iterdir()) and not (out / RESULTS_MARKER).is_file():
            raise XAIInputError(
                f"--out {out} already holds files that are not slicer-xai results; choose a new or empty folder."
            )
    existing = out.parent
    while not existing.exists():
        existing = existing.parent
    try:  # a real probe (permissions, read-only mounts, /proc): what os.access says is not enough for root
        os.rmdir(tempfile.mkdtemp(prefix=".slicer-xai-probe-", dir=existing))
    except OSError as error:
        raise XAIInputError(f"Cannot write to {existing} ({error.strerror}); choose another --out.") from None
    return out


@contextmanager
def staged_output_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a private folder to write results into; on success it becomes ``out_dir`` (replacing an
    earlier result there, so no file of an older run survives into the new one).

    On any error, a cancelled run or SIGTERM (the command line turns it into an exception), the staging
    folder is removed and ``out_dir`` is left as it was, so a failed run never leaves half-written results.
    """
    out_dir = check_output_location(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    except OSError as error:
        raise XAIInputError(f"Cannot write to {out_dir.parent} ({error.strerror}); choose another --out.") from None
    try:
        yield staging
        (staging / RESULTS_MARKER).write_text("written by slicer-xai\n", encoding="utf-8")
        if out_dir.exists():
            # Moved aside as a whole, then deleted: the new folder never mixes with the old one.
            previous = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, previous)
            os.replace(staging, out_dir)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def describe_geometry(image: sitk.Image) -> dict:
    """The grid of ``image`` as plain JSON values (LPS, as ITK and DICOM store it)."""
    return {
        "size": list(image.GetSize()),
        "spacing_mm": list(image.GetSpacing()),
        "origin_lps_mm": list(image.GetOrigin()),
        "direction_lps": list(image.GetDirection()),
    }


def dicom_series_files(folder: str | os.PathLike, name: str = "The DICOM folder") -> list[str]:
    """The files of the DICOM series in ``folder``, in the slice order SimpleITK reads them (slice ``k`` of
    the image is file ``k``), after the strict checks (no links out, no devices, no gaps, duplicates or
    mixed orientations). The largest series is taken when the folder holds several."""
    folder = Path(folder)
    for entry in folder.iterdir():
        if entry.is_symlink() and not entry.resolve().is_relative_to(folder.resolve()):
            raise XAIInputError(f"{name} holds {entry.name}, a link to a file outside the folder; refused.")
        if entry.exists() and not (entry.is_file() or entry.is_dir()):
            raise XAIInputError(f"{name} holds {entry.name}, which is not a regular file (a device or pipe); refused.")
    with _native_stderr_captured():  # GDCM warns on stderr about every non-DICOM file it skips
        try:
            series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        except RuntimeError:
            series_ids = ()
    if not series_ids:
        raise XAIInputError(f"{name} is a folder without a DICOM series; give a DICOM folder or an image file.")
    with _native_stderr_captured():
        files = max(
            (sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids), key=len
        )
    _check_dicom_slices(files, name)
    return list(files)


def _read_dicom_series(folder: Path, name: str) -> sitk.Image:
    files = dicom_series_files(folder, name)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    with _native_stderr_captured():
        try:
            return reader.Execute()
        except RuntimeError as error:
            reason = _first_line(error)
    raise XAIInputError(f"Could not read the DICOM series in {name} ({reason}).")


def _check_dicom_slices(files: tuple[str, ...], name: str) -> None:
    """Refuse a series whose slices do not make one regular grid: the reader would average or invent the
    spacing and stack them anyway (its warnings go to stderr), giving a silently wrong geometry."""
    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    with _native_stderr_captured():
        try:
            first.ReadImageInformation()
        except RuntimeError as error:
            raise XAIInputError(f"Could not read the DICOM series in {name} ({_first_line(error)}).") from None
    rows_cols = list(first.GetSize()[:2])
    slices = len(files) if len(files) > 1 else (first.GetSize()[2] if first.GetDimension() > 2 else 1)
    _check_geometry(name, 3, rows_cols + [max(slices, MIN_EXTENT)], first.GetNumberOfComponents(),
                    first.GetSpacing()[:2] + (1.0,), (1, 0, 0, 0, 1, 0, 0, 0, 1), (0, 0, 0))
    if len(files) < 2:
        return
    orientations, positions = [], []
    for file in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(file)
        with _native_stderr_captured():
            try:
                reader.ReadImageInformation()
            except RuntimeError:
                raise XAIInputError(f"{name}: {Path(file).name} is not a readable DICOM slice.") from None
        if not (reader.HasMetaDataKey("0020|0032") and reader.HasMetaDataKey("0020|0037")):
            raise XAIInputError(f"{name}: {Path(file).name} has no image position or orientation; the slices cannot "
                                f"be placed in space.")
        try:
            orientations.append([float(v) for v in reader.GetMetaData("0020|0037").split("\\")])
            positions.append([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
        except ValueError:
            raise XAIInputError(f"{name}: {Path(file).name} has a malformed image position or orientation.") from None
    orientations_array = np.asarray(orientations)
    if orientations_array.shape[1] != 6 or np.asarray(positions).shape[1] != 3 or \
            np.abs(orientations_array - orientations_array[0]).max() > 1e-4:
        raise XAIInputError(f"{name}: the slices have different orientations; load one orientation (series) at a time.")
    normal = np.cross(orientations_array[0, :3], orientations_array[0, 3:])
    steps = np.diff(np.sort(np.asarray(positions) @ normal))
    step = float(np.median(steps))
    if np.min(steps) < 1e-3 or step <= 0:
        raise XAIInputError(f"{name}: the series has two slices at the same position (duplicated slices); "
                            f"remove the duplicates first.")
    if np.abs(steps - step).max() > 0.05 * step + 1e-3:
        raise XAIInputError(
            f"{name}: the slices are unevenly spaced ({np.min(steps):.2f} to {np.max(steps):.2f} mm apart: missing "
            f"slices?); a regular grid is needed."
        )


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


def _check_nifti_stored_values(path: Path, name: str) -> None:
    """Stream through the stored voxels once (a few MB at a time): ITK's NIfTI reader fills a truncated
    file with garbage and turns NaN or infinite voxels into 0 without a word, so neither would be caught
    otherwise — and a 500 KB file may inflate to gigabytes, so nothing is held whole."""
    import nibabel

    try:
        header = nibabel.load(str(path)).header
        dtype = header.get_data_dtype()
        offset = int(header.get_data_offset())
        expected = int(np.prod(header.get_data_shape(), dtype=np.int64)) * dtype.itemsize
    except Exception as error:
        raise XAIInputError(
            f"Could not read {name}: the NIfTI header is corrupt ({_first_line(error)})."
        ) from None
    floating = np.issubdtype(dtype, np.floating)
    chunk = (8 << 20) // max(dtype.itemsize, 1) * max(dtype.itemsize, 1)
    seen, bad = 0, 0
    opener = gzip.open if _is_gzip(path) else open
    try:
        with opener(path, "rb") as handle:
            handle.seek(offset)
            while seen < expected:
                block = handle.read(min(chunk, expected - seen))
                if not block:
                    break
                if floating:
                    values = np.frombuffer(block[: len(block) // dtype.itemsize * dtype.itemsize], dtype=dtype)
                    bad += int(values.size - np.count_nonzero(np.isfinite(values)))
                seen += len(block)
    except (OSError, EOFError, gzip.BadGzipFile, ValueError) as error:
        raise XAIInputError(f"Could not read {name}: the NIfTI file is corrupt ({_first_line(error)}).") from None
    if seen < expected:
        raise XAIInputError(
            f"Could not read {name}: the NIfTI file is truncated ({seen} of {expected} voxel bytes present)."
        )
    if bad:
        raise _non_finite_error(name, bad)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


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
