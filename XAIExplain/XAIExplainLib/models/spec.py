"""What the engine needs to know about a model, read from a bundle's ``configs/metadata.json``.

The project's own key ``xai`` in the metadata holds the model card: task, class names, CAM target
layer, the grid and intensity normalisation the network was trained with (see DESIGN.md §4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from ..errors import XAIModelError
from ..preprocessing import InputSpec, IntensitySpec
from .pooling import POOLINGS

__all__ = ["ModelSpec", "TASKS", "covers_whole_image"]

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
    metadata: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], default_name: str) -> "ModelSpec":
        xai = metadata.get("xai")
        if not isinstance(xai, Mapping):
            raise XAIModelError(
                f"Model '{default_name}' has no 'xai' section in its metadata: task, class names and "
                f"input grid are needed to explain it."
            )
        task = xai.get("task")
        if task not in TASKS:
            raise XAIModelError(f"Model '{default_name}': xai.task must be one of {', '.join(TASKS)}, not {task!r}.")
        class_names = tuple(str(c) for c in xai.get("class_names", ()))
        if len(class_names) < 1:
            raise XAIModelError(f"Model '{default_name}': xai.class_names is missing.")
        activation = xai.get("output_activation", "softmax")
        if activation not in ("softmax", "sigmoid"):
            raise XAIModelError(f"Model '{default_name}': output_activation must be softmax or sigmoid.")
        image_format = (
            metadata.get("network_data_format", {}).get("inputs", {}).get("image", {})
            if isinstance(metadata.get("network_data_format"), Mapping)
            else {}
        )
        channel_def = image_format.get("channel_def", {}) or {}
        positive = xai.get("positive_class")
        pooling = xai.get("output_pooling")
        if pooling is not None:
            if task != "classification" or pooling not in POOLINGS:
                raise XAIModelError(
                    f"Model '{default_name}': output_pooling must be one of {', '.join(POOLINGS)} and needs a "
                    f"classification task."
                )
            if positive is None:
                raise XAIModelError(f"Model '{default_name}': output_pooling needs xai.positive_class.")
        return cls(
            name=str(metadata.get("name", default_name)),
            version=str(metadata.get("version", "0")),
            task=task,
            class_names=class_names,
            input=InputSpec.from_metadata(xai.get("input", {}), covers_whole_image=covers_whole_image(xai)),
            intensity=IntensitySpec.from_metadata(xai.get("intensity", {"kind": "none"})),
            num_channels=int(image_format.get("num_channels", 1)),
            channel_names=tuple(str(channel_def[k]) for k in sorted(channel_def, key=str)),
            positive_class=None if positive is None else int(positive),
            cam_target_layer=xai.get("cam_target_layer"),
            modality=xai.get("modality"),
            clinical_tasks=tuple(xai.get("clinical_tasks", ())),
            output_activation=activation,
            output_pooling=pooling,
            weights_sha256=xai.get("weights_sha256"),
            description=str(metadata.get("description", "")),
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
