"""What the engine needs to know about a model, read from a bundle's ``configs/metadata.json``.

The project's own key ``xai`` in the metadata holds the model card: task, class names, CAM target
layer, the grid and intensity normalisation the network was trained with (see DESIGN.md §4).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from ..applicability import Domain
from ..bundle_card import input_channel_names
from ..errors import XAIModelError
from ..preprocessing import CardProblems, InputSpec, IntensitySpec
from .pooling import POOLINGS

__all__ = ["ModelSpec", "TASKS", "covers_whole_image"]


def _network_input_format(metadata: Mapping[str, Any], card: "CardProblems") -> Mapping[str, Any]:
    """MONAI's ``network_data_format.inputs.image`` (empty when absent; a problem when not objects)."""
    node: Any = metadata
    path: list[str] = []
    for key in ("network_data_format", "inputs", "image"):
        path.append(key)
        node = node.get(key, {})
        if not isinstance(node, Mapping):
            card.add(f"{'.'.join(path)} must be an object, not {type(node).__name__}")
            return {}
    return node

TASKS = ("classification", "segmentation")


def covers_whole_image(xai: Mapping[str, Any]) -> bool:
    """Whether the network sees the whole image (segmentation, or a classifier pooling a dense map)
    rather than a fixed-size crop of it."""
    return xai.get("task") == "segmentation" or xai.get("output_pooling") is not None


@dataclass(frozen=True)
class ModelSpec:
    """The parsed model card of one model."""

    name: str
    version: str
    task: str
    class_names: tuple[str, ...]
    input: InputSpec
    intensity: IntensitySpec
    num_channels: int = 1
    channel_names: tuple[str, ...] = ()
    positive_class: Optional[int] = None
    cam_target_layer: Optional[str] = None
    modality: Optional[str] = None
    clinical_tasks: tuple[str, ...] = ()
    output_activation: str = "softmax"
    output_pooling: Optional[str] = None
    weights_sha256: Optional[str] = None
    description: str = ""
    domain: Domain = field(default_factory=Domain)
    metadata: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], default_name: str) -> "ModelSpec":
        """Parse and validate the whole card; every problem found is named in one :class:`XAIModelError`."""
        xai = metadata.get("xai")
        if not isinstance(xai, Mapping):
            raise XAIModelError(
                f"Model '{default_name}' has no 'xai' section in its metadata: task, class names and "
                f"input grid are needed to explain it."
            )
        card = CardProblems("xai")
        task = xai.get("task")
        if task not in TASKS:
            card.add(f"xai.task must be one of {', '.join(TASKS)}, not {task!r}")
        raw_names = xai.get("class_names")
        if not isinstance(raw_names, list) or not 1 <= len(raw_names) <= 1000 or \
                not all(isinstance(c, str) and c.strip() for c in raw_names):
            card.add(f"xai.class_names must be a list of 1 to 1000 names, not {str(raw_names)[:40]!r}")
            raw_names = ["?"]
        class_names = tuple(raw_names)
        activation = xai.get("output_activation", "softmax")
        if activation not in ("softmax", "sigmoid"):
            card.add(f"xai.output_activation must be softmax or sigmoid, not {activation!r}")
        image_format = _network_input_format(metadata, card)
        image_card = CardProblems("network_data_format.inputs.image")
        num_channels = image_card.integer(image_format, "num_channels", 1, low=1, high=64)
        card.problems += image_card.problems
        channel_def = image_format.get("channel_def") or {}
        if not isinstance(channel_def, Mapping):
            card.add("network_data_format.inputs.image.channel_def must be an object")
            channel_def = {}
        positive = xai.get("positive_class")
        if positive is not None and (not isinstance(positive, int) or isinstance(positive, bool)
                                     or not 0 <= positive < len(class_names)):
            card.add(f"xai.positive_class must be a class index from 0 to {len(class_names) - 1}, not {positive!r}")
            positive = None
        pooling = xai.get("output_pooling")
        if pooling is not None:
            if task != "classification" or pooling not in POOLINGS:
                card.add(f"xai.output_pooling must be one of {', '.join(POOLINGS)} and needs a classification task")
            elif xai.get("positive_class") is None:
                card.add("xai.output_pooling needs xai.positive_class")
        for key in ("cam_target_layer", "modality"):
            if xai.get(key) is not None and not isinstance(xai.get(key), str):
                card.add(f"xai.{key} must be a string, not {xai.get(key)!r}")
        clinical_tasks = xai.get("clinical_tasks", [])
        if not isinstance(clinical_tasks, list) or not all(isinstance(t, str) for t in clinical_tasks):
            card.add(f"xai.clinical_tasks must be a list of task ids, not {str(clinical_tasks)[:40]!r}")
            clinical_tasks = []
        sha = xai.get("weights_sha256")
        if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha)):
            card.add("xai.weights_sha256 must be 64 hexadecimal digits")
        sections = {}
        defaults = {"input": {}, "intensity": {"kind": "none"}, "domain": None}
        for key, parse in (("input", lambda m: InputSpec.from_metadata(m, covers_whole_image=covers_whole_image(xai))),
                           ("intensity", IntensitySpec.from_metadata), ("domain", Domain.from_metadata)):
            try:
                sections[key] = parse(xai.get(key, defaults[key]))
            except XAIModelError as error:
                card.add_error(error)
        if card:
            raise XAIModelError(f"Invalid model card of '{default_name}': " + "; ".join(card.problems) + ".")
        return cls(
            name=str(metadata.get("name", default_name)),
            version=str(metadata.get("version", "0")),
            task=task,
            class_names=class_names,
            input=sections["input"],
            intensity=sections["intensity"],
            num_channels=num_channels,
            channel_names=tuple(input_channel_names(metadata)),
            positive_class=positive,
            cam_target_layer=xai.get("cam_target_layer"),
            modality=xai.get("modality"),
            clinical_tasks=tuple(clinical_tasks),
            output_activation=activation,
            output_pooling=pooling,
            weights_sha256=sha,
            description=str(metadata.get("description", "")),
            domain=sections["domain"],
            metadata=metadata,
        )

    def class_index(self, target: int | str) -> int:
        """Index of a class given by index or (case-insensitive) name."""
        if isinstance(target, str) and not target.lstrip("-").isdigit():
            lowered = [c.lower() for c in self.class_names]
            if target.lower() not in lowered:
                raise XAIModelError(
                    f"Target '{target}' is not a class of this model ({', '.join(self.class_names)})."
                )
            return lowered.index(target.lower())
        index = int(target)
        if not 0 <= index < len(self.class_names):
            raise XAIModelError(
                f"Target class {index} is out of range: this model has classes 0..{len(self.class_names) - 1} "
                f"({', '.join(self.class_names)})."
            )
        return index
