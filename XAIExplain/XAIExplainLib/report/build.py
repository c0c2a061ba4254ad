"""One case, one task, one audience: run the engine as the audience's preset asks, gather the facts,
word them, draw the key slices and assemble a self-contained HTML report."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..audiences import (
    EVIDENCE_TOP_PERCENT,
    Audience,
    CaseFacts,
    TrustEvidence,
    Writeup,
    build_case_facts,
    facts_json,
    get_audience,
    methods_csv,
)
from ..audiences.presets import LESION_OUTLINE
from ..errors import XAIInputError, XAIModelError
from ..models import LoadedModel
from ..pipeline import explain_image
from ..progress import CancelToken, ProgressCallback, Stage
from ..tasks import ClinicalTask, check_model_for_task, get_task, methods_for_task
from ..uncertainty import mc_dropout
from .figures import OUTLINE_COLOURS, RADIOLOGICAL_CAPTION, Outline, Overlay, key_slices_png
from .html import Export, Picture, render_html

__all__ = ["Report", "build_report", "write_report", "choose_methods", "choose_uncertainty"]

#: The plain colour of the teaching mode's patch.
_TEACHING_COLOUR = "#ff8c00"


@dataclass
class Report:
    """A built report: the HTML text and what it was made from."""

    html: str
    facts: CaseFacts
    writeup: Writeup
    audience: Audience


def choose_methods(task: ClinicalTask, model: LoadedModel, audience: Audience,
                   requested: Optional[Sequence[str]] = None) -> list[str]:
    """The methods a report runs: ``requested`` if given, else the task's primary method (the first the
    model can run) for single-map modes, or every method the model can run for the researcher."""
    runnable = methods_for_task(task, model, include_avoided=True)
    if requested:
        unknown = [m for m in requested if m not in runnable]
        if unknown:
            raise XAIInputError(f"Method(s) {', '.join(unknown)} cannot run on this model; choose from {', '.join(runnable)}.")
        return list(dict.fromkeys(requested))
    if audience.preset.methods == "all":
        return runnable
    preferred = [m for m in task.recommended_methods if m in runnable]
    return [(preferred or runnable)[0]]


def choose_uncertainty(task: ClinicalTask, model: LoadedModel, requested: Optional[str]) -> tuple[str, Optional[str]]:
    """The uncertainty method (``requested``, else the task's) and a caveat when the task's MC dropout
    had to give way to test-time augmentation because the model has no dropout layers."""
    if requested:
        return requested, None
    method = task.uncertainty.method
    if method == "mc-dropout":
        try:
            with mc_dropout(model.network):
                pass
        except XAIModelError:
            return "tta", "The task recommends MC dropout, but this model has no dropout layers: test-time augmentation was used."
    if method == "ensemble":
        return "tta", "The task recommends an ensemble; a single model was given, so test-time augmentation was used."
    return method, None


def build_report(
    image: sitk.Image,
    model: LoadedModel,
    task: str | ClinicalTask,
    audience: str,
    lesion: Optional[sitk.Image] = None,
    trust: Optional[TrustEvidence] = None,
    uncertainty: Optional[str] = None,
    samples: int = 8,
    methods: Optional[Sequence[str]] = None,
    seed: int = 0,
    input_name: str = "",
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> Report:
    """Explain ``image`` with ``model`` for ``task`` and word it for ``audience``; returns the report."""
    audience_mode = get_audience(audience)
    task = get_task(task)
    caveats = [c for c in (check_model_for_task(model, task),) if c]
    chosen = choose_methods(task, model, audience_mode, methods)
    uncertainty_method, caveat = choose_uncertainty(task, model, uncertainty)
    caveats += [caveat] if caveat else []
    if lesion is not None:
        lesion = sitk.Resample(lesion, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8)
        if not sitk.GetArrayViewFromImage(lesion).any():
            raise XAIInputError("The lesion mask has no voxels inside the image.")
    stage = Stage(progress, cancel)
    results = {}
    for n, method in enumerate(chosen):
        share = stage.sub(n / len(chosen), (n + 1) / len(chosen) * 0.9)
        results[method] = explain_image(image, model, method=method, uncertainty=uncertainty_method if n == 0 else "none",
                                        samples=samples, seed=seed,
                                        progress=lambda f, m, method=method, share=share: share.report(f, f"{method}: {m}"),
                                        cancel=cancel)
    stage.report(0.9, "writing the report")
    facts = build_case_facts(image, results, task, model.spec, EVIDENCE_TOP_PERCENT, lesion=lesion, trust=trust,
                             caveats=caveats)
    writeup = audience_mode.write(facts)
    pictures = _pictures(facts, audience_mode, _display_window(image, model))
    exports = []
    if audience_mode.preset.metrics:
        exports = [Export("methods.csv", "text/csv", methods_csv(facts)),
                   Export("facts.json", "application/json", facts_json(facts))]
    html = render_html(writeup, audience_mode.preset, facts, pictures, exports, input_name)
    stage.report(1.0, "done")
    return Report(html=html, facts=facts, writeup=writeup, audience=audience_mode)


def write_report(html: str, out: str | os.PathLike) -> Path:
    """Write ``html`` to ``out`` atomically: a temporary file beside it, renamed only when complete."""
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(html)
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return out


def _display_window(image: sitk.Image, model: LoadedModel) -> tuple[float, float]:
    """The model's CT window when it has one (e.g. a lung window), else the 1st-99.5th percentile of
    the non-background voxels."""
    intensity = model.spec.intensity
    if intensity.kind == "ct_window":
        centre, width = float(intensity.params["center"]), float(intensity.params["width"])
        return centre - width / 2, centre + width / 2
    values = sitk.GetArrayViewFromImage(image)
    foreground = values[values > values.min()]
    foreground = foreground if foreground.size else values.ravel()
    low, high = np.percentile(foreground, [1.0, 99.5])
    return float(low), float(high if high > low else low + 1.0)


def _pictures(facts: CaseFacts, audience: Audience, window: tuple[float, float]) -> list[Picture]:
    preset = audience.preset
    teaching = preset.colormap == "single"
    main = facts.main
    peak_lps = _ras_to_lps(main.region.peak_ras_mm)
    outlines, legend = _reference_outlines(facts, teaching)
    pictures = []
    for key, method in facts.methods.items():
        overlay, caption = _overlay(facts, key, preset, teaching)
        method_outlines = list(outlines)
        if preset.outline:
            method_outlines.insert(0, Outline(_mask_image(method.region.mask, facts.image), OUTLINE_COLOURS["evidence"]))
        peak = peak_lps if preset.methods != "all" else _ras_to_lps(method.region.peak_ras_mm)
        png = key_slices_png(facts.image, peak, preset.views, window, overlay, method_outlines,
                             title="" if teaching else f"{method.title}", plain_letters=teaching,
                             panel_inches=4.2 if teaching else 3.6)
        pictures.append(Picture(png, method.title, " ".join([caption, *legend, RADIOLOGICAL_CAPTION if not teaching else
                                "The patient's right side is on the left of each picture."])))
    off_target = _off_target_centre(facts)
    if off_target is not None and preset.methods != "all":
        overlay, caption = _overlay(facts, facts.primary, preset, teaching)
        method_outlines = list(outlines)
        if preset.outline:
            method_outlines.insert(0, Outline(_mask_image(main.region.mask, facts.image), OUTLINE_COLOURS["evidence"]))
        png = key_slices_png(facts.image, _ras_to_lps(off_target), preset.views, window, overlay, method_outlines,
                             title="" if teaching else "Through the lesion", plain_letters=teaching,
                             panel_inches=4.2 if teaching else 3.6)
        text = ("These pictures go through the lesion itself." if teaching else
                "Slices through the centre of the lesion, which the evidence peak misses.")
        pictures.append(Picture(png, "Through the lesion", " ".join([text, caption, *legend])))
    if preset.uncertainty_map and facts.uncertainty.map is not None:
        values = sitk.GetArrayViewFromImage(facts.uncertainty.map)
        overlay = Overlay(facts.uncertainty.map, "cividis", 0.0, float(values.max()) or 1.0, alpha=0.55,
                          colorbar="uncertainty")
        png = key_slices_png(facts.image, peak_lps, preset.views, window, overlay, outlines, title="Uncertainty")
        pictures.append(Picture(png, "Uncertainty", f"{facts.uncertainty.map_meaning}. Cividis colours, raw values. "
                                + " ".join(legend)))
    return pictures


def _off_target_centre(facts: CaseFacts) -> Optional[tuple[float, float, float]]:
    """The lesion's centre (given mask, else the model's segmentation) when the evidence peak is not in it."""
    region = facts.main.region
    if region.lesion_centre_ras_mm is not None and not region.peak_in_lesion:
        return region.lesion_centre_ras_mm
    return None


def _overlay(facts: CaseFacts, key: str, preset, teaching: bool) -> tuple[Overlay, str]:
    method = facts.methods[key]
    region = method.region
    if teaching:
        return (Overlay(method.saliency, f"single:{_TEACHING_COLOUR}", 0.0, 1.0, hide_below=region.threshold, alpha=0.6),
                "Orange: the part of the scan that counted most for the program's answer.")
    if preset.top_percent is not None:
        return (Overlay(method.saliency, "inferno", region.threshold, method.value_range[1], hide_below=region.threshold,
                        alpha=0.65, colorbar="relevance"),
                f"Heat: the top {region.top_percent:g} % of the {method.title} map; yellow line: its outline.")
    low, high = method.value_range
    if method.signed:
        bound = max(abs(low), abs(high)) or 1.0
        return (Overlay(method.saliency, "RdBu_r", -bound, bound, alpha=0.6, colorbar=method.value_meaning),
                f"Raw {method.title} map (red: for the target, blue: against), symmetric scale.")
    return (Overlay(method.saliency, "inferno", low, high if high > low else low + 1.0, alpha=0.55,
                    colorbar=method.value_meaning), f"Raw {method.title} map, full range.")


def _reference_outlines(facts: CaseFacts, teaching: bool) -> tuple[list[Outline], list[str]]:
    outlines, legend = [], []
    if facts.lesion is not None:
        outlines.append(Outline(facts.lesion, OUTLINE_COLOURS["lesion"], 1.6))
        colour = LESION_OUTLINE["name"].capitalize()
        legend.append(f"{colour} line: where the lesion really is." if teaching else f"{colour} line: the given lesion mask.")
    if facts.segmentation is not None and facts.finding_present:
        outlines.append(Outline(facts.segmentation, OUTLINE_COLOURS["segmentation"]))
        legend.append("Pink line: the program's outline." if teaching else "Magenta line: the model's segmentation.")
    return outlines, legend


def _mask_image(mask: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(reference)
    return image


def _ras_to_lps(point: Sequence[float]) -> tuple[float, float, float]:
    return (-float(point[0]), -float(point[1]), float(point[2]))
