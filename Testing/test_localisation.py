"""Ground-truth localisation metrics of a map (pointing game, mass in lesion, AUPRC, top-k IoU)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from XAIRobustnessLib.localisation import average_precision, localisation_scores


def _image(array, spacing=(1.0, 1.0, 2.0)):
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    image.SetSpacing(spacing)
    return image


@pytest.fixture()
def case():
    shape = (20, 24, 28)
    body = np.zeros(shape, np.float32)
    body[2:18, 2:22, 2:26] = 100.0
    lesion = np.zeros(shape, np.uint8)
    lesion[8:12, 10:14, 10:15] = 1
    return _image(body), _image(lesion), lesion.astype(bool), body > 0


def test_a_map_on_the_lesion_scores_perfectly(case):
    image, lesion, inside, _ = case
    scores = localisation_scores(_image(inside * 5.0), lesion, image)
    assert scores.pointing_hit and scores.mass_in_lesion == pytest.approx(1.0)
    assert scores.auprc == pytest.approx(1.0) and scores.top_k_iou == pytest.approx(1.0)
    assert scores.lesion_share == pytest.approx(inside.sum() / (16 * 20 * 24))


def test_a_decoy_map_misses_and_scores_below_chance(case):
    image, lesion, inside, _ = case
    decoy = np.zeros(inside.shape)
    decoy[3:6, 3:6, 3:6] = 1.0
    scores = localisation_scores(_image(decoy), lesion, image)
    assert not scores.pointing_hit and scores.mass_in_lesion == 0.0 and scores.top_k_iou == 0.0
    assert scores.auprc <= scores.lesion_share + 1e-9


def test_uninformative_maps_score_the_lesion_share(case):
    image, lesion, inside, body = case
    rng = np.random.default_rng(0)
    noise = localisation_scores(_image(rng.random(inside.shape) * body), lesion, image)
    assert noise.mass_in_lesion == pytest.approx(noise.lesion_share, rel=0.25)
    assert noise.auprc == pytest.approx(noise.lesion_share, rel=0.5)
    constant = localisation_scores(_image(np.ones(inside.shape)), lesion, image)
    assert constant.auprc == pytest.approx(constant.lesion_share)


def test_evidence_against_the_target_and_the_air_do_not_count(case):
    image, lesion, inside, body = case
    signed = np.where(inside, 1.0, -5.0)
    signed[0, 0, 0] = 50.0  # outside the body
    scores = localisation_scores(_image(signed), lesion, image)
    assert scores.pointing_hit and scores.mass_in_lesion == pytest.approx(1.0)


def test_average_precision_matches_the_definition():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    truth = np.array([1, 0, 1, 0, 0], bool)
    assert average_precision(scores, truth) == pytest.approx((1.0 + 2 / 3) / 2)


def test_an_empty_lesion_is_refused(case):
    image, _, inside, _ = case
    with pytest.raises(ValueError, match="empty"):
        localisation_scores(_image(inside * 1.0), _image(np.zeros(inside.shape)), image)
