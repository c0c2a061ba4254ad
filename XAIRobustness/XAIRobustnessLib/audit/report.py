"""The audit report: one self-contained HTML file with the cohort's metrics (95 % intervals), the explanation's
validity per method, and the failure-case explorer: cases ranked by what went wrong, each with its key slice
and the command that opens it in the viewer at that place.

Intervals: percentile bootstrap over cases for AUC, Dice and the explanation metrics (Efron & Tibshirani
1993); Wilson score intervals for sensitivity, specificity and rates (Wilson 1927).
"""

from __future__ import annotations

import html
import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

__all__ = ["FlaggedCase", "flag_cases", "cohort_metrics", "write_audit_report", "REPORT_FILE", "REASONS"]

REPORT_FILE = "audit-report.html"
#: Why a case is flagged, most serious first (the explorer ranks by the first reason, then by their number).
REASONS = {
    "failed": "the case could not be measured",
    "confidently-wrong": "wrong against the reference with confidence of at least 0.9",
    "wrong": "wrong against the reference label",
    "evidence-outside-lesion": "the strongest evidence lies outside the reference lesion",
    "unstable": "the prediction flips under a mild plausible perturbation, or the map changes (Spearman < 0.5)",
    "outside-domain": "outside the input domain the model was trained on",
    "high-uncertainty": "uncertainty above the clinical task's review threshold",
}
CONFIDENTLY_WRONG = 0.9
UNSTABLE_SPEARMAN = 0.5
_DEFAULT_REVIEW = {"max_predicted_class_std": 0.1, "min_agreement": 0.9}


@dataclass(frozen=True)
class FlaggedCase:
    row: dict
    reasons: tuple[str, ...]

    @property
    def rank_key(self) -> tuple:
        order = list(REASONS)
        return (min(order.index(r) for r in self.reasons), -len(self.reasons), self.row["case"])


def flag_cases(rows: Sequence[dict]) -> list[FlaggedCase]:
    """The cases where the model or its explanation failed, most serious first."""
    flagged = []
    for row in rows:
        reasons = _reasons(row)
        if reasons:
            flagged.append(FlaggedCase(row, tuple(reasons)))
    return sorted(flagged, key=lambda case: case.rank_key)


def _reasons(row: dict) -> list[str]:
    if row.get("status") != "ok":
        return ["failed"]
    reasons = []
    if row.get("correct") is False:
        reasons.append("confidently-wrong" if (row.get("confidence") or 0) >= CONFIDENTLY_WRONG else "wrong")
    if row.get("loc_pointing_hit") is False:
        reasons.append("evidence-outside-lesion")
    spearman = row.get("stability_spearman")
    if row.get("prediction_flips") or (spearman is not None and spearman < UNSTABLE_SPEARMAN):
        reasons.append("unstable")
    if row.get("inside_domain") is False:
        reasons.append("outside-domain")
    review = _review_thresholds(row.get("task"))
    std, agreement = row.get("uncertainty_std"), row.get("agreement")
    if (std is not None and std > review["max_predicted_class_std"]) or \
            (agreement is not None and agreement < review["min_agreement"]):
        reasons.append("high-uncertainty")
    return reasons


def _review_thresholds(task_id: Optional[str]) -> dict:
    from XAIExplainLib.errors import XAIError
    from XAIExplainLib.tasks import get_task

    try:
        return {**_DEFAULT_REVIEW, **dict(get_task(task_id).review)} if task_id else dict(_DEFAULT_REVIEW)
    except (XAIError, KeyError):
        return dict(_DEFAULT_REVIEW)


# --- cohort metrics ---------------------------------------------------------------------------------------


def cohort_metrics(rows: Sequence[dict], seed: int = 0) -> dict:
    """AUC of the finding's probability against the labels, sensitivity and specificity of the model's
    decision, Dice, and the explanation-validity rates, each with its 95 % interval and case count."""
    from XAIExplainLib.training.common import bootstrap_interval, roc_auc

    measured = [r for r in rows if r.get("status") == "ok"]
    metrics: dict = {"cases": len(rows), "measured": len(measured), "failed": len(rows) - len(measured)}
    labelled = [r for r in measured if r.get("label") is not None and r.get("positive_probability") is not None]
    scores = np.array([r["positive_probability"] for r in labelled], dtype=float)
    labels = np.array([int(r["label"] > 0) for r in labelled], dtype=int)
    if labels.size and 0 < labels.sum() < labels.size:
        def auc_of(draw):
            sample = labels[draw]
            return roc_auc(scores[draw], sample) if 0 < sample.sum() < sample.size else None

        metrics["auc"] = (roc_auc(scores, labels), *bootstrap_interval(auc_of, labels.size, seed=seed), labels.size)
    decided = [(int(r["label"] > 0), int(r.get("predicted_class") == r.get("positive_class", 1)))
               for r in labelled]
    positives = [d for truth, d in decided if truth == 1]
    negatives = [1 - d for truth, d in decided if truth == 0]
    if positives:
        metrics["sensitivity"] = (*_wilson(sum(positives), len(positives)), len(positives))
    if negatives:
        metrics["specificity"] = (*_wilson(sum(negatives), len(negatives)), len(negatives))
    for key, name in (("dice", "dice"), ("loc_mass_in_lesion", "mass_in_lesion"), ("loc_auprc", "auprc"),
                      ("stability_spearman", "stability_spearman")):
        values = np.array([r[key] for r in measured if r.get(key) is not None], dtype=float)
        if values.size:
            metrics[name] = (float(values.mean()),
                             *bootstrap_interval(lambda draw: float(values[draw].mean()), values.size, seed=seed),
                             values.size)
    for key, name in (("loc_pointing_hit", "pointing_game"), ("faithful", "faithfulness_pass"),
                      ("sanity_passed", "sanity_pass"), ("correct", "accuracy")):
        values = [bool(r[key]) for r in measured if r.get(key) is not None]
        if values:
            metrics[name] = (*_wilson(sum(values), len(values)), len(values))
    return metrics


def _wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float, float]:
    """Proportion and its Wilson score interval."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


# --- HTML ---------------------------------------------------------------------------------------------------

_LABELS = {
    "auc": "AUC (finding probability vs label)", "sensitivity": "Sensitivity at the model's decision",
    "specificity": "Specificity at the model's decision", "accuracy": "Accuracy against the label",
    "dice": "Dice of the predicted lesion", "pointing_game": "Pointing game (peak inside the lesion)",
    "mass_in_lesion": "Share of the map's mass inside the lesion", "auprc": "AUPRC of the map against the lesion",
    "faithfulness_pass": "Faithfulness test passed (deletion/insertion)",
    "stability_spearman": "Map stability under mild perturbations (Spearman)",
    "sanity_pass": "Randomisation check passed (sampled cases)",
}
_STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;padding:0 24px;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px}td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}
th{background:#f3f3f3}.case{display:flex;gap:16px;border:1px solid #ddd;border-radius:6px;padding:10px;margin:10px 0}
.case img{width:220px;flex:none;align-self:flex-start;background:#000;border-radius:4px}.reason{display:inline-block;background:#fde7c8;
border-radius:10px;padding:1px 8px;margin:2px 4px 2px 0;font-size:12px}code{background:#f3f3f3;padding:2px 4px;
display:block;white-space:pre-wrap;overflow-wrap:anywhere;font-size:12px}.note{color:#666}"""


def write_audit_report(rows: Sequence[dict], settings: dict, out: str | os.PathLike) -> Path:
    """Write ``audit-report.html`` into the audit folder ``out`` (atomically: a reader never sees half)."""
    out = Path(out)
    metrics = cohort_metrics(rows)
    flagged = flag_cases(rows)
    parts = [f"<!doctype html><meta charset='utf-8'><title>SlicerXAI audit</title><style>{_STYLE}</style>",
             "<h1>Cohort audit</h1>",
             f"<p class='note'>Model <b>{_e(settings.get('model'))}</b>; {metrics['cases']} cases, "
             f"{metrics['measured']} measured, {metrics['failed']} failed. Research use only — not for clinical "
             "use. Intervals are 95&nbsp;%.</p>",
             "<h2>Cohort metrics</h2>", _metrics_table(metrics, ("auc", "sensitivity", "specificity", "accuracy",
                                                                  "dice")),
             "<h2>Explanation validity</h2>", _validity_table(rows, metrics),
             f"<h2>Failure-case explorer ({len(flagged)} of {len(rows)} cases flagged)</h2>",
             "<p class='note'>Ranked by the most serious reason, then by how many apply. "
             + "; ".join(f"<b>{k}</b>: {_e(v)}" for k, v in REASONS.items()) + ".</p>"]
    parts += [_case_card(case, settings) for case in flagged]
    temporary = out / f".{REPORT_FILE}.partial"
    temporary.write_text("\n".join(parts), encoding="utf-8")
    os.replace(temporary, out / REPORT_FILE)
    return out / REPORT_FILE


def _metrics_table(metrics: dict, keys: Sequence[str]) -> str:
    lines = ["<table><tr><th>Metric</th><th>Value</th><th>95 % interval</th><th>Cases</th></tr>"]
    for key in keys:
        if key in metrics:
            value, low, high, n = metrics[key]
            lines.append(f"<tr><td>{_LABELS[key]}</td><td>{value:.3f}</td><td>{low:.3f} – {high:.3f}</td>"
                         f"<td>{n}</td></tr>")
    if len(lines) == 1:
        lines.append("<tr><td colspan=4>No reference labels or masks were given.</td></tr>")
    return "".join(lines) + "</table>"


def _validity_table(rows: Sequence[dict], metrics: dict) -> str:
    methods = sorted({r.get("method") for r in rows if r.get("status") == "ok"} - {None})
    keys = ("pointing_game", "mass_in_lesion", "auprc", "faithfulness_pass", "stability_spearman", "sanity_pass")
    blocks = []
    for method in methods:
        subset = [r for r in rows if r.get("method") == method]
        per_method = cohort_metrics(subset) if len(methods) > 1 else metrics
        blocks.append(f"<h3>{_e(method)}</h3>" + _metrics_table(per_method, keys))
    return "".join(blocks) or "<p>No case was measured.</p>"


def _case_card(case: FlaggedCase, settings: dict) -> str:
    row = case.row
    picture = (f"<img alt='axial key slice of {_e(row['case'])}' src='data:image/png;base64,{row['thumbnail_png']}'>"
               if row.get("thumbnail_png") else "<div style='width:220px'></div>")
    facts = []
    if row.get("status") == "ok":
        facts.append(f"predicted <b>{_e(row.get('predicted_label'))}</b> (confidence {row.get('confidence', 0):.2f})"
                     + (f", reference label {row['label']}" if row.get("label") is not None else ""))
        if row.get("uncertainty_std") is not None:
            facts.append(f"uncertainty: SD {row['uncertainty_std']:.3f}, agreement {row.get('agreement', 0):.2f}")
        if row.get("loc_mass_in_lesion") is not None:
            facts.append(f"map mass in lesion {row['loc_mass_in_lesion']:.2f}, AUPRC {row.get('loc_auprc', 0):.2f}")
        if row.get("prediction_flips"):
            facts.append("prediction flips under: " + ", ".join(_e(p) for p in row["prediction_flips"]))
        if row.get("outside_domain"):
            facts.append("outside the domain: " + "; ".join(_e(d) for d in row["outside_domain"]))
    else:
        facts.append(f"error: {_e(row.get('error'))}")
    command = _viewer_command(row, settings)
    return ("<div class='case'>" + picture + "<div>"
            f"<h3 style='margin:0'>{_e(row['case'])}</h3>"
            + "".join(f"<span class='reason' title='{_e(REASONS[r])}'>{r}</span>" for r in case.reasons)
            + "<ul>" + "".join(f"<li>{fact}</li>" for fact in facts) + "</ul>"
            + (f"Open it in the viewer{' at the evidence peak' if row.get('peak_ras_mm') else ''}:"
               f"<code>{_e(command)}</code>" if command else "")
            + "</div></div>")


def _viewer_command(row: dict, settings: dict) -> Optional[str]:
    if row.get("study_uid") and row.get("pacs"):
        words = ["slicer-xai", "viewer", "--pacs", row["pacs"], "--study", row["study_uid"]]
    elif row.get("image"):
        words = ["slicer-xai", "viewer", row["image"]]
    else:
        return None
    words += ["--model", str(settings.get("model"))]
    if row.get("peak_ras_mm"):
        # One word: as two, a point starting with "-" (most right-hemisphere points) would read as an option.
        words.append("--at=" + ",".join(f"{v:.1f}" for v in row["peak_ras_mm"]))
    return " ".join(shlex.quote(word) for word in words)


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)
