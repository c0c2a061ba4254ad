"""Radiologist mode: one line for prediction, confidence and uncertainty; a review flag; where the main
evidence is. Nothing else."""

from __future__ import annotations

from .facts import CaseFacts
from .presets import RADIOLOGIST
from .writeup import Section, Writeup, format_ras

__all__ = ["write_radiologist"]


def write_radiologist(facts: CaseFacts) -> Writeup:
    """The radiologist's summary of ``facts``."""
    main = facts.main
    region = main.region
    # A structure other than the predicted one was explained (a pick in the viewer, --target): say which.
    explained = facts.provenance.get("target", {}).get("class_name")
    about = f" for {explained}" if explained and explained != facts.prediction.get("predicted_label") else ""
    evidence = [
        f"Main evidence{about} ({main.title}, top {region.top_percent:g} % of the map): peak at {format_ras(region.peak_ras_mm)}, "
        f"axial slice {region.slice_number} of {region.slice_count}; the region around the peak measures "
        f"{region.region_ml:.1f} mL" + (f" ({region.region_count} separate regions in the top {region.top_percent:g} %)."
                                       if region.region_count > 1 else ".")
    ]
    if region.peak_in_lesion is not None:
        where = "inside it" if region.peak_in_lesion else f"outside it, {region.peak_to_lesion_mm:.0f} mm from its centre"
        evidence.append(f"Given lesion outline ({region.lesion_ml:.1f} mL, centre {format_ras(region.lesion_centre_ras_mm)}): "
                        f"the peak is {where}; "
                        f"{100 * region.fraction_in_lesion:.0f} % of the top region lies within it.")
    checks = [c.detail for c in facts.checks_run]
    if checks:
        evidence.append(" ".join(checks))
    return Writeup(
        audience=RADIOLOGIST.key,
        title=f"{facts.task.title}: {facts.prediction.get('predicted_label', '?')}",
        headline=_one_line(facts),
        review=facts.review,
        review_text=("REVIEW RECOMMENDED: " + " ".join(facts.review_reasons)) if facts.review else
        "No review flag: confidence and uncertainty within the task's limits" +
        ("; all checks run passed." if facts.checks_run else "; trust checks not run."),
        sections=[Section("Evidence", evidence)],
    )


def _one_line(facts: CaseFacts) -> str:
    prediction = facts.prediction
    label, confidence = prediction.get("predicted_label", "?"), float(prediction.get("confidence", float("nan")))
    if prediction.get("task") != "segmentation":
        line = f"{label}, confidence {confidence:.2f}"
    elif facts.finding_present:
        volume = prediction.get("volumes_ml", {}).get(label, 0.0)
        line = f"{label} segmented, {volume:.1f} mL, mean probability in the outline {confidence:.2f}"
    else:
        line = f"no {facts.task.finding} segmented (mean background probability {confidence:.2f})"
    uncertainty = facts.uncertainty
    if not uncertainty.estimated:
        return line + "; uncertainty not estimated."
    values = uncertainty.values
    level = "HIGH" if uncertainty.high else "low"
    if "predicted_class_std" in values:
        low, high = values.get("predicted_class_interval_95", (float("nan"), float("nan")))
        spread = f"SD {values['predicted_class_std']:.2f}, 95 % interval {low:.2f}-{high:.2f}"
    elif "lesion_entropy" in values:
        spread = f"mean entropy in the outline {values['lesion_entropy']:.2f} of max"
    else:
        spread = f"{values.get('doubtful_ml', 0.0):.1f} mL in doubt"
    return f"{line}; uncertainty {level} ({uncertainty.method}, {uncertainty.samples} samples: {spread})."
