"""The demo model bundles in Resources/Models: the bundle contract and the training scripts.

Held-out performance (evaluation seed 4242, used nowhere in training) is checked by
Testing/test_heldout_acceptance.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from XAIExplainLib.data import make_case
from XAIExplainLib.models import file_sha256
from XAIExplainLib.training.__main__ import main as train_main
from XAIExplainLib.training.evaluate import main as evaluate_main
from XAIExplainLib.training.evaluate import training_seeds
from XAIExplainLib.training.common import (
    model_grid_for, to_model_input,
)

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "XAIExplain" / "XAIExplainLib" / "Resources"
MODELS = RESOURCES / "Models"
EVAL_SEED = 4242
BUNDLES = {
    "brain-lesion-classifier": {"kind": "brain-mri", "task": "classification", "modality": "MR"},
    "brain-lesion-segmenter": {"kind": "brain-mri", "task": "segmentation", "modality": "MR"},
    "chest-nodule-classifier": {"kind": "chest-ct", "task": "classification", "modality": "CT"},
}
N_BRAIN, N_CHEST = 40, 40


def _metadata(name: str) -> dict:
    return json.loads((MODELS / name / "configs" / "metadata.json").read_text(encoding="utf-8"))


def _network(name: str) -> torch.nn.Module:
    """Build the network the way the engine's contract says, strict state-dict load."""
    import monai

    definition = dict(json.loads((MODELS / name / "configs" / "inference.json").read_text(encoding="utf-8"))["network_def"])
    target = definition.pop("_target_")
    network = getattr(monai.networks.nets, target.rsplit(".", 1)[1])(**definition)
    state = torch.load(MODELS / name / "models" / "model.pt", weights_only=True, map_location="cpu")
    network.load_state_dict(state, strict=True)
    return network.eval()


def _literal_only(value) -> bool:
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    if isinstance(value, dict):
        return all(_literal_only(v) for v in value.values())
    if isinstance(value, list):
        return all(_literal_only(v) for v in value)
    return value is None or isinstance(value, (int, float, bool))


@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_follows_the_contract(name):
    folder = MODELS / name
    for part in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md"):
        assert (folder / part).is_file(), f"{name}: {part} is missing"
    inference = json.loads((folder / "configs" / "inference.json").read_text(encoding="utf-8"))
    assert inference["network_def"]["_target_"].startswith("monai.networks.nets.")
    assert _literal_only(inference)
    meta = _metadata(name)
    for key in ("version", "changelog", "monai_version", "pytorch_version", "name", "task", "description",
                "authors", "copyright", "network_data_format"):
        assert key in meta, key
    image = meta["network_data_format"]["inputs"]["image"]
    for key in ("type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range",
                "is_patch_data", "channel_def"):
        assert key in image, key
    pred = meta["network_data_format"]["outputs"]["pred"]
    for key in ("type", "format", "num_channels", "spatial_shape", "dtype", "channel_def"):
        assert key in pred, key
    xai = meta["xai"]
    assert xai["task"] == BUNDLES[name]["task"] and xai["modality"] == BUNDLES[name]["modality"]
    assert len(xai["class_names"]) == pred["num_channels"] == 2
    card = xai["model_card"]
    assert "not for clinical use" in card["intended_use"]
    assert card["training_command"].startswith(f"python -m XAIExplainLib.training {name} ")
    metrics = card["held_out_metrics"]
    assert metrics["n"] >= 40 and EVAL_SEED not in metrics.get("seeds", [metrics.get("seed")])
    if BUNDLES[name]["kind"] == "brain-mri":
        assert "Louis Collins" in meta["copyright"] and "Louis Collins" in (folder / "docs" / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", BUNDLES)
def test_weights_hash_size_and_strict_load(name):
    weights = MODELS / name / "models" / "model.pt"
    assert weights.stat().st_size <= 5 * 1024 * 1024
    assert re.fullmatch(r"[0-9a-f]{64}", _metadata(name)["xai"]["weights_sha256"])
    assert _metadata(name)["xai"]["weights_sha256"] == file_sha256(weights)
    network = _network(name)
    network.get_submodule(_metadata(name)["xai"]["cam_target_layer"])


@pytest.mark.parametrize("name", BUNDLES)
def test_engine_loads_bundle_and_preprocesses_like_training(name):
    """The engine's loader accepts the bundle untrusted; its model-grid round trip equals ours."""
    from XAIExplainLib.models.loading import load_model
    from XAIExplainLib.preprocessing import model_grid, normalise_intensity, to_model_grid

    loaded = load_model(MODELS / name)
    meta = _metadata(name)["xai"]
    image, _, _ = make_case(BUNDLES[name]["kind"], EVAL_SEED, 0)
    # An oblique, anisotropic version of the case, to exercise the resampling.
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(0.1, -0.05, 0.2)
    direction = np.asarray(rotation.GetMatrix()).reshape(3, 3) @ np.asarray(image.GetDirection()).reshape(3, 3)
    oblique = sitk.Image(image)
    oblique.SetDirection(direction.flatten().tolist())
    ours = to_model_input(oblique, meta)
    grid = model_grid(oblique, loaded.spec.input)
    theirs = normalise_intensity(to_model_grid(oblique, grid), loaded.spec.intensity)
    assert ours.shape == theirs.shape
    assert np.allclose(ours, theirs, atol=1e-4)
    ours_grid = model_grid_for(oblique, meta)
    assert np.allclose(ours_grid.GetOrigin(), grid.GetOrigin()) and ours_grid.GetSize() == grid.GetSize()


SMOKE_SETTINGS = ["--spacing", "8", "--patch", "16", "16", "16", "--window", "16", "16", "16", "--width", "4",
                  "--patches-per-case", "1", "--batch-size", "2", "--init", "none"]


@pytest.mark.parametrize("name", BUNDLES)
def test_training_script_runs_one_short_epoch(name, tmp_path):
    out = tmp_path / name
    case_epochs = "1" if BUNDLES[name]["task"] == "classification" else "0"
    metrics = train_main([name, "--out", str(out), "--epochs", "1", "--n-train", "4", "--n-eval", "4",
                          "--eval-seed", str(EVAL_SEED), "--case-epochs", case_epochs, "--n-validation", "6",
                          *SMOKE_SETTINGS])
    assert metrics["n"] == 4
    meta = json.loads((out / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert meta["xai"]["weights_sha256"] == file_sha256(out / "models" / "model.pt")
    assert meta["xai"]["model_card"]["held_out_metrics"] == metrics
    # The segmenter's outline threshold is chosen on its training cases and recorded.
    assert ("outline_log_odds_offset" in meta["xai"]["model_card"]) == (BUNDLES[name]["task"] == "segmentation")
    # The chest classifier's case threshold is chosen on validation cases, whose seed it then counts as seen.
    card = meta["xai"]["model_card"]
    assert ("operating_point" in card) == (name == "chest-nodule-classifier")
    if "operating_point" in card:
        assert card["operating_point"]["validation_cases"] == 6
        assert {20, card["operating_point"]["validation_seed"]} <= training_seeds(card)
    from XAIExplainLib.models.loading import load_model

    loaded = load_model(out)
    assert loaded.spec.task == meta["xai"]["task"]
    if BUNDLES[name]["task"] == "segmentation":
        _check_evaluate_records_new_metrics_without_touching_weights(out, meta)


def test_a_fine_tuned_models_held_out_seeds_exclude_those_of_the_model_it_started_from():
    card = _metadata("brain-lesion-classifier")["xai"]["model_card"]
    segmenter_command = _metadata("brain-lesion-segmenter")["xai"]["model_card"]["training_command"]
    segmenter_seed = int(re.search(r"--seed (\d+)", segmenter_command).group(1))
    assert "--init brain-lesion-segmenter" in card["training_command"]
    assert segmenter_seed in training_seeds(card)
    with pytest.raises(SystemExit, match="trained on those cases"):
        evaluate_main(["brain-lesion-classifier", "--n-eval", "2", "--eval-seed", "1234", str(segmenter_seed)])


def _check_evaluate_records_new_metrics_without_touching_weights(out, trained_meta):
    """``training.evaluate --update-card`` re-measures a bundle on other held-out cases and records it."""
    weights = (out / "models" / "model.pt").read_bytes()
    (training_seed,) = training_seeds(trained_meta["xai"]["model_card"])
    with pytest.raises(SystemExit, match="trained on"):
        evaluate_main([str(out), "--n-eval", "4", "--eval-seed", str(training_seed)])
    metrics = evaluate_main([str(out), "--n-eval", "3", "--eval-seed", "77", "78", "--update-card"])
    assert metrics["n"] == 6 and metrics["seeds"] == [77, 78]
    low, high = metrics["dice_ci95"]
    assert 0.0 <= low <= metrics["dice"] <= high <= 1.0
    card = json.loads((out / "configs" / "metadata.json").read_text(encoding="utf-8"))["xai"]["model_card"]
    assert card["held_out_metrics"] == metrics and "--eval-seed 77 78" in card["evaluation_command"]
    readme = (out / "docs" / "README.md").read_text(encoding="utf-8")
    assert readme.count("## Held-out metrics") == 1 and "--eval-seed 77 78" in readme and "## Known limits" in readme
    assert (out / "models" / "model.pt").read_bytes() == weights
