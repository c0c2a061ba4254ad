"""Model acceptance: the committed demo weights on freshly generated cases from a seed never used in
training (issue 3: AUC >= 0.95 for the two classifiers, mean lesion Dice >= 0.70 for the segmenter).

Every model is loaded and fed exactly as the product does (:func:`XAIExplainLib.models.load_model`,
:func:`XAIExplainLib.pipeline.prepare_case`), so the classifiers' max-pooling head is what is measured.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_demo_models import EVAL_SEED, MODELS
from XAIExplainLib.data import make_case
from XAIExplainLib.models import load_model
from XAIExplainLib.pipeline import predict_probabilities, prepare_case
from XAIExplainLib.training.common import dice, mask_to_model_grid, roc_auc

N_CASES = 40


def _cases(kind):
    return [make_case(kind, EVAL_SEED, i) for i in range(N_CASES)]


@pytest.fixture(scope="module")
def brain_cases():
    return _cases("brain-mri")


@torch.no_grad()
def _auc(name, cases):
    model = load_model(MODELS / name)
    scores = [predict_probabilities(model, prepare_case(image, model).inputs)[0, 1].item() for image, _, _ in cases]
    labels = [info["label"] for _, _, info in cases]
    assert 10 <= sum(labels) <= 30, "the held-out set should hold both classes"
    return roc_auc(scores, labels)


def test_brain_classifier_held_out_auc(brain_cases):
    assert _auc("brain-lesion-classifier", brain_cases) >= 0.95


def test_chest_classifier_held_out_auc():
    assert _auc("chest-nodule-classifier", _cases("chest-ct")) >= 0.95


@torch.no_grad()
def test_brain_segmenter_held_out_dice(brain_cases):
    model = load_model(MODELS / "brain-lesion-segmenter")
    meta = model.spec.metadata["xai"]
    scores = []
    for image, mask, info in brain_cases:
        if not info["label"]:
            continue
        probabilities = predict_probabilities(model, prepare_case(image, model).inputs)
        predicted = probabilities.argmax(1)[0].numpy() == 1
        scores.append(dice(predicted, mask_to_model_grid(mask, image, meta)))
    assert len(scores) >= 10
    assert float(np.mean(scores)) >= 0.70
