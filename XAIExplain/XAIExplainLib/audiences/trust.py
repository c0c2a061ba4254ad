"""Robustness, sanity and faithfulness results, when available, judged against a task's thresholds.

The results come from ``slicer-xai robustness`` / ``slicer-xai sanity`` (XAIRobustness) as JSON: one
file, or a folder of them. This module only reads their JSON, so the explanation side never imports
the robustness package. What is read (anywhere in the JSON tree, names as below):

* sanity: an object under a key containing ``sanity`` with ``passed`` (bool) and/or a ``similarity``
  (also ``spearman``) between the maps of the trained and the randomised model;
* faithfulness: an object with ``deletion_auc`` and optionally ``insertion_auc``,
  ``random_deletion_auc``, ``random_insertion_auc``;
* stability: an object with ``perturbation`` and a list of rows (``rows``, ``sweep``, ``results`` or
  ``severities``), each row with ``severity``, a map correlation (``spearman``, ``saliency_spearman``,
  ``map_spearman`` or ``rank_correlation``) and optionally ``prediction_changed`` (bool) or
  ``predicted_label``.

Each check is "passed", "failed" or "not run", with a one-sentence detail that states the numbers and
the threshold.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from ..errors import XAIInputError
from ..tasks import ClinicalTask

__all__ = ["TrustEvidence", "Check", "read_trust_evidence", "assess_trust", "NOT_RUN", "PASSED", "FAILED"]

PASSED, FAILED, NOT_RUN = "passed", "failed", "not run"
_CORRELATION_KEYS = ("spearman", "saliency_spearman", "map_spearman", "rank_correlation")
_ROW_KEYS = ("rows", "sweep", "results", "severities")


@dataclass
class TrustEvidence:
    """What the robustness tools measured on this case (all optional)."""

    sanity: Optional[dict] = None
    faithfulness: Optional[dict] = None
    sweeps: dict[str, list[dict]] = field(default_factory=dict)  # perturbation id -> rows
    sources: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.sanity is None and self.faithfulness is None and not self.sweeps


@dataclass(frozen=True)
class Check:
    """One trust check: name, status, the measured value and the threshold, in one sentence."""

    name: str
    status: str
    detail: str
    value: Optional[float] = None
    threshold: Optional[float] = None


def read_trust_evidence(path: Optional[str | os.PathLike]) -> TrustEvidence:
    """Read the robustness / sanity results at ``path`` (a JSON file or a folder of them).

    ``None`` gives empty evidence; a path that does not exist or holds no readable JSON is an
    :class:`XAIInputError`.
    """
    evidence = TrustEvidence()
    if path is None:
        return evidence
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.json") if p.is_file())
    elif path.is_file():
        files = [path]
    else:
        raise XAIInputError(f"--robustness {path} does not exist.")
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if _collect(data, evidence):
            evidence.sources.append(str(file))
    if not evidence.sources:
        raise XAIInputError(f"--robustness {path}: no sanity, faithfulness or robustness results found in its JSON.")
    return evidence


def assess_trust(evidence: TrustEvidence, task: ClinicalTask, prediction_label: Optional[str] = None) -> list[Check]:
    """The three checks (sanity, stability, faithfulness) for ``task``'s thresholds."""
    return [_sanity(evidence, task), _stability(evidence, task, prediction_label), _faithfulness(evidence, task)]


def _collect(data: Any, evidence: TrustEvidence) -> bool:
    found = False
    for key, node in _walk(data):
        if not isinstance(node, Mapping):
            continue
        if "sanity" in key.lower() and ("passed" in node or "similarity" in node or "spearman" in node):
            evidence.sanity, found = dict(node), True
        elif "deletion_auc" in node:
            evidence.faithfulness, found = dict(node), True
        elif isinstance(node.get("perturbation"), str):
            rows = next((node[k] for k in _ROW_KEYS if isinstance(node.get(k), list)), None)
            if rows and all(isinstance(r, Mapping) and "severity" in r for r in rows):
                evidence.sweeps[node["perturbation"]] = [dict(r) for r in rows]
                found = True
    return found


def _walk(data: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    yield key, data
    if isinstance(data, Mapping):
        for child_key, child in data.items():
            yield from _walk(child, str(child_key))
    elif isinstance(data, list):
        for child in data:
            yield from _walk(child, key)


def _sanity(evidence: TrustEvidence, task: ClinicalTask) -> Check:
    limit = task.trust.max_sanity_similarity
    if evidence.sanity is None:
        return Check("sanity", NOT_RUN, "Model-randomisation sanity check not run.", threshold=limit)
    similarity = _number(evidence.sanity, ("similarity", "spearman"))
    passed = evidence.sanity.get("passed")
    if passed is None and similarity is not None:
        passed = similarity <= limit
    measured = f" (similarity to the randomised model's map {similarity:.2f}, limit {limit:.2f})" if similarity is not None else ""
    if passed:
        return Check("sanity", PASSED, f"Sanity check passed: the map depends on the trained weights{measured}.",
                     similarity, limit)
    return Check("sanity", FAILED, f"Sanity check failed: the map barely changes when the model's weights are "
                                   f"randomised{measured}.", similarity, limit)


def _stability(evidence: TrustEvidence, task: ClinicalTask, prediction_label: Optional[str]) -> Check:
    limit = task.trust.min_stability_spearman
    relevant = {p: rows for p, rows in evidence.sweeps.items() if p in task.perturbations}
    if not relevant:
        other = f" (results for {', '.join(evidence.sweeps)} do not concern this task)" if evidence.sweeps else ""
        return Check("stability", NOT_RUN, f"Stability under {task.modality} perturbations not measured{other}.",
                     threshold=limit)
    worst: Optional[tuple[float, str, float]] = None
    changed: list[str] = []
    for perturbation, rows in relevant.items():
        top = max(float(r["severity"]) for r in rows) or 1.0
        for row in rows:
            severity = float(row["severity"])
            if severity > task.trust.max_plausible_severity * top or severity == 0:
                continue
            rho = _number(row, _CORRELATION_KEYS)
            if rho is not None and (worst is None or rho < worst[0]):
                worst = (rho, perturbation, severity)
            flipped = row.get("prediction_changed")
            if flipped is None and prediction_label is not None and "predicted_label" in row:
                flipped = row["predicted_label"] != prediction_label
            if flipped:
                changed.append(f"{perturbation} at severity {severity:g}")
    tested = ", ".join(relevant)
    if worst is None:
        return Check("stability", NOT_RUN, f"Sweeps of {tested} hold no map correlations at plausible severities.",
                     threshold=limit)
    rho, perturbation, severity = worst
    problems = []
    if rho < limit:
        problems.append(f"the map's rank correlation drops to {rho:.2f} under {perturbation} at severity {severity:g}"
                        f" (needs at least {limit:.2f})")
    if changed and not task.trust.allow_prediction_change:
        problems.append(f"the prediction changes under {', '.join(changed[:3])}")
    if problems:
        return Check("stability", FAILED, f"Not stable: {'; '.join(problems)}.", rho, limit)
    return Check("stability", PASSED, f"Stable under {tested}: rank correlation at least {rho:.2f} at plausible "
                                      f"severities (needs {limit:.2f}), prediction unchanged.", rho, limit)


def _faithfulness(evidence: TrustEvidence, task: ClinicalTask) -> Check:
    margin = task.trust.deletion_auc_margin
    data = evidence.faithfulness
    if data is None:
        return Check("faithfulness", NOT_RUN, "Deletion / insertion test not run.", threshold=margin)
    deletion = _number(data, ("deletion_auc",))
    random_deletion = _number(data, ("random_deletion_auc", "deletion_auc_random"))
    insertion = _number(data, ("insertion_auc",))
    random_insertion = _number(data, ("random_insertion_auc", "insertion_auc_random"))
    if deletion is None or random_deletion is None:
        return Check("faithfulness", NOT_RUN, "Deletion AUC found without a random-order baseline to compare with.",
                     deletion, margin)
    gap = random_deletion - deletion
    parts = [f"deletion AUC {deletion:.2f} vs {random_deletion:.2f} for random order"]
    passed = gap >= margin
    if insertion is not None and random_insertion is not None:
        parts.append(f"insertion AUC {insertion:.2f} vs {random_insertion:.2f}")
        passed = passed and insertion - random_insertion >= task.trust.insertion_auc_margin
    verdict = "Faithful" if passed else "Not shown to be faithful"
    return Check("faithfulness", PASSED if passed else FAILED,
                 f"{verdict}: {', '.join(parts)} (needs a margin of {margin:.2f}).", gap, margin)


def _number(data: Mapping[str, Any], keys: tuple[str, ...]) -> Optional[float]:
    for key in keys:
        value = data.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None
