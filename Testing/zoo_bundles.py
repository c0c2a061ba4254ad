"""Model bundles laid out as the MONAI Model Zoo publishes them, written by the tests.

The configs follow the zoo's (spleen_ct_segmentation, brats_mri_segmentation, a 3-D classifier):
``metadata.json`` with ``network_data_format`` and no ``xai`` card, an inference config (JSON or YAML) with
short ``_target_`` names, ``$`` expressions for the parts the engine never runs (device, data lists,
evaluator), a preprocessing Compose, a ``SlidingWindowInferer`` and a postprocessing Compose. Networks are
smaller than the zoo's so the suite stays fast; weights are random (``torch.manual_seed``), nothing is
downloaded and no file of the zoo is copied.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch

__all__ = ["write_zoo_bundle", "SPLEEN_LIKE", "BRATS_LIKE", "CLASSIFIER_LIKE"]

_SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json"


def _metadata(name: str, modality: str, in_channels: int, out: dict, input_shape: list) -> dict:
    return {
        "schema": _SCHEMA,
        "version": "0.1.0",
        "changelog": {"0.1.0": "test copy of the zoo's layout"},
        "monai_version": "1.6.1",
        "name": name,
        "task": f"{name} (test bundle)",
        "description": "A bundle written by the SlicerXAI tests in the Model Zoo's layout, with random weights.",
        "authors": "SlicerXAI tests",
        "copyright": "Copyright (c) SlicerXAI contributors",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude" if modality == "MR" else "hounsfield",
                                 "modality": modality, "num_channels": in_channels, "spatial_shape": input_shape,
                                 "dtype": "float32", "value_range": [], "is_patch_data": out["type"] == "image",
                                 "channel_def": {str(i): f"channel {i}" for i in range(in_channels)}}},
            "outputs": {"pred": out},
        },
    }


def _inference(network_def: dict, preprocessing: list, inferer: Optional[dict], postprocessing: list) -> dict:
    config: dict[str, Any] = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            *preprocessing,
            {"_target_": "EnsureTyped", "keys": "image"},
        ]},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "num_workers": 4},
        "postprocessing": {"_target_": "Compose", "transforms": [
            *postprocessing,
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir"},
        ]},
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing"},
        "initialize": ["$monai.utils.set_determinism(seed=123)"],
        "run": ["$@evaluator.run()"],
    }
    if inferer is not None:
        config["inferer"] = inferer
    else:
        config["inferer"] = {"_target_": "SimpleInferer"}
    return config


#: spleen_ct_segmentation's layout: UNet, RAS, 1.5 x 1.5 x 2 mm, HU -57..164 onto 0..1, 50 % window overlap.
SPLEEN_LIKE = {
    "metadata": _metadata("spleen_ct_segmentation (test)", "CT", 1, {
        "type": "image", "format": "segmentation", "num_channels": 2, "spatial_shape": [32, 32, 32],
        "dtype": "float32", "value_range": [0, 1], "is_patch_data": True,
        "channel_def": {"0": "background", "1": "spleen"}}, [32, 32, 32]),
    "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                    "channels": [4, 8, 16, 32], "strides": [2, 2, 2], "num_res_units": 1, "norm": "batch"},
    "preprocessing": [
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0.0, "b_max": 1.0,
         "clip": True},
    ],
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 4, "overlap": 0.5},
    "postprocessing": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image"},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
    ],
    "format": "json",
}

#: brats_mri_segmentation's layout (one channel here): SegResNet, z-score of the brain, three sigmoid labels.
BRATS_LIKE = {
    "metadata": _metadata("brats_mri_segmentation (test)", "MR", 1, {
        "type": "image", "format": "segmentation", "num_channels": 3, "spatial_shape": [32, 32, 32],
        "dtype": "float32", "value_range": [0, 1], "is_patch_data": True,
        "channel_def": {"0": "tumor core", "1": "whole tumor", "2": "enhancing tumor"}}, [32, 32, 32]),
    "network_def": {"_target_": "SegResNet", "blocks_down": [1, 2, 2], "blocks_up": [1, 1], "init_filters": 8,
                    "in_channels": 1, "out_channels": 3, "dropout_prob": 0.2},
    "preprocessing": [
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": [2.0, 2.0, 2.0], "mode": "bilinear"},
        {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
    ],
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 1, "overlap": 0.5},
    "postprocessing": [
        {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
        {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
    ],
    "format": "yaml",
}

#: A 3-D classifier in the zoo's layout: DenseNet on a fixed 32^3 input, z-scored, softmax over two classes.
CLASSIFIER_LIKE = {
    "metadata": _metadata("lesion_classification (test)", "MR", 1, {
        "type": "probabilities", "format": "classes", "num_channels": 2, "spatial_shape": [2],
        "dtype": "float32", "value_range": [0, 1], "is_patch_data": False,
        "channel_def": {"0": "no lesion", "1": "lesion"}}, [32, 32, 32]),
    "network_def": {"_target_": "DenseNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                    "init_features": 8, "growth_rate": 4, "block_config": [2, 2]},
    "preprocessing": [
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": [2.0, 2.0, 2.0]},
        {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True},
    ],
    "inferer": None,
    "postprocessing": [{"_target_": "Activationsd", "keys": "pred", "softmax": True}],
    "format": "json",
}


def write_zoo_bundle(folder: Path, layout: dict, **changes: Any) -> Path:
    """Write ``layout`` (one of the constants above, entries replaced by ``changes``) as a bundle folder."""
    from XAIExplainLib.models.safe_config import build_network

    layout = {**layout, **changes}
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    (folder / "docs").mkdir(exist_ok=True)
    config = _inference(layout["network_def"], layout["preprocessing"], layout["inferer"], layout["postprocessing"])
    torch.manual_seed(0)
    network = build_network(config)
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    (folder / "configs" / "metadata.json").write_text(json.dumps(layout["metadata"], indent=2), encoding="utf-8")
    if layout["format"] == "yaml":
        import yaml

        (folder / "configs" / "inference.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    else:
        (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "docs" / "README.md").write_text(f"# {layout['metadata']['name']}\n\nTest bundle, random weights.\n",
                                               encoding="utf-8")
    return folder
