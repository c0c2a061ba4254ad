"""The viewer's trust checks and report: the robustness engine's functions on the session's case.

Each check returns a picture (PNG bytes) and the lines of its verdict, and keeps its JSON so that the
report can say whether the explanation passed. Everything here runs in a worker thread (no MRML).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import SimpleITK as sitk

from XAIExplainLib.audiences import TrustEvidence, read_trust_evidence
from XAIExplainLib.models import LoadedModel
from XAIExplainLib.progress import CancelToken, ProgressCallback

__all__ = ["CheckOutcome", "TrustChecks"]


@dataclass
class CheckOutcome:
    png: bytes
    lines: list[str]


@dataclass
class TrustChecks:
    """Results of the checks run on the current case (cleared when the case or model changes)."""

    results: dict[str, dict] = field(default_factory=dict)

    def clear(self) -> None:
        self.results.clear()

    def robustness(self, image: sitk.Image, model: LoadedModel, method: str, progress: Optional[ProgressCallback],
                   cancel: Optional[CancelToken], other_channels: Sequence[sitk.Image] = ()) -> CheckOutcome:
        from XAIRobustnessLib.plots import plot_sweep
        from XAIRobustnessLib.sweep import robustness_sweep

        sweep = robustness_sweep(image, model, method=method, progress=progress, cancel=cancel,
                                 other_channels=other_channels)
        self.results["robustness"] = sweep.to_json()
        lines = [("" if one.summary["trustworthy_in_plausible_range"] else "⚠ ") + one.summary["verdict"]
                 for one in sweep.sweeps.values()]
        return CheckOutcome(_plot(lambda path: plot_sweep(sweep, path, f"Robustness · {model.model_id}")), lines)

    def sanity(self, image: sitk.Image, model: LoadedModel, method: str, progress: Optional[ProgressCallback],
               cancel: Optional[CancelToken], other_channels: Sequence[sitk.Image] = ()) -> CheckOutcome:
        from XAIRobustnessLib.plots import plot_sanity
        from XAIRobustnessLib.sanity import sanity_checks

        results = sanity_checks(image, model, [method], progress=progress, cancel=cancel, other_channels=other_channels)
        self.results["sanity"] = {"sanity": {"passed": all(r.passed for r in results.values()),
                                             "spearman": max(r.final_spearman for r in results.values()),
                                             "methods": {k: r.to_json() for k, r in results.items()}}}
        lines = [result.verdict for result in results.values()]
        return CheckOutcome(_plot(lambda path: plot_sanity(results, path, f"Randomisation check · {model.model_id}")), lines)

    def faithfulness(self, image: sitk.Image, model: LoadedModel, method: str, progress: Optional[ProgressCallback],
                     cancel: Optional[CancelToken], other_channels: Sequence[sitk.Image] = ()) -> CheckOutcome:
        from XAIRobustnessLib.faithfulness import faithfulness_test
        from XAIRobustnessLib.plots import plot_faithfulness

        result = faithfulness_test(image, model, method, progress=progress, cancel=cancel, other_channels=other_channels)
        self.results["faithfulness"] = result.to_json()
        return CheckOutcome(_plot(lambda path: plot_faithfulness(result, path, f"Faithfulness · {model.model_id}")),
                            [result.verdict])

    def evidence(self) -> Optional[TrustEvidence]:
        """What the checks found, in the form the audience writers and the report read."""
        if not self.results:
            return None
        with tempfile.TemporaryDirectory(prefix="slicer-xai-checks-") as folder:
            for name, data in self.results.items():
                (Path(folder) / f"{name}.json").write_text(json.dumps(data, default=float), encoding="utf-8")
            return read_trust_evidence(folder)


def _plot(draw: Callable[[Path], None]) -> bytes:
    with tempfile.TemporaryDirectory(prefix="slicer-xai-plot-") as folder:
        path = Path(folder) / "plot.png"
        draw(path)
        return path.read_bytes()
