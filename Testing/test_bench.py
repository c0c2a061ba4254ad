"""``slicer-xai bench``: explanation methods scored against ground-truth lesions, end to end."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image

from XAIExplainLib.models import load_model
from XAIRobustnessLib.bench import (BenchCase, BenchResult, bench_json, bootstrap_ci, markdown_table, summarise,
                                   recommendation_text, run_bench)
from XAIRobustnessLib.verdicts import method_verdict, rank_methods, recommended_method


def _case(name, blob, seed):
    image = make_image((32, 28, 24), spacing=(2.0, 2.0, 2.0), blob_index=blob, blob_radius=3.0, seed=seed)
    k, j, i = np.meshgrid(*(np.arange(n) for n in (24, 28, 32)), indexing="ij")
    mask = sitk.GetImageFromArray(((i - blob[0]) ** 2 + (j - blob[1]) ** 2 + (k - blob[2]) ** 2 <= 9).astype(np.uint8))
    mask.CopyInformation(image)
    return BenchCase(name, image, mask)


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_more_cases():
    few = bootstrap_ci([0.0, 1.0, 1.0, 0.0])
    many = bootstrap_ci([0.0, 1.0] * 50)
    assert few[1] <= few[0] <= few[2] and many[1] <= many[0] <= many[2]
    assert many[2] - many[1] < few[2] - few[1]
    assert np.isnan(bootstrap_ci([])[0])


def test_bench_scores_every_method_on_every_lesion_case(classifier_bundle):
    model = load_model(classifier_bundle)
    cases = [_case("a", (10, 12, 9), 0), _case("b", (20, 14, 12), 1)]
    empty = BenchCase("no-lesion", cases[0].image, sitk.Image(cases[0].lesion) * 0)
    result = run_bench(model, [*cases, empty], ["gradcam", "gradient"], sanity_cases=1)
    assert [(r["case"], r["method"]) for r in result.rows] == [("a", "gradcam"), ("a", "gradient"),
                                                                ("b", "gradcam"), ("b", "gradient")]
    for row in result.rows:
        assert row["pointing_hit"] in (0, 1) and 0 <= row["mass_in_lesion"] <= 1 and 0 <= row["auprc"] <= 1
        assert 0 < row["lesion_share"] < 0.05 and np.isfinite(row["deletion_auc"]) and row["runtime_s"] > 0
        assert -1 <= row["stability_spearman"] <= 1
    assert set(result.summary) == {"gradcam", "gradient"}
    assert result.summary["gradcam"]["n_cases"] == 2 and result.summary["gradcam"]["sanity_n"] == 1


def test_bench_refuses_cases_without_any_lesion(classifier_bundle):
    model = load_model(classifier_bundle)
    case = _case("a", (10, 12, 9), 0)
    with pytest.raises(ValueError, match="ground truth"):
        run_bench(model, [BenchCase("x", case.image, case.lesion * 0)], ["gradcam"])


def test_bench_command_writes_table_csv_plot_from_a_folder(classifier_bundle, tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    for name, blob, seed in (("one", (10, 12, 9), 0), ("two", (20, 14, 12), 1)):
        case = _case(name, blob, seed)
        sitk.WriteImage(case.image, str(cases / f"{name}.nii.gz"))
        sitk.WriteImage(case.lesion, str(cases / f"{name}_mask.nii.gz"))
    out = tmp_path / "bench"
    done = subprocess.run([sys.executable, "-m", "XAICommandLine", "bench", "--model", str(classifier_bundle),
                           "--cases", str(cases), "--methods", "gradcam,gradient", "--no-stability",
                           "--sanity-cases", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "| Grad-CAM | 2 |" in (out / "bench.md").read_text(encoding="utf-8")
    with open(out / "bench.csv", encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == 4
    assert (out / "bench.png").stat().st_size > 10_000
    written = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    assert written["summary"]["gradient"]["n_cases"] == 2 and set(written["verdicts"]) == {"gradcam", "gradient"}


def test_bench_command_with_a_folder_without_masks_fails_cleanly(classifier_bundle, tmp_path):
    (tmp_path / "cases").mkdir()
    sitk.WriteImage(make_image(), str(tmp_path / "cases" / "lonely.nii.gz"))
    done = subprocess.run([sys.executable, "-m", "XAICommandLine", "bench", "--model", str(classifier_bundle),
                           "--cases", str(tmp_path / "cases"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "_mask" in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


# --- verdicts: which method the numbers support ---------------------------------------------------------

def _entry(pointing, mass, share=0.002, sanity=1.0, auprc=0.5, n=10):
    return {"n_cases": n, "pointing_hit": [pointing, 0, 1], "mass_in_lesion": [mass, 0, 1],
            "lesion_share": [share, 0, 1], "auprc": [auprc, 0, 1], "sanity_pass_rate": sanity, "sanity_n": 2}


def test_verdicts_rank_methods_that_meet_every_target_first_and_say_what_the_others_miss():
    summary = {"gradient": _entry(1.0, 0.30, sanity=0.0, auprc=0.9),  # localises, but fails randomisation
               "ig": _entry(0.95, 0.40),
               "gradcam": _entry(0.95, 0.80),
               "occlusion": _entry(0.70, 0.90)}
    ranked = rank_methods(summary)
    assert [v.method for v in ranked] == ["gradcam", "ig", "occlusion", "gradient"]
    assert recommended_method(summary) == "gradcam"
    verdict = {v.method: v for v in ranked}
    assert verdict["gradient"].passes_randomisation is False and "randomisation" in verdict["gradient"].failures[0]
    assert verdict["occlusion"].failures == ("pointing game 0.70 < 0.90",)
    assert "mass in lesion" in method_verdict("x", _entry(1.0, 0.01, share=0.002)).failures[0]  # only 5x the share
    assert "not run" in method_verdict("x", _entry(1.0, 0.5, sanity=None)).failures[0]
    assert recommended_method({"occlusion": summary["occlusion"], "gradient": summary["gradient"]}) is None


def test_bench_json_and_table_carry_the_verdicts(tmp_path):
    summary = {"gradient": _entry(1.0, 0.30, sanity=0.0), "gradcam": _entry(0.95, 0.80)}
    result = BenchResult("demo", rows=[], sanity={}, settings={"methods": list(summary), "cases": ["a"] * 10,
                                                               "sanity_cases": 2}, summary=summary)
    data = bench_json(result)
    assert data["recommended"] == "gradcam" and list(data["verdicts"]) == ["gradcam", "gradient"]
    assert "80% of the map's mass in the lesion" in data["evidence"]["gradcam"]
    table = markdown_table(result)
    assert table.index("| Grad-CAM |") < table.index("| Gradient |") and "| no: fails the randomisation" in table
    assert recommendation_text(result).startswith("Recommended: Grad-CAM")


def test_an_empty_map_is_counted_apart_in_the_randomisation_check():
    sanity = {"gradcam": [{"case": "a", "passed": True, "final_spearman": 0.1, "empty_map": False},
                          {"case": "b", "passed": False, "final_spearman": 0.0, "empty_map": True}],
              "gradcampp": [{"case": "a", "passed": False, "final_spearman": 0.0, "empty_map": True}]}
    result = BenchResult("demo", rows=[], sanity=sanity, settings={"methods": ["gradcam", "gradcampp"]})
    summary = summarise(result)
    assert (summary["gradcam"]["sanity_pass_rate"], summary["gradcam"]["sanity_n"], summary["gradcam"]["sanity_empty"]) == (1.0, 1, 1)
    assert summary["gradcampp"]["sanity_pass_rate"] is None  # nothing left to check: no pass
    assert "not run" in method_verdict("gradcampp", summary["gradcampp"]).failures[-1]
