"""The model card of a MONAI bundle as the Model Zoo publishes it, read from the bundle itself.

A zoo bundle carries almost everything the engine needs, just not under the project's ``xai`` key:
class names in ``network_data_format.outputs.pred.channel_def``, the grid in the preprocessing's
``Orientationd`` / ``Spacingd``, the intensity mapping in ``ScaleIntensityRanged`` /
``NormalizeIntensityd`` / ``ScaleIntensityRangePercentilesd``, the window in the ``SlidingWindowInferer``
and the activation in the postprocessing's ``Activationsd``. These are *read*, never executed: only
literal values (and ``@`` references to literal entries) are used; an entry given as a ``$`` expression
is reported as not derivable. The bundle's own ``xai`` section, where present, overrides what is derived.

See the MONAI Bundle specification (https://docs.monai.io/en/stable/mb_specification.html).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

__all__ = ["DerivedCard", "derive_card", "input_channel_names"]

#: Preprocessing steps that set how intensities are mapped (dictionary and array forms).
_INTENSITY_STEPS = ("ScaleIntensityRange", "NormalizeIntensity", "ScaleIntensityRangePercentiles")


class _NotLiteral(Exception):
    """An entry given as an expression or a file macro: it cannot be read without running it."""


@dataclass
class DerivedCard:
    """The card the engine uses (``xai``), where each entry came from, and what could not be derived."""

    xai: dict
    sources: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)

    def note(self, key: str, source: str) -> None:
        self.sources[key] = source


def derive_card(metadata: Mapping[str, Any], config: Optional[Mapping[str, Any]]) -> DerivedCard:
    """The ``xai`` card of a bundle: derived from its metadata and inference config, overridden entry by
    entry by the bundle's own ``xai`` section (``input`` key by key)."""
    written = metadata.get("xai") if isinstance(metadata.get("xai"), Mapping) else {}
    card = DerivedCard(xai={})
    config = config or {}
    _derive_output(metadata, config, card)
    _derive_grid(metadata, config, card)
    _derive_intensity(config, card)
    _derive_domain(card)
    for key, value in written.items():
        if key == "input" and isinstance(value, Mapping) and isinstance(card.xai.get("input"), dict):
            card.xai["input"].update(value)
            for name in value:
                card.note(f"input.{name}", "the bundle's xai card")
        else:
            card.xai[key] = value
            card.note(key, "the bundle's xai card")
    card.missing = [m for m in card.missing if not _provided(m.split(" ")[0], written)]
    return card


#: Hounsfield units a CT scanner stores (12 bits from air): what any CT input lies in, whatever the training set.
CT_HOUNSFIELD_RANGE = (-1024.0, 3071.0)


def _derive_domain(card: DerivedCard) -> None:
    """A published bundle states no training data; for CT the physical range of Hounsfield units is still known,
    so a volume that is not in HU (already normalised, or values of 1e30) is flagged. MR has no absolute unit."""
    if card.xai.get("modality") == "CT":
        card.xai["domain"] = {"intensity_range": list(CT_HOUNSFIELD_RANGE),
                              "source": "the range of CT Hounsfield units (the bundle states no training data)"}
        card.note("domain", "modality CT: Hounsfield units")


def _provided(key: str, written: Mapping[str, Any]) -> bool:
    """Whether the written card gives ``key`` (``intensity``, ``input.spacing_mm``)."""
    head, _, sub = key.partition(".")
    return head in written if not sub else isinstance(written.get(head), Mapping) and sub in written[head]


def input_channel_names(metadata: Mapping[str, Any]) -> list[str]:
    """The name of each input channel, in index order, from ``network_data_format.inputs.image``
    (``num_channels``, ``channel_def``); numbered ("channel 1", ...) unless ``channel_def`` names every one."""
    image = _mapping(_mapping(_mapping(metadata.get("network_data_format")).get("inputs")).get("image"))
    count = image.get("num_channels", 1)
    count = count if isinstance(count, int) and not isinstance(count, bool) and 1 <= count <= 64 else 1
    channel_def = _mapping(image.get("channel_def"))
    names = [str(channel_def[k]) for k in sorted(channel_def, key=_as_index)]
    return names if len(names) == count else [f"channel {i + 1}" for i in range(count)]


def _derive_output(metadata: Mapping[str, Any], config: Mapping[str, Any], card: DerivedCard) -> None:
    outputs = _mapping(_mapping(metadata.get("network_data_format")).get("outputs"))
    pred = _mapping(outputs.get("pred") or next(iter(outputs.values()), {}))
    spatial = pred.get("spatial_shape")
    is_image = pred.get("format") == "segmentation" or pred.get("type") == "image" or \
        (isinstance(spatial, list) and len(spatial) >= 2)
    card.xai["task"] = "segmentation" if is_image else "classification"
    card.note("task", "network_data_format.outputs (type/format)")
    channels = pred.get("num_channels")
    channel_def = _mapping(pred.get("channel_def"))
    names = [str(channel_def[k]) for k in sorted(channel_def, key=_as_index)] if channel_def else []
    if names and all(n.strip() for n in names):
        card.xai["class_names"] = names
        card.note("class_names", "network_data_format.outputs.pred.channel_def")
    elif isinstance(channels, int) and not isinstance(channels, bool) and 1 <= channels <= 1000:
        card.xai["class_names"] = [f"class {i}" for i in range(channels)]
        card.note("class_names", "numbered from network_data_format.outputs.pred.num_channels (no channel_def)")
    else:
        card.missing.append("class_names (no outputs.pred.channel_def or num_channels in network_data_format)")
    activation = _activation(config)
    if activation is None:
        multi = len(card.xai.get("class_names", [])) > 1
        activation = "softmax" if multi else "sigmoid"
        card.note("output_activation", f"{activation} for {'several output channels' if multi else 'one output channel'}"
                                       " (the postprocessing names no activation)")
    else:
        card.note("output_activation", f"postprocessing Activationsd.{activation}")
    card.xai["output_activation"] = activation


def _activation(config: Mapping[str, Any]) -> Optional[str]:
    for step in _steps(config, "postprocessing"):
        if _step_name(step) == "Activations":
            for name in ("sigmoid", "softmax"):
                try:
                    if _literal(step.get(name), config) is True:
                        return name
                except _NotLiteral:
                    return None
    return None


def _derive_grid(metadata: Mapping[str, Any], config: Mapping[str, Any], card: DerivedCard) -> None:
    grid: dict[str, Any] = {}
    image = _mapping(_mapping(_mapping(metadata.get("network_data_format")).get("inputs")).get("image"))
    shape = image.get("spatial_shape")
    modality = image.get("modality")
    if isinstance(modality, str) and modality.strip().upper() in ("CT", "MR", "MRI"):
        card.xai["modality"] = "MR" if modality.strip().upper() == "MRI" else modality.strip().upper()
        card.note("modality", "network_data_format.inputs.image.modality")
    if card.xai.get("task") == "classification" and isinstance(shape, list) and len(shape) == 3 and \
            all(isinstance(n, int) and n > 0 for n in shape):
        grid["size"] = shape  # a classifier sees a fixed-size input
        card.note("input.size", "network_data_format.inputs.image.spatial_shape")
    for step in _steps(config, "preprocessing"):
        name = _step_name(step)
        try:
            if name == "Orientation" and "axcodes" in step:
                grid["orientation"] = str(_literal(step["axcodes"], config))
                card.note("input.orientation", "preprocessing Orientationd.axcodes")
            elif name == "Spacing" and "pixdim" in step:
                pixdim = _literal(step["pixdim"], config)
                grid["spacing_mm"] = [float(pixdim)] * 3 if isinstance(pixdim, (int, float)) else list(pixdim)
                card.note("input.spacing_mm", "preprocessing Spacingd.pixdim")
        except _NotLiteral:
            card.missing.append(f"input.{'orientation' if name == 'Orientation' else 'spacing_mm'} "
                                f"(preprocessing {name}d is an expression)")
    inferer = _mapping(_resolved(config.get("inferer"), config))
    if _step_name(inferer) == "SlidingWindowInferer":
        try:
            roi = _literal(inferer.get("roi_size"), config)
            if isinstance(roi, list) and len(roi) == 3 and all(isinstance(r, int) and r > 0 for r in roi):
                grid["size"] = roi
                card.note("input.size", "inferer SlidingWindowInferer.roi_size (the window)")
                # The whole grid goes through the network for explanations: keep it divisible as the window is.
                grid["divisible_by"] = min(32, *(r & -r for r in roi))
                card.note("input.divisible_by", "the largest power of two (at most 32) dividing the window")
            overlap = _literal(inferer.get("overlap", 0.25), config)
            if isinstance(overlap, (int, float)) and not isinstance(overlap, bool):
                grid["overlap"] = float(overlap)
                card.note("input.overlap", "inferer SlidingWindowInferer.overlap")
        except _NotLiteral:
            card.missing.append("input.size (the inferer's roi_size is an expression)")
    if "spacing_mm" not in grid:
        card.missing.append("input.spacing_mm (no Spacingd in the preprocessing: the grid the network expects is "
                            "unknown)")
    card.xai["input"] = grid


def _derive_intensity(config: Mapping[str, Any], card: DerivedCard) -> None:
    steps = [s for s in _steps(config, "preprocessing") if _step_name(s) in _INTENSITY_STEPS]
    if not steps:
        card.xai["intensity"] = {"kind": "none"}
        card.note("intensity", "none: the bundle's preprocessing maps no intensities (the network gets raw values)")
        return
    if len(steps) > 1:
        card.missing.append("intensity (the preprocessing has several intensity steps; write xai.intensity)")
        return
    step, name = steps[0], _step_name(steps[0])
    try:
        values = {k: _literal(v, config) for k, v in step.items() if not k.startswith("_") and k != "keys"}
    except _NotLiteral:
        card.missing.append(f"intensity (preprocessing {name}d has an expression)")
        return
    if name == "ScaleIntensityRange":
        card.xai["intensity"] = {"kind": "scale_range", **{k: values[k] for k in ("a_min", "a_max", "b_min", "b_max", "clip")
                                                           if values.get(k) is not None}}
    elif name == "NormalizeIntensity":
        if values.get("subtrahend") is not None or values.get("divisor") is not None:
            card.missing.append("intensity (NormalizeIntensityd with a fixed subtrahend or divisor)")
            return
        card.xai["intensity"] = {"kind": "zscore", "nonzero": bool(values.get("nonzero", False))}
    else:  # ScaleIntensityRangePercentiles
        if (values.get("b_min"), values.get("b_max"), values.get("clip")) != (0.0, 1.0, True) and \
                (values.get("b_min"), values.get("b_max"), values.get("clip")) != (0, 1, True):
            card.missing.append("intensity (ScaleIntensityRangePercentilesd onto a range other than 0..1, clipped)")
            return
        card.xai["intensity"] = {"kind": "percentile", "lower": values.get("lower"), "upper": values.get("upper")}
    card.note("intensity", f"preprocessing {name}d")


# --- reading configs without running them ---

def _steps(config: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    """The transforms of ``config[key]`` (a Compose or a list), with ``@`` references followed."""
    node = _resolved(config.get(key), config)
    if isinstance(node, Mapping):
        node = _resolved(node.get("transforms", [node]), config)
    steps = []
    for item in node if isinstance(node, list) else []:
        item = _resolved(item, config)
        if isinstance(item, Mapping) and item.get("_disabled_") is not True:
            if _step_name(item) == "Compose":
                steps += _steps({"compose": item, **config}, "compose")
            else:
                steps.append(item)
    return steps


def _step_name(step: Any) -> str:
    """``Spacingd`` / ``monai.transforms.Spacing`` -> ``Spacing``."""
    target = step.get("_target_") if isinstance(step, Mapping) else None
    if not isinstance(target, str):
        return ""
    name = target.rsplit(".", 1)[-1]
    known = {"Orientation", "Spacing", "Activations", "Compose", "SlidingWindowInferer", *_INTENSITY_STEPS}
    return name[:-1] if name.endswith("d") and name[:-1] in known else name


def _resolved(node: Any, config: Mapping[str, Any], depth: int = 0) -> Any:
    """``node`` with an ``@a#b`` reference replaced by the entry it names (not evaluated)."""
    while isinstance(node, str) and node.startswith("@") and depth < 16:
        target: Any = config
        for part in node[1:].split("#"):
            if isinstance(target, Mapping) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                return None
        node, depth = target, depth + 1
    return node


def _literal(node: Any, config: Mapping[str, Any]) -> Any:
    node = _resolved(node, config)
    if isinstance(node, str) and node.startswith(("$", "%")):
        raise _NotLiteral(node)
    if isinstance(node, list):
        return [_literal(item, config) for item in node]
    return node


def _mapping(node: Any) -> Mapping[str, Any]:
    return node if isinstance(node, Mapping) else {}


def _as_index(key: Any) -> tuple[int, str]:
    text = str(key)
    return (int(text), text) if text.isdigit() else (1 << 30, text)
