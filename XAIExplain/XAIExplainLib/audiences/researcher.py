"""Researcher mode: every method side by side with its parameters, agreement between methods,
uncertainty, the trust checks against the task's thresholds, provenance, and CSV/JSON exports."""

from __future__ import annotations

import csv
import io
import json

import numpy as np

from .facts import CaseFacts
from .presets import RESEARCHER
from .writeup import Section, Writeup, format_ras

__all__ = ["write_researcher", "methods_csv", "facts_json"]

_CSV_COLUMNS = ("method", "title", "task_advice", "signed", "min", "max", "peak_r_mm", "peak_a_mm", "peak_s_mm",
                "axial_slice", "top_percent", "top_threshold", "region_ml", "region_count", "peak_in_lesion",
                "fraction_in_lesion", "parameters")


def write_researcher(facts: CaseFacts) -> Writeup:
    """The researcher's account of ``facts``."""
    sections = [_prediction(facts), _methods(facts)]
    if len(facts.methods) > 1:
        sections.append(_agreement(facts))
    sections += [_uncertainty(facts), _checks(facts), _task(facts), _provenance(facts)]
    agreement = _mean_agreement(facts)
    headline = (f"{facts.prediction.get('predicted_label', '?')} (p = {facts.prediction.get('confidence', float('nan')):.3f}); "
                f"{len(facts.methods)} method(s)" + (f", mean pairwise Spearman {agreement:.2f}" if agreement is not None else "")
                + f"; review {'recommended' if facts.review else 'not flagged'}.")
    return Writeup(audience=RESEARCHER.key, title=f"{facts.task.title}: explanation analysis", headline=headline,
                   review=facts.review,
                   review_text=("Review recommended: " + " ".join(facts.review_reasons)) if facts.review else "",
                   sections=sections)


def methods_csv(facts: CaseFacts) -> str:
    """One row per method: the map's range, peak, top region and lesion overlap, and its parameters."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_CSV_COLUMNS)
    for m in facts.methods.values():
        r = m.region
        writer.writerow([m.method, m.title, m.advice, m.signed, f"{m.value_range[0]:.6g}", f"{m.value_range[1]:.6g}",
                         *(f"{v:.2f}" for v in r.peak_ras_mm), r.slice_number, r.top_percent, f"{r.threshold:.6g}",
                         f"{r.region_ml:.3f}", r.region_count, "" if r.peak_in_lesion is None else r.peak_in_lesion,
                         "" if r.fraction_in_lesion is None else f"{r.fraction_in_lesion:.3f}",
                         json.dumps(m.parameters, sort_keys=True)])
    return out.getvalue()


def facts_json(facts: CaseFacts) -> str:
    return json.dumps(facts.to_dict(), indent=2, default=_jsonable) + "\n"


def _jsonable(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def _prediction(facts: CaseFacts) -> Section:
    prediction = facts.prediction
    samples = facts.uncertainty.values
    rows = [["class", "probability"]]
    for name, p in prediction.get("probabilities", {}).items():
        rows.append([name, f"{p:.4f}"])
    paragraphs = [f"Predicted: {prediction.get('predicted_label')} (class {prediction.get('predicted_class')}), "
                  f"confidence {prediction.get('confidence', float('nan')):.4f}."]
    if prediction.get("task") == "segmentation":
        paragraphs.append("Probabilities are the mean over the model grid; volumes: " + ", ".join(
            f"{k} {v:.2f} mL" for k, v in prediction.get("volumes_ml", {}).items()) + ".")
    if "predicted_class_interval_95" in samples:
        low, high = samples["predicted_class_interval_95"]
        paragraphs.append(f"Over {facts.uncertainty.samples} {facts.uncertainty.method} samples: SD "
                          f"{samples['predicted_class_std']:.4f}, 95 % interval {low:.4f}-{high:.4f}.")
    return Section("Prediction", paragraphs, rows)


def _methods(facts: CaseFacts) -> Section:
    rows = [["method", "for this task", "values", "range", "peak", "axial slice",
             f"top {facts.main.region.top_percent:g} % region", "peak in lesion", "top region in lesion"]]
    paragraphs = []
    for m in facts.methods.values():
        r = m.region
        rows.append([m.title, m.advice, m.value_meaning, f"{m.value_range[0]:.3g} to {m.value_range[1]:.3g}",
                     format_ras(r.peak_ras_mm), str(r.slice_number), f"{r.region_ml:.2f} mL, {r.region_count} part(s)",
                     "-" if r.peak_in_lesion is None else ("yes" if r.peak_in_lesion else "no"),
                     "-" if r.fraction_in_lesion is None else f"{100 * r.fraction_in_lesion:.0f} %"])
        parameters = ", ".join(f"{k}={v}" for k, v in sorted(m.parameters.items())) or "none"
        why = f" {m.advice.capitalize()} for this task: {m.advice_reason}" if m.advice_reason else ""
        paragraphs.append(f"{m.title} ({m.reference}); parameters: {parameters}.{why}")
    return Section("Explanations, side by side", paragraphs, rows)


def _agreement(facts: CaseFacts) -> Section:
    titles = {k: m.title for k, m in facts.methods.items()}
    rows = [["methods", "Spearman (all voxels)", "Dice of top regions"]]
    rows += [[f"{titles[a.first]} / {titles[a.second]}", f"{a.spearman:.3f}", f"{a.top_dice:.3f}"] for a in facts.agreement]
    worst = min(facts.agreement, key=lambda a: a.spearman)
    best = max(facts.agreement, key=lambda a: a.spearman)
    return Section("Agreement between methods", [
        f"Rank correlation over all voxels (every 1 in n voxels beyond 200 000) and overlap of the top regions. "
        f"Most alike: {titles[best.first]} and {titles[best.second]} (Spearman {best.spearman:.2f}); least alike: "
        f"{titles[worst.first]} and {titles[worst.second]} (Spearman {worst.spearman:.2f})."], rows)


def _uncertainty(facts: CaseFacts) -> Section:
    u = facts.uncertainty
    if not u.estimated:
        return Section("Uncertainty", [f"Not estimated. The task recommends {facts.task.uncertainty.method} "
                                       f"({facts.task.uncertainty.reason})"])
    rows = [["measure", "value"]] + [[k, _format(v)] for k, v in u.values.items() if v is not None]
    paragraphs = [f"{u.method}, {u.samples} samples; the task reads {u.measure}. Map: {u.map_meaning}."]
    paragraphs.append("High: " + " ".join(u.reasons) if u.high else "Within the task's limits "
                      f"({', '.join(f'{k} {v:g}' for k, v in facts.task.review.items())}).")
    return Section("Uncertainty", paragraphs, rows)


def _checks(facts: CaseFacts) -> Section:
    rows = [["check", "status", "result"]] + [[c.name, c.status, c.detail] for c in facts.checks]
    trust = facts.task.trust
    paragraphs = [f"Thresholds for {facts.task.id}: sanity similarity at most {trust.max_sanity_similarity:g}; "
                  f"Spearman at least {trust.min_stability_spearman:g} under {', '.join(facts.task.perturbations)} up to "
                  f"{100 * trust.max_plausible_severity:.0f} % of each sweep's range; deletion AUC at least "
                  f"{trust.deletion_auc_margin:g} below random order."]
    if not facts.checks_run:
        paragraphs.append("No results were given: run slicer-xai sanity and slicer-xai robustness on this case and "
                          "pass their output with --robustness.")
    return Section("Trust checks", paragraphs, rows)


def _task(facts: CaseFacts) -> Section:
    task = facts.task
    paragraphs = [f"{task.question} Modality {task.modality}; model tasks {', '.join(task.model_tasks)}."]
    paragraphs += [f"Recommended: {a.method}: {a.explanation}" for a in task.recommended]
    paragraphs += [f"Avoid: {a.method}: {a.explanation}" for a in task.avoid]
    paragraphs.append(f"Uncertainty: {task.uncertainty.method} ({task.uncertainty.measure}): {task.uncertainty.reason}")
    return Section("Clinical task", paragraphs + [f"Caveat: {c}" for c in facts.caveats])


def _provenance(facts: CaseFacts) -> Section:
    p = facts.provenance
    model = p.get("model", {})
    rows = [["field", "value"],
            ["model", f"{model.get('id', '?')} ({model.get('source', '?')})"],
            ["weights SHA-256", str(model.get("sha256", "?"))],
            ["software", str(p.get("software", "?"))],
            ["libraries", ", ".join(f"{k} {v}" for k, v in p.get("libraries", {}).items())],
            ["seed", str(p.get("seed"))],
            ["time (UTC)", str(p.get("time_utc"))],
            ["input grid", " x ".join(str(v) for v in p.get("input_geometry", {}).get("size", [])) + " voxels, spacing "
             + " x ".join(f"{v:.3g}" for v in p.get("input_geometry", {}).get("spacing_mm", [])) + " mm"]]
    return Section("Provenance", [], rows)


def _mean_agreement(facts: CaseFacts):
    return float(np.mean([a.spearman for a in facts.agreement])) if facts.agreement else None


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {_format(v)}" for k, v in value.items())
    return str(value)
