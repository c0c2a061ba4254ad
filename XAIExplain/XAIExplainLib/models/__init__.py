"""Models: bundle and TorchScript loading, the model card, safe network construction."""

from .loading import (
    LoadedModel,
    bundle_weights_file,
    bundled_models_dir,
    derive_bundle_card,
    file_sha256,
    list_bundled_models,
    load_model,
    read_model_spec,
    resolve_model_path,
    resources_dir,
)
from .layers import suggest_cam_layers
from .spec import TASKS, ModelSpec

__all__ = [
    "LoadedModel",
    "ModelSpec",
    "TASKS",
    "bundle_weights_file",
    "bundled_models_dir",
    "derive_bundle_card",
    "file_sha256",
    "list_bundled_models",
    "load_model",
    "read_model_spec",
    "resolve_model_path",
    "resources_dir",
    "suggest_cam_layers",
]
