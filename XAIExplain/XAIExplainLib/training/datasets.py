"""Training and evaluation sets made on the fly from the case generators, already on the model grid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import numpy as np

from ..data import make_case
from .common import mask_to_model_grid, to_model_input

__all__ = ["ModelGridSet", "build_set"]


@dataclass
class ModelGridSet:
    """Cases as network inputs: ``images`` (N, X, Y, Z) float16, ``labels`` (N,), optional ``masks``."""

    images: list[np.ndarray]
    labels: np.ndarray
    masks: Optional[list[np.ndarray]]
    infos: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.images)


def build_set(
    kind: str,
    seed: int,
    n: int,
    xai_meta: Mapping[str, Any],
    with_masks: bool = False,
    keep_every_lesion: bool = False,
    log: Optional[Callable[[str], None]] = None,
    small_nodule_fraction: float = 0.0,
) -> ModelGridSet:
    """Generate ``n`` cases of ``(kind, seed)`` and convert them with :func:`to_model_input` (masks with
    :func:`mask_to_model_grid`; ``keep_every_lesion`` for training targets; ``small_nodule_fraction``: see
    :func:`~XAIExplainLib.data.make_case`)."""
    images, labels, masks, infos = [], [], [], []
    for index in range(n):
        image, mask, info = make_case(kind, seed, index, small_nodule_fraction=small_nodule_fraction)
        images.append(to_model_input(image, xai_meta).astype(np.float16))
        labels.append(int(info["label"]))
        if with_masks:
            masks.append(mask_to_model_grid(mask, image, xai_meta, keep_every_lesion))
        infos.append(info)
        if log is not None and ((index + 1) % 25 == 0 or index + 1 == n):
            log(f"generated {index + 1}/{n} {kind} cases (seed {seed})")
    return ModelGridSet(images, np.asarray(labels, dtype=np.int64), masks if with_masks else None, infos)
