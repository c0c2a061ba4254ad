"""The browser viewer as a user meets it: real server process, Debian's chromium, pixels checked."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from viewer_harness import (
    ROOT,
    browser,
    choose,
    download,
    free_port,
    heat_mask,
    open_page,
    outline_mask,
    quadrants,
    run_and_wait,
    shot,
    viewer_process,
    views_pixels,
)

DEMO_CASE = ROOT / "XAIExplain" / "XAIExplainLib" / "Resources" / "SampleData" / "brain-lesion-case1.nii.gz"
DEMO_MODEL = "brain-lesion-classifier"
@pytest.fixture(scope="module")
def viewer_url():
    with viewer_process([str(DEMO_CASE), "--model", DEMO_MODEL, "--port", str(free_port())]) as (url, _):
        yield url


def test_run_puts_the_heat_map_on_the_lesion_in_every_slice_view(viewer_url):
    """After Run every slice view shows the evidence over the image, and it sits on the green outline of
    the demo case's reference lesion (the views jump to the evidence peak); nothing before Run."""
    with browser() as instance:
        page = open_page(instance, viewer_url)
        before = views_pixels(page)
        assert heat_mask(before).sum() == 0, "heat colours before anything ran"
        run_and_wait(page)
        shot(page, "run")
        prediction = page.inner_text("#prediction").strip().lower()
        assert prediction.startswith("lesion") and not prediction.startswith("lesion free"), prediction
        assert "the peak is inside it" in page.inner_text("#ground-truth")
        hint = page.inner_text("#method-hint")  # why this method, and what the bench measured for it
        assert hint.startswith("Recommended for this task") and "Measured by slicer-xai bench" in hint, hint
        views = quadrants(views_pixels(page))
        for name in ("axial", "coronal", "sagittal"):
            heat, outline = heat_mask(views[name]), outline_mask(views[name])
            assert heat.sum() > 200, f"no heat overlay in the {name} view"
            assert outline.sum() > 20, f"the {name} view does not cut through the reference lesion"
            heat_centre = np.argwhere(heat).mean(axis=0)
            lesion_centre = np.argwhere(outline).mean(axis=0)
            distance = float(np.linalg.norm(heat_centre - lesion_centre))
            assert distance < 0.12 * views[name].shape[1], (
                f"{name} view: the heat is centred {distance:.0f} px from the reference lesion")


def test_a_bad_upload_shows_an_error_and_the_app_keeps_working(viewer_url, tmp_path):
    bad = tmp_path / "scan.nii.gz"
    bad.write_text("not an image at all\n", encoding="utf-8")
    with browser() as instance:
        page = open_page(instance, viewer_url)
        page.set_input_files("#upload", str(bad))
        page.wait_for_selector("#error", state="visible", timeout=30_000)
        shot(page, "bad-upload")
        assert "Could not read scan.nii.gz" in page.inner_text("#error")
        run_and_wait(page)  # the loaded case is still there and runs
        assert page.inner_text("#prediction")


def test_switching_audience_rewrites_the_summary(viewer_url):
    with browser() as instance:
        page = open_page(instance, viewer_url)
        run_and_wait(page)
        choose(page, "audience-select", "Radiologist")
        time.sleep(1.0)
        radiologist = page.inner_text("#result-card")
        choose(page, "audience-select", "Teaching / patient")
        page.wait_for_function("document.querySelector('#result-card').innerText.includes('A doctor decides')",
                               timeout=15_000)
        teaching = page.inner_text("#result-card")
        shot(page, "teaching")
        assert teaching != radiologist
        assert "RAS" in radiologist and "RAS" not in teaching  # coordinates for the radiologist only
        choose(page, "audience-select", "Researcher")
        page.wait_for_function("!document.querySelector('#result-card').innerText.includes('A doctor decides')",
                               timeout=15_000)
        assert page.inner_text("#result-card") not in (radiologist, teaching)


def test_robustness_tab_plots_the_sweep_and_the_report_downloads(viewer_url, tmp_path):
    with browser() as instance:
        page = open_page(instance, viewer_url)
        choose(page, "method-select", "Grad-CAM")  # the fast method keeps the sweep to seconds
        run_and_wait(page)
        page.click("#tab-robustness")
        page.click("#run-robustness")
        page.wait_for_selector("#robustness-plot", state="visible", timeout=300_000)
        shot(page, "robustness")
        plot = page.locator("#plot-image")
        assert plot.is_visible()
        size = plot.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert size[0] > 800 and size[1] > 400, f"robustness plot is {size}"
        assert "severity" in " ".join(page.locator("#robustness-result").all_inner_texts())
        page.click("#plot-close")
        page.click("#tab-explain")
        choose(page, "audience-select", "Radiologist")  # the presenter scene is shared with earlier tests
        page.click("#make-report")
        page.wait_for_selector("#download-report", state="visible", timeout=300_000)
        saved = download(page, "#download-report", tmp_path)
        html_text = saved.read_text(encoding="utf-8")
        assert saved.name.endswith("-radiologist-report.html") and "data:image/png;base64," in html_text


def test_presenter_mode_second_browser_follows(viewer_url):
    with browser() as instance:
        teacher = open_page(instance, viewer_url)
        student = open_page(instance, viewer_url)
        run_and_wait(teacher)
        student.wait_for_selector("#result-card", state="visible", timeout=30_000)
        assert student.inner_text("#prediction") == teacher.inner_text("#prediction")


def test_other_addresses_need_the_access_token():
    port = free_port()
    with viewer_process([str(DEMO_CASE), "--model", DEMO_MODEL, "--host", "0.0.0.0", "--port", str(port)]) as (url, _):
        assert "token=" in url
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/")
        assert refused.value.code == 403
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/?token=wrong")
        assert urllib.request.urlopen(url).status == 200


def test_a_bad_input_is_refused_before_the_server_starts(tmp_path):
    bad = tmp_path / "empty.nii.gz"
    bad.write_bytes(b"")
    with pytest.raises(RuntimeError, match="Input file is empty"):
        with viewer_process([str(bad), "--port", str(free_port())], timeout_s=60):
            pass


def test_per_student_mode_keeps_sessions_apart():
    args = [str(DEMO_CASE), "--model", DEMO_MODEL, "--port", str(free_port()), "--classroom", "per-student"]
    with viewer_process(args) as (url, _), browser() as instance:
        first = open_page(instance, url)
        second = open_page(instance, url)
        assert first.url.split("/")[2] != second.url.split("/")[2], "both students were sent to the same viewer"
        run_and_wait(first)
        time.sleep(2.0)
        assert not second.is_visible("#result-card"), "one student's result appeared in another's viewer"
        assert heat_mask(views_pixels(second)).sum() == 0


def test_a_segmentation_models_structures_can_be_picked_and_explained(tmp_path):
    """A model that finds several structures (a BraTS-like bundle: three sigmoid labels) gets the
    *Explained structure* picker after Run, largest first with volumes; picking another explains it."""
    import SimpleITK as sitk
    from conftest import make_image
    from zoo_bundles import BRATS_LIKE, write_zoo_bundle

    bundle = write_zoo_bundle(tmp_path / "brats_mri_segmentation", BRATS_LIKE)
    case = tmp_path / "mr.nii.gz"
    sitk.WriteImage(make_image(size=(40, 36, 30), spacing=(1.0, 1.0, 1.0), blob_index=(20, 18, 15)), str(case))
    with viewer_process([str(case), "--model", str(bundle), "--port", str(free_port())]) as (url, _):
        with browser() as instance:
            page = open_page(instance, url)
            run_and_wait(page)
            picker = page.locator("#structure-select")
            picker.wait_for(state="visible", timeout=30_000)
            first = _selected(page, "structure-select")
            assert " ml)" in first, first
            # By default the structure explained is the one the headline names as segmented.
            assert page.inner_text("#prediction").startswith(first.split(" (")[0] + " segmented")
            picker.click(force=True)
            options = page.get_by_role("option")
            titles = [options.nth(i).inner_text().strip() for i in range(options.count())]
            assert len(titles) >= 2 and all(t.endswith(" ml)") for t in titles), titles
            volumes = [float(t.rsplit("(", 1)[1].split(" ")[0]) for t in titles]
            assert volumes == sorted(volumes, reverse=True)  # largest first
            other = next(t for t in titles if t.split(" (")[0] not in first)
            before = views_pixels(page)
            page.get_by_role("option", name=other, exact=True).click()
            deadline = time.time() + 120
            while time.time() < deadline:  # the other structure's map replaces the first one's in the views
                time.sleep(1.0)
                if page.locator("#cancel").count() == 0 and np.abs(views_pixels(page).astype(int) - before).max() > 40:
                    break
            else:
                pytest.fail("the views did not change after another structure was picked")
            assert _selected(page, "structure-select").startswith(other.split(" (")[0])
            assert f"Main evidence for {other.split(' (')[0]} (" in page.inner_text("#summary")
            shot(page, "structure-picker")


def _selected(page, select_id: str) -> str:
    """What a vuetify select shows as chosen (its field's text without the label)."""
    text = page.evaluate(f"() => document.querySelector('#{select_id}').closest('.v-select').innerText")
    return text.strip().splitlines()[-1].strip()


def test_a_multi_channel_model_gets_one_upload_per_further_volume(tmp_path):
    """A model taking T1c and FLAIR: the panel asks for the FLAIR beside the case, Run names it while it is
    missing, and explains once it is uploaded."""
    from test_zoo_bundles import _two_channel_case

    bundle, _t1c, _flair = _two_channel_case(tmp_path)
    with viewer_process([str(tmp_path / "t1c.nii.gz"), "--model", str(bundle), "--port", str(free_port())]) as (url, _):
        with browser() as instance:
            page = open_page(instance, url)
            page.wait_for_selector("#channel-upload-2", state="visible", timeout=30_000)
            assert "Input 2: FLAIR" in page.evaluate(
                "() => document.querySelector('#channel-upload-2').closest('.v-input').innerText")
            assert page.locator("#channel-upload-3").is_hidden()  # two volumes: one more field only
            page.click("#run")
            page.wait_for_selector("#error", state="visible", timeout=60_000)
            assert "upload FLAIR (input 2) as well" in page.inner_text("#error")
            page.set_input_files("#channel-upload-2", str(tmp_path / "flair.nii.gz"))
            page.wait_for_function(
                "() => document.querySelector('#channel-status-2').innerText.includes('Loaded: flair')", timeout=60_000)
            run_and_wait(page)
            assert page.locator("#error").is_hidden()
            shot(page, "multi-channel")
