"""Occlusion sensitivity: how much the target score drops when a window of the image is hidden.

Zeiler and Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014. Hidden voxels
take a strongly blurred copy of the image (an in-distribution "nothing specific here"), not zero,
which is out of distribution for CT and for z-scored MRI. Windows whose content the blur would not
change (air, outside the head) cannot change the score and are skipped.

Occluded copies are scored with exact incremental inference (Nakandala et al., "Incremental and
Approximate Inference for Faster Occlusion-based Deep CNN Explanations", SIGMOD 2019): each layer is
recomputed only where the window can have changed it (:mod:`.incremental`), with full inference as the
automatic fallback. ``mode="approximate"`` uses Krypton's two approximations: *projective field
thresholding* (each layer's patch is cut to ``field_threshold`` of its output along each axis) and
*adaptive drill-down* (``refine_threshold``; None turns it off): a coarse pass with windows and strides
``coarse_factor`` times larger, then the fine windows only where the coarse map matters (its drop
there is at least ``refine_threshold`` of its largest); elsewhere a window's drop is the coarse drop
shared out by volume.

Windows that cannot matter are not computed. A score reading a region of the output (a segmentation
target) cannot see a window outside that region's receptive field: its drop is exactly 0. In
approximate mode a network whose output one voxel decides (a max-pooled classifier) gets a third
approximation: windows outside that voxel's receptive field leave its value alone and could change the
score only by making another voxel decide; they are left at 0 if a spread sample of them agrees, and
are all computed if not. The windows near that voxel are few: drill-down is not used on them.

Both are checked, because how much they change a map depends on the network and the case. U-Nets
scored on a region lose little to thresholding (their far changes are small), classifiers that
average the whole volume can lose their ranking; a lesion case has one region that matters and
drill-down finds it, a noisy or diffuse map has evidence everywhere. Thresholding is kept only if no
drop of a spread sample of windows moves by more than ``APPROXIMATION_TOLERANCE`` of the largest
against exact inference; drill-down only if a spread sample of the windows it left out really has
drops below its threshold. Otherwise the exact computation is done, and ``inference`` says so.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Optional, Sequence

import torch
from scipy.ndimage import gaussian_filter

from ..progress import Stage
from ..targets import TargetFn
from .base import Explainer, batched
from .budget import activation_bytes
from .incremental import IncrementalInference, OccludedInference, occluded_inference

__all__ = ["Occlusion", "blurred_fill", "APPROXIMATION_TOLERANCE", "CHECK_WINDOWS"]

#: The largest error, as a share of the largest sampled drop, at which the approximation is kept.
APPROXIMATION_TOLERANCE = 0.05
#: How many spread windows each approximation is checked on.
CHECK_WINDOWS = 8


class Occlusion(Explainer):
    """Occlusion sensitivity with cubic windows of ``window`` voxels moved by ``stride`` voxels.

    ``mode``: ``"approximate"`` (the default: each approximation is checked against exact inference on sample
    windows and dropped if it changes the map, see the module notes) or ``"exact"`` (the map of full inference).
    Windows per batch: ``internal_batch_size``, or as many occluded copies as ``memory_budget_mb`` holds
    without gradients (a bound: incremental inference recomputes only part of each).
    ``incremental``: score occluded copies with incremental inference where the network allows it.
    After :meth:`attribute`, ``inference`` says which inference ran (and why full inference, if so).
    """

    key = "occlusion"
    title = "Occlusion"
    reference = "Zeiler and Fergus, ECCV 2014 (arXiv:1311.2901)"
    signed = True
    modes = ("exact", "approximate")

    def __init__(self, network: torch.nn.Module, target_layer: Optional[str] = None,
                 internal_batch_size: Optional[int] = None, memory_budget_mb: Optional[float] = None,
                 window: int | Sequence[int] = 8, stride: Optional[int | Sequence[int]] = None,
                 mode: str = "approximate", incremental: bool = True, field_threshold: float = 0.35,
                 coarse_factor: int = 2, refine_threshold: Optional[float] = 0.01) -> None:
        super().__init__(network, target_layer, internal_batch_size, memory_budget_mb)
        if mode not in self.modes:
            raise ValueError(f"occlusion mode must be one of {', '.join(self.modes)}, not '{mode}'")
        self.window = window
        self.stride = stride
        self.mode = mode
        self.incremental = bool(incremental)
        if not 0.0 < field_threshold <= 1.0:
            raise ValueError(f"the projective field threshold must be in (0, 1], not {field_threshold}")
        self.field_threshold = float(field_threshold)
        self.coarse_factor = max(1, int(coarse_factor))
        if refine_threshold is not None and not 0.0 <= refine_threshold < 1.0:
            raise ValueError(f"the refine threshold must be in [0, 1), not {refine_threshold}")
        self.refine_threshold = refine_threshold
        self.inference = ""
        self._batch = self.internal_batch_size or 8  # set per case by attribute()

    def attribute(self, inputs: torch.Tensor, target: TargetFn, stage: Optional[Stage] = None) -> torch.Tensor:
        dims = inputs.dim() - 2
        window = _per_axis(self.window, dims)
        stride = _per_axis(self.stride if self.stride is not None else self.window, dims)
        maps = []
        with torch.no_grad():
            for index, sample in enumerate(inputs):
                image = sample.unsqueeze(0)
                engine = self._engine(image)
                notes = [engine.kind + (f" ({engine.reason})" if engine.reason else "")]
                fill = _blurred(image, window)
                progress = _Progress(stage, self.title, index, inputs.shape[0])
                boxes = _boxes(image, fill, window, stride)
                self._batch = self.batch_size(image, copies=len(boxes), backward=False)
                drops = torch.zeros(len(boxes), dtype=engine.output.dtype)
                near, far = self._split_by_reach(engine, boxes, target, notes)
                if near:
                    part = progress.part(0.0, 0.9 if far else 1.0)
                    drops[near] = self._window_drops(engine, image, fill, [boxes[i] for i in near], window, stride,
                                                     target, part, notes, drill_down=not far)
                if far:
                    drops[far] = self._far_drops(engine, [boxes[i] for i in far], fill, target, drops[near],
                                                 progress.part(0.9, 1.0), notes)
                self.inference = ", ".join(notes)
                maps.append(_average(image, boxes, drops))
        return torch.cat(maps)

    def _engine(self, image: torch.Tensor) -> OccludedInference:
        """Incremental inference where the network allows it and its cache of every layer's output fits the
        memory budget; else full inference (one occluded copy at a time, what the budget holds)."""
        from .incremental import FullInference

        cache = activation_bytes(self.network, image) if self.incremental else 0
        if cache > self.memory_budget_mb * 2**20:
            megabytes = cache / 2**20
            return FullInference(self.network, image, f"the incremental cache ({megabytes:.0f} MB) exceeds the "
                                                      f"{self.memory_budget_mb:.0f} MB memory budget")
        return occluded_inference(self.network, image, self.incremental)

    def _split_by_reach(self, engine: OccludedInference, boxes: list, target: TargetFn, notes: list) -> tuple[list, list]:
        """Indices of the windows to compute and of those far from what decides the score.

        A window outside the receptive field of the region a score reads cannot change it: its drop is 0,
        exactly, and it is left out. In approximate mode, for a network whose output one voxel decides (a
        max-pooled classifier), windows outside that voxel's receptive field are *far*: they can change
        the score only by making another voxel decide, which :meth:`_far_drops` checks on a sample.
        """
        everything = list(range(len(boxes)))
        if not isinstance(engine, IncrementalInference):
            return everything, []
        if engine.focus(getattr(target, "region", None)):
            notes[0] += " (focused on the explained region)"
            reach = engine.reach()
            near = [i for i in everything if _meets(boxes[i], reach)]
            if len(near) < len(boxes):
                notes.append(f"{len(boxes) - len(near)} of {len(boxes)} windows out of the explained region's reach (drop 0)")
            return near, []
        deciding = engine.deciding_reach() if self.mode == "approximate" else None
        if deciding is None:
            return everything, []
        near = [i for i in everything if _meets(boxes[i], deciding)]
        return near, [i for i in everything if not _meets(boxes[i], deciding)]

    def _window_drops(self, engine: OccludedInference, image: torch.Tensor, fill: torch.Tensor, boxes: list,
                      window: tuple, stride: tuple, target: TargetFn, progress: "_Progress", notes: list,
                      drill_down: bool = True) -> torch.Tensor:
        """The drops of ``boxes``: exact, or with the approximations of the mode that pass their checks."""
        thresholding = self.mode == "approximate" and isinstance(engine, IncrementalInference) and self.field_threshold < 1
        drill_down = drill_down and self.mode == "approximate" and self.refine_threshold is not None
        verdict: Optional[bool] = None
        if thresholding:
            verdict, note = self._check_threshold(engine, _spread(boxes, CHECK_WINDOWS), fill, target)
            if verdict is None and not drill_down:
                engine.field_threshold, note = 1.0, "exact: " + note
            elif verdict is None:  # the coarse pass only steers drill-down: thresholded until rechecked
                engine.field_threshold = self.field_threshold
            notes.append(note)
        if not drill_down:
            return self._drops(engine, boxes, fill, target, progress)
        drops, note = self._coarse_to_fine(engine, image, fill, boxes, window, stride, target, progress,
                                           thresholding and verdict is None)
        notes.append(note)
        return drops

    def _far_drops(self, engine: OccludedInference, boxes: list, fill: torch.Tensor, target: TargetFn,
                   near_drops: torch.Tensor, progress: "_Progress", notes: list) -> torch.Tensor:
        """Drops of the windows far from the deciding voxel: 0, if a spread sample of them agrees (none moves
        the score by more than ``APPROXIMATION_TOLERANCE`` of the largest near drop); else all computed."""
        probe = _spread(list(range(len(boxes))), CHECK_WINDOWS)
        drops = torch.zeros(len(boxes), dtype=near_drops.dtype)
        drops[probe] = self._drops(engine, [boxes[i] for i in probe], fill, target, progress.part(0.0, 0.2))
        largest = float(near_drops.abs().max()) if len(near_drops) else 0.0
        if float(drops[probe].abs().max()) <= APPROXIMATION_TOLERANCE * largest:
            notes.append(f"{len(boxes)} windows beyond the deciding voxel's reach left at 0 ({len(probe)} checked)")
            return drops
        probed = set(probe)
        rest = [i for i in range(len(boxes)) if i not in probed]
        drops[rest] = self._drops(engine, [boxes[i] for i in rest], fill, target, progress.part(0.2, 1.0))
        notes.append("every window beyond the deciding voxel's reach (a sample of them changed the score)")
        return drops

    def _check_threshold(self, engine: IncrementalInference, sample: list, fill: torch.Tensor,
                         target: TargetFn) -> tuple[Optional[bool], str]:
        """Projective field thresholding against exact inference on ``sample`` windows; ``engine`` keeps it if it agrees.

        Returns (True, note) when kept, (False, note) when not, (None, note) when no sampled window
        changes the score (nothing to judge it by: the engine stays exact).
        """
        engine.field_threshold = 1.0
        silent = _Progress(None, self.title, 0, 1)
        exact = self._drops(engine, sample, fill, target, silent)
        scale = float(exact.abs().max()) if sample else 0.0
        if scale == 0:
            return None, f"the {len(sample)} sample windows showed no drop to check the projective field threshold on"
        engine.field_threshold = self.field_threshold
        error = float((self._drops(engine, sample, fill, target, silent) - exact).abs().max())
        if error > APPROXIMATION_TOLERANCE * scale:
            engine.field_threshold = 1.0
            return False, (f"exact: projective field threshold {self.field_threshold} moved a drop by {error / scale:.0%} "
                           f"of the largest on {len(sample)} sample windows")
        return True, (f"projective field threshold {self.field_threshold} (largest error on {len(sample)} sample windows: "
                      f"{error / scale:.1%} of the largest)")

    def _drops(self, engine: OccludedInference, boxes: list, fill: torch.Tensor, target: TargetFn,
               progress: "_Progress") -> torch.Tensor:
        """Base score minus the score with each box occluded, ``[len(boxes)]``."""
        drops = torch.zeros(len(boxes), dtype=engine.output.dtype)
        for part in batched(len(boxes), self._batch):
            drops[part] = engine.drops(boxes[part], fill, target)
            progress(part.stop / max(len(boxes), 1), f"{part.stop}/{len(boxes)} windows")
        return drops

    def _coarse_to_fine(self, engine: OccludedInference, image: torch.Tensor, fill: torch.Tensor, boxes: list,
                        window: tuple, stride: tuple, target: TargetFn, progress: "_Progress",
                        recheck: bool = False) -> tuple[torch.Tensor, str]:
        """Krypton's adaptive drill-down: coarse windows everywhere, fine windows where the coarse map is large.

        A spread sample of the windows left out is computed too; if one of them has a drop above the
        threshold, the coarse map missed evidence and every fine window is computed. ``recheck``: the
        projective field threshold could not be judged on spread windows; judge it on the strongest
        windows the coarse map picks before computing them.
        """
        spatial = image.shape[2:]
        coarse_window = tuple(min(w * self.coarse_factor, s) for w, s in zip(window, spatial))
        coarse_stride = tuple(st * self.coarse_factor for st in stride)
        coarse_boxes = _boxes(image, fill, coarse_window, coarse_stride)
        coarse = _average(image, coarse_boxes, self._drops(engine, coarse_boxes, fill, target, progress.part(0.0, 0.4)))
        share = math.prod(window) / math.prod(coarse_window)
        estimates = torch.stack([coarse[(0, 0, *box)].mean() * share for box in boxes]) if boxes else torch.zeros(0)
        if not boxes:
            return estimates, "drill-down (no windows)"
        magnitude = estimates.abs()
        chosen = (magnitude >= self.refine_threshold * float(magnitude.max())).nonzero().flatten().tolist()
        notes = []
        if recheck:
            strongest = sorted(chosen, key=lambda i: -float(magnitude[i]))[:CHECK_WINDOWS]
            verdict, note = self._check_threshold(engine, [boxes[i] for i in strongest], fill, target)
            notes.append("exact: " + note if verdict is None else note)  # a rejection's note already says "exact"
        refined = set(chosen)
        left = [i for i in range(len(boxes)) if i not in refined]
        probe = _spread(left, CHECK_WINDOWS)
        chosen_and_probe = chosen + probe
        drops = estimates.clone()
        drops[chosen_and_probe] = self._drops(engine, [boxes[i] for i in chosen_and_probe], fill, target, progress.part(0.4, 0.7))
        largest = float(drops[chosen_and_probe].abs().max())
        if probe and float(drops[probe].abs().max()) > self.refine_threshold * largest:
            probed = set(probe)
            rest = [i for i in left if i not in probed]
            drops[rest] = self._drops(engine, [boxes[i] for i in rest], fill, target, progress.part(0.7, 1.0))
            notes.append(f"every fine window (drill-down found evidence outside the {len(chosen)} windows the coarse "
                         f"map pointed at)")
        else:
            notes.append(f"drill-down: {len(chosen)} of {len(boxes)} fine windows refined, {len(probe)} more checked")
        return drops, ", ".join(notes)

    def parameters(self) -> dict[str, Any]:
        params = {**super().parameters(), "window": self.window, "stride": self.stride or self.window,
                  "fill": "Gaussian-blurred image (sigma = window)", "mode": self.mode,
                  "inference": self.inference or ("incremental" if self.incremental else "full")}
        if self.mode == "approximate":
            params.update(field_threshold=self.field_threshold)
            if self.refine_threshold is not None:
                params.update(coarse_factor=self.coarse_factor, refine_threshold=self.refine_threshold)
        return params


class _Progress:
    """Progress of one sample's share of the work, reported to an optional stage."""

    def __init__(self, stage: Optional[Stage], title: str, index: int, total: int, low: float = 0.0, high: float = 1.0) -> None:
        self.stage, self.title, self.index, self.total, self.low, self.high = stage, title, index, total, low, high

    def part(self, low: float, high: float) -> "_Progress":
        span = self.high - self.low
        return _Progress(self.stage, self.title, self.index, self.total, self.low + low * span, self.low + high * span)

    def __call__(self, fraction: float, message: str) -> None:
        if self.stage is not None:
            done = self.low + fraction * (self.high - self.low)
            self.stage.report((self.index + done) / self.total, f"{self.title}: {message}")


def _meets(box: tuple[slice, ...], reach: Optional[tuple]) -> bool:
    """Whether a window's box overlaps ``reach`` (``(low, high)`` corners; None: everything)."""
    return reach is None or all(s.start < high and s.stop > low for s, low, high in zip(box, *reach))


def _spread(boxes: list, count: int) -> list:
    """Up to ``count`` boxes spread evenly through ``boxes``."""
    if not boxes:
        return []
    return [boxes[i] for i in sorted({round(k) for k in torch.linspace(0, len(boxes) - 1, min(len(boxes), count)).tolist()})]


def blurred_fill(image: torch.Tensor, window: int | Sequence[int]) -> torch.Tensor:
    """The fill hidden voxels take: the image ``[1, C, *S]`` blurred with sigma = window (per axis)."""
    return _blurred(image, _per_axis(window, image.dim() - 2))


def _blurred(image: torch.Tensor, window: tuple[int, ...]) -> torch.Tensor:
    sigma = [0.0] + [float(w) for w in window]
    return torch.from_numpy(gaussian_filter(image[0].numpy(), sigma=sigma, mode="nearest")).unsqueeze(0)


def _boxes(image: torch.Tensor, fill: torch.Tensor, window: tuple, stride: tuple) -> list[tuple[slice, ...]]:
    """Every window's box, without those whose content the fill would not change."""
    spatial = image.shape[2:]
    window = tuple(min(w, s) for w, s in zip(window, spatial))
    starts = itertools.product(*(_axis_starts(s, w, st) for s, w, st in zip(spatial, window, stride)))
    boxes = [tuple(slice(p, p + w) for p, w in zip(start, window)) for start in starts]
    return [box for box in boxes if (image[(..., *box)] - fill[(..., *box)]).abs().max() > 1e-6]


def _average(image: torch.Tensor, boxes: list, drops: torch.Tensor) -> torch.Tensor:
    """The map ``[1, 1, *S]``: each voxel's drops averaged over the windows that cover it (0 if none)."""
    attribution = torch.zeros_like(image[:, :1])
    counts = torch.zeros_like(attribution)
    for box, drop in zip(boxes, drops.tolist()):
        attribution[(0, slice(None), *box)] += drop
        counts[(0, slice(None), *box)] += 1
    return torch.where(counts > 0, attribution / counts.clamp(min=1), attribution)


def _per_axis(value: int | Sequence[int], dims: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    values = tuple(int(v) for v in value)
    if len(values) != dims:
        raise ValueError(f"expected {dims} values, got {values}")
    return values


def _axis_starts(size: int, window: int, stride: int) -> list[int]:
    """Window starts along one axis; the last window is moved in so the far edge is covered too."""
    if window >= size:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts
