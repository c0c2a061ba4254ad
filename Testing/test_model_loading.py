"""Loading models safely: bundles, TorchScript, and every refusal a user can meet."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import CLASSIFIER_DEF, CLASSIFIER_XAI, build, make_image, write_bundle
from hostile_inputs import hostile_torchscript

from XAIExplainLib.errors import XAIModelError
from XAIExplainLib.models import load_model, read_model_spec
from XAIExplainLib.pipeline import explain_image, prepare_case


def _copy(bundle, tmp_path, name="copy"):
    return shutil.copytree(bundle, tmp_path / name)


def _edit_json(path, edit):
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_bundle_loads_in_eval_mode_with_its_card(classifier_bundle):
    model = load_model(classifier_bundle)
    assert not model.network.training
    assert model.spec.task == "classification"
    assert model.spec.class_names == ("no lesion", "lesion")
    assert model.model_id == "tiny-classifier@0.0.1"
    assert len(model.sha256) == 64


def test_missing_path():
    with pytest.raises(XAIModelError, match="Model not found"):
        load_model("/nonexistent/model")


def test_folder_that_is_not_a_bundle(tmp_path):
    (tmp_path / "just-a-folder").mkdir()
    with pytest.raises(XAIModelError, match="not a MONAI bundle"):
        load_model(tmp_path / "just-a-folder")


def test_weights_that_do_not_match_the_network(classifier_bundle, tmp_path):
    bundle = _copy(classifier_bundle, tmp_path)
    wider = dict(CLASSIFIER_DEF, block_inplanes=[8, 8, 8, 16])
    torch.save(build(wider).state_dict(), bundle / "models" / "model.pt")
    _edit_json(bundle / "configs" / "metadata.json", lambda d: d["xai"].pop("weights_sha256"))
    with pytest.raises(XAIModelError, match="do not match the network"):
        load_model(bundle)


def test_recorded_hash_is_checked(classifier_bundle, tmp_path):
    bundle = _copy(classifier_bundle, tmp_path)
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    next(iter(state.values())).add_(1.0)
    torch.save(state, bundle / "models" / "model.pt")
    with pytest.raises(XAIModelError, match="SHA-256"):
        load_model(bundle)


def test_pickled_code_in_the_weights_is_not_unpickled(classifier_bundle, tmp_path):
    bundle = _copy(classifier_bundle, tmp_path)
    torch.save({"weights": torch.zeros(1), "evil": shutil.rmtree}, bundle / "models" / "model.pt")
    _edit_json(bundle / "configs" / "metadata.json", lambda d: d["xai"].pop("weights_sha256"))
    with pytest.raises(XAIModelError, match="refusing to unpickle"):
        load_model(bundle)


@pytest.mark.parametrize(
    "network_def, expected",
    [
        ({"_target_": "os.system", "command": "touch /tmp/pwned"}, "not a network class"),
        (dict(CLASSIFIER_DEF, num_classes="$__import__('os').getpid() % 1 + 2"), "Python expression"),
        (dict(CLASSIFIER_DEF, _requires_="$print('hi')"), "_requires_"),
        (dict(CLASSIFIER_DEF, num_classes="%other.json#classes"), "imports another file"),
    ],
)
def test_untrusted_code_expressions_are_refused(classifier_bundle, tmp_path, network_def, expected):
    bundle = _copy(classifier_bundle, tmp_path)
    _edit_json(bundle / "configs" / "inference.json", lambda d: d.update(network_def=network_def))
    with pytest.raises(XAIModelError, match=expected):
        load_model(bundle)


def test_trusting_the_bundle_allows_expressions(classifier_bundle, tmp_path):
    bundle = _copy(classifier_bundle, tmp_path)
    _edit_json(bundle / "configs" / "inference.json",
               lambda d: d.update(network_def=dict(CLASSIFIER_DEF, num_classes="$1 + 1")))
    with pytest.raises(XAIModelError, match="--trust-bundle"):
        load_model(bundle)
    assert load_model(bundle, trust_bundle=True).spec.task == "classification"


def test_references_to_literal_entries_are_allowed(classifier_bundle, tmp_path):
    bundle = _copy(classifier_bundle, tmp_path)
    _edit_json(bundle / "configs" / "inference.json",
               lambda d: d.update(num_classes=2, network_def=dict(CLASSIFIER_DEF, num_classes="@num_classes")))
    assert load_model(bundle).network.fc.out_features == 2


def test_channel_count_in_metadata_must_match_the_network(tmp_path):
    bundle = write_bundle(tmp_path / "two-channel-card", CLASSIFIER_DEF, build(CLASSIFIER_DEF), CLASSIFIER_XAI, num_channels=2)
    with pytest.raises(XAIModelError, match="input channel"):
        load_model(bundle)


def test_a_model_for_two_input_volumes_does_not_fit_one_image(tmp_path):
    two = dict(CLASSIFIER_DEF, n_input_channels=2)
    bundle = write_bundle(tmp_path / "t1-t2", two, build(two), CLASSIFIER_XAI, num_channels=2)
    model = load_model(bundle)
    with pytest.raises(XAIModelError, match=r"takes 2 input volume\(s\), one per channel in this order: channel 1, channel 2; 1 given"):
        prepare_case(make_image(), model)
    assert prepare_case(make_image(), model, [make_image(seed=1)]).inputs.shape[:2] == (1, 2)


def test_missing_xai_card_is_explained(classifier_bundle, tmp_path):
    bundle = _copy(classifier_bundle, tmp_path)
    _edit_json(bundle / "configs" / "metadata.json", lambda d: d.pop("xai"))
    # Without a card the bundle's own configs are read; this one has no Spacingd, so the grid is unknown.
    with pytest.raises(XAIModelError, match=r"needs what neither the bundle nor an xai card.*input\.spacing_mm.*models card"):
        read_model_spec(bundle)


def test_torchscript_model_with_sidecar_metadata(classifier_bundle, tmp_path):
    bundle_model = load_model(classifier_bundle)
    scripted = torch.jit.trace(bundle_model.network, torch.zeros(1, 1, 24, 24, 24))
    path = tmp_path / "classifier.ts"
    scripted.save(str(path))
    metadata = json.loads((classifier_bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    metadata["xai"].pop("weights_sha256")
    path.with_suffix(".json").write_text(json.dumps(metadata), encoding="utf-8")
    with pytest.raises(XAIModelError, match="TorchScript model, which is program code.*--trust-bundle"):
        load_model(path)  # TorchScript is code: only with the user's word
    model = load_model(path, trust_bundle=True)
    assert model.is_torchscript
    image = make_image(size=(30, 30, 30), spacing=(1.5, 1.5, 1.5))
    ours = explain_image(image, model, method="gradient")
    reference = explain_image(image, bundle_model, method="gradient")
    assert ours.prediction["predicted_class"] == reference.prediction["predicted_class"]
    with pytest.raises(XAIModelError, match="TorchScript"):
        explain_image(image, model, method="gradcam")


def test_torchscript_card_is_read_without_running_its_code(classifier_bundle, tmp_path):
    """``models show`` reads the archive's extra/metadata.json as zip data: a ``__setstate__`` that would
    write a file when deserialised never runs."""
    marker = tmp_path / "ran"
    path = hostile_torchscript(tmp_path, classifier_bundle, marker)
    assert read_model_spec(path).task == "classification"
    with pytest.raises(XAIModelError, match="--trust-bundle"):
        load_model(path)
    assert not marker.exists()
