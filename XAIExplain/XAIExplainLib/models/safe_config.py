"""Building a network from a bundle's ``network_def`` without running code the user did not trust.

MONAI bundle configs can hold Python expressions (``$...``), file macros (``%...``) and any importable
``_target_``: loading an untrusted bundle with MONAI's ``ConfigParser`` runs whatever it says. Here an
untrusted config may only name network classes from an allow-list with literal arguments and ``@``
references to other literal entries; anything else is refused with the offending key named. An
untrusted bundle also gets no network and no file access: arguments that ask for pretrained weights,
or name a URL or a path, are refused, and the network is built with every download function disabled
(HoVerNet's ``pretrained_url``, DenseNet's ``pretrained=True`` would otherwise fetch at build time).
With ``trust_bundle=True`` MONAI's own parser is used and everything is allowed.
"""

from __future__ import annotations

import importlib
import re
import socket
import sys
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any, Iterator, Mapping, Optional
from unittest import mock

import torch
from torch.overrides import TorchFunctionMode

from ..errors import XAIModelError

__all__ = ["ALLOWED_TARGET_PREFIXES", "build_network"]

#: ``_target_`` values an untrusted bundle may instantiate.
ALLOWED_TARGET_PREFIXES = ("monai.networks.nets.", "torch.nn.")
_HARMLESS_KEYS = {"_desc_", "_disabled_"}
#: Argument names that ask a network to fetch or read something when it is built.
_FETCHING_ARGUMENT = re.compile(r"(^|_)(pretrain\w*|url|path|file|filename|dir|cache\w*|download\w*)($|_)", re.IGNORECASE)
#: String values that name a place rather than an option (``"relu"``, ``"instance"``).
_PLACE_VALUE = re.compile(r"://|[/\\]|^[~.]")
#: What a network constructor could call to fetch weights (also where MONAI imported them by name); each
#: raises inside an untrusted build, as does opening any network connection.
_DOWNLOAD_FUNCTIONS = {"load_state_dict_from_url", "download_url_to_file", "download_url", "hf_hub_download",
                       "urlopen", "urlretrieve", "load"}
_DOWNLOAD_MODULES = ("monai.", "torch.hub", "urllib.request", "torchvision.", "huggingface_hub")


def build_network(config: Mapping[str, Any], key: str = "network_def", trust_bundle: bool = False,
                  device: Optional[str] = None, max_bytes: Optional[int] = None) -> torch.nn.Module:
    """Instantiate ``config[key]``; refuse code expressions, downloads and paths unless ``trust_bundle``.

    ``device="meta"`` builds the network without allocating its tensors (to size it first); a network whose
    constructor computes with tensors cannot be built there (:class:`MetaBuildError`). ``max_bytes`` stops an
    untrusted build once the tensors it has created exceed that many bytes.
    """
    if key not in config:
        raise XAIModelError(f"The bundle's inference config (inference.json or .yaml) has no '{key}' entry "
                            f"describing the network.")
    if trust_bundle:
        from monai.bundle import ConfigParser

        parser = ConfigParser(dict(config))
        try:
            network = parser.get_parsed_content(key)
        except Exception as error:  # any failure of the trusted config is the bundle's
            raise XAIModelError(f"Could not build the network from the trusted bundle ({_root_cause(error)}).") from None
    else:
        limit = _AllocationLimit(max_bytes) if max_bytes is not None else nullcontext()
        with _downloads_disabled(), torch.device(device or "cpu"), limit:
            network = _instantiate(config[key], config, path=key)
    if not isinstance(network, torch.nn.Module):
        raise XAIModelError(f"'{key}' in the inference config does not describe a torch network.")
    return network


class MetaBuildError(XAIModelError):
    """The network's constructor computes with tensor values (SwinUNETR's drop-path rates), which the
    ``meta`` device does not have."""


class _AllocationLimit(TorchFunctionMode):
    """Counts the bytes of every tensor a factory function creates while a network is built, and stops the
    build beyond ``max_bytes``: large tensors are mapped lazily, so the count is checked before a
    parameter's initialisation writes (touches) its memory."""

    _FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.randint,
                  torch.tensor, torch.as_tensor, torch.arange, torch.linspace, torch.logspace, torch.eye,
                  torch.empty_like, torch.zeros_like, torch.ones_like, torch.full_like, torch.rand_like,
                  torch.randn_like, torch.empty_strided}

    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self.used = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if func in self._FACTORIES and isinstance(result, torch.Tensor):
            self.used += result.numel() * result.element_size()
            if self.used > self.max_bytes:
                raise XAIModelError(
                    f"The network in the inference config needs more than {self.max_bytes / 2**20:.0f} MB of tensors, more "
                    f"than its weights file holds: they do not belong together; refused while building it.")
        return result


def _root_cause(error: BaseException) -> str:
    """The innermost error of a chain, on one line: MONAI's parser wraps the real cause (a missing package,
    a wrong argument) in messages about the config component."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__


def _instantiate(node: Any, root: Mapping[str, Any], path: str, depth: int = 0) -> Any:
    if depth > 32:
        raise XAIModelError(f"Inference config: references nest too deeply at '{path}'.")
    if isinstance(node, str):
        if node.startswith("$"):
            raise XAIModelError(
                f"Inference config: '{path}' is a Python expression ({node[:40]}); refused because it would "
                f"run code — pass --trust-bundle only if you trust where this bundle comes from."
            )
        if node.startswith("%"):
            raise XAIModelError(
                f"Inference config: '{path}' imports another file ({node[:40]}); refused for an untrusted "
                f"bundle — pass --trust-bundle if you trust it."
            )
        if node.startswith("@"):
            return _instantiate(_resolve_reference(node[1:], root, path), root, node[1:], depth + 1)
        return node
    if isinstance(node, list):
        return [_instantiate(item, root, f"{path}#{i}", depth) for i, item in enumerate(node)]
    if isinstance(node, Mapping):
        if "_target_" not in node:
            return {k: _instantiate(v, root, f"{path}#{k}", depth) for k, v in node.items()}
        special = {k for k in node if k.startswith("_") and k.endswith("_")} - {"_target_"} - _HARMLESS_KEYS
        if special:
            raise XAIModelError(
                f"Inference config: '{path}' uses {', '.join(sorted(special))}, which can run code; "
                f"refused for an untrusted bundle — pass --trust-bundle if you trust it."
            )
        if node.get("_disabled_") is True:
            return None
        target = node["_target_"]
        cls = _allowed_class(target, path)
        kwargs = {
            k: _instantiate(v, root, f"{path}#{k}", depth)
            for k, v in node.items()
            if k not in ("_target_",) and k not in _HARMLESS_KEYS
        }
        for name, value in kwargs.items():
            _refuse_fetching(name, value, f"{path}#{name}")
        try:
            return cls(**kwargs)
        except XAIModelError:
            raise
        except Exception as error:
            message = f"Inference config: could not build {target} at '{path}' ({error})."
            if torch.get_default_device().type == "meta":
                # Built without memory: whatever failed is retried on the CPU, which gives the real cause if any.
                raise MetaBuildError(message) from None
            raise XAIModelError(message) from None
    return node


def _refuse_fetching(name: str, value: Any, path: str) -> None:
    """Refuse an argument that would make the network fetch or read something at build time."""
    asks_to_fetch = _FETCHING_ARGUMENT.search(name) and value not in (None, False, "", 0)
    names_a_place = any(isinstance(v, str) and _PLACE_VALUE.search(v) for v in _leaves(value))
    if asks_to_fetch or names_a_place:
        raise XAIModelError(
            f"Inference config: '{path}' = {str(value)[:40]!r} would make the network fetch or read something when it "
            f"is built; an untrusted bundle gets no network or file access — pass --trust-bundle if you trust it."
        )


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _leaves(item)
    else:
        yield value


@contextmanager
def _downloads_disabled() -> Iterator[None]:
    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise XAIModelError(
            "The bundle's network tried to download something while it was built; an untrusted bundle gets no "
            "network access — pass --trust-bundle if you trust it."
        )

    with ExitStack() as stack:
        for module_name, module in list(sys.modules.items()):
            if module is None or not module_name.startswith(_DOWNLOAD_MODULES):
                continue
            for name in _DOWNLOAD_FUNCTIONS & set(vars(module)):
                if callable(vars(module)[name]) and (name != "load" or module_name == "torch.hub"):
                    stack.enter_context(mock.patch.object(module, name, refuse))
        stack.enter_context(mock.patch.object(socket.socket, "connect", refuse))
        stack.enter_context(mock.patch.object(socket.socket, "connect_ex", refuse))
        yield


def _allowed_class(target: Any, path: str) -> type:
    # MONAI's short names ("UNet", "SegResNet"), as most zoo bundles write them, are its network classes.
    if isinstance(target, str) and target.isidentifier():
        target = ALLOWED_TARGET_PREFIXES[0] + target
    if not isinstance(target, str) or not target.startswith(ALLOWED_TARGET_PREFIXES) or "$" in target:
        raise XAIModelError(
            f"Inference config: '{path}' asks for {target!r}, which is not a network class from "
            f"{' or '.join(p + '*' for p in ALLOWED_TARGET_PREFIXES)}; refused for an untrusted bundle — "
            f"pass --trust-bundle if you trust it."
        )
    module_name, _, class_name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise XAIModelError(f"Inference config: '{path}' names {target}, which does not exist.") from None
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise XAIModelError(f"Inference config: '{path}' names {target}, which is not a torch network class.")
    return cls


def _resolve_reference(reference: str, root: Mapping[str, Any], path: str) -> Any:
    node: Any = root
    for part in reference.split("#"):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise XAIModelError(f"Inference config: '{path}' refers to @{reference}, which does not exist.")
    return node
