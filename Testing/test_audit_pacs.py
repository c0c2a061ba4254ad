"""`slicer-xai audit --pacs` against a real Orthanc: every study on the archive, or a manifest's, fetched by the
Dask workers themselves (credentials from their environment, never in the task), with labels and masks; a
study the archive does not have gets its one-line error; the report's and the viewer's way back to a case is
the PACS it came from, and only that one."""

from __future__ import annotations

import csv
import json

import pydicom
import pytest
import SimpleITK as sitk
from conftest import cube_mask, make_image
from orthanc_server import PASSWORD, USER, orthanc_available, start_orthanc
from test_audit import assert_viewer_commands_parse
from test_cli import run_cli

from XAIExplainLib.dicom import SeriesIdentity, write_image_series
from XAIExplainLib.dicom.pacs import PacsClient
from XAIExplainLib.errors import XAIInputError

pytestmark = pytest.mark.skipif(not orthanc_available(), reason="Orthanc missing: `make test` installs it")
CENTRES = [(8, 9, 7), None, (15, 12, 11)]
ABSENT_STUDY = "1.2.826.0.1.3680043.8.498.999999"


@pytest.fixture(scope="module")
def pacs_cohort(tmp_path_factory):
    """Three small MR studies on an Orthanc (two with a lesion), their masks on disk and a manifest naming them
    and one study the archive does not hold."""
    work = tmp_path_factory.mktemp("pacs-cohort")
    server = start_orthanc(work / "orthanc")
    client = PacsClient(server.dicomweb, (USER, PASSWORD))
    studies = []
    with open(work / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "study", "label", "mask"])
        for index, centre in enumerate(CENTRES):
            image = make_image(size=(24, 22, 20), spacing=(2.0, 2.0, 2.0), blob_index=centre, seed=index)
            identity = SeriesIdentity(patient_id=f"XAI-AUDIT-{index}", series_description="Brain MR")
            files = write_image_series(image, work / f"series{index}", identity)
            client.store([pydicom.dcmread(path) for path in files], identity.study_uid)
            mask_image = cube_mask(image, centre)
            sitk.WriteImage(mask_image, str(work / f"mask{index}.nii.gz"))
            writer.writerow([f"patient{index}", identity.study_uid, int(centre is not None), f"mask{index}.nii.gz"])
            studies.append(identity.study_uid)
        writer.writerow(["absent", ABSENT_STUDY, "", ""])
    yield server, studies, work
    server.stop()


def _audit_pacs(server, bundle, out, *extra):
    return run_cli("audit", "--model", str(bundle), "--pacs", server.dicomweb, "--out", str(out), "--workers", "2",
                   "--uncertainty", "none", "--no-stability", "--no-faithfulness", "--sanity-cases", "0", *extra,
                   env=server.credentials_env)


@pytest.fixture(scope="module")
def audited_manifest(pacs_cohort, classifier_bundle):
    server, studies, work = pacs_cohort
    out = work / "audit"
    run = _audit_pacs(server, classifier_bundle, out, "--manifest", str(work / "manifest.csv"))
    rows = {row["case"]: row for row in map(json.loads, (out / "cases.jsonl").read_text().splitlines())}
    return run, rows, out


def test_a_manifests_studies_are_fetched_by_the_workers_with_their_labels_and_masks(pacs_cohort, audited_manifest):
    server, studies, _ = pacs_cohort
    run, rows, _ = audited_manifest
    assert run.returncode == 0, run.stderr
    assert sorted(rows) == ["absent", "patient0", "patient1", "patient2"]
    for index, centre in enumerate(CENTRES):
        row = rows[f"patient{index}"]
        assert row["status"] == "ok", row.get("error")
        assert row["study_uid"] == studies[index] and row["pacs"] == server.dicomweb and row["image"] is None
        assert isinstance(row["correct"], bool)
        assert ("loc_pointing_hit" in row) == (centre is not None)  # the mask on disk lies on the fetched series
    assert rows["absent"]["status"] == "error" and ABSENT_STUDY in rows["absent"]["error"]
    assert "Audited 4 case(s): 3 measured, 1 failed" in run.stdout
    assert PASSWORD not in (run.stdout + run.stderr + json.dumps(rows))


def test_without_a_manifest_every_study_on_the_pacs_is_audited(pacs_cohort, classifier_bundle, tmp_path):
    server, studies, _ = pacs_cohort
    run = _audit_pacs(server, classifier_bundle, tmp_path / "all")
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in (tmp_path / "all" / "cases.jsonl").read_text().splitlines()]
    assert sorted(row["study_uid"] for row in rows) == sorted(studies)
    assert all(row["status"] == "ok" for row in rows)


def test_the_study_list_is_read_page_by_page_and_capped(pacs_cohort):
    server, studies, _ = pacs_cohort
    client = PacsClient(server.dicomweb, (USER, PASSWORD))
    assert sorted(s.study_uid for s in client.all_studies(most=10, page=2)) == sorted(studies)
    with pytest.raises(XAIInputError, match="more than 2 studies"):
        client.all_studies(most=2, page=2)


def test_wrong_credentials_or_a_cases_folder_with_pacs_are_refused_before_any_worker(pacs_cohort, classifier_bundle,
                                                                                    tmp_path):
    server, _, work = pacs_cohort
    run = run_cli("audit", "--model", str(classifier_bundle), "--pacs", server.dicomweb, "--out", str(tmp_path / "a"),
                  env={"SLICER_XAI_PACS_USER": USER, "SLICER_XAI_PACS_PASSWORD": "wrong"})
    assert run.returncode == 2 and "HTTP 401" in run.stderr and "Dask dashboard" not in run.stderr
    run = run_cli("audit", "--model", str(classifier_bundle), "--pacs", server.dicomweb, "--cases", str(work),
                  "--out", str(tmp_path / "b"))
    assert run.returncode == 2 and "not both" in run.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_way_back_to_a_pacs_case_names_that_pacs_and_only_it(pacs_cohort, audited_manifest):
    from XAIViewer.audit_cases import flagged_case_choices

    server, studies, _ = pacs_cohort
    _, rows, out = audited_manifest
    report = (out / "audit-report.html").read_text(encoding="utf-8")
    flagged = flagged_case_choices(out, server.dicomweb)
    assert flagged, "the tiny model gets some cases wrong"
    assert all(choice["study"] in studies and choice["image"] is None for choice in flagged)
    assert f"slicer-xai viewer --pacs {server.dicomweb} --study {flagged[0]['study']} --model" in report
    assert_viewer_commands_parse(report)
    with pytest.raises(XAIInputError, match="give --pacs with that address"):
        flagged_case_choices(out)
    with pytest.raises(XAIInputError, match="give --pacs with that address"):
        flagged_case_choices(out, "https://elsewhere.example/dicom-web")


def test_the_viewer_opens_a_flagged_pacs_case_from_that_pacs(pacs_cohort, audited_manifest):
    from viewer_harness import browser, free_port, open_page, shot, viewer_process

    from XAIViewer.audit_cases import flagged_case_choices

    server, _, _ = pacs_cohort
    _, _, out = audited_manifest
    first = flagged_case_choices(out, server.dicomweb)[0]
    with viewer_process(["--audit", str(out), "--pacs", server.dicomweb, "--port", str(free_port())],
                        env=server.credentials_env) as (url, _), browser() as instance:
        page = open_page(instance, url)
        page.wait_for_selector("#pacs-case", state="visible", timeout=120_000)
        assert "Brain MR (20 slices)" in page.inner_text("#pacs-case")
        assert f"{first['value']} — " in page.inner_text("#audit-cases")
        assert not page.locator("#error").is_visible(), page.inner_text("#error")
        shot(page, "audit-pacs-case")


def test_a_study_needs_its_pacs_and_is_the_only_case_given():
    run = run_cli("viewer", "--study", "1.2.3", "--port", "0")
    assert run.returncode == 2 and "--study needs --pacs URL" in run.stderr
    run = run_cli("viewer", "case.nii.gz", "--pacs", "http://127.0.0.1:9/dicom-web", "--study", "1.2.3", "--port", "0")
    assert run.returncode == 2 and "Give one case to open" in run.stderr
