"""A PACS over DICOMweb (PS3.18): list studies and series (QIDO-RS), fetch a series (WADO-RS), store results
(STOW-RS), through ``dicomweb-client``.

Everything the archive sends is untrusted: UIDs are checked for form, every fetched instance must belong to
the study and series that were asked for and be an image, instance count and bytes are capped, files are
named here (never from the answer), and the series is then read with the same strict checks as a local DICOM
folder. Credentials come from the environment or a file readable by its owner only, never from the command
line (where other users of the machine see them) nor from the URL; they are sent over https only, or plain
http to this machine.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence
from urllib.parse import urlsplit

import pydicom
import requests
from pydicom.dataset import Dataset

from ..errors import XAIInputError
from ..network import is_loopback

__all__ = ["PacsClient", "StudySummary", "SeriesSummary", "fetched_series", "pacs_credentials",
           "CREDENTIAL_VARIABLES"]

#: Where credentials are looked for, in this order.
CREDENTIAL_VARIABLES = ("SLICER_XAI_PACS_TOKEN", "SLICER_XAI_PACS_USER", "SLICER_XAI_PACS_PASSWORD",
                        "SLICER_XAI_PACS_CREDENTIALS")
MAX_INSTANCES = 4000
MAX_SERIES_BYTES = 2 * 1024 ** 3
TIMEOUT_S = 30.0
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: Series of these modalities hold images a model can read; derived objects (SEG, SR, OT maps) do not.
IMAGE_MODALITIES = ("MR", "CT", "PT", "NM", "US", "CR", "DX", "MG", "XA")
_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.128",  # PET Image Storage
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture (some converters write volumes so)
}


@dataclass(frozen=True)
class StudySummary:
    study_uid: str
    patient_id: str
    patient_name: str
    date: str
    description: str
    modalities: str
    series_count: int

    def label(self) -> str:
        """One line for a study list (what a radiologist recognises a study by)."""
        date = f"{self.date[:4]}-{self.date[4:6]}-{self.date[6:8]}" if len(self.date) == 8 else self.date or "no date"
        return f"{self.patient_id or '?'} · {date} · {self.modalities or '?'} · {self.description or '(no description)'}"


@dataclass(frozen=True)
class SeriesSummary:
    series_uid: str
    modality: str
    number: Optional[int]
    description: str
    instance_count: int


def check_uid(uid: str, what: str) -> str:
    """A DICOM UID (PS3.5 9.1): digits and dots, 64 characters at most."""
    uid = str(uid).strip()
    if not (0 < len(uid) <= 64 and _UID.match(uid)):
        raise XAIInputError(f"{what} {uid[:70]!r} is not a DICOM UID (digits and dots, 64 characters at most).")
    return uid


def pacs_credentials(credentials_file: Optional[str | os.PathLike] = None,
                     environ: Optional[dict] = None) -> Optional[tuple[str, str] | str]:
    """(user, password), a bearer token, or None: from ``credentials_file`` (JSON ``{"user", "password"}`` or
    ``{"token"}``, readable by its owner only), else ``SLICER_XAI_PACS_CREDENTIALS`` naming such a file,
    else ``SLICER_XAI_PACS_TOKEN``, else ``SLICER_XAI_PACS_USER`` and ``SLICER_XAI_PACS_PASSWORD``."""
    environ = os.environ if environ is None else environ
    path = credentials_file or environ.get("SLICER_XAI_PACS_CREDENTIALS")
    if path:
        return _read_credentials_file(Path(path))
    if environ.get("SLICER_XAI_PACS_TOKEN"):
        return environ["SLICER_XAI_PACS_TOKEN"]
    user, password = environ.get("SLICER_XAI_PACS_USER"), environ.get("SLICER_XAI_PACS_PASSWORD")
    if bool(user) != bool(password):
        raise XAIInputError("Set both SLICER_XAI_PACS_USER and SLICER_XAI_PACS_PASSWORD (or neither).")
    return (user, password) if user else None


def _read_credentials_file(path: Path) -> tuple[str, str] | str:
    try:
        info = path.stat()
    except OSError as error:
        raise XAIInputError(f"Cannot read the PACS credentials file {path} ({error.strerror}).") from None
    if not stat.S_ISREG(info.st_mode):
        raise XAIInputError(f"The PACS credentials file {path} is not a regular file.")
    if info.st_mode & 0o077:
        raise XAIInputError(f"The PACS credentials file {path} can be read by other users; chmod 600 it first.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise XAIInputError(f"The PACS credentials file {path} is not JSON like "
                            '{"user": "...", "password": "..."} or {"token": "..."}.') from None
    if isinstance(data, dict) and isinstance(data.get("token"), str) and data["token"]:
        return data["token"]
    if isinstance(data, dict) and all(isinstance(data.get(key), str) and data[key] for key in ("user", "password")):
        return data["user"], data["password"]
    raise XAIInputError(f'The PACS credentials file {path} needs "user" and "password", or "token".')


def check_pacs_url(url: str, with_credentials: bool) -> str:
    """An http(s) DICOMweb base URL without credentials, query or fragment."""
    parts = urlsplit(str(url).strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise XAIInputError(f"--pacs {url[:80]!r} is not an http(s) DICOMweb address (e.g. http://127.0.0.1:8042/dicom-web).")
    if parts.username or parts.password:
        raise XAIInputError("--pacs must not hold a user name or password (others see command lines); set "
                            "SLICER_XAI_PACS_USER and SLICER_XAI_PACS_PASSWORD or a credentials file instead.")
    if parts.query or parts.fragment:
        raise XAIInputError("--pacs is the DICOMweb base address, without ?query or #fragment.")
    if with_credentials and parts.scheme == "http" and not is_loopback(parts.hostname):
        raise XAIInputError(f"Credentials are sent to {parts.hostname} over https only; plain http is for this machine.")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


class PacsClient:
    """QIDO-RS, WADO-RS and STOW-RS against one archive, every failure one :class:`XAIInputError` line."""

    def __init__(self, url: str, credentials: Optional[tuple[str, str] | str] = None, timeout_s: float = TIMEOUT_S):
        from dicomweb_client import DICOMwebClient

        self.url = check_pacs_url(url, credentials is not None)
        session = requests.Session()
        session.trust_env = False  # no proxy or .netrc credentials picked up behind the user's back
        if isinstance(credentials, tuple):
            session.auth = credentials
        elif credentials:
            session.headers["Authorization"] = f"Bearer {credentials}"
        self._client = DICOMwebClient(self.url, session=session, timeout=timeout_s)

    # -- queries ---------------------------------------------------------------------------------------
    def studies(self, limit: int = 200, offset: int = 0) -> list[StudySummary]:
        with self._answers("list the studies"):
            found = self._client.search_for_studies(
                limit=limit, offset=offset or None,
                fields=["PatientID", "PatientName", "StudyDate", "StudyDescription", "ModalitiesInStudy",
                        "NumberOfStudyRelatedSeries"])
            return [_study_summary(_dataset(item)) for item in found]

    def all_studies(self, most: int, page: int = 200) -> list[StudySummary]:
        """Every study of the archive, page by page (archives cap one answer), refused beyond ``most``; a
        study an archive lists twice across pages is kept once."""
        found: dict[str, StudySummary] = {}
        offset = 0
        while True:
            answer = self.studies(limit=page, offset=offset)
            new = {study.study_uid: study for study in answer if study.study_uid not in found}
            found.update(new)
            if len(found) > most:
                raise XAIInputError(f"The PACS at {self.url} holds more than {most} studies; list the ones to use "
                                    "in a manifest (column study).")
            # A short page is the last; a page with nothing new (an archive that ignores offset) ends it too.
            if len(answer) < page or not new:
                return list(found.values())
            offset += len(answer)

    def series(self, study_uid: str) -> list[SeriesSummary]:
        study_uid = check_uid(study_uid, "--study")
        with self._answers(f"list the series of study {study_uid}"):
            found = self._client.search_for_series(
                study_instance_uid=study_uid,
                fields=["Modality", "SeriesNumber", "SeriesDescription", "NumberOfSeriesRelatedInstances"])
            return [_series_summary(_dataset(item)) for item in found]

    def image_series(self, study_uid: str) -> SeriesSummary:
        """The study's image series with the most instances (derived SEG, SR and map series left out)."""
        candidates = [s for s in self.series(study_uid) if s.modality in IMAGE_MODALITIES]
        if not candidates:
            raise XAIInputError(f"Study {study_uid} on the PACS holds no image series (MR, CT, ...); give --series.")
        return max(candidates, key=lambda s: s.instance_count)

    # -- retrieve --------------------------------------------------------------------------------------
    def fetch_series(self, study_uid: str, series_uid: str, folder: str | os.PathLike,
                     max_instances: int = MAX_INSTANCES, max_bytes: int = MAX_SERIES_BYTES) -> list[Path]:
        """Write the series' instances into ``folder`` (new or empty) as ``0001.dcm`` ...; the instances must
        be images of that very study and series, none twice, within the limits."""
        study_uid, series_uid = check_uid(study_uid, "--study"), check_uid(series_uid, "--series")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths, seen, total = [], set(), 0
        with self._answers(f"fetch series {series_uid}"):
            for dataset in self._client.iter_series(study_instance_uid=study_uid, series_instance_uid=series_uid):
                if len(paths) >= max_instances:
                    raise XAIInputError(f"Series {series_uid} has more than {max_instances} instances; refused.")
                _check_instance(dataset, study_uid, series_uid, seen)
                path = folder / f"{len(paths) + 1:04d}.dcm"
                dataset.save_as(path, enforce_file_format=False)
                total += path.stat().st_size
                if total > max_bytes:
                    raise XAIInputError(f"Series {series_uid} is larger than {max_bytes / 1024 ** 3:.0f} GiB; refused.")
                paths.append(path)
        if not paths:
            raise XAIInputError(f"The PACS has no instances for series {series_uid} of study {study_uid}.")
        return paths

    # -- store -----------------------------------------------------------------------------------------
    def store(self, datasets: Sequence[Dataset], study_uid: str) -> None:
        """STOW-RS ``datasets`` into ``study_uid``; every instance the archive refuses is an error."""
        study_uid = check_uid(study_uid, "Study")
        with self._answers("store the results"):
            answer = self._client.store_instances(list(datasets), study_instance_uid=study_uid)
        failed = getattr(answer, "FailedSOPSequence", None) or []
        if failed:
            reasons = sorted({str(getattr(item, "FailureReason", "?")) for item in failed})
            raise XAIInputError(f"The PACS refused {len(failed)} of {len(datasets)} result object(s) "
                                f"(failure reason {', '.join(reasons)}).")

    @contextmanager
    def _answers(self, what: str) -> Iterator[None]:
        """Turn whatever an archive (or the network) does into one line that says what could not be done."""
        try:
            yield
        except XAIInputError:
            raise
        except requests.HTTPError as error:
            code = error.response.status_code if error.response is not None else "?"
            hint = " (check the credentials)" if code in (401, 403) else ""
            raise XAIInputError(f"The PACS at {self.url} answered HTTP {code} when asked to {what}{hint}.") from None
        except (requests.ConnectionError, requests.Timeout, requests.TooManyRedirects) as error:
            raise XAIInputError(f"Could not reach the PACS at {self.url} to {what} ({type(error).__name__}).") from None
        except Exception as error:  # noqa: BLE001 - malformed JSON, multipart or DICOM from an untrusted server
            raise XAIInputError(f"The PACS at {self.url} sent an answer that is not valid DICOMweb when asked to "
                                f"{what} ({type(error).__name__}: {str(error)[:100]}).") from None


def _dataset(item) -> Dataset:
    if not isinstance(item, dict):
        raise ValueError("a QIDO-RS answer item is not a JSON object")
    return Dataset.from_json(item)


def _text(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword, "")
    if isinstance(value, pydicom.multival.MultiValue):
        value = "/".join(str(v) for v in value)
    return re.sub(r"[\x00-\x1f]", " ", str(value or ""))[:64]


def _count(dataset: Dataset, keyword: str) -> int:
    try:
        return max(0, int(dataset.get(keyword, 0) or 0))
    except (TypeError, ValueError):
        return 0


def _study_summary(dataset: Dataset) -> StudySummary:
    return StudySummary(study_uid=check_uid(dataset.get("StudyInstanceUID", ""), "A study UID from the PACS"),
                        patient_id=_text(dataset, "PatientID"), patient_name=_text(dataset, "PatientName"),
                        date=_text(dataset, "StudyDate"), description=_text(dataset, "StudyDescription"),
                        modalities=_text(dataset, "ModalitiesInStudy"),
                        series_count=_count(dataset, "NumberOfStudyRelatedSeries"))


def _series_summary(dataset: Dataset) -> SeriesSummary:
    number = dataset.get("SeriesNumber")
    return SeriesSummary(series_uid=check_uid(dataset.get("SeriesInstanceUID", ""), "A series UID from the PACS"),
                         modality=_text(dataset, "Modality"), number=int(number) if number not in (None, "") else None,
                         description=_text(dataset, "SeriesDescription"),
                         instance_count=_count(dataset, "NumberOfSeriesRelatedInstances"))


def _check_instance(dataset: Dataset, study_uid: str, series_uid: str, seen: set) -> None:
    if not isinstance(dataset, Dataset):
        raise XAIInputError("The PACS sent something that is not a DICOM instance.")
    study, series = str(dataset.get("StudyInstanceUID", "")), str(dataset.get("SeriesInstanceUID", ""))
    if study != study_uid or series != series_uid:
        raise XAIInputError(f"The PACS sent an instance of another study or series ({series[:64] or 'none'}) "
                            f"when asked for series {series_uid}; refused.")
    sop_class, sop_uid = str(dataset.get("SOPClassUID", "")), str(dataset.get("SOPInstanceUID", ""))
    if sop_class not in _IMAGE_SOP_CLASSES:
        raise XAIInputError(f"Series {series_uid} holds non-image instances (SOP class {sop_class[:64]}); "
                            "give an MR or CT image series.")
    check_uid(sop_uid, "An instance UID from the PACS")
    if sop_uid in seen:
        raise XAIInputError(f"The PACS sent instance {sop_uid} twice; refused.")
    seen.add(sop_uid)
    if "PixelData" not in dataset:
        raise XAIInputError(f"Instance {sop_uid} from the PACS has no pixel data.")


@contextmanager
def fetched_series(client: PacsClient, study_uid: str, series_uid: Optional[str] = None) -> Iterator[tuple[Path, str]]:
    """``(folder, series_uid)``: the series (default: the study's image series) fetched into a private
    temporary folder, which is removed afterwards whatever happens."""
    study_uid = check_uid(study_uid, "--study")
    series_uid = check_uid(series_uid, "--series") if series_uid else client.image_series(study_uid).series_uid
    with tempfile.TemporaryDirectory(prefix="slicer-xai-pacs-") as folder:
        client.fetch_series(study_uid, series_uid, folder)
        yield Path(folder), series_uid
