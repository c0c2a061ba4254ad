"""Clinical task catalogue and audience modes: filtering by task, clear errors, and words that differ
per audience, follow the case's results, raise the review flag when they should, and read at a lay
level in teaching mode."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pytest
import SimpleITK as sitk
import textstat

from conftest import make_image
from XAIExplainLib.audiences import (
    AUDIENCES,
    EVIDENCE_TOP_PERCENT,
    TrustEvidence,
    build_case_facts,
    get_audience,
    methods_csv,
    read_trust_evidence,
)
from XAIExplainLib.errors import XAIInputError, XAIModelError
from XAIExplainLib.models import read_model_spec
from XAIExplainLib.tasks import (
    check_model_for_task,
    get_task,
    load_catalogue,
    methods_for_task,
    models_for_task,
    task_ids,
    tasks_for_model,
)

REQUIRED_TASKS = {"brain-lesion-triage": "MR", "brain-lesion-segmentation": "MR", "lung-nodule-detection": "CT"}
JARGON = ("Grad-CAM", "RAS", "Spearman", "saliency", "logit", "entropy", "gradient", "TTA", "tta", "voxel")


# --- the catalogue -----------------------------------------------------------------------------------

def test_catalogue_has_the_required_tasks_with_complete_entries():
    catalogue = load_catalogue()
    for task_id, modality in REQUIRED_TASKS.items():
        task = catalogue.get(task_id)
        assert task.modality == modality and task.question.endswith("?")
        assert task.recommended and all(a.reason for a in (*task.recommended, *task.avoid))
        assert task.avoid, f"{task_id} names no method to avoid"
        assert task.uncertainty.method in ("tta", "mc-dropout") and task.uncertainty.reason
        assert task.trust.sanity_required and 0 < task.trust.min_stability_spearman < 1
        assert task.trust.deletion_auc_margin > 0
        for pid in task.perturbations:
            assert modality in catalogue.perturbations[pid].modalities
    mri = set(get_task("brain-lesion-triage").perturbations)
    assert {"bias-field", "motion", "ghosting", "rician-noise", "blur"} <= mri
    ct = set(get_task("lung-nodule-detection").perturbations)
    assert {"ct-dose", "slice-thickness", "intensity-shift", "blur"} <= ct and not ct & {"bias-field", "ghosting"}


def test_unknown_task_is_a_clear_error_listing_the_known_ones():
    with pytest.raises(XAIInputError) as error:
        get_task("knee-fracture")
    message = str(error.value)
    assert "knee-fracture" in message and all(t in message for t in task_ids())


@pytest.mark.parametrize("change, complaint", [
    (lambda t: t["methods"]["recommended"].append({"method": "deeplift", "reason": "x"}), "unknown method"),
    (lambda t: t["robustness"]["perturbations"].append("ct-dose"), "does not apply to MR"),
    (lambda t: t["robustness"]["perturbations"].append("earthquake"), "unknown perturbation"),
    (lambda t: t.update(model_tasks=["regression"]), "model_tasks"),
    (lambda t: t["methods"]["avoid"].append({"method": "gradcam", "reason": "x"}), "both recommended and avoided"),
])
def test_invalid_catalogue_is_refused(tmp_path, monkeypatch, change, complaint):
    data = json.loads(load_catalogue().path.read_text(encoding="utf-8"))
    change(data["tasks"][0])
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    monkeypatch.setenv("SLICER_XAI_TASKS", str(path))
    with pytest.raises(XAIInputError, match=complaint):
        load_catalogue()


def _catalogue_with_bench(tmp_path, monkeypatch, ranking, fails=(), evidence_file="bench.json"):
    """The shipped catalogue with the triage task (Grad-CAM, occlusion, IG recommended) pointed at a bench."""
    data = json.loads(load_catalogue().path.read_text(encoding="utf-8"))
    for task in data["tasks"]:
        task.pop("evidence", None)
    data["tasks"][0]["evidence"] = evidence_file
    verdicts = {m: {"method": m, "meets_targets": m == ranking[0], "failures": [], "passes_randomisation": m not in fails}
                for m in ranking}
    bench = {"model": "brain-lesion-classifier", "settings": {"cases": ["a", "b"]}, "verdicts": verdicts,
             "recommended": ranking[0], "evidence": {m: f"{m} scored so" for m in ranking}}
    (tmp_path / "bench.json").write_text(json.dumps(bench), encoding="utf-8")
    (tmp_path / "tasks.json").write_text(json.dumps(data), encoding="utf-8")
    monkeypatch.setenv("SLICER_XAI_TASKS", str(tmp_path / "tasks.json"))
    return load_catalogue


def test_recommendations_carry_the_bench_measurements(tmp_path, monkeypatch):
    triage = _catalogue_with_bench(tmp_path, monkeypatch, ["gradcam", "smoothgrad", "gradient"])().get("brain-lesion-triage")
    status, reason = triage.advice("gradcam")
    assert status == "recommended" and reason.endswith(
        "Measured by slicer-xai bench on brain-lesion-classifier (2 cases with a lesion): gradcam scored so.")
    assert triage.advice("smoothgrad") == ("neutral", "Measured by slicer-xai bench on brain-lesion-classifier "
                                                      "(2 cases with a lesion): smoothgrad scored so.")
    status, reason = triage.advice("occlusion")  # recommended, not benched: the reason alone
    assert status == "recommended" and "Measured" not in reason
    assert triage.advice_text("gradcam").startswith("Recommended for this task: A triage reader")


def test_the_shipped_catalogue_follows_its_bench():
    tasks = load_catalogue().tasks.values()
    for task in (t for t in tasks if not t.generic):
        assert task.evidence is not None and task.primary_method == task.evidence.ranking[0]
        assert "Measured by slicer-xai bench" in task.advice(task.primary_method)[1]
    # Generic tasks serve models nobody benched here, and say so where their method is recommended.
    generic = [t for t in tasks if t.generic]
    assert {(t.modality, t.model_tasks) for t in generic} == {(m, (k,)) for m in ("CT", "MR")
                                                             for k in ("classification", "segmentation")}
    for task in generic:
        assert task.evidence is None and "Not benchmarked" in task.advice(task.primary_method)[1]


@pytest.mark.parametrize("ranking, fails, evidence_file, complaint", [
    (["gradient", "gradcam"], (), "bench.json", "ranks gradient first"),
    (["gradcam", "occlusion"], ("occlusion",), "bench.json", "occlusion recommended but fail"),
    (["gradcam"], (), "missing.json", "cannot be read"),
])
def test_a_catalogue_that_contradicts_its_bench_is_refused(tmp_path, monkeypatch, ranking, fails, evidence_file,
                                                           complaint):
    load = _catalogue_with_bench(tmp_path, monkeypatch, ranking, fails, evidence_file)
    with pytest.raises(XAIInputError, match=complaint):
        load()


def test_choosing_a_task_filters_models():
    models = [
        {"name": "brain-cls", "task": "classification", "modality": "MR", "clinical_tasks": ["brain-lesion-triage"]},
        {"name": "brain-seg", "task": "segmentation", "modality": "MR", "clinical_tasks": ["brain-lesion-segmentation"]},
        {"name": "chest-cls", "task": "classification", "modality": "CT", "clinical_tasks": ["lung-nodule-detection"]},
        {"name": "broken", "error": "unreadable"},
    ]
    assert [m["name"] for m in models_for_task("brain-lesion-triage", models)] == ["brain-cls"]
    assert [m["name"] for m in models_for_task("brain-lesion-segmentation", models)] == ["brain-seg"]
    assert [m["name"] for m in models_for_task("lung-nodule-detection", models)] == ["chest-cls"]
    assert [t.id for t in tasks_for_model(models[2])] == ["lung-nodule-detection"]


def test_a_model_that_cannot_answer_the_task_is_refused(classifier_bundle, segmenter_bundle):
    classifier, segmenter = read_model_spec(classifier_bundle), read_model_spec(segmenter_bundle)
    with pytest.raises(XAIModelError, match="segmentation model"):
        check_model_for_task(segmenter, "brain-lesion-triage")
    with pytest.raises(XAIModelError, match="MR images"):
        check_model_for_task(classifier, "lung-nodule-detection")
    assert "not validated" in check_model_for_task(classifier, "brain-lesion-triage")  # card lists no task
    assert check_model_for_task({"name": "m", "task": "classification", "modality": "MR",
                                 "clinical_tasks": ["brain-lesion-triage"]}, "brain-lesion-triage") is None


def test_choosing_a_task_filters_methods(classifier_bundle):
    triage, chest = get_task("brain-lesion-triage"), get_task("lung-nodule-detection")
    assert methods_for_task(triage)[:3] == list(triage.recommended_methods)
    assert "gradient" not in methods_for_task(triage) and "gradient" in methods_for_task(triage, include_avoided=True)
    assert "smoothgrad" not in methods_for_task(chest) and "smoothgrad" in methods_for_task(triage)
    no_layer = {"name": "ts", "task": "classification", "cam_target_layer": None}
    assert not {"gradcam", "gradcampp"} & set(methods_for_task(triage, no_layer))
    assert methods_for_task(triage, read_model_spec(classifier_bundle))[0] == "gradcam"


def test_unknown_audience_is_a_clear_error():
    with pytest.raises(XAIInputError, match="radiologist, researcher, teaching"):
        get_audience("journalist")


# --- writers on fabricated results (no model run: fast and fully controlled) -------------------------

@dataclass
class FakeResult:
    saliency: sitk.Image
    prediction: dict
    explanation: dict
    provenance: dict = field(default_factory=lambda: {"model": {"id": "fake@1", "sha256": "0" * 64}, "software": "test"})
    uncertainty: Optional[sitk.Image] = None
    uncertainty_info: dict = field(default_factory=lambda: {"method": "none"})
    segmentation: Optional[sitk.Image] = None


def _map(image, centre, width=4.0):
    k, j, i = np.indices(sitk.GetArrayViewFromImage(image).shape)
    array = np.exp(-((i - centre[0]) ** 2 + (j - centre[1]) ** 2 + (k - centre[2]) ** 2) / (2 * width ** 2))
    out = sitk.GetImageFromArray(array.astype(np.float32))
    out.CopyInformation(image)
    return out


def _result(image, method, confidence, std, agreement, centre=(12, 20, 16)):
    info = {"method": "tta", "samples": 8, "predicted_class_std": std, "agreement": agreement,
            "predicted_class_interval_95": [max(0.0, confidence - 2 * std), min(1.0, confidence + 2 * std)],
            "map": "standard deviation of the Grad-CAM map"}
    return FakeResult(
        saliency=_map(image, centre),
        prediction={"task": "classification", "class_names": ["no lesion", "lesion"], "predicted_class": 1,
                    "predicted_label": "lesion", "confidence": confidence,
                    "probabilities": {"no lesion": 1 - confidence, "lesion": confidence}},
        explanation={"method": method, "method_name": {"gradcam": "Grad-CAM", "occlusion": "Occlusion"}[method],
                     "reference": "ref", "parameters": {"window": 8}, "value_meaning": "relevance",
                     "statistics": {"min": 0.0, "max": 1.0}},
        uncertainty_info=info,
    )


def _facts(confidence=0.97, std=0.01, agreement=1.0, trust=None, lesion=None, centre=(12, 20, 16)):
    image = make_image(blob_index=(12, 20, 16))
    results = {"gradcam": _result(image, "gradcam", confidence, std, agreement, centre),
               "occlusion": _result(image, "occlusion", confidence, std, agreement, (14, 18, 16))}
    spec = type("Spec", (), {"positive_class": 1, "modality": "MR", "metadata": {"data_source": "synthetic cases"}})()
    return build_case_facts(image, results, get_task("brain-lesion-triage"), spec, EVIDENCE_TOP_PERCENT,
                            lesion=lesion, trust=trust)


def _lesion_mask():
    image = make_image()
    k, j, i = np.indices(sitk.GetArrayViewFromImage(image).shape)
    mask = sitk.GetImageFromArray(((i - 12) ** 2 + (j - 20) ** 2 + (k - 16) ** 2 <= 16).astype(np.uint8))
    mask.CopyInformation(image)
    return mask


def test_same_result_gives_different_output_per_audience():
    facts = _facts(lesion=_lesion_mask())
    radiologist, researcher, teaching = (AUDIENCES[k].write(facts) for k in ("radiologist", "researcher", "teaching"))
    # Radiologist: one line, location in RAS mm with slice and size, nothing about other methods.
    assert "\n" not in radiologist.headline and "confidence 0.97" in radiologist.headline
    assert "RAS (" in radiologist.as_text() and "axial slice" in radiologist.as_text() and "mL" in radiologist.as_text()
    assert "inside it" in radiologist.as_text()
    assert "Occlusion" not in radiologist.as_text() and "Spearman" not in radiologist.as_text()
    # Researcher: every method, parameters, agreement between methods, trust checks, provenance; CSV export.
    text = researcher.as_text()
    for needed in ("Grad-CAM", "Occlusion", "window=8", "Spearman", "Dice", "sanity", "faithfulness", "SHA-256"):
        assert needed in text
    assert len(methods_csv(facts).strip().splitlines()) == 1 + len(facts.methods)
    # Teaching: plain words, what the heat map is not, the limits; none of the jargon.
    prose = teaching.as_text()
    assert "A doctor" in prose and "estimate" in prose and "not a picture of the lesion" in prose
    assert not [w for w in JARGON if w in prose]
    assert len({radiologist.as_text(), researcher.as_text(), teaching.as_text()}) == 3


def test_teaching_text_reads_at_a_lay_level():
    for facts in (_facts(), _facts(confidence=0.55, std=0.3, agreement=0.5, lesion=_lesion_mask())):
        prose = AUDIENCES["teaching"].write(facts).prose()
        assert textstat.flesch_kincaid_grade(prose) <= 8.0, prose


def test_high_uncertainty_raises_the_review_flag_and_a_confident_case_does_not():
    confident = AUDIENCES["radiologist"].write(_facts(confidence=0.97, std=0.01, agreement=1.0))
    unsure = AUDIENCES["radiologist"].write(_facts(confidence=0.6, std=0.3, agreement=0.5))
    assert not confident.review and "REVIEW" not in confident.as_text()
    assert unsure.review and unsure.review_text.startswith("REVIEW RECOMMENDED")
    assert "0.30" in unsure.review_text and "4 of 8" in unsure.review_text
    assert "uncertainty HIGH" in unsure.headline and "uncertainty low" in confident.headline


def test_a_failed_check_raises_the_review_flag(tmp_path):
    (tmp_path / "sanity.json").write_text(json.dumps({"sanity": {"passed": False, "similarity": 0.93}}), encoding="utf-8")
    (tmp_path / "sweep.json").write_text(json.dumps({"perturbation": "motion", "rows": [
        {"severity": 0.0, "spearman": 1.0}, {"severity": 0.2, "spearman": 0.9}, {"severity": 1.0, "spearman": 0.1}]}))
    trust = read_trust_evidence(tmp_path)
    facts = _facts(trust=trust)
    checks = {c.name: c.status for c in facts.checks}
    assert checks == {"sanity": "failed", "stability": "passed", "faithfulness": "not run"}
    writeup = AUDIENCES["radiologist"].write(facts)
    assert writeup.review and "randomised" in writeup.review_text
    assert "A test of the coloured patch did not pass" in AUDIENCES["teaching"].write(facts).as_text()


def test_unstable_or_unfaithful_maps_fail_their_checks():
    trust = TrustEvidence(faithfulness={"deletion_auc": 0.40, "random_deletion_auc": 0.42},
                          sweeps={"bias-field": [{"severity": 0.3, "spearman": 0.35, "prediction_changed": True},
                                                     {"severity": 1.0, "spearman": 0.1}]})
    checks = {c.name: c for c in _facts(trust=trust).checks}
    assert checks["faithfulness"].status == "failed" and "0.40 vs 0.42" in checks["faithfulness"].detail
    assert checks["stability"].status == "failed" and "bias-field" in checks["stability"].detail
    assert "prediction changes" in checks["stability"].detail


def test_text_follows_the_result():
    first = AUDIENCES["radiologist"].write(_facts(confidence=0.97, centre=(12, 20, 16))).as_text()
    second = AUDIENCES["radiologist"].write(_facts(confidence=0.91, centre=(30, 10, 8))).as_text()
    assert first != second and "0.91" in second and "0.97" in first
    lay = AUDIENCES["teaching"].write(_facts(confidence=0.91)).as_text()
    assert "91 out of 100" in lay


def test_robustness_input_errors_are_clear(tmp_path):
    with pytest.raises(XAIInputError, match="does not exist"):
        read_trust_evidence(tmp_path / "missing")
    (tmp_path / "other.json").write_text("{\"hello\": 1}", encoding="utf-8")
    with pytest.raises(XAIInputError, match="no sanity, faithfulness or robustness"):
        read_trust_evidence(tmp_path)
