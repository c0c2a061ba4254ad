"""The PACS round trip against a real Orthanc: the demo case as a DICOM study, explained through DICOMweb, the
results stored back as Parametric Maps, SEG and a TID 1500 SR, fetched again and checked against the NIfTI
results of the same series; plus what a hostile or misconfigured archive gets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests
import SimpleITK as sitk
from dicomweb_client import DICOMwebClient
from orthanc_server import PASSWORD, USER, orthanc_available, start_orthanc
from pydicom.sr.codedict import codes
from test_cli import run_cli

from XAICommandLine.main import main
from XAIExplainLib.dicom import RESEARCH_USE, SeriesIdentity, write_image_series
from XAIExplainLib.dicom.pacs import PacsClient, pacs_credentials
from XAIExplainLib.errors import XAIInputError
from XAIExplainLib.resources import sample_case_path
from XAIExplainLib.review import review_regions

pytestmark = pytest.mark.skipif(not orthanc_available(), reason="Orthanc missing: `make test` installs it")
DCIODVFY = shutil.which("dciodvfy")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def round_trip(orthanc, tmp_path_factory):
    """The demo study on the PACS, explained from it with --store, and the same series explained locally."""
    work = tmp_path_factory.mktemp("round-trip")
    identity = SeriesIdentity(patient_id="XAI-RT-0001", series_description="Brain MR (demo)")
    files = write_image_series(sitk.ReadImage(str(sample_case_path())), work / "source", identity)
    source = [pydicom.dcmread(path) for path in files]
    PacsClient(orthanc.dicomweb, (USER, PASSWORD)).store(source, identity.study_uid)
    run = run_cli("explain", "--pacs", orthanc.dicomweb, "--study", identity.study_uid, "--model",
                  "brain-lesion-classifier", "--uncertainty", "tta", "--store", "--out", str(work / "pacs-out"),
                  env=orthanc.credentials_env)
    assert run.returncode == 0, run.stderr
    assert main(["explain", str(work / "source"), "--model", "brain-lesion-classifier", "--uncertainty", "tta",
                 "--out", str(work / "local")]) == 0
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    web = DICOMwebClient(orthanc.dicomweb, session=session)
    stored, derived_series = {}, 0
    for series in web.search_for_series(study_instance_uid=identity.study_uid):
        uid = series["0020000E"]["Value"][0]
        if uid != identity.series_uid:
            (instance,) = web.retrieve_series(study_instance_uid=identity.study_uid, series_instance_uid=uid)
            stored[str(instance.SOPClassUID.name)] = instance
            derived_series += 1
    return {"derived_series": derived_series, "identity": identity, "source": source, "stored": stored, "work": work, "stdout": run.stdout,
            "local": json.loads((work / "local" / "result.json").read_text())}


def _frames_on_source_grid(instance, source, image: sitk.Image) -> list[int]:
    """Each frame's source slice (from its derivation reference); its position must be that slice's."""
    index = {ds.SOPInstanceUID: k for k, ds in enumerate(source)}
    frames = instance.PerFrameFunctionalGroupsSequence
    assert len(frames) == len(source) == image.GetSize()[2]
    slices = []
    for frame in frames:
        k = index[frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, image.TransformIndexToPhysicalPoint((0, 0, k)), atol=1e-3)
        slices.append(k)
    assert sorted(slices) == list(range(len(source)))
    return slices


def test_the_results_go_back_into_the_study_as_new_research_only_series(round_trip):
    stored, identity = round_trip["stored"], round_trip["identity"]
    assert set(stored) == {"Parametric Map Storage", "Segmentation Storage", "Comprehensive 3D SR Storage"}
    assert round_trip["derived_series"] == 4  # saliency and uncertainty maps, review SEG, report
    assert "Stored 4 result object(s)" in round_trip["stdout"]
    for instance in stored.values():
        assert instance.StudyInstanceUID == identity.study_uid
        assert instance.SeriesInstanceUID != identity.series_uid
        assert RESEARCH_USE in instance.SeriesDescription and len(instance.SeriesDescription) <= 64
        assert instance.PatientID == "XAI-RT-0001" and str(instance.PatientName) == identity.patient_name
        texts = [str(element.value) for element in instance.iterall() if element.VR in ("UT", "LO", "ST", "LT")]
        assert not any(str(round_trip["work"]) in text or "/work/" in text for text in texts)


def test_the_parametric_maps_hold_the_nifti_saliency_and_uncertainty_on_the_source_grid(round_trip, orthanc):
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    web = DICOMwebClient(orthanc.dicomweb, session=session)
    maps = {}
    for series in web.search_for_series(study_instance_uid=round_trip["identity"].study_uid, search_filters={"Modality": "OT"}):
        (instance,) = web.retrieve_series(study_instance_uid=round_trip["identity"].study_uid,
                                          series_instance_uid=series["0020000E"]["Value"][0])
        maps[instance.ContentLabel] = instance
    assert set(maps) == {"SALIENCY", "UNCERTAINTY"}
    for label, name in (("SALIENCY", "saliency"), ("UNCERTAINTY", "uncertainty")):
        nifti = sitk.ReadImage(str(round_trip["work"] / "local" / f"{name}.nii.gz"))
        instance = maps[label]
        slices = _frames_on_source_grid(instance, round_trip["source"], nifti)
        pixels = hd.pm.ParametricMap.from_dataset(instance).pixel_array
        np.testing.assert_allclose(pixels, sitk.GetArrayFromImage(nifti)[slices], rtol=0, atol=1e-6)
        measures = instance.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        np.testing.assert_allclose([float(v) for v in measures.PixelSpacing], nifti.GetSpacing()[1::-1], rtol=1e-6)
        mapping = instance.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == (
            codes.DCM.Saliency.value if label == "SALIENCY" else codes.DCM.StandardDeviation.value)


def test_the_seg_frames_are_the_review_regions(round_trip):
    seg = hd.seg.Segmentation.from_dataset(round_trip["stored"]["Segmentation Storage"])
    source_uids = [ds.SOPInstanceUID for ds in round_trip["source"]]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=source_uids, segment_numbers=[1],
                                               ignore_spatial_locations=True)[..., 0]
    uncertainty = sitk.ReadImage(str(round_trip["work"] / "local" / "uncertainty.nii.gz"))
    expected = sitk.GetArrayFromImage(review_regions(uncertainty)[0])
    assert expected.any()
    assert np.array_equal(frames.astype(bool), expected.astype(bool))
    description = seg.get_segment_description(1)
    assert description.algorithm_identification[0].AlgorithmName == "brain-lesion-classifier"


def test_the_report_parses_with_highdicom_and_holds_the_finding_evidence_and_checks(round_trip):
    report = hd.sr.Comprehensive3DSR.from_dataset(round_trip["stored"]["Comprehensive 3D SR Storage"])
    local = round_trip["local"]
    (evidence,) = report.content.get_planar_roi_measurement_groups()
    assert evidence.finding_type == codes.SCT.Lesion  # the demo model predicts "lesion"
    probability = [m for m in evidence.get_measurements() if m.name == codes.DCM.Probability]
    assert probability and abs(probability[0].value - local["prediction"]["confidence"]) < 1e-6
    i, j, k = local["explanation"]["statistics"]["peak_ijk"]
    region = evidence.roi
    assert [float(v) for v in region.GraphicData] == [i + 0.5, j + 0.5] and region.GraphicType == "POINT"
    assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == round_trip["source"][k].SOPInstanceUID
    (review,) = report.content.get_volumetric_roi_measurement_groups()
    assert review.reference_type == codes.DCM.ReferencedSegment
    groups = {str(g.tracking_identifier): g for g in report.content.get_image_measurement_groups()}
    checks = groups["Trust checks"].get_qualitative_evaluations()
    assert {c.name.meaning for c in checks} == {"Applicability: spacing", "Applicability: intensity"}
    assert all(c.value.meaning == "Passed" for c in checks)
    texts = [str(element.value) for element in round_trip["stored"]["Comprehensive 3D SR Storage"].iterall()
             if element.VR in ("UT", "LO", "ST", "SH", "LT")]
    assert f"weights_sha256={local['provenance']['model']['sha256']}" in texts
    assert not any(local["provenance"]["model"]["path"] in text for text in texts)  # no local path leaves


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy missing: `make test` installs Debian's dicom3tools")
def test_every_stored_object_passes_dciodvfy_without_errors(round_trip):
    for path in sorted((round_trip["work"] / "pacs-out" / "dicom").glob("*.dcm")):
        run = subprocess.run([DCIODVFY, str(path)], capture_output=True, encoding="utf-8", errors="replace")
        errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], (path.name, errors)


def test_credentials_never_come_from_the_command_line_and_wrong_ones_get_one_line(orthanc, tmp_path):
    url_with_password = orthanc.dicomweb.replace("http://", f"http://{USER}:{PASSWORD}@")
    run = run_cli("explain", "--pacs", url_with_password, "--study", "1.2.3", "--model", "brain-lesion-classifier",
                  "--out", str(tmp_path / "out"))
    assert run.returncode == 2 and "must not hold a user name or password" in run.stderr
    assert PASSWORD not in run.stderr and not (tmp_path / "out").exists()
    run = run_cli("explain", "--pacs", orthanc.dicomweb, "--study", "1.2.3", "--model", "brain-lesion-classifier",
                  "--out", str(tmp_path / "out"), env={"SLICER_XAI_PACS_USER": USER, "SLICER_XAI_PACS_PASSWORD": "no"})
    assert run.returncode == 2 and "HTTP 401" in run.stderr and "check the credentials" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_a_credentials_file_must_be_private(orthanc, tmp_path):
    path = tmp_path / "pacs.json"
    path.write_text(json.dumps({"user": USER, "password": PASSWORD}))
    path.chmod(0o644)
    with pytest.raises(XAIInputError, match="chmod 600"):
        pacs_credentials(path, environ={})
    path.chmod(0o600)
    credentials = pacs_credentials(None, environ={"SLICER_XAI_PACS_CREDENTIALS": str(path)})
    assert isinstance(PacsClient(orthanc.dicomweb, credentials).studies(), list)
    with pytest.raises(XAIInputError, match="https only"):
        PacsClient("http://pacs.example.org/dicom-web", credentials)


class _HostileArchive(BaseHTTPRequestHandler):
    """Answers QIDO-RS with what a broken or malicious server might send, and WADO-RS with a foreign instance."""

    foreign_instance: bytes = b""

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path.startswith("/garbage/"):
            body, kind = b"<html>not DICOMweb</html>", "application/dicom+json"
        elif "/instances" in self.path or self.path.endswith("/series/1.2.3.4"):
            boundary = "xaiboundary"
            body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + self.foreign_instance +
                    f"\r\n--{boundary}--\r\n".encode())
            kind = f'multipart/related; type="application/dicom"; boundary={boundary}'
        else:
            body, kind = json.dumps([{"0020000D": {"vr": "UI", "Value": ["1.2.3; rm -rf /"]}}]).encode(), \
                "application/dicom+json"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def hostile_archive(tmp_path):
    files = write_image_series(sitk.ReadImage(str(sample_case_path())), tmp_path / "other")
    _HostileArchive.foreign_instance = files[0].read_bytes()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HostileArchive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_hostile_archive_gets_one_line_and_leaves_nothing(hostile_archive, tmp_path):
    with pytest.raises(XAIInputError, match="not valid DICOMweb"):
        PacsClient(f"{hostile_archive}/garbage").studies()
    with pytest.raises(XAIInputError, match="is not a DICOM UID"):
        PacsClient(hostile_archive).studies()
    with pytest.raises(XAIInputError, match="another study or series"):
        PacsClient(hostile_archive).fetch_series("1.2.3", "1.2.3.4", tmp_path / "fetched")
    before = _pacs_temporary_folders()
    code = main(["explain", "--pacs", hostile_archive, "--study", "1.2.3", "--series", "1.2.3.4", "--model",
                 "brain-lesion-classifier", "--out", str(tmp_path / "out")])
    assert code == 2 and not (tmp_path / "out").exists()
    assert _pacs_temporary_folders() == before  # the fetched instances were removed


def _pacs_temporary_folders() -> set:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("slicer-xai-pacs-")}
