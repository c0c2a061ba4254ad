"""Crafted files and models an attacker could hand a user, generated on the fly (nothing big is committed).

Each maker writes its input under ``folder`` and returns the ``slicer-xai`` arguments that feed it to the
command line; :class:`Place` says where the run may write and what it must not read or reach.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch

SECRET_TEXT = "slicer-xai-secret-7f3e9a"


@dataclass
class Place:
    """One hostile run's surroundings."""

    folder: Path  # the run's own folder: inputs, --out, HOME, caches
    secret: Path  # a file outside it that nothing may read
    listener_url: str  # a loopback server nothing may connect to
    classifier: Path  # a good bundle to start from
    segmenter: Path
    good_case: Path

    @property
    def out(self) -> Path:
        return self.folder / "out"


def explain(place: Place, image: Path, model: Path | str | None = None) -> list[str]:
    return ["explain", str(image), "--model", str(model or place.classifier), "--out", str(place.out)]


# --- images ---------------------------------------------------------------------------------------


def _nrrd(path: Path, lines: list[str], data: bytes = b"") -> Path:
    path.write_bytes(("NRRD0004\n" + "\n".join(lines) + "\n\n").encode() + data)
    return path


_NRRD_GRID = ["type: float", "dimension: 3", "sizes: 8 8 8", "space: left-posterior-superior",
              "space directions: (1,0,0) (0,1,0) (0,0,1)", "space origin: (0,0,0)", "encoding: raw",
              "endian: little"]


def nrrd_data_file_absolute(place: Place) -> list[str]:
    return explain(place, _nrrd(place.folder / "a.nhdr", _NRRD_GRID + [f"data file: {place.secret}"]))


def nrrd_data_file_parent(place: Place) -> list[str]:
    relative = os.path.relpath(place.secret, place.folder)
    return explain(place, _nrrd(place.folder / "b.nhdr", _NRRD_GRID + [f"data file: {relative}"]))


def nrrd_data_file_stdin(place: Place) -> list[str]:
    return explain(place, _nrrd(place.folder / "c.nhdr", _NRRD_GRID + ["data file: /dev/stdin"]))


def nrrd_data_file_symlink_out(place: Place) -> list[str]:
    (place.folder / "voxels.raw").symlink_to(place.secret)
    return explain(place, _nrrd(place.folder / "d.nhdr", _NRRD_GRID + ["data file: voxels.raw"]))


def nrrd_data_file_list(place: Place) -> list[str]:
    lines = [line.replace("sizes: 8 8 8", "sizes: 8 8 1") for line in _NRRD_GRID]
    return explain(place, _nrrd(place.folder / "e.nhdr", lines + ["data file: LIST", "/etc/hostname"]))


def _mha(path: Path, element_data_file: str) -> Path:
    path.write_text("ObjectType = Image\nNDims = 3\nDimSize = 8 8 8\nElementSpacing = 1 1 1\n"
                    "ElementType = MET_FLOAT\nElementByteOrderMSB = False\n"
                    f"ElementDataFile = {element_data_file}\n", encoding="ascii")
    return path


def mha_data_file_parent(place: Place) -> list[str]:
    return explain(place, _mha(place.folder / "f.mhd", os.path.relpath(place.secret, place.folder)))


def mha_data_file_proc(place: Place) -> list[str]:
    return explain(place, _mha(place.folder / "g.mhd", "/proc/self/environ"))


def nrrd_claims_huge_grid(place: Place) -> list[str]:
    """135 bytes that claim 1100^3 floats (5.3 GB)."""
    lines = [line.replace("sizes: 8 8 8", "sizes: 1100 1100 1100") for line in _NRRD_GRID]
    return explain(place, _nrrd(place.folder / "huge.nrrd", lines))


def _nifti_header(shape: tuple, datatype: int, bitpix: int, pixdim: tuple = (1.0, 1.0, 1.0),
                  srow: tuple | None = None) -> bytes:
    """A NIfTI-1 single-file header (348 bytes + 4 extension bytes), written field by field."""
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, *shape, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, datatype, bitpix)
    struct.pack_into("<8f", header, 76, 1.0, *pixdim, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<f", header, 108, 352.0)  # vox_offset
    struct.pack_into("<f", header, 112, 1.0)  # scl_slope
    rows = srow or ((pixdim[0], 0, 0, 0), (0, pixdim[1], 0, 0), (0, 0, pixdim[2], 0))
    struct.pack_into("<hh", header, 252, 0, 1)  # qform_code 0, sform_code 1 (scanner)
    for index, row in enumerate(rows):
        struct.pack_into("<4f", header, 280 + 16 * index, *row)
    header[344:348] = b"n+1\0"
    return bytes(header) + b"\0\0\0\0"


def nifti_complex(place: Place) -> list[str]:
    path = place.folder / "complex.nii"
    values = (np.random.default_rng(0).normal(size=(8, 8, 8)) * (1 + 1j)).astype(np.complex64)
    path.write_bytes(_nifti_header((8, 8, 8), 32, 64) + values.tobytes(order="F"))
    return explain(place, path)


def nifti_extreme_spacing(place: Place) -> list[str]:
    path = place.folder / "tiny-spacing.nii"
    values = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32)
    path.write_bytes(_nifti_header((8, 8, 8), 16, 32, pixdim=(1e-9, 1e-9, 1e-9)) + values.tobytes(order="F"))
    return explain(place, path)


def nifti_inflates(place: Place) -> list[str]:
    """A few hundred KB of gzip that inflate to 640^3 one-byte voxels (262 M voxels, under the limit)."""
    path = place.folder / "inflates.nii.gz"
    with gzip.open(path, "wb", compresslevel=1) as stream:
        stream.write(_nifti_header((640, 640, 640), 2, 8))
        zeros = bytes(64 << 20)
        for _ in range(640 ** 3 // len(zeros)):
            stream.write(zeros)
        stream.write(bytes(640 ** 3 % len(zeros)))
    return explain(place, path)


def nrrd_sheared(place: Place) -> list[str]:
    values = np.random.default_rng(0).normal(size=(16, 16, 16)).astype("<f4")
    lines = [line.replace("sizes: 8 8 8", "sizes: 16 16 16")
             .replace("(1,0,0) (0,1,0) (0,0,1)", "(1,0,0) (0.6,0.8,0) (0,0,1)") for line in _NRRD_GRID]
    return explain(place, _nrrd(place.folder / "sheared.nrrd", lines, values.tobytes()))


def nrrd_float64_beyond_float32(place: Place) -> list[str]:
    values = np.random.default_rng(0).normal(size=(16, 16, 16)) * 1e300
    lines = [line.replace("sizes: 8 8 8", "sizes: 16 16 16").replace("type: float", "type: double")
             for line in _NRRD_GRID]
    return explain(place, _nrrd(place.folder / "huge-values.nrrd", lines, values.astype("<f8").tobytes()))


def model_grid_explodes(place: Place) -> list[str]:
    """An 8^3 image with 300 mm voxels: 2.1 m across, 1051^3 voxels on the segmenter's 2 mm grid."""
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32))
    image.SetSpacing((300.0, 300.0, 300.0))
    path = place.folder / "wide.nii.gz"
    sitk.WriteImage(image, str(path))
    return explain(place, path, place.segmenter)


def dicom_folder_with_fifo(place: Place) -> list[str]:
    folder = place.folder / "series"
    folder.mkdir()
    os.mkfifo(folder / "slice001.dcm")
    return explain(place, folder)


# --- model cards and bundles -------------------------------------------------------------------------


def _bundle_copy(place: Place, source: Path, name: str) -> Path:
    bundle = place.folder / name
    shutil.copytree(source, bundle)
    return bundle


def _edit_card(place: Place, edit: Callable[[dict], None], name: str) -> list[str]:
    bundle = _bundle_copy(place, place.classifier, name)
    metadata_file = bundle / "configs" / "metadata.json"
    metadata = json.loads(metadata_file.read_text(encoding="utf-8"))
    edit(metadata)
    metadata_file.write_text(json.dumps(metadata), encoding="utf-8")
    return explain(place, place.good_case, bundle)


def card_class_names_string(place: Place) -> list[str]:
    return _edit_card(place, lambda m: m["xai"].update(class_names="lesion"), "names")


def card_spacing_nan(place: Place) -> list[str]:
    return _edit_card(place, lambda m: m["xai"]["input"].update(spacing_mm=["nan", 2, 2]), "nan-spacing")


def card_ct_window_zero_width(place: Place) -> list[str]:
    return _edit_card(place, lambda m: m["xai"].update(intensity={"kind": "ct_window", "center": 40, "width": 0}), "window")


def card_divisible_by_negative(place: Place) -> list[str]:
    return _edit_card(place, lambda m: m["xai"]["input"].update(divisible_by=-16), "divisible-neg")


def card_divisible_by_zero(place: Place) -> list[str]:
    return _edit_card(place, lambda m: m["xai"]["input"].update(divisible_by=0), "divisible-zero")


def card_positive_class_out_of_range(place: Place) -> list[str]:
    return _edit_card(place, lambda m: m["xai"].update(positive_class=7), "positive")


def card_num_channels_not_a_number(place: Place) -> list[str]:
    return _edit_card(place, lambda m: m["network_data_format"]["inputs"]["image"].update(num_channels="one"), "channels")


def card_network_data_format_list(place: Place) -> list[str]:
    return _edit_card(place, lambda m: m.update(network_data_format=[1, 2]), "ndf")


def card_nested_too_deeply(place: Place) -> list[str]:
    bundle = _bundle_copy(place, place.classifier, "deep")
    (bundle / "configs" / "metadata.json").write_text('{"xai": ' + "[" * 100_000 + "]" * 100_000 + "}", encoding="utf-8")
    return explain(place, place.good_case, bundle)


def _edit_network(place: Place, network_def: dict, name: str) -> list[str]:
    bundle = _bundle_copy(place, place.classifier, name)
    (bundle / "configs" / "inference.json").write_text(json.dumps({"network_def": network_def}), encoding="utf-8")
    return explain(place, place.good_case, bundle)


def network_far_larger_than_weights(place: Place) -> list[str]:
    """300 bytes of config for a 2 GB convolution kernel."""
    return _edit_network(place, {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 1,
                                 "kernel_size": 800}, "kernel-800")


def network_pretrained_url(place: Place) -> list[str]:
    return _edit_network(place, {"_target_": "monai.networks.nets.HoVerNet", "pretrained_url": place.listener_url},
                         "hovernet-http")


def network_pretrained_file_url(place: Place) -> list[str]:
    return _edit_network(place, {"_target_": "monai.networks.nets.HoVerNet", "pretrained_url": f"file://{place.secret}"},
                         "hovernet-file")


def network_pretrained_flag(place: Place) -> list[str]:
    return _edit_network(place, {"_target_": "monai.networks.nets.DenseNet121", "spatial_dims": 2, "in_channels": 3,
                                 "out_channels": 2, "pretrained": True}, "densenet-pretrained")


def network_path_argument(place: Place) -> list[str]:
    return _edit_network(place, {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2,
                                 "kernel_size": 3, "padding_mode": str(place.secret)}, "path-argument")


def network_code_expression(place: Place) -> list[str]:
    return _edit_network(place, {"_target_": "$__import__('os').system('touch pwned')"}, "expression")


class _FileWritingModule(torch.nn.Module):
    """What a crafted TorchScript model does: write a file when it is loaded and when it runs."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, self.path)
        return x.mean(dim=(2, 3, 4)).repeat(1, 2)

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.path = state[0]
        self.training = state[1]
        torch.save(torch.zeros(1), self.path)


def hostile_torchscript(folder: Path, bundle: Path, marker: Path) -> Path:
    """A TorchScript model that writes ``marker`` when deserialised, with ``bundle``'s card as extra file."""
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    metadata["xai"].pop("weights_sha256", None)
    path = folder / "hostile.ts"
    torch.jit.save(torch.jit.script(_FileWritingModule(str(marker))), str(path),
                   _extra_files={"metadata.json": json.dumps(metadata)})
    return path


def torchscript_untrusted(place: Place) -> list[str]:
    return explain(place, place.good_case, hostile_torchscript(place.folder, place.classifier, place.folder / "ran"))


def out_not_writable(place: Place) -> list[str]:
    return ["explain", str(place.good_case), "--model", str(place.classifier), "--out", "/proc/slicer-xai-out"]


#: Every crafted input the command line must refuse with exit 2 and one line.
REFUSED = {
    maker.__name__: maker
    for maker in (
        nrrd_data_file_absolute, nrrd_data_file_parent, nrrd_data_file_stdin, nrrd_data_file_symlink_out,
        nrrd_data_file_list, mha_data_file_parent, mha_data_file_proc, nrrd_claims_huge_grid, nifti_complex,
        nifti_extreme_spacing, nifti_inflates, nrrd_sheared, nrrd_float64_beyond_float32, model_grid_explodes,
        dicom_folder_with_fifo, card_class_names_string, card_spacing_nan, card_ct_window_zero_width,
        card_divisible_by_negative, card_divisible_by_zero, card_positive_class_out_of_range,
        card_num_channels_not_a_number, card_network_data_format_list, card_nested_too_deeply,
        network_far_larger_than_weights, network_pretrained_url, network_pretrained_file_url,
        network_pretrained_flag, network_path_argument, network_code_expression, torchscript_untrusted,
        out_not_writable,
    )
}
