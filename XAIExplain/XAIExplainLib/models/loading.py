"""Finding and loading models: MONAI bundle folders and TorchScript files, safely.

Safe by default: weights are read with ``torch.load(..., weights_only=True)`` (no unpickling of
arbitrary objects), network definitions go through :mod:`.safe_config` (built first on PyTorch's
``meta`` device, so a network far larger than its weights file is refused before any memory is
allocated), the weights' SHA-256 is checked against the one recorded in the metadata, and the weights
file must lie inside its bundle. TorchScript archives hold code (``torch.jit.load`` runs it), so they
are loaded only when the user trusts them (``--trust-bundle``); their card is read from the archive
without deserialising anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..bundle_card import derive_card
from ..errors import XAIModelError
from ..resources import bundled_models_dir, resources_dir
from .layers import rank_cam_layers, trace_network
from ..nnunet_card import is_nnunet_folder, nnunet_card_metadata
from .nnunet import NNUNetNetwork, NNUNetRuntime, load_nnunet_network
from .pooling import MaxPooledClassifier, pooled_layer_name
from .safe_config import MetaBuildError, build_network
from .spec import ModelSpec

__all__ = [
    "LoadedModel",
    "resources_dir",
    "bundled_models_dir",
    "list_bundled_models",
    "resolve_model_path",
    "read_model_spec",
    "load_model",
    "file_sha256",
    "bundle_weights_file",
    "MAX_METADATA_BYTES",
]

#: A model card or network config larger than this is refused before it is parsed.
MAX_METADATA_BYTES = 4 * 2**20
#: The network may hold at most this many bytes more than its weights file (buffers, rounding).
_WEIGHTS_SIZE_SLACK_BYTES = 1 * 2**20
#: Tensors a constructor may create beside its parameters (masks, index tables) when built on the CPU.
_BUILD_WORKSPACE_BYTES = 64 * 2**20

@dataclass
class LoadedModel:
    """A network ready for inference (eval mode, CPU) with its model card."""

    network: torch.nn.Module
    spec: ModelSpec
    path: Path
    sha256: str
    source: str  # "bundle", "torchscript" or "nnunet"
    #: A framework that prepares and predicts in its own way (nnU-Net); None: the engine's steps from the card.
    runtime: Optional[Any] = None

    @property
    def model_id(self) -> str:
        return f"{self.path.name}@{self.spec.version}"

    @property
    def is_torchscript(self) -> bool:
        return self.source == "torchscript"

    def describe(self) -> dict:
        return {
            "id": self.model_id,
            "name": self.spec.name,
            "version": self.spec.version,
            "task": self.spec.task,
            "class_names": list(self.spec.class_names),
            "sha256": self.sha256,
            "path": str(self.path),
            "source": self.source,
        }

    def describe_preprocessing(self) -> dict:
        """What was done to the image before the network saw it, and where the card says so."""
        if self.runtime is not None:
            return {**self.runtime.describe(), "output_activation": self.spec.output_activation,
                    "cam_target_layer": self.spec.cam_target_layer,
                    "card_sources": dict(self.spec.metadata.get("_xai_sources", {}))}
        grid = self.spec.input
        return {
            "orientation": grid.orientation,
            "spacing_mm": list(grid.spacing_mm),
            "size": list(grid.size) if grid.size else None,
            "sliding_window": {"size": list(grid.patch_size), "overlap": grid.overlap} if grid.patch_size else None,
            "divisible_by": grid.divisible_by,
            "intensity": {"kind": self.spec.intensity.kind, **dict(self.spec.intensity.params)},
            "output_activation": self.spec.output_activation,
            "cam_target_layer": self.spec.cam_target_layer,
            "card_sources": dict(self.spec.metadata.get("_xai_sources", {})),
        }


def list_bundled_models() -> list[dict]:
    """Name, path and card summary of each bundle under ``Resources/Models`` (unreadable ones flagged)."""
    models = []
    root = bundled_models_dir()
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        entry: dict[str, Any] = {"name": folder.name, "path": str(folder)}
        try:
            spec = read_model_spec(folder)
            entry.update(
                task=spec.task,
                modality=spec.modality,
                clinical_tasks=list(spec.clinical_tasks),
                class_names=list(spec.class_names),
                version=spec.version,
                title=spec.name,
            )
        except XAIModelError as error:
            entry["error"] = str(error)
        models.append(entry)
    return models


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A path as given if it exists, else the bundled model of that name."""
    path = Path(name_or_path)
    if path.exists():
        return path
    bundled = bundled_models_dir() / str(name_or_path)
    if str(name_or_path) and "/" not in str(name_or_path) and bundled.is_dir():
        return bundled
    names = [m["name"] for m in list_bundled_models()]
    known = f" (bundled models: {', '.join(names)})" if names else ""
    raise XAIModelError(f"Model not found: '{name_or_path}' is neither a path nor a bundled model{known}.")


def read_model_spec(path: Path) -> ModelSpec:
    """Parse the model card of a bundle folder or TorchScript file without loading any weights.

    A bundle folder's card is derived from the bundle as published
    (:func:`XAIExplainLib.bundle_card.derive_card`), its own
    ``xai`` section overriding entry by entry; a TorchScript file needs the ``xai`` section.
    """
    return ModelSpec.from_metadata(card_metadata(path), default_name=path.name)


def card_metadata(path: Path) -> dict:
    """The metadata of a bundle or TorchScript model with its effective ``xai`` card (derived for a bundle,
    read from its JSON files for an nnU-Net model folder)."""
    if is_nnunet_folder(path):
        return nnunet_card_metadata(path)
    metadata = _read_metadata(path)
    if path.is_dir():
        derived = derive_bundle_card(path, metadata)
        metadata = {**metadata, "xai": derived.xai, "_xai_sources": derived.sources}
        if derived.missing:
            raise XAIModelError(f"Bundle {path.name}: explaining it needs what neither the bundle nor an xai card in "
                                f"its metadata gives: " + "; ".join(derived.missing)
                                + f" (see: slicer-xai models card {path.name}).")
    return metadata


def derive_bundle_card(path: Path, metadata: Optional[dict] = None):
    """What :func:`XAIExplainLib.bundle_card.derive_card` reads from the bundle folder ``path`` (``DerivedCard``)."""
    metadata = metadata if metadata is not None else _read_metadata(path)
    return derive_card(metadata, read_inference_config(path, required=False))


def read_inference_config(path: Path, required: bool = True) -> Optional[dict]:
    """The bundle's ``configs/inference.json`` or ``inference.yaml`` (YAML read with ``safe_load``: plain data)."""
    config_file = _inference_config_file(path)
    if config_file is not None:
        return _read_json(config_file) if config_file.suffix == ".json" else _read_yaml(config_file)
    if required:
        raise XAIModelError(f"Bundle {path.name} has no configs/inference.json (or .yaml) describing its network.")
    return None


def _inference_config_file(path: Path) -> Optional[Path]:
    """Which inference config a bundle folder has (JSON first), without reading it."""
    return next((path / "configs" / name for name in ("inference.json", "inference.yaml", "inference.yml")
                 if (path / "configs" / name).is_file()), None)


def load_model(name_or_path: str | os.PathLike, trust_bundle: bool = False) -> LoadedModel:
    """Load a bundled model by name, a MONAI bundle folder, or a TorchScript file.

    Raises :class:`XAIModelError` with one sentence for a missing path, a folder that is not a bundle,
    an untrusted code expression, a weights file whose hash or tensors do not match, or a network whose
    input channels disagree with its metadata.
    """
    path = resolve_model_path(name_or_path)
    if is_nnunet_folder(path):
        return _load_nnunet(path, trust_bundle)
    spec = read_model_spec(path)
    weights = bundle_weights_file(path)
    sha256 = file_sha256(weights)
    if spec.weights_sha256 and spec.weights_sha256.lower() != sha256:
        raise XAIModelError(
            f"{weights.name} does not match the SHA-256 recorded in the model's metadata "
            f"(recorded {spec.weights_sha256[:12]}…, found {sha256[:12]}…): the file is corrupt or was replaced."
        )
    has_network_config = path.is_dir() and _inference_config_file(path) is not None
    if _is_torchscript(weights) and not has_network_config:
        if not trust_bundle:
            raise XAIModelError(
                f"{weights.name} is a TorchScript model, which is program code that runs when it is loaded; "
                f"refused — pass --trust-bundle (in Slicer and the viewer: 'Trust this model') only if you trust "
                f"where it comes from."
            )
        network, source = _load_torchscript(weights), "torchscript"
    else:
        network, source = _load_bundle_network(path, weights, trust_bundle), "bundle"
    _check_input_channels(network, spec, path.name)
    if spec.output_pooling is not None:
        network = MaxPooledClassifier(network, spec.positive_class, spec.output_activation)
        spec = dataclasses.replace(spec, cam_target_layer=pooled_layer_name(spec.cam_target_layer))
    trace = trace_network(network, spec.num_channels, _probe_size(spec)) if source == "bundle" else None
    if trace is not None:
        _check_output(trace.output, spec, path.name)
        suggested = rank_cam_layers(trace, spec.task) if not spec.cam_target_layer else []
        if suggested:
            spec = dataclasses.replace(spec, cam_target_layer=suggested[0])
    prepare_for_explaining(network)
    return LoadedModel(network=network, spec=spec, path=path.absolute(), sha256=sha256, source=source)


def _load_nnunet(path: Path, trust: bool) -> LoadedModel:
    """An nnU-Net v2 trained model folder (:mod:`.nnunet`)."""
    spec = read_model_spec(path)
    network, parts = load_nnunet_network(path, trust)
    network = NNUNetNetwork(network)
    trace = trace_network(network, spec.num_channels, spec.input.patch_size)
    if trace is not None and not spec.cam_target_layer:
        suggested = rank_cam_layers(trace, spec.task)
        if suggested:
            spec = dataclasses.replace(spec, cam_target_layer=suggested[0])
    prepare_for_explaining(network)
    return LoadedModel(network=network, spec=spec, path=path.absolute(), sha256=file_sha256(parts.checkpoint),
                       source="nnunet", runtime=NNUNetRuntime(parts))


def prepare_for_explaining(network: torch.nn.Module) -> None:
    """Evaluation mode, weights frozen (explanations take gradients of inputs and activations, never of
    weights: no weight gradients are computed or kept), and the activation checkpointing that MONAI's
    transformer blocks offer (``use_checkpoint``, SwinUNETR's) switched on: the same outputs, with a block's
    activations recomputed in the backward pass instead of kept."""
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    if isinstance(network, torch.jit.ScriptModule):
        return
    for module in network.modules():
        if isinstance(getattr(module, "use_checkpoint", None), bool):
            module.use_checkpoint = True


def _probe_size(spec: ModelSpec) -> tuple[int, ...]:
    """An input size the network accepts, to trace its layers: its window, else a small divisible cube."""
    size = spec.input.size or spec.input.patch_size
    return tuple(size) if size else (max(32, 4 * spec.input.divisible_by),) * 3


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundle_weights_file(path: Path) -> Path:
    """The weights file of a bundle folder (or the TorchScript file itself), which must lie inside it.

    A symbolic link pointing out of the bundle is refused: a bundle names only its own files.
    """
    if path.is_file():
        return path
    root = path.resolve()
    for candidate in ("models/model.pt", "models/model.ts"):
        weights = path / candidate
        if weights.is_file():
            resolved = weights.resolve()
            if not resolved.is_relative_to(root):
                raise XAIModelError(f"Bundle {path.name}: {candidate} points outside the bundle folder; refused.")
            return weights
    raise XAIModelError(f"Bundle {path.name} has no weights: models/model.pt (or models/model.ts) is missing.")


def _read_metadata(path: Path) -> dict:
    if path.is_dir():
        metadata_file = path / "configs" / "metadata.json"
        if not metadata_file.is_file():
            raise XAIModelError(
                f"{path} is a folder but not a MONAI bundle: configs/metadata.json is missing."
            )
        return _read_json(metadata_file)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        return _read_json(sidecar)
    if _is_torchscript(path):
        text = _torchscript_extra_file(path, "metadata.json")
        if text is not None:
            return _parse_json(text, f"{path.name}:extra/metadata.json")
        raise XAIModelError(
            f"TorchScript model {path.name} has no metadata: put the bundle metadata in {sidecar.name} "
            f"beside it or in the archive's extra file metadata.json."
        )
    raise XAIModelError(f"{path.name} is neither a MONAI bundle folder nor a TorchScript model file.")


def _torchscript_extra_file(path: Path, name: str) -> Optional[str]:
    """An extra file of a TorchScript archive (``<archive>/extra/<name>``), read as plain zip data:
    nothing is deserialised, so no TorchScript code runs."""
    try:
        with zipfile.ZipFile(path) as archive:
            member = next((m for m in archive.infolist() if m.filename.split("/")[1:] == ["extra", name]), None)
            if member is None:
                return None
            with archive.open(member) as handle:
                data = handle.read(MAX_METADATA_BYTES + 1)
    except (OSError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as error:
        raise XAIModelError(f"Could not read {path.name} as a TorchScript archive ({_one_line(error)}).") from None
    if len(data) > MAX_METADATA_BYTES:
        raise XAIModelError(f"{path.name}: extra/{name} is larger than {MAX_METADATA_BYTES // 2**20} MB; refused.")
    return data.decode("utf-8", errors="replace")


def _read_text(path: Path, kind: str) -> tuple[str, str]:
    """``(text, label)`` of a card or config file, refused above :data:`MAX_METADATA_BYTES`."""
    label = f"{path.parent.name}/{path.name}"
    try:
        if path.stat().st_size > MAX_METADATA_BYTES:
            raise XAIModelError(f"{label} is larger than {MAX_METADATA_BYTES // 2**20} MB; refused.")
        with open(path, encoding="utf-8") as handle:
            return handle.read(), label
    except (OSError, UnicodeDecodeError) as error:
        raise XAIModelError(f"Could not read {label} as {kind} ({_one_line(error)}).") from None


def _read_json(path: Path) -> dict:
    return _parse_json(*_read_text(path, "JSON"))


def _read_yaml(path: Path) -> dict:
    return _parse_config(*_read_text(path, "YAML"), kind="YAML")


def _parse_json(text: str, label: str) -> dict:
    return _parse_config(text, label, kind="JSON")


def _parse_config(text: str, label: str, kind: str) -> dict:
    """JSON or YAML text as a mapping (YAML with ``safe_load``: plain data, no tags that build objects)."""
    if kind == "YAML":
        import yaml

        loads, invalid = yaml.safe_load, yaml.YAMLError
    else:
        loads, invalid = json.loads, json.JSONDecodeError
    try:
        data = loads(text)
    except invalid as error:
        raise XAIModelError(f"Could not read {label} as {kind} ({_one_line(error)}).") from None
    except RecursionError:
        raise XAIModelError(f"{label} nests its {kind} too deeply to be a model card or config; refused.") from None
    if not isinstance(data, dict):
        raise XAIModelError(f"{label} is not a {kind} object.")
    return data


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            # TorchScript archives carry their code; torch.save'd state dicts carry only data.pkl and tensors.
            return any("/code/" in name for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _load_torchscript(weights: Path) -> torch.nn.Module:
    try:
        return torch.jit.load(str(weights), map_location="cpu")
    except Exception as error:
        raise XAIModelError(f"Could not load TorchScript model {weights.name} ({error}).") from None


def _load_bundle_network(path: Path, weights: Path, trust_bundle: bool) -> torch.nn.Module:
    config = read_inference_config(path)
    network = build_network(config, trust_bundle=True) if trust_bundle else _build_untrusted(config, weights)
    _load_weights(network, _read_state_dict(weights), weights.name)
    return network


def _build_untrusted(config: dict, weights: Path) -> torch.nn.Module:
    """The network of an untrusted config, never allocating more than its weights file could fill.

    It is sized on the meta device first, and the weights are matched against that skeleton; a network that
    computes with tensors while it is built (no values on meta) is built on the CPU with its allocations
    counted instead.
    """
    try:
        skeleton = build_network(config, device="meta")
    except MetaBuildError:
        limit = weights.stat().st_size + _WEIGHTS_SIZE_SLACK_BYTES + _BUILD_WORKSPACE_BYTES
        network = build_network(config, max_bytes=limit)
        _check_network_fits_weights(network, weights)
        return network
    _check_network_fits_weights(skeleton, weights)
    _load_weights(skeleton, _read_state_dict(weights), weights.name, assign=True)
    return build_network(config)


def _check_network_fits_weights(skeleton: torch.nn.Module, weights: Path) -> None:
    tensors = list(skeleton.state_dict().values())
    needed = sum(t.numel() * t.element_size() for t in tensors)
    available = weights.stat().st_size
    if needed > available + _WEIGHTS_SIZE_SLACK_BYTES:
        raise XAIModelError(
            f"The network in inference.json needs {needed / 2**20:.0f} MB of weights but {weights.name} holds only "
            f"{available / 2**20:.1f} MB: they do not belong together; refused before building it."
        )


def _load_weights(network: torch.nn.Module, state: dict, name: str, assign: bool = False) -> None:
    try:
        network.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as error:
        raise XAIModelError(
            f"The weights in {name} do not match the network in inference.json: {_summarise_mismatch(error)}"
        ) from None


def _read_state_dict(weights: Path) -> dict:
    try:
        state = _torch_load_tensors(weights)
    except pickle.UnpicklingError:
        raise XAIModelError(
            f"{weights.name} holds Python objects, not only tensors; refusing to unpickle it "
            f"(only plain state dicts are loaded, with weights_only=True)."
        ) from None
    except Exception as error:
        raise XAIModelError(f"Could not read the weights file {weights.name} ({_one_line(error)}).") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise XAIModelError(f"{weights.name} is not a state dict of tensors.")
    return state


def _torch_load_tensors(weights: Path) -> Any:
    try:  # memory-mapped: tensors are read from the file as they are used, not all copied up front
        return torch.load(str(weights), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise
    return torch.load(str(weights), map_location="cpu", weights_only=True)  # the legacy (pre-zip) format


def _summarise_mismatch(error: RuntimeError) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    details = [line for line in lines[1:] if line][:3]
    return "; ".join(details)[:300] or lines[0][:300]


def _check_input_channels(network: torch.nn.Module, spec: ModelSpec, name: str) -> None:
    first_conv = _first_convolution(network)
    if isinstance(first_conv, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
        raise XAIModelError(
            f"Model {name} is a {first_conv.__class__.__name__[-2:].upper()} network; SlicerXAI explains 3-D "
            f"volumes with 3-D networks (spatial_dims 3).")
    if first_conv is not None and first_conv.in_channels != spec.num_channels:
        raise XAIModelError(
            f"Model {name}: its metadata says {spec.num_channels} input channel(s) but the network's first "
            f"layer takes {first_conv.in_channels}."
        )


def _check_output(output: Any, spec: ModelSpec, name: str) -> None:
    """Refuse, in one line, a network whose output the engine cannot explain: not one tensor (a detection
    head's boxes), not the card's class count, or not a map when the card says segmentation."""
    if not isinstance(output, torch.Tensor):
        raise XAIModelError(
            f"Model {name} returns {type(output).__name__}, not one tensor (a detection network?): SlicerXAI explains "
            f"classifiers (class scores) and segmentation networks (a score map per class).")
    expected = 2 if spec.task == "classification" else 5
    # One score per class, or one sigmoid channel standing for the second of two classes.
    binary_sigmoid = spec.output_activation == "sigmoid" and len(spec.class_names) == 2
    channels = {len(spec.class_names), 1} if binary_sigmoid else {len(spec.class_names)}
    if output.dim() != expected or output.shape[1] not in channels:
        shape = "x".join(str(n) for n in output.shape)
        want = f"{len(spec.class_names)} class scores" if spec.task == "classification" else \
            f"a 3-D map of {len(spec.class_names)} channels"
        raise XAIModelError(f"Model {name} returns a {shape} output for one 3-D input, where its card ({spec.task}, "
                            f"{len(spec.class_names)} classes) needs {want}.")


def _first_convolution(network: torch.nn.Module) -> Optional[torch.nn.modules.conv._ConvNd]:
    if isinstance(network, torch.jit.ScriptModule):
        return None
    for module in network.modules():
        if isinstance(module, torch.nn.modules.conv._ConvNd):
            return module
    return None


def _one_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
