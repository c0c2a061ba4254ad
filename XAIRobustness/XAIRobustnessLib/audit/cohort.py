"""Which cases an audit runs on: paths only (each worker reads its own case, so images stream through the
cluster instead of being shipped from the client), with an optional reference mask and label."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from XAIExplainLib.errors import XAIInputError

__all__ = ["AuditCase", "cases_from_folder", "cases_from_manifest"]

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
_MASK_SUFFIX = "_mask"
MAX_CASES = 100_000


@dataclass(frozen=True)
class AuditCase:
    """One case: its name (unique in the cohort), image, reference lesion mask and label (class index)."""

    name: str
    image: str
    mask: Optional[str] = None
    label: Optional[int] = None


def cases_from_folder(folder: str | os.PathLike) -> list[AuditCase]:
    """Every image in ``folder``, with ``<name>_mask.<ext>`` beside it as its reference and the ``label``
    column of ``labels.csv`` (as ``slicer-xai data synth`` writes them) where present."""
    folder = Path(folder)
    if not folder.is_dir():
        raise XAIInputError(f"--cases {folder} is not a folder.")
    labels = _labels(folder / "labels.csv") if (folder / "labels.csv").is_file() else {}
    cases = []
    for path in sorted(folder.iterdir()):
        suffix = next((s for s in _IMAGE_SUFFIXES if path.name.endswith(s)), None)
        if suffix is None or not path.is_file() or path.name[: -len(suffix)].endswith(_MASK_SUFFIX):
            continue
        name = path.name[: -len(suffix)]
        mask = folder / f"{name}{_MASK_SUFFIX}{suffix}"
        cases.append(AuditCase(name, str(path), str(mask) if mask.is_file() else None, labels.get(name)))
    if not cases:
        raise XAIInputError(f"--cases {folder} holds no NIfTI, NRRD or MetaImage images.")
    return _checked(cases)


def cases_from_manifest(manifest: str | os.PathLike) -> list[AuditCase]:
    """Cases from a CSV with columns ``image`` and optional ``case``, ``mask`` and ``label``; relative paths
    are relative to the manifest's folder."""
    manifest = Path(manifest)
    try:
        with open(manifest, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise XAIInputError(f"Cannot read the manifest {manifest} ({type(error).__name__}).") from None
    if not rows or "image" not in rows[0]:
        raise XAIInputError(f"The manifest {manifest} needs a header with an 'image' column (and optionally "
                            "case, mask, label).")
    base = manifest.parent
    cases = []
    for number, row in enumerate(rows, start=2):
        image = (row.get("image") or "").strip()
        if not image:
            raise XAIInputError(f"Line {number} of {manifest.name} has no image.")
        mask = (row.get("mask") or "").strip()
        name = (row.get("case") or "").strip() or Path(image).name.split(".")[0]
        cases.append(AuditCase(name, str(base / image), str(base / mask) if mask else None,
                               _label(row.get("label"), f"line {number} of {manifest.name}")))
    return _checked(cases)


def _labels(path: Path) -> dict[str, int]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["case"]: _label(row.get("label"), path.name) for row in csv.DictReader(handle)
                if row.get("case") and (row.get("label") or "").strip()}


def _label(value: Optional[str], where: str) -> Optional[int]:
    value = (value or "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise XAIInputError(f"The label {value[:20]!r} in {where} is not a class index.") from None


def _checked(cases: list[AuditCase]) -> list[AuditCase]:
    if len(cases) > MAX_CASES:
        raise XAIInputError(f"The cohort has {len(cases)} cases; split it into audits of at most {MAX_CASES}.")
    names = [case.name for case in cases]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise XAIInputError(f"Case names must be unique; given twice: {', '.join(twice[:5])}.")
    return cases
