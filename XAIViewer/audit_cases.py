"""The viewer's side of an audit (``slicer-xai viewer --audit DIR``): the flagged cases of an audit folder,
most serious first, to step through, each opened with its reference mask at its evidence peak."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from XAIExplainLib.errors import XAIInputError

__all__ = ["audit_model", "flagged_case_choices", "parse_point"]


def flagged_case_choices(folder: str | os.PathLike) -> list[dict]:
    """``[{"title", "value", "image", "mask", "at"}]`` of the audit's flagged cases, in the explorer's order."""
    from XAIRobustnessLib.audit import ResultStore
    from XAIRobustnessLib.audit.report import flag_cases

    folder = Path(folder)
    if not (folder / "audit.json").is_file():
        raise XAIInputError(f"--audit {folder} is not a slicer-xai audit folder (no audit.json).")
    choices = []
    for case in flag_cases(ResultStore(folder).rows()):
        row = case.row
        if row.get("status") != "ok" or not row.get("image"):
            continue  # a case that could not be measured has nothing to show
        choices.append({"title": f"{row['case']} — {', '.join(case.reasons)}", "value": row["case"],
                        "image": row["image"], "mask": row.get("mask"), "at": row.get("peak_ras_mm")})
    return choices


def audit_model(folder: str | os.PathLike) -> Optional[str]:
    """The model the audit in ``folder`` ran (so the viewer explains the cases with it)."""
    import json

    try:
        return str(json.loads((Path(folder) / "audit.json").read_text(encoding="utf-8"))["settings"]["model"])
    except (OSError, ValueError, KeyError, TypeError):
        raise XAIInputError(f"--audit {folder} is not a slicer-xai audit folder (no readable audit.json).") from None


def parse_point(text: Optional[str]) -> Optional[tuple[float, float, float]]:
    """``"R,A,S"`` in millimetres (as the audit report's commands write it)."""
    import math

    if text is None:
        return None
    try:
        point = tuple(float(v) for v in text.split(","))
    except ValueError:
        point = ()
    if len(point) != 3 or not all(math.isfinite(v) for v in point):
        raise XAIInputError(f"--at {text[:40]!r} is not a point R,A,S in millimetres (e.g. --at -10.9,-3.3,10.1).")
    return point
