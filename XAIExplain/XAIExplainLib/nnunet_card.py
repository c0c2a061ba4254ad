"""The card of an nnU-Net v2 trained model folder, from its JSON files alone (standard library only, so that
Slicer's pickers can read it before the engine's dependencies are installed; see :mod:`.models.nnunet`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from .bundle_card import CT_HOUNSFIELD_RANGE
from .errors import XAIModelError

__all__ = ["is_nnunet_folder", "model_folder", "checkpoint_file", "read_json", "configuration_name",
           "nnunet_card_metadata"]

_CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")
_MAX_JSON_BYTES = 16 * 2**20


def is_nnunet_folder(path: Path) -> bool:
    """Whether ``path`` is an nnU-Net trained model folder or one of its ``fold_N`` folders."""
    return model_folder(path) is not None


def model_folder(path: Path) -> Optional[Path]:
    for folder in (path, path.parent):
        if folder.is_dir() and (folder / "plans.json").is_file() and (folder / "dataset.json").is_file():
            return folder
    return None


def checkpoint_file(path: Path) -> Path:
    """The checkpoint to explain: of the fold folder given, else of the first fold that has one."""
    folder = model_folder(path)
    folds = [path] if path.name.startswith("fold_") else sorted(folder.glob("fold_*"), key=_fold_order)
    for fold in folds:
        for name in _CHECKPOINTS:
            if (fold / name).is_file():
                return fold / name
    raise XAIModelError(f"nnU-Net model {folder.name} has no trained fold: none of its fold_N folders holds "
                        f"{' or '.join(_CHECKPOINTS)}.")


def _fold_order(folder: Path) -> tuple:
    suffix = folder.name.split("_", 1)[-1]
    return (0, int(suffix)) if suffix.isdigit() else (1, suffix)


def read_json(path: Path) -> dict:
    if path.stat().st_size > _MAX_JSON_BYTES:
        raise XAIModelError(f"{path.name} is larger than {_MAX_JSON_BYTES >> 20} MB: not an nnU-Net {path.stem}; refused.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise XAIModelError(f"Could not read {path.parent.name}/{path.name} as JSON ({str(error).splitlines()[0]}).") from None
    if not isinstance(data, dict):
        raise XAIModelError(f"{path.parent.name}/{path.name} must hold a JSON object.")
    return data


def configuration_name(folder: Path, plans: dict, recorded: Optional[str] = None) -> str:
    """The configuration the folder was trained with: what its checkpoint records (``recorded``), else its name's
    last part (``Trainer__Plans__3d_fullres``), else 3d_fullres when the plans have it (a renamed folder)."""
    name = recorded or folder.name.split("__")[-1]
    configurations = plans.get("configurations")
    if isinstance(configurations, dict) and name not in configurations and "3d_fullres" in configurations:
        name = "3d_fullres"
    if not isinstance(configurations, dict) or not isinstance(name, str) or name not in configurations:
        known = ", ".join(configurations) if isinstance(configurations, dict) else "none"
        raise XAIModelError(f"nnU-Net model {folder.name}: plans.json has no configuration '{name}' (it has {known}).")
    return name


def _labels(dataset: dict) -> tuple[list[str], bool]:
    """Class names by label value, and whether the model predicts overlapping regions (sigmoid outputs)."""
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise XAIModelError("nnU-Net dataset.json has no 'labels' object.")
    regions = any(isinstance(v, (list, tuple)) for v in labels.values())
    if regions:
        return [str(name) for name, value in labels.items() if name != "background" and name != "ignore"], True
    by_value = {}
    for name, value in labels.items():
        if name == "ignore":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1000:
            raise XAIModelError(f"nnU-Net dataset.json label {name!r} must be an integer from 0 to 999, not {value!r}.")
        by_value[value] = str(name)
    if sorted(by_value) != list(range(len(by_value))):
        raise XAIModelError("nnU-Net dataset.json labels must be consecutive integers from 0 (background).")
    return [by_value[v] for v in range(len(by_value))], False


def nnunet_card_metadata(path: Path) -> dict:
    """The folder's card, in the shape of a bundle's metadata with its ``xai`` section, from its JSON files only."""
    folder = model_folder(path)
    dataset, plans = read_json(folder / "dataset.json"), read_json(folder / "plans.json")
    configuration = plans["configurations"][configuration_name(folder, plans)]
    if not isinstance(configuration, dict):
        raise XAIModelError(f"nnU-Net model {folder.name}: its configuration in plans.json must be an object.")
    patch, spacing = configuration.get("patch_size"), configuration.get("spacing")
    transpose = plans.get("transpose_forward", [0, 1, 2])
    if not (isinstance(patch, list) and len(patch) == 3 and isinstance(spacing, list) and len(spacing) == 3):
        raise XAIModelError(f"nnU-Net model {folder.name} is a 2-D configuration ('{folder.name.split('__')[-1]}'): only "
                            f"3-D configurations (3d_fullres, 3d_lowres) are supported.")
    if configuration.get("previous_stage") or configuration.get("previous_stage_name"):
        raise XAIModelError(f"nnU-Net model {folder.name} is a cascade stage: it needs the previous stage's "
                            f"segmentation as an input, which is not supported; use a 3d_fullres model.")
    if sorted(transpose) != [0, 1, 2]:
        raise XAIModelError(f"nnU-Net model {folder.name}: plans.json transpose_forward must permute 0, 1, 2.")
    class_names, regions = _labels(dataset)
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    if not isinstance(channels, dict) or not channels:
        raise XAIModelError("nnU-Net dataset.json has no 'channel_names' object.")
    names = [str(channels[k]) for k in sorted(channels, key=lambda k: int(k) if str(k).isdigit() else 0)]
    # nnU-Net's axis a (after transpose_forward) is the image array's axis transpose[a], i.e. SimpleITK axis 2 - it.
    sitk_axis = [2 - transpose[a] for a in range(3)]
    to_sitk = lambda values: [float(values[sitk_axis.index(d)]) for d in range(3)]  # noqa: E731
    xai: dict[str, Any] = {
        "task": "segmentation",
        "class_names": class_names,
        "output_activation": "sigmoid" if regions else "softmax",
        "modality": "CT" if names[0].upper() == "CT" else "MR",
        "input": {"spacing_mm": to_sitk(spacing), "size": [int(p) for p in reversed(patch)],  # the window
                  "overlap": 0.5},
        "intensity": {"kind": "none"},  # nnU-Net's preprocessor normalises (see NNUNetRuntime)
    }
    if xai["modality"] == "CT":  # in HU whatever the training set (see bundle_card.CT_HOUNSFIELD_RANGE)
        xai["domain"] = {"intensity_range": list(CT_HOUNSFIELD_RANGE), "source": "the range of CT Hounsfield units"}
    fingerprint = folder / "dataset_fingerprint.json"
    if fingerprint.is_file():
        spacings = read_json(fingerprint).get("spacings", [])
        if isinstance(spacings, list) and spacings and all(
                isinstance(s, list) and len(s) == 3 and all(isinstance(v, (int, float)) for v in s) for s in spacings):
            # The fingerprint's spacings are in the image array's order (z, y, x).
            domain = xai.setdefault("domain", {})
            domain["spacing_mm"] = {"min": [float(min(s[a] for s in spacings)) for a in (2, 1, 0)],
                                    "max": [float(max(s[a] for s in spacings)) for a in (2, 1, 0)]}
            domain["source"] = " and ".join(filter(None, (domain.get("source"),
                                                          "nnU-Net dataset_fingerprint.json (training spacings)")))
    return {
        "name": str(plans.get("dataset_name", folder.parent.name)),
        "version": folder.name,
        "description": f"nnU-Net v2 model {folder.parent.name}/{folder.name}",
        "network_data_format": {"inputs": {"image": {
            "num_channels": len(names), "channel_def": {str(i): n for i, n in enumerate(names)}}}},
        "xai": xai,
        "_xai_sources": {"card": "nnU-Net dataset.json and plans.json", "intensity": "nnU-Net DefaultPreprocessor"},
    }


