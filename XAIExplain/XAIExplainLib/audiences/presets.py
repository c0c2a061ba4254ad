"""What each audience is shown: which maps, how they are thresholded and coloured, which views."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AudiencePreset", "EVIDENCE_TOP_PERCENT", "RADIOLOGIST", "RESEARCHER", "TEACHING", "LESION_OUTLINE"]

#: The reference (ground-truth) lesion is outlined in this colour on every front end — reports, the
#: Slicer scene, the viewer — and the teaching text names it, so the words match the pictures.
LESION_OUTLINE = {"name": "green", "rgb": (0.25, 0.88, 0.38)}


@dataclass(frozen=True)
class AudiencePreset:
    """The display choices of one audience mode.

    ``methods``: ``"primary"`` (the task's first recommended method only) or ``"all"`` (every method the
    model can run, side by side). ``top_percent``: the share of voxels shown as the main evidence
    (``None``: the raw continuous map). ``colormap``: ``"inferno"`` (the saliency colours Slicer shows),
    or ``"single"`` (one plain colour). ``outline``: draw the edge of the top region. ``views``: the
    key slices, through the evidence peak. ``uncertainty_map``: also show the uncertainty map.
    ``metrics``: tables of parameters and metrics, with CSV/JSON export.
    """

    key: str
    title: str
    description: str
    methods: str
    top_percent: float | None
    colormap: str
    outline: bool
    views: tuple[str, ...]
    uncertainty_map: bool
    metrics: bool


#: Share of voxels that counts as a map's main evidence when its size is measured (all audiences).
EVIDENCE_TOP_PERCENT = 1.0

RADIOLOGIST = AudiencePreset(
    key="radiologist", title="Radiologist",
    description="One recommended explanation, top of the map with its outline, one-line prediction and "
                "uncertainty, a review flag, where the evidence is.",
    methods="primary", top_percent=EVIDENCE_TOP_PERCENT, colormap="inferno", outline=True,
    views=("axial", "coronal", "sagittal"), uncertainty_map=False, metrics=False,
)
RESEARCHER = AudiencePreset(
    key="researcher", title="Researcher",
    description="Every method side by side as raw maps, parameters, agreement between methods, uncertainty, "
                "trust checks and export to CSV/JSON.",
    methods="all", top_percent=None, colormap="inferno", outline=False,
    views=("axial", "coronal", "sagittal"), uncertainty_map=True, metrics=True,
)
TEACHING = AudiencePreset(
    key="teaching", title="Teaching / patient",
    description="Plain words, one plain colour on two key pictures, what a heat map is and is not, and its limits.",
    methods="primary", top_percent=EVIDENCE_TOP_PERCENT, colormap="single", outline=False,
    views=("axial", "coronal"), uncertainty_map=False, metrics=False,
)
