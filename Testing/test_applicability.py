"""A case outside the training domain the model card states is named as such, and the radiologist's review
flag goes up; a case inside it, and a card without a domain, raise nothing."""

from __future__ import annotations

import pytest
import SimpleITK as sitk

from XAIExplainLib.applicability import Domain, assess_applicability
from XAIExplainLib.audiences import EVIDENCE_TOP_PERCENT, build_case_facts
from XAIExplainLib.errors import XAIModelError
from XAIExplainLib.models import load_model
from XAIExplainLib.pipeline import explain_image
from XAIExplainLib.resources import sample_case_path
from XAIExplainLib.tasks import get_task


@pytest.fixture(scope="module")
def classifier():
    return load_model("brain-lesion-classifier")


def _facts(image, model):
    result = explain_image(image, model, method="gradcam")
    return result, build_case_facts(image, {"gradcam": result}, get_task("brain-lesion-triage"), model.spec,
                                    EVIDENCE_TOP_PERCENT)


def test_the_sample_case_is_inside_the_demo_model_domain(classifier):
    result, facts = _facts(sitk.ReadImage(str(sample_case_path())), classifier)
    assert result.applicability["inside"] is True
    assert {c["check"] for c in result.applicability["checks"]} == {"spacing", "intensity"}
    assert not any("outside what the model was trained on" in reason for reason in facts.review_reasons)


def test_a_case_scaled_far_beyond_training_raises_the_review_flag(classifier):
    image = sitk.Cast(sitk.ReadImage(str(sample_case_path())), sitk.sitkFloat32) * 1e6
    result, facts = _facts(image, classifier)
    assert result.applicability["inside"] is False
    assert result.to_json()["applicability"]["checks"][1]["detail"].startswith("intensities (1st-99th percentile 0 to 1.037e+09)")
    assert facts.review and any("outside what the model was trained on" in r and "far from the training envelope" in r
                                for r in facts.review_reasons)


def test_a_finer_scan_than_training_is_named():
    image = sitk.Image(40, 40, 40, sitk.sitkFloat32)
    image.SetSpacing((1.0, 1.0, 1.0))
    domain = Domain((1.8, 1.8, 2.0), (2.2, 2.2, 3.0), None)
    verdict = assess_applicability(image, domain)
    assert verdict["inside"] is False and "outside the training range 1.8 x 1.8 x 2 to 2.2 x 2.2 x 3 mm" in \
        verdict["checks"][0]["detail"]
    assert assess_applicability(image, Domain())["inside"] is None  # no stated domain: no verdict


def test_a_malformed_domain_is_refused_with_each_problem():
    with pytest.raises(XAIModelError, match=r"spacing_mm.min must not exceed max"):
        Domain.from_metadata({"spacing_mm": {"min": [3, 3, 3], "max": [1, 1, 1]}})
    with pytest.raises(XAIModelError, match=r"intensity_range must be 2 numbers"):
        Domain.from_metadata({"intensity_range": "wide"})


def test_the_demo_cards_state_the_domain_their_training_recipe_writes():
    from XAIExplainLib.models import read_model_spec, resolve_model_path
    from XAIExplainLib.training.recipes import RECIPES, TRAINING_DOMAINS

    for recipe in RECIPES.values():
        card = read_model_spec(resolve_model_path(recipe.name)).metadata["xai"]
        assert card["domain"] == TRAINING_DOMAINS[recipe.kind]


def test_a_published_ct_bundle_flags_a_volume_that_is_not_in_hounsfield_units(tmp_path):
    """Zoo bundles state no training data, but a CT model's input is in HU: normalised or absurd values are outside."""
    import SimpleITK as sitk
    from conftest import make_image
    from XAIExplainLib.models import load_model
    from XAIExplainLib.pipeline import explain_image
    from zoo_bundles import SPLEEN_LIKE, write_zoo_bundle

    model = load_model(write_zoo_bundle(tmp_path / "spleen", SPLEEN_LIKE))
    assert model.spec.domain.intensity_range == (-1024.0, 3071.0)
    ct = make_image(size=(40, 36, 30), spacing=(1.5, 1.5, 2.0))
    array = sitk.GetArrayFromImage(ct)
    hounsfield = sitk.GetImageFromArray((array - array.min()) / (array.max() - array.min()) * 1400.0 - 1000.0)
    hounsfield.CopyInformation(ct)
    assert explain_image(hounsfield, model, method="gradient").applicability["inside"] is True
    scaled = sitk.GetImageFromArray(array * 1e30)
    scaled.CopyInformation(ct)
    assert explain_image(scaled, model, method="gradient").applicability["inside"] is False
