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
    twins: bool = False,
    log: Optional[Callable[[str], None]] = None,
) -> ModelGridSet:
    """Generate ``n`` cases of ``(kind, seed)`` and convert them with :func:`to_model_input`.

    With ``twins``, case ``i`` of the set is generated twice — with and without lesion, same anatomy
    and acquisition (``n // 2`` anatomies) — so a classifier cannot tell the classes apart by anything
    but the lesion (counterfactual pairs against shortcut learning, cf. Kaushik et al., ICLR 2020).
    """
    if twins:
        requests = [(index, forced) for index in range(max(1, n // 2)) for forced in (True, False)]
    else:
        requests = [(index, None) for index in range(n)]
    images, labels, masks, infos = [], [], [], []
    for count, (index, forced) in enumerate(requests, start=1):
        image, mask, info = make_case(kind, seed, index, lesions=forced)
        images.append(to_model_input(image, xai_meta).astype(np.float16))
        labels.append(int(info["label"]))
        if with_masks:
            masks.append(mask_to_model_grid(mask, image, xai_meta))
        infos.append(info)
        if log is not None and (count % 25 == 0 or count == len(requests)):
            log(f"generated {count}/{len(requests)} {kind} cases (seed {seed}{', twins' if twins else ''})")
    return ModelGridSet(images, np.asarray(labels, dtype=np.int64), masks if with_masks else None, infos)
