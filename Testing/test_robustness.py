"""XAIRobustness engine: perturbation catalogue, similarity measures, sweeps, the randomisation check,
deletion / insertion, and the three subcommands. Tiny models and images; the demo model when present."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import make_image, rotation
from robustness_nets import EmptyExplainer, RegionNet, SobelExplainer, with_network
from XAICommandLine.main import main
from XAIExplainLib.errors import XAICancelled, XAIInputError
from XAIExplainLib.models import load_model
from XAIExplainLib.preprocessing import model_grid, to_model_grid
from XAIExplainLib.progress import CancelToken
from XAIRobustnessLib import similarity
from XAIRobustnessLib.faithfulness import faithfulness_test
from XAIRobustnessLib.perturbations import PERTURBATIONS, default_perturbations, get_perturbation
from XAIRobustnessLib.sanity import randomisation_blocks, sanity_check
from XAIRobustnessLib.sweep import perturbation_sweep, robustness_sweep

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "XAIExplain" / "XAIExplainLib" / "Resources"
DEMO_CASE = RESOURCES / "SampleData" / "brain-lesion-case1.nii.gz"
DEMO_MODEL = RESOURCES / "Models" / "brain-lesion-classifier"
BLOB = (25, 18, 16)


@pytest.fixture(scope="module")
def oblique():
    """Anisotropic, oblique, odd-sized: every perturbation must keep exactly this grid."""
    return make_image(size=(30, 26, 14), spacing=(1.1, 0.9, 2.5), direction=rotation("z", 20) @ rotation("x", 8),
                      origin=(-12.0, 30.5, 4.25), blob_index=(18, 12, 7), blob_radius=3)


@pytest.fixture(scope="module")
def case():
    return make_image(blob_index=BLOB)


@pytest.fixture(scope="module")
def classifier(classifier_bundle):
    return load_model(classifier_bundle)


# --- perturbations ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(PERTURBATIONS))
def test_perturbation_identity_geometry_monotone_and_seeded(key, oblique):
    perturbation = PERTURBATIONS[key]
    original = sitk.GetArrayFromImage(oblique)
    outputs = [perturbation(oblique, s, seed=3) for s in range(6)]
    for out in outputs:
        assert (out.GetSize(), out.GetSpacing(), out.GetOrigin(), out.GetDirection()) == \
            (oblique.GetSize(), oblique.GetSpacing(), oblique.GetOrigin(), oblique.GetDirection())
    assert np.array_equal(sitk.GetArrayFromImage(outputs[0]), original)  # severity 0 is the identity
    mse = [float(((sitk.GetArrayFromImage(o) - original) ** 2).mean()) for o in outputs]
    assert all(b >= a for a, b in zip(mse, mse[1:])), f"{key}: MSE not monotone in severity: {mse}"
    assert mse[-1] > 0, f"{key} does nothing at severity 5"
    again = perturbation(oblique, 4, seed=3)
    assert np.array_equal(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(outputs[4]))  # same seed, same image


def test_blank_outside_of_a_skull_stripped_image_stays_blank():
    """Acquisition artefacts cannot reach voxels blanked after acquisition; a moved patient moves the blank too."""
    measured = make_image(seed=1)
    array = sitk.GetArrayFromImage(measured)
    inside = array > 50
    stripped_array = np.where(inside, array, 0.0).astype(np.float32)
    stripped_array[20, 18, 16] = 0.0  # a dark voxel inside the brain is measured, not padding
    stripped = sitk.GetImageFromArray(stripped_array)
    stripped.CopyInformation(measured)
    for key in ("gaussian-noise", "ghosting", "motion", "blur", "contrast", "intensity-shift"):
        out = sitk.GetArrayFromImage(PERTURBATIONS[key](stripped, 2, seed=0))
        assert np.all(out[~inside] == 0.0), key
        assert not np.array_equal(out[inside], stripped_array[inside]), key
    noisy = sitk.GetArrayFromImage(PERTURBATIONS["gaussian-noise"](stripped, 2, seed=0))
    assert noisy[20, 18, 16] != 0.0
    rotated = sitk.GetArrayFromImage(PERTURBATIONS["rotation"](stripped, 5, seed=0))
    assert (rotated[~inside] != 0).any()  # the brain moved into the old outside
    # a measured image (noise in the air) has no padding: noise goes everywhere
    out = sitk.GetArrayFromImage(PERTURBATIONS["gaussian-noise"](measured, 2, seed=0))
    assert np.all(out[~inside] != array[~inside])


def test_catalogue_is_data_with_documented_scales():
    for perturbation in PERTURBATIONS.values():
        assert len(perturbation.levels) == 6 and perturbation.unit and perturbation.description
        assert list(perturbation.levels) == sorted(perturbation.levels) or \
            list(perturbation.levels) == sorted(perturbation.levels, reverse=True)
    assert all(len(default_perturbations(m)) == 8 for m in ("MR", "CT", None))
    assert all(PERTURBATIONS[k].applies_to("CT") for k in default_perturbations("CT"))
    assert "ct-dose" not in default_perturbations("MR")
    with pytest.raises(XAIInputError, match="applies to CT"):
        get_perturbation("ct-dose", "MR")
    with pytest.raises(XAIInputError, match="Unknown perturbation"):
        get_perturbation("wobble")


def test_ct_dose_noise_grows_as_inverse_sqrt_dose():
    rng = np.random.default_rng(0)
    ct = sitk.GetImageFromArray((40 + 10 * rng.standard_normal((24, 40, 40))).astype(np.float32))
    base = sitk.GetArrayFromImage(ct)
    added = [np.std(sitk.GetArrayFromImage(PERTURBATIONS["ct-dose"](ct, s)) - base) for s in (1, 3)]
    dose = [PERTURBATIONS["ct-dose"].value(s) for s in (1, 3)]  # 0.5 and 0.1
    expected = np.sqrt(1 / dose[1] - 1) / np.sqrt(1 / dose[0] - 1)
    assert added[1] / added[0] == pytest.approx(expected, rel=0.02)
    assert added[0] == pytest.approx(10.0, rel=0.15)  # σ0 estimated from the image: 10 HU


# --- similarity -------------------------------------------------------------------------------------


def test_similarity_measures():
    rng = np.random.default_rng(0)
    a = rng.random((10, 12, 8))
    assert similarity.spearman(a, a) == pytest.approx(1.0)
    assert similarity.spearman(a, -a) == pytest.approx(-1.0)
    assert similarity.spearman(a, -a, absolute=True) == pytest.approx(1.0)
    assert similarity.spearman(a, 2 * a + 1) == pytest.approx(1.0)  # ranks only
    assert similarity.spearman(a, np.zeros_like(a)) == 0.0
    assert similarity.top_k_iou(a, a) == 1.0 and similarity.top_k_iou(a, -a) == 0.0
    assert similarity.ssim(a, a) == pytest.approx(1.0)
    assert similarity.ssim(a, rng.random(a.shape)) < 0.3
    mask = a > 0.5
    assert similarity.dice(mask, mask) == 1.0 and similarity.dice(mask, ~mask) == 0.0
    assert similarity.dice(np.zeros(3), np.zeros(3)) == 1.0


# --- sweeps -----------------------------------------------------------------------------------------


def test_intensity_shift_invariant_model_shows_no_change(case, classifier):
    # The tiny classifier z-scores its input: adding a constant cannot change what it sees.
    sweep = perturbation_sweep(case, classifier, "intensity-shift", severities=(0, 2, 5))
    assert [row["severity"] for row in sweep.rows] == [0, 2, 5]
    for row in sweep.rows:
        assert row["confidence"] == pytest.approx(sweep.rows[0]["confidence"], abs=1e-4)
        assert row["spearman"] > 0.999 and row["ssim"] > 0.999 and not row["prediction_changed"]
    assert sweep.summary["flip_severity"] is None and sweep.summary["decorrelation_severity"] is None
    assert sweep.summary["trustworthy_in_plausible_range"]


def test_same_seed_same_sweep_and_results_on_the_input_grid(oblique, classifier):
    kwargs = dict(perturbations=["gaussian-noise", "motion"], severities=(1, 4), memory_budget_mb=1)
    first = robustness_sweep(oblique, classifier, seed=7, **kwargs)
    second = robustness_sweep(oblique, classifier, seed=7, **kwargs)
    other = robustness_sweep(oblique, classifier, seed=8, **kwargs)
    assert first.rows == second.rows
    assert first.rows != other.rows
    assert first.settings["batch_size"] == 1  # the memory budget forces one case per batch
    assert len(first.rows) == 2 * 3 and {r["perturbation"] for r in first.rows} == {"gaussian-noise", "motion"}
    noise = first.sweeps["gaussian-noise"]
    result = noise.results[4]
    for image in (result.saliency, noise.perturbed_images[4]):
        assert (image.GetSize(), image.GetSpacing(), image.GetDirection()) == \
            (oblique.GetSize(), oblique.GetSpacing(), oblique.GetDirection())
    assert result.provenance["perturbation"]["severity"] == 4
    report = json.loads(json.dumps(first.to_json()))  # JSON-serialisable
    assert report["perturbations"]["motion"]["perturbation"] == "motion"


def test_segmentation_sweep_has_dice(case, segmenter_bundle):
    sweep = perturbation_sweep(case, load_model(segmenter_bundle), "blur", severities=(0, 5))
    assert sweep.rows[0]["dice"] == 1.0 and 0.0 <= sweep.rows[1]["dice"] <= 1.0
    assert sweep.results[5].segmentation.GetSize() == case.GetSize()


def test_sweep_cancels_and_rejects_bad_arguments(case, classifier):
    token = CancelToken()
    token.cancel()
    with pytest.raises(XAICancelled):
        robustness_sweep(case, classifier, ["gaussian-noise"], (1,), cancel=token)
    with pytest.raises(XAIInputError, match="outside"):
        robustness_sweep(case, classifier, ["gaussian-noise"], (7,))
    with pytest.raises(XAIInputError, match="applies to CT"):
        robustness_sweep(case, classifier, ["ct-dose"], (1,))


# --- sanity checks ----------------------------------------------------------------------------------


def test_randomisation_blocks_start_at_the_output(classifier):
    blocks = randomisation_blocks(classifier.network, max_steps=4)
    assert len(blocks) == 4 and blocks[0][0] == "fc" and blocks[-1][-1] == "conv1"


def test_gradcam_changes_under_randomisation_but_an_edge_map_does_not(case, classifier):
    gradcam = sanity_check(case, classifier, "gradcam", max_steps=4)
    assert gradcam.passed and gradcam.final_spearman < 0.5
    assert gradcam.steps[0]["spearman"] == pytest.approx(1.0) and len(gradcam.steps) == 5
    edges = sanity_check(case, classifier, "gradcam", max_steps=4, explainer_factory=SobelExplainer)
    assert not edges.passed and edges.final_spearman > 0.99
    assert "FAILS" in edges.verdict
    empty = sanity_check(case, classifier, "gradcam", max_steps=2, explainer_factory=EmptyExplainer)
    assert not empty.passed and empty.empty_map and "constant" in empty.verdict  # rank correlation 0 is no pass
    # The loaded model was never touched.
    again = sanity_check(case, classifier, "gradcam", max_steps=4)
    assert again.steps == gradcam.steps


@pytest.mark.skipif(not (DEMO_CASE.exists() and (DEMO_MODEL / "models" / "model.pt").exists()),
                    reason="demo model or sample case not present")
def test_gradcam_on_the_trained_demo_model_passes_randomisation():
    image = sitk.ReadImage(str(DEMO_CASE))
    result = sanity_check(image, load_model(DEMO_MODEL), "gradcam", max_steps=3)
    assert result.passed, result.verdict


# --- faithfulness -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def region_model(case, classifier):
    """A network that reads only the blob's region: the true explanation is that region."""
    blob = sitk.Cast(make_image(blob_index=BLOB) > 150, sitk.sitkFloat32)
    region = torch.from_numpy(to_model_grid(blob, model_grid(case, classifier.spec.input)) > 0.3)
    return with_network(classifier, RegionNet(region), "features"), region


def test_deletion_of_a_true_explanation_beats_random(case, region_model):
    model, region = region_model
    result = faithfulness_test(case, model, "gradient", steps=8, n_random=2)
    assert result.deletion_beats_random and result.insertion_beats_random and result.passed
    assert result.deletion[0] == pytest.approx(result.insertion[-1], abs=1e-5)  # both end at the original
    assert len(result.deletion) == 9
    # A map pointing away from the region does no better than chance.
    wrong = faithfulness_test(case, model, "gradient", steps=8, n_random=2, saliency=(~region).float())
    assert not wrong.deletion_beats_random


# --- command line -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def case_file(tmp_path_factory, case):
    path = tmp_path_factory.mktemp("cases") / "case.nii.gz"
    sitk.WriteImage(case, str(path))
    return path


def test_cli_robustness_sanity_faithfulness_write_json_csv_png(case_file, classifier_bundle, tmp_path, capsys):
    out = tmp_path / "robustness"
    assert main(["robustness", str(case_file), "--model", str(classifier_bundle), "--perturbations",
                 "gaussian-noise,blur", "--severities", "2,5", "--seed", "1", "--out", str(out)]) == 0
    report = json.loads((out / "robustness.json").read_text(encoding="utf-8"))
    assert set(report["perturbations"]) == {"gaussian-noise", "blur"} and report["settings"]["seed"] == 1
    with open(out / "robustness.csv", newline="", encoding="utf-8") as stream:
        assert len(list(csv.DictReader(stream))) == 2 * 3
    assert (out / "robustness.png").read_bytes()[:4] == b"\x89PNG"

    out = tmp_path / "sanity"
    assert main(["sanity", str(case_file), "--model", str(classifier_bundle), "--method", "gradcam,gradient",
                 "--max-steps", "2", "--out", str(out)]) == 0
    report = json.loads((out / "sanity.json").read_text(encoding="utf-8"))
    assert set(report["sanity"]["methods"]) == {"gradcam", "gradient"} and "passed" in report["sanity"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["sanity.csv", "sanity.json", "sanity.png"]

    out = tmp_path / "faithfulness"
    assert main(["faithfulness", str(case_file), "--model", str(classifier_bundle), "--steps", "4", "--random", "1",
                 "--out", str(out)]) == 0
    report = json.loads((out / "faithfulness.json").read_text(encoding="utf-8"))
    assert {"deletion_auc", "random_deletion_auc", "insertion_auc", "random_insertion_auc"} <= set(report)
    assert "Results in" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["robustness", "{missing}", "--model", "{model}"], "error:"),
    (["robustness", "{case}", "--model", "{model}", "--perturbations", "wobble"], "unknown perturbation"),
    (["robustness", "{case}", "--model", "{model}", "--severities", "1,9"], "severities must be"),
    (["robustness", "{case}", "--model", "{model}", "--perturbations", "ct-dose"], "applies to CT"),
    (["sanity", "{case}", "--model", "{model}", "--method", "magic"], "unknown method"),
    (["faithfulness", "{case}", "--model", "{missing}"], "error:"),
])
def test_cli_bad_input_one_line_exit_2_nothing_written(args, message, case_file, classifier_bundle, tmp_path, capfd):
    out = tmp_path / "out"
    values = {"case": str(case_file), "model": str(classifier_bundle), "missing": str(tmp_path / "missing.nii.gz")}
    code = _run_main([a.format(**values) for a in args] + ["--out", str(out)])
    stderr = capfd.readouterr().err
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1 and message in stderr and "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def _run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit:  # argparse usage errors
        return int(exit.code)


def test_map_comparison_against_one_reference_equals_the_single_measures():
    from XAIRobustnessLib.similarity import MapComparison, spearman, ssim, top_k_iou

    generator = torch.Generator().manual_seed(0)
    reference = torch.rand(12, 10, 8, generator=generator)
    mask = torch.rand(12, 10, 8, generator=generator) > 0.3
    comparison = MapComparison(reference, mask, absolute=True)
    for other in (reference, reference + 0.3 * torch.rand(12, 10, 8, generator=generator), torch.zeros(12, 10, 8)):
        scores = comparison(other)
        assert scores["spearman"] == pytest.approx(spearman(reference, other, mask, absolute=True))
        assert scores["topk_iou"] == pytest.approx(top_k_iou(reference, other, mask, absolute=True))
        assert scores["ssim"] == pytest.approx(ssim(reference, other, mask, absolute=True))
    assert comparison(reference) == pytest.approx({"spearman": 1.0, "topk_iou": 1.0, "ssim": 1.0})
    assert comparison(torch.zeros(12, 10, 8))["spearman"] == 0.0  # a constant map shares no ranking
