"""Shared fixtures: synthetic images with chosen geometry and tiny model bundles written to disk.

The bundles are real MONAI bundle folders (metadata.json, inference.json, models/model.pt) so the
tests go through the same loading code as users; the networks are small so the suite stays fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pytest
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parents[1]
for package_dir in ("XAIExplain", "XAIRobustness"):
    if str(ROOT / package_dir) not in sys.path:
        sys.path.insert(0, str(ROOT / package_dir))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def rotation(axis: str, degrees: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    c, s = np.cos(angle), np.sin(angle)
    i, j = {"x": (1, 2), "y": (0, 2), "z": (0, 1)}[axis]
    matrix = np.eye(3)
    matrix[i, i] = matrix[j, j] = c
    matrix[i, j], matrix[j, i] = -s, s
    return matrix


def make_image(
    size: Sequence[int] = (40, 36, 32),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    direction: Optional[np.ndarray] = None,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    blob_index: Optional[Sequence[int]] = None,
    blob_radius: float = 4.0,
    seed: int = 0,
) -> sitk.Image:
    """A head-like volume: a bright ellipsoid on a dark background with noise, and an optional blob."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    centre = [(n - 1) / 2 for n in size]
    inside = ((i - centre[0]) / (size[0] * 0.42)) ** 2 + ((j - centre[1]) / (size[1] * 0.42)) ** 2 + \
        ((k - centre[2]) / (size[2] * 0.42)) ** 2 <= 1
    array = np.where(inside, 100.0, 0.0) + rng.normal(0, 3, inside.shape)
    if blob_index is not None:
        bi, bj, bk = blob_index
        blob = (i - bi) ** 2 + (j - bj) ** 2 + (k - bk) ** 2 <= blob_radius ** 2
        array[blob] += 120.0
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection((np.eye(3) if direction is None else np.asarray(direction)).flatten().tolist())
    return image


def cube_mask(image: sitk.Image, centre: Optional[Sequence[int]], half: int = 2) -> sitk.Image:
    """A reference lesion mask on ``image``'s grid: the cube of side ``2 * half + 1`` voxels around the voxel
    ``centre`` (i, j, k), or an empty mask for a case without a lesion (``centre`` None)."""
    mask = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=np.uint8)
    if centre is not None:
        i, j, k = centre
        mask[k - half:k + half + 1, j - half:j + half + 1, i - half:i + half + 1] = 1
    mask_image = sitk.GetImageFromArray(mask)
    mask_image.CopyInformation(image)
    return mask_image


def write_bundle(
    folder: Path,
    network_def: dict,
    network: torch.nn.Module,
    xai: dict,
    num_channels: int = 1,
    record_hash: bool = True,
) -> Path:
    """Write a MONAI bundle folder for ``network`` built from ``network_def``."""
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    weights = folder / "models" / "model.pt"
    torch.save(network.state_dict(), weights)
    xai = dict(xai)
    if record_hash:
        xai["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    metadata = {
        "version": "0.0.1",
        "name": folder.name,
        "description": "tiny test model",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": num_channels, "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": "probabilities", "num_channels": len(xai["class_names"])}},
        },
        "xai": xai,
    }
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=1), encoding="utf-8")
    (folder / "configs" / "inference.json").write_text(json.dumps({"network_def": network_def}, indent=1), encoding="utf-8")
    return folder


CLASSIFIER_DEF = {
    "_target_": "monai.networks.nets.ResNet",
    "block": "basic",
    "layers": [1, 1, 1, 1],
    "block_inplanes": [4, 8, 8, 16],
    "spatial_dims": 3,
    "n_input_channels": 1,
    "num_classes": 2,
}
CLASSIFIER_XAI = {
    "task": "classification",
    "class_names": ["no lesion", "lesion"],
    "positive_class": 1,
    "cam_target_layer": "layer3",
    "modality": "MR",
    "input": {"spacing_mm": [2.0, 2.0, 2.0], "orientation": "RAS", "size": [24, 24, 24]},
    "intensity": {"kind": "zscore", "nonzero": True},
}
SEGMENTER_DEF = {
    "_target_": "monai.networks.nets.UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8, 16],
    "strides": [2, 2],
    "num_res_units": 1,
    "dropout": 0.2,
}
SEGMENTER_XAI = {
    "task": "segmentation",
    "class_names": ["background", "lesion"],
    "positive_class": 1,
    "cam_target_layer": "model.1.submodule.0",
    "modality": "MR",
    "input": {"spacing_mm": [2.0, 2.0, 2.0], "orientation": "RAS", "size": [16, 16, 16], "divisible_by": 4},
    "intensity": {"kind": "percentile", "lower": 1, "upper": 99},
}


def build(network_def: dict) -> torch.nn.Module:
    from XAIExplainLib.models.safe_config import build_network

    torch.manual_seed(0)
    return build_network({"network_def": network_def})


@pytest.fixture(scope="session")
def classifier_bundle(tmp_path_factory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("models") / "tiny-classifier", CLASSIFIER_DEF, build(CLASSIFIER_DEF), CLASSIFIER_XAI)


@pytest.fixture(scope="session")
def segmenter_bundle(tmp_path_factory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("models") / "tiny-segmenter", SEGMENTER_DEF, build(SEGMENTER_DEF), SEGMENTER_XAI)


@pytest.fixture
def explainModule(monkeypatch):
    """The XAIExplain module file, imported with the stand-ins for what slicer-core lacks (one test's worth)."""
    from slicer_standins import importModule

    yield importModule(monkeypatch, "XAIExplain", [ROOT / "XAIExplain"])
    sys.modules.pop("XAIExplain", None)
