"""The viewer's DICOM side: open a study from the PACS the viewer was started with, save the results as DICOM
(a .zip to download) and send them back into the study. Free of trame and of the scene, so that all of it runs
in the worker thread and can be tested on its own.

The browser never names a server, a path or a UID that was not offered: the PACS address and its credentials
are the command line's (``slicer-xai viewer --pacs URL``), and a study is one of the list the PACS itself sent.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from XAIExplainLib.dicom import read_source_series, reference_series, write_dicom_results
from XAIExplainLib.dicom.pacs import PacsClient, StudySummary, fetched_series
from XAIExplainLib.errors import XAIInputError
from XAIExplainLib.imageio import read_image

__all__ = ["DicomCase", "open_pacs_study", "results_zip", "send_results", "study_choices"]


@dataclass
class DicomCase:
    """A case read from a DICOM series: the image, the series' headers (what results reference) and its UIDs."""

    image: object
    name: str
    headers: list
    study_uid: str
    series_uid: str


def study_choices(studies: Sequence[StudySummary]) -> list[dict]:
    """The study list's entries: what a radiologist recognises a study by, and its UID as the value."""
    return [{"title": study.label(), "value": study.study_uid} for study in studies]


def open_pacs_study(client: PacsClient, study_uid: str) -> DicomCase:
    """The study's image series, fetched, checked and read (the fetched files are removed afterwards)."""
    series = client.image_series(study_uid)
    with fetched_series(client, study_uid, series.series_uid) as (folder, _):
        image = read_image(folder, name="The PACS series")
        headers = read_source_series(folder)
    name = (series.description or f"series {series.number}").strip() or "PACS study"
    return DicomCase(image, name[:64], headers, study_uid, series.series_uid)


def results_zip(result, image, headers: Optional[list], checks: Sequence = ()) -> bytes:
    """The results as DICOM objects in a .zip; a case that did not come from DICOM gets its own source series
    (``source/``) in the archive, so that the objects have images to reference."""
    with tempfile.TemporaryDirectory(prefix="slicer-xai-dicom-") as folder:
        root = Path(folder)
        write_dicom_results(result, reference_series(image, headers, root / "source"), root / "dicom", checks=checks)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(p for p in root.rglob("*.dcm")):
                archive.write(path, path.relative_to(root).as_posix())
        return buffer.getvalue()


def send_results(client: PacsClient, result, case: Optional[DicomCase], checks: Sequence = ()) -> int:
    """Store the results into the study the case was opened from; the number of objects stored."""
    import pydicom

    if case is None:
        raise XAIInputError("Only a case opened from the PACS can have its results sent there; use Save as DICOM.")
    with tempfile.TemporaryDirectory(prefix="slicer-xai-dicom-") as folder:
        export = write_dicom_results(result, case.headers, Path(folder), checks=checks)
        client.store([pydicom.dcmread(path) for path in export.files.values()], case.study_uid)
        return len(export.files)
