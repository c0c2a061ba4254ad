"""The viewer with a PACS: Open from PACS lists the archive's studies, the chosen one opens, its explanation
goes back into the study with Send results to PACS, and Save as DICOM downloads the same objects."""

from __future__ import annotations

import io
import time
import zipfile

import pydicom
import pytest
import SimpleITK as sitk
from orthanc_server import PASSWORD, USER, orthanc_available, start_orthanc
from viewer_harness import browser, choose, download, free_port, open_page, run_and_wait, shot, viewer_process

from XAIExplainLib.dicom import SeriesIdentity, write_image_series
from XAIExplainLib.dicom.pacs import PacsClient
from XAIExplainLib.resources import sample_case_path

pytestmark = pytest.mark.skipif(not orthanc_available(), reason="Orthanc missing: `make test` installs it")


@pytest.fixture(scope="module")
def pacs_with_demo_study(tmp_path_factory):
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    identity = SeriesIdentity(patient_id="XAI-VIEWER-01", series_description="Brain MR T1 (demo)",
                              study_description="Brain MRI - lesion follow-up")
    files = write_image_series(sitk.ReadImage(str(sample_case_path())), tmp_path_factory.mktemp("study"), identity)
    PacsClient(server.dicomweb, (USER, PASSWORD)).store([pydicom.dcmread(p) for p in files], identity.study_uid)
    yield server, identity
    server.stop()


def test_open_from_pacs_explain_and_send_the_results_back(pacs_with_demo_study, tmp_path):
    server, identity = pacs_with_demo_study
    client = PacsClient(server.dicomweb, (USER, PASSWORD))
    with viewer_process(["--pacs", server.dicomweb, "--model", "brain-lesion-classifier", "--port", str(free_port())],
                        env=server.credentials_env) as (url, _), browser() as instance:
        page = open_page(instance, url)
        page.click("#open-pacs")
        page.wait_for_selector("#pacs-dialog", state="visible", timeout=60_000)
        listing = page.inner_text("#pacs-studies")
        assert "XAI-VIEWER-01" in listing and "Brain MRI - lesion follow-up" in listing
        time.sleep(1.0)  # the dialog's fade-in
        shot(page, "pacs-study-list")
        # A page that forges the list and the choice changes only its own copy: the server opens what it offered.
        page.evaluate("() => { window.trame.state.set('pacs_studies', [{title: 'forged', value: '1.2.3.4'}]);"
                      " window.trame.state.set('pacs_study', '1.2.3.4'); }")
        time.sleep(0.5)
        page.click("#pacs-open")
        page.wait_for_selector("#pacs-case", state="visible", timeout=120_000)
        assert "Brain MR T1 (demo) (83 slices)" in page.inner_text("#pacs-case")
        assert not page.locator("#error").is_visible(), page.inner_text("#error")
        choose(page, "uncertainty-select", "Test-time augmentation")
        time.sleep(1.0)
        run_and_wait(page, timeout_ms=300_000)
        shot(page, "pacs-explained")
        page.click("#send-pacs")
        page.wait_for_selector("#pacs-message", state="visible", timeout=120_000)
        assert "Sent 4 result objects" in page.inner_text("#pacs-message")
        shot(page, "pacs-sent")
        series = client.series(identity.study_uid)
        derived = sorted(s.modality for s in series if s.series_uid != identity.series_uid)
        assert derived == ["OT", "OT", "SEG", "SR"]
        assert all("research use - not for clinical use" in s.description for s in series
                   if s.series_uid != identity.series_uid)
        page.click("#save-dicom")
        page.wait_for_selector("#download-dicom", state="visible", timeout=120_000)
        saved = download(page, "#download-dicom", tmp_path)
        with zipfile.ZipFile(saved) as archive:
            names = sorted(archive.namelist())
            report = pydicom.dcmread(io.BytesIO(archive.read("dicom/report.dcm")))
        # Opened from the PACS: the objects reference the study's own series, so no source copy is added.
        assert names == ["dicom/report.dcm", "dicom/review.dcm", "dicom/saliency.dcm", "dicom/uncertainty.dcm"]
        assert report.StudyInstanceUID == identity.study_uid


def test_a_pacs_address_with_a_password_is_refused_before_the_viewer_starts():
    from test_cli import run_cli

    run = run_cli("viewer", "--pacs", f"http://{USER}:{PASSWORD}@127.0.0.1:9/dicom-web", "--port", str(free_port()))
    assert run.returncode == 2 and "must not hold a user name or password" in run.stderr
    assert PASSWORD not in run.stderr + run.stdout and "SlicerXAI viewer: open" not in run.stdout
