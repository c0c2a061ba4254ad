"""The viewer's side of an audit (``slicer-xai viewer --audit DIR``): the flagged cases of an audit folder,
most serious first, to step through, each opened with its reference mask at its evidence peak."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from XAIExplainLib.errors import XAIInputError

__all__ = ["audit_model", "flagged_case_choices", "parse_point"]


def flagged_case_choices(folder: str | os.PathLike, pacs_url: Optional[str] = None) -> list[dict]:
    """``[{"title", "value", "image", "study", "mask", "at"}]`` of the audit's flagged cases, in the explorer's
    order. A case on a PACS is offered only when the viewer was started with that PACS (``pacs_url``): an
    audit folder never decides which server the viewer talks to."""
    from XAIRobustnessLib.audit import ResultStore
    from XAIRobustnessLib.audit.report import flag_cases

    folder = Path(folder)
    if not (folder / "audit.json").is_file():
        raise XAIInputError(f"--audit {folder} is not a slicer-xai audit folder (no audit.json).")
    choices, elsewhere = [], set()
    for case in flag_cases(ResultStore(folder).rows()):
        row = case.row
        if row.get("status") != "ok":
            continue  # a case that could not be measured has nothing to show
        if row.get("study_uid") and row.get("pacs") != pacs_url:
            elsewhere.add(str(row.get("pacs")))
            continue
        if not (row.get("image") or row.get("study_uid")):
            continue
        choices.append({"title": f"{row['case']} — {', '.join(case.reasons)}", "value": row["case"],
                        "image": row.get("image"), "study": row.get("study_uid"), "mask": row.get("mask"),
                        "at": row.get("peak_ras_mm")})
    if not choices and elsewhere:
        raise XAIInputError(f"The flagged cases of --audit {folder} are studies on the PACS at "
                            f"{sorted(elsewhere)[0][:100]}; give --pacs with that address.")
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
        raise XAIInputError(f"--at {text[:40]!r} is not a point R,A,S in millimetres (e.g. --at=-10.9,-3.3,10.1).")
    return point
