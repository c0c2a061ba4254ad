"""Which cases an audit runs on: paths or PACS study UIDs only (each worker reads or fetches its own case, so
images stream through the cluster instead of being shipped from the client), with an optional reference mask
and label."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from XAIExplainLib.errors import XAIInputError

__all__ = ["AuditCase", "PacsSource", "cases_from_folder", "cases_from_manifest", "cases_from_pacs"]

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
_MASK_SUFFIX = "_mask"
MAX_CASES = 100_000


@dataclass(frozen=True)
class PacsSource:
    """The DICOMweb archive a cohort's studies are fetched from. Credentials are looked up where a case runs
    (the environment, or the file named here, as for ``slicer-xai explain --pacs``), never sent with it."""

    url: str
    credentials_file: Optional[str] = None

    def client(self):
        from XAIExplainLib.dicom.pacs import PacsClient, pacs_credentials

        return PacsClient(self.url, pacs_credentials(self.credentials_file))


@dataclass(frozen=True)
class AuditCase:
    """One case: its name (unique in the cohort), image (a file or DICOM folder) or study on a PACS, reference
    lesion mask and label (class index)."""

    name: str
    image: Optional[str]
    mask: Optional[str] = None
    label: Optional[int] = None
    study_uid: Optional[str] = None
    pacs: Optional[PacsSource] = None

    def row(self) -> dict:
        """The start of the case's results row: which case, where it came from and its reference."""
        where = {"image": self.image} if self.pacs is None else \
            {"image": None, "pacs": self.pacs.url, "study_uid": self.study_uid}
        return {"case": self.name, **where, "mask": self.mask, "label": self.label}


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


def cases_from_pacs(pacs: PacsSource, manifest: Optional[str | os.PathLike] = None) -> list[AuditCase]:
    """Every study on the PACS (its image series is what is audited), or those a manifest names in its
    ``study`` column (with optional ``case``, ``mask`` and ``label``). The PACS is asked for its studies
    here, so a wrong address or credentials are found before any worker starts."""
    client = pacs.client()
    pacs = PacsSource(client.url, pacs.credentials_file and os.path.abspath(pacs.credentials_file))
    if manifest is not None:
        client.studies(limit=1)
        return cases_from_manifest(manifest, pacs)
    studies = client.all_studies(MAX_CASES)
    if not studies:
        raise XAIInputError(f"The PACS at {client.url} holds no studies.")
    return _checked([AuditCase(study.study_uid, None, study_uid=study.study_uid, pacs=pacs) for study in studies])


def cases_from_manifest(manifest: str | os.PathLike, pacs: Optional[PacsSource] = None) -> list[AuditCase]:
    """Cases from a CSV with columns ``image`` (or, for studies on ``pacs``, ``study``: Study Instance UIDs)
    and optional ``case``, ``mask`` and ``label``; relative paths are relative to the manifest's folder."""
    manifest = Path(manifest)
    try:
        with open(manifest, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise XAIInputError(f"Cannot read the manifest {manifest} ({type(error).__name__}).") from None
    column = "image" if pacs is None else "study"
    if not rows or column not in rows[0]:
        raise XAIInputError(f"The manifest {manifest} needs a header with a{'n' if pacs is None else ''} '{column}' "
                            "column (and optionally case, mask, label).")
    base = manifest.parent
    cases = []
    for number, row in enumerate(rows, start=2):
        where = f"line {number} of {manifest.name}"
        value = (row.get(column) or "").strip()
        if not value:
            raise XAIInputError(f"Line {number} of {manifest.name} has no {column}.")
        mask = (row.get("mask") or "").strip()
        mask = str(base / mask) if mask else None
        label = _label(row.get("label"), where)
        if pacs is None:
            name = (row.get("case") or "").strip() or Path(value).name.split(".")[0]
            cases.append(AuditCase(name, str(base / value), mask, label))
        else:
            from XAIExplainLib.dicom.pacs import check_uid

            study = check_uid(value, f"The study on {where}")
            cases.append(AuditCase((row.get("case") or "").strip() or study, None, mask, label, study, pacs))
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
