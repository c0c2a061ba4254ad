"""What is known about the case that is open, kept between runs.

A user looking at one case switches method, target class and audience many times. With a
:class:`CaseCache` passed to :func:`~XAIExplainLib.pipeline.explain_image`, the case's resampling and
forward pass, the CAM layer's activations (with the graph above them, so Grad-CAM of another class
costs one backward pass) and every map already computed are reused; audience switches recompute
nothing in the first place (the writers only re-word the result). A different image (voxels or
geometry) or model empties the cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import SimpleITK as sitk
import torch

__all__ = ["CaseCache", "CachedCase", "image_fingerprint", "map_key", "MAX_RECORDED_VOXELS"]

#: Keeping the graph of a forward pass costs about the memory of a backward pass; above this many
#: model-grid voxels (large CT volumes) activations are not kept, only maps and the forward's output.
MAX_RECORDED_VOXELS = 4_000_000


@dataclass
class CachedCase:
    """One image through one model: the prepared input, the forward pass and the maps computed so far."""

    key: tuple
    prepared: Any = None  # pipeline.PreparedCase
    probabilities: Optional[torch.Tensor] = None
    prediction: Optional[dict] = None
    segmentation: Optional[sitk.Image] = None
    recording: Any = None  # explainers.cam.LayerRecording of the CAM layer, when kept
    maps: dict[tuple, torch.Tensor] = field(default_factory=dict)
    uncertainty: dict[tuple, tuple] = field(default_factory=dict)


class CaseCache:
    """The cache of the case that is open (one image, one model at a time).

    ``hits`` counts what was reused, by kind (``forward``, ``map``, ``uncertainty``), for tests and the log.
    """

    def __init__(self, max_maps: int = 32) -> None:
        self.max_maps = int(max_maps)
        self.entry: Optional[CachedCase] = None
        self.hits: dict[str, int] = {"forward": 0, "map": 0, "uncertainty": 0}

    def case(self, image: sitk.Image, model: Any) -> CachedCase:
        """The entry for ``image`` through ``model``, a fresh one if either changed."""
        key = (model.model_id, model.sha256, id(model.network), image_fingerprint(image))
        if self.entry is None or self.entry.key != key:
            self.entry = CachedCase(key)
        return self.entry

    def clear(self) -> None:
        self.entry = None

    def remember_map(self, entry: CachedCase, key: tuple, attribution: torch.Tensor) -> None:
        if len(entry.maps) >= self.max_maps:
            entry.maps.pop(next(iter(entry.maps)))  # the oldest
        entry.maps[key] = attribution


def image_fingerprint(image: sitk.Image) -> str:
    """A digest of the voxels and the geometry: equal for the same image read or converted twice."""
    digest = hashlib.blake2b(digest_size=16)
    geometry = (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection(),
                image.GetPixelIDTypeAsString(), image.GetNumberOfComponentsPerPixel())
    digest.update(json.dumps(geometry).encode("utf-8"))
    digest.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).data)
    return digest.hexdigest()


def map_key(method: str, parameters: dict, target_class: int, region: Optional[torch.Tensor], seed: int) -> tuple:
    """What makes two maps of one case the same map."""
    region_digest = hashlib.blake2b(region.numpy().tobytes(), digest_size=16).hexdigest() if region is not None else None
    return (method, json.dumps(parameters, sort_keys=True, default=str), target_class, region_digest, seed)
