"""Exact incremental inference for occlusion: recompute only what an occluding window changes.

Nakandala, Kumar and Papakonstantinou, "Incremental and Approximate Inference for Faster
Occlusion-based Deep CNN Explanations", SIGMOD 2019 (Krypton). The network is traced with
:mod:`torch.fx` and run once on the unoccluded image, keeping every intermediate tensor. For a batch of
occluded copies, each traced node is then evaluated on a *patch*: the box of its output that can differ
from the cached tensor (the window's box grown by each layer's receptive field and mapped through its
stride), read from the cached activation around it. Convolutions, transposed convolutions and pooling
with fixed windows (zero or implicit padding), batch normalisation in eval mode, point-wise
activations, dropout in eval mode, residual additions and channel concatenations (U-Net skip
connections) are computed on patches; so is a module that reduces a map to case values and offers
``patch_reduction(cached_input)`` (a callable giving its output for N copies of the cached input, copy
``i`` with the box at ``starts[i]`` replaced by ``values[i]`` ``[C, *size_i]``: a max-pooled
classifier's head picks the best voxel from the boxes and a ranking of the cached map, without
rebuilding whole maps). Any other node (instance normalisation, global pooling…), and any node whose
patch would cover most of its output, is computed on full tensors for the batch, rebuilt from the
cache and the patches. The result equals full inference up to floating-point rounding.

When the explained score reads only a region of the output (a segmentation target: the logits summed
over the lesion), :meth:`IncrementalInference.focus` limits every node to the voxels that region's
receptive field needs, propagated back through the graph: a window's change that reaches the decoder's
full-resolution layers is recomputed only where the score can see it. Values outside a node's focus
are left stale; by construction nothing inside the focus downstream reads them, so the score is exact.

``field_threshold`` < 1 turns on Krypton's *projective field thresholding* (Section 4.1 of the paper):
along each axis a patch may cover at most that share of its layer's output, centred on where the
change is; changes beyond it, which have been spread thin by the layers before, are dropped. Deep,
coarse layers then stay patched instead of being recomputed whole; the map is approximate.

Networks that cannot be traced (TorchScript, data-dependent control flow) or whose first layer is not
one of the above fall back to full inference, one forward pass per batch of occluded copies.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

__all__ = ["OccludedInference", "FullInference", "IncrementalInference", "occluded_inference"]

Box = tuple[slice, ...]

_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)
_POINTWISE_FUNCTIONS = {torch.relu, F.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, torch.sigmoid, torch.tanh}
_POINTWISE_METHODS = {"relu", "sigmoid", "tanh"}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_CONCATENATE_FUNCTIONS = {torch.cat, torch.concat}
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


class OccludedInference:
    """Network outputs for batches of copies of one image, each with one box replaced by the fill."""

    #: ``"incremental"`` or ``"full"``.
    kind: str
    #: Why full inference is used (empty for incremental inference).
    reason: str = ""
    #: The network's output on the unoccluded image.
    output: torch.Tensor

    def __call__(self, boxes: Sequence[Box], fill: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def drops(self, boxes: Sequence[Box], fill: torch.Tensor, target: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``target`` on the unoccluded image minus ``target`` on each occluded copy, ``[len(boxes)]``."""
        return (target(self.output) - target(self(boxes, fill))).reshape(-1)


class FullInference(OccludedInference):
    """One forward pass per batch of occluded copies (what Captum and MONAI do)."""

    kind = "full"

    def __init__(self, network: nn.Module, image: torch.Tensor, reason: str) -> None:
        self.network = network
        self.image = image
        self.reason = reason
        self.output = network(image)

    def __call__(self, boxes: Sequence[Box], fill: torch.Tensor) -> torch.Tensor:
        batch = self.image.repeat(len(boxes), *([1] * (self.image.dim() - 1)))
        for i, box in enumerate(boxes):
            batch[(i, slice(None), *box)] = fill[(0, slice(None), *box)]
        return self.network(batch)


@dataclass
class _Layout:
    """Where N occluded copies of a node's output differ from its cached tensor.

    Copy ``i`` can differ only inside the box ``lows[i]``..``highs[i]``; its values are computed on the
    box ``starts[i]`` + ``size`` (one size for the batch) that holds it.
    """

    starts: list[tuple[int, ...]]
    size: tuple[int, ...]
    lows: list[tuple[int, ...]]
    highs: list[tuple[int, ...]]


@dataclass
class _Patch:
    """A node's value for N occluded copies: its cached tensor with box ``layout.starts[i]`` + ``layout.size`` set to ``values[i]``."""

    layout: _Layout
    values: torch.Tensor


@dataclass
class _Full:
    """A node's value for N occluded copies, computed on whole tensors."""

    values: torch.Tensor


class IncrementalInference(OccludedInference):
    """Krypton-style incremental inference on a :mod:`torch.fx` trace of the network.

    ``max_fraction``: a node whose patch would cover more than this share of its output is computed on
    full tensors instead (and so is everything downstream of it that reads it). ``field_threshold``:
    the largest share of each axis of a layer's output a patch may cover (1 = exact, see the module notes).
    """

    kind = "incremental"

    def __init__(self, graph_module: torch.fx.GraphModule, image: torch.Tensor, max_fraction: float = 0.5,
                 field_threshold: float = 1.0) -> None:
        if not 0.0 < field_threshold <= 1.0:
            raise ValueError(f"field_threshold must be in (0, 1], not {field_threshold}")
        self.graph_module = graph_module
        self.modules = dict(graph_module.named_modules())
        self.max_fraction = float(max_fraction)
        self.field_threshold = float(field_threshold)
        self.cache: dict[torch.fx.Node, Any] = {}
        self._padded: dict[tuple, np.ndarray] = {}
        self.interest: dict[torch.fx.Node, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._reductions: dict[torch.fx.Node, Callable] = {}
        (self.input_node,) = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
        self.output = _CachingInterpreter(self, graph_module).run(_channels_last(image))

    def focus(self, region: Optional[torch.Tensor]) -> bool:
        """Compute only what a score reading ``region`` (``[*spatial]`` of the output, non-zero where read)
        can see; None clears it. Returns whether the focus applies (a single spatial output of that shape)."""
        self.interest = {}
        (output,) = [n for n in self.graph_module.graph.nodes if n.op == "output"]
        result = output.args[0]
        if region is None or not isinstance(result, torch.fx.Node) or not region.any():
            return False
        cached = self.cache.get(result)
        if not isinstance(cached, torch.Tensor) or tuple(cached.shape[2:]) != tuple(region.shape):
            return False
        where = torch.nonzero(region)
        self.interest = self._trace_back(result, (tuple(where.min(dim=0).values.tolist()),
                                                  tuple((where.max(dim=0).values + 1).tolist())))
        return True

    def reach(self) -> Optional[tuple[tuple[int, ...], tuple[int, ...]]]:
        """The box of the input the focused score reads (None without a focus): windows outside it cannot
        change the score."""
        return self.interest.get(self.input_node)

    def deciding_reach(self) -> Optional[tuple[tuple[int, ...], tuple[int, ...]]]:
        """The box of the input read by the voxel that decides the output, when the network ends in a
        reduction that picks one voxel (a max-pooled head exposing ``deciding_voxel``); else None.

        A window outside it leaves that voxel's value alone; it can change the output only by making
        another voxel the decider (for a max: by raising one above it)."""
        (output,) = [n for n in self.graph_module.graph.nodes if n.op == "output"]
        head = output.args[0]
        if not (isinstance(head, torch.fx.Node) and head.op == "call_module" and _reduces_patches(self.modules[head.target])):
            return None
        voxel = getattr(self._reduction_of(head), "deciding_voxel", None)
        if voxel is None:
            return None
        return self._trace_back(head.args[0], (tuple(voxel), tuple(v + 1 for v in voxel))).get(self.input_node)

    def _trace_back(self, start: torch.fx.Node, box: tuple) -> dict:
        """For ``start`` and every node it reads from, directly or not, the box of its output that ``box``
        of ``start``'s output is computed from (None: all of it)."""
        interest: dict[torch.fx.Node, Any] = {start: box}
        for node in reversed(list(self.graph_module.graph.nodes)):
            if node not in interest or node.op == "placeholder":
                continue
            for source in node.all_input_nodes:
                demand = self._demand(node, source, interest[node])
                interest[source] = demand if source not in interest else _box_union(interest[source], demand)
        return interest

    def _whole(self, node: torch.fx.Node) -> Optional[tuple[tuple[int, ...], tuple[int, ...]]]:
        value = self.cache.get(node)
        if not isinstance(value, torch.Tensor) or value.dim() < 3:
            return None
        return (0,) * (value.dim() - 2), tuple(value.shape[2:])

    def _demand(self, node: torch.fx.Node, source: torch.fx.Node, box) -> Optional[tuple]:
        """The box of ``source``'s output that ``node``'s output ``box`` is computed from (None: all of it)."""
        whole = self._whole(source)
        if box is None or whole is None or self._patch_rule(node) is None:
            return whole
        shape = whole[1]
        module = self.modules[node.target] if node.op == "call_module" else None
        if module is not None and _windowed_geometry(module) is not None:
            kernel, stride, padding, dilation, _ = _windowed_geometry(module)
            lo = tuple(max(0, a * s - p) for a, s, p in zip(box[0], stride, padding))
            hi = tuple(min(m, (b - 1) * s - p + (k - 1) * d + 1)
                       for b, s, p, k, d, m in zip(box[1], stride, padding, kernel, dilation, shape))
        elif module is not None and _transposed_geometry(module) is not None:
            kernel, stride, padding, dilation = _transposed_geometry(module)
            lo = tuple(max(0, -(((k - 1) * d - a - p) // s)) for a, s, p, k, d in zip(box[0], stride, padding, kernel, dilation))
            hi = tuple(min(m, (b - 1 + p) // s + 1) for b, s, p, m in zip(box[1], stride, padding, shape))
        elif tuple(shape) == tuple(self.cache[node].shape[2:]):
            lo, hi = box  # point-wise, addition, concatenation: the same voxels
        else:
            return whole
        if any(h <= l for l, h in zip(lo, hi)):
            lo, hi = (0,) * len(shape), (1,) * len(shape)  # reads nothing that can change: keep one voxel
        return lo, hi

    def _focused(self, node: torch.fx.Node, lows: list, highs: list) -> tuple[list, list]:
        """Changed boxes cut to ``node``'s focus (a box outside it keeps one voxel at its edge)."""
        box = self.interest.get(node)
        if box is None:
            return lows, highs
        focus_lo, focus_hi = box
        cut_lows, cut_highs = [], []
        for low, high in zip(lows, highs):
            lo = tuple(min(max(a, f), g - 1) for a, f, g in zip(low, focus_lo, focus_hi))
            cut_lows.append(lo)
            cut_highs.append(tuple(max(min(b, g), l + 1) for b, g, l in zip(high, focus_hi, lo)))
        return cut_lows, cut_highs

    def supports_first_layer(self) -> bool:
        """Whether some node reading the input can be computed on patches."""
        return any(self._patch_rule(user) is not None for user in self.input_node.users)

    def __call__(self, boxes: Sequence[Box], fill: torch.Tensor) -> torch.Tensor:
        return self._outputs(*self._propagate(boxes, fill), len(boxes))

    def _outputs(self, env: dict, result: Any, count: int) -> Any:
        """The network's output for the copies, as whole tensors."""
        return torch.fx.node.map_arg(result, lambda n: self._as_tensor(n, env, count))

    def drops(self, boxes: Sequence[Box], fill: torch.Tensor, target: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """As :meth:`OccludedInference.drops`; a target that offers ``change_in_box`` (a region's logit sum)
        is read on each copy's changed box of a patched output, without building whole outputs."""
        env, result = self._propagate(boxes, fill)
        change = getattr(target, "change_in_box", None)
        patch = env.get(result) if isinstance(result, torch.fx.Node) else None
        if change is None or not isinstance(patch, _Patch):
            return (target(self.output) - target(self._outputs(env, result, len(boxes)))).reshape(-1)
        cached = self.cache[result][0]
        layout = patch.layout
        drops = []
        for values, start, low, high in zip(patch.values, layout.starts, layout.lows, layout.highs):
            box = tuple(slice(l, h) for l, h in zip(low, high))
            local = tuple(slice(l - s, h - s) for l, h, s in zip(low, high, start))
            drops.append(-change(values[(slice(None), *local)], cached[(slice(None), *box)], box))
        return torch.tensor(drops, dtype=self.output.dtype)

    def _propagate(self, boxes: Sequence[Box], fill: torch.Tensor) -> tuple[dict, Any]:
        """Every node's value for the occluded copies (None: the cached value holds), and the output's argument."""
        env: dict[torch.fx.Node, Optional[_Patch | _Full]] = {}
        count = len(boxes)
        for node in self.graph_module.graph.nodes:
            if node.op == "placeholder":
                starts = [tuple(s.start for s in box) for box in boxes]
                size = tuple(s.stop - s.start for s in boxes[0])
                layout = _Layout(starts, size, starts, [tuple(s.stop for s in box) for box in boxes])
                env[node] = _Patch(layout, torch.from_numpy(_stack(fill[0].numpy(), starts, size)))
            elif node.op == "output":
                return env, node.args[0]
            elif all(env.get(n) is None for n in node.all_input_nodes):
                env[node] = None  # does not depend on the image: the cached value holds
            else:
                env[node] = self._evaluate(node, env, count)
        raise RuntimeError("traced graph has no output")

    # -- evaluation ------------------------------------------------------------------------------

    def _evaluate(self, node: torch.fx.Node, env: dict, count: int) -> _Patch | _Full:
        rule = self._patch_rule(node)
        if rule is not None and all(isinstance(env[n], _Patch) for n in node.all_input_nodes):
            patch = rule(node, env)
            if patch is not None:
                return patch
        args = torch.fx.node.map_arg(node.args, lambda n: self._as_tensor(n, env, count))
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: self._as_tensor(n, env, count))
        return _Full(self.call(node, args, kwargs))

    def call(self, node: torch.fx.Node, args: tuple, kwargs: dict) -> Any:
        """Run one traced node on concrete values (inputs of in-place operations are copied first)."""
        if _in_place(node, self.modules) and args and isinstance(args[0], torch.Tensor):
            args = (args[0].clone(), *args[1:])
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        raise RuntimeError(f"unexpected node {node.op}")

    def _as_tensor(self, node: torch.fx.Node, env: dict, count: int) -> Any:
        value = env[node]
        if value is None:
            return self.cache[node]
        if isinstance(value, _Full):
            return value.values
        cached = self.cache[node].numpy()
        shape = (count, *cached.shape[1:])  # laid out as the cached tensor: copying it is then a plain copy
        full = np.empty(shape, cached.dtype) if self.cache[node].is_contiguous() else _empty(shape, cached.dtype)
        full[...] = cached
        values = value.values.numpy()
        for i, start in enumerate(value.layout.starts):
            full[(i, slice(None), *_box(start, value.layout.size))] = values[i]
        return torch.from_numpy(full)

    def _patch_rule(self, node: torch.fx.Node) -> Optional[Callable[[torch.fx.Node, dict], Optional[_Patch]]]:
        """How ``node`` is computed on patches, or None when it must see full tensors."""
        if node.op == "call_module":
            module = self.modules[node.target]
            if len(node.args) != 1 or node.kwargs:
                return None
            if isinstance(module, _POINTWISE_MODULES) and not (module.training and "Dropout" in type(module).__name__):
                return self._pointwise
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.training and module.running_mean is not None:
                return self._pointwise
            if _windowed_geometry(module) is not None:
                return self._windowed
            if _transposed_geometry(module) is not None:
                return self._transposed
            if _reduces_patches(module):
                return self._reduction
            return None
        if node.op == "call_function" and node.target in _POINTWISE_FUNCTIONS and len(node.all_input_nodes) == 1:
            return self._pointwise if node.args and node.args[0] is node.all_input_nodes[0] else None
        if node.op == "call_method" and node.target in _POINTWISE_METHODS and len(node.args) == 1 and not node.kwargs:
            return self._pointwise
        if node.op == "call_function" and node.target in _ADD_FUNCTIONS and len(node.args) == 2 and not node.kwargs:
            a, b = node.args
            if isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node):
                return self._add if self.cache[a].shape == self.cache[b].shape == self.cache[node].shape else None
            if isinstance(a, torch.fx.Node) and isinstance(b, (int, float)):
                return self._pointwise
        if node.op == "call_function" and node.target in _CONCATENATE_FUNCTIONS:
            tensors = node.args[0] if node.args else node.kwargs.get("tensors")
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if (dim in (1, -self.cache[node].dim() + 1) and isinstance(tensors, (list, tuple)) and tensors
                    and all(isinstance(t, torch.fx.Node) and self.cache[t].shape[2:] == self.cache[node].shape[2:] for t in tensors)):
                return self._concatenate
        return None

    def _pointwise(self, node: torch.fx.Node, env: dict) -> _Patch:
        (source,) = node.all_input_nodes
        patch = env[source]
        args = torch.fx.node.map_arg(node.args, lambda n: patch.values)
        return _Patch(patch.layout, self.call(node, args, dict(node.kwargs)))

    def _windowed(self, node: torch.fx.Node, env: dict) -> Optional[_Patch]:
        module = self.modules[node.target]
        kernel, stride, padding, dilation, pad_value = _windowed_geometry(module)
        source = node.args[0]
        patch = env[source]
        out_shape = self.cache[node].shape[2:]
        lows, highs = [], []
        for low, high in zip(patch.layout.lows, patch.layout.highs):
            lo, hi = [], []
            for a, b, k, s, p, d, m in zip(low, high, kernel, stride, padding, dilation, out_shape):
                first = min(max(0, -(((k - 1) * d - a - p) // s)), m - 1)  # ceil((a + p - (k-1)d) / s)
                lo.append(first)
                hi.append(max(min(m, (b - 1 + p) // s + 1), first + 1))
            lows.append(tuple(lo))
            highs.append(tuple(hi))
        layout = self._fit(*self._focused(node, lows, highs), out_shape)
        if layout is None:
            return None
        in_size = tuple((n - 1) * s + (k - 1) * d + 1 for n, s, k, d in zip(layout.size, stride, kernel, dilation))
        in_starts = [tuple(o * s for o, s in zip(start, stride)) for start in layout.starts]
        region = self._gather(source, patch, padding, pad_value, in_starts, in_size)
        return _Patch(layout, _windowed_forward(module, torch.from_numpy(region), stride, dilation))

    def _transposed(self, node: torch.fx.Node, env: dict) -> Optional[_Patch]:
        """A transposed convolution on patches: the outputs a changed input reaches, from every input reaching them."""
        module = self.modules[node.target]
        kernel, stride, padding, dilation = _transposed_geometry(module)
        source = node.args[0]
        patch = env[source]
        out_shape, in_shape = self.cache[node].shape[2:], self.cache[source].shape[2:]
        reach = [(k - 1) * d for k, d in zip(kernel, dilation)]
        lows = [tuple(max(0, a * s - p) for a, s, p in zip(low, stride, padding)) for low in patch.layout.lows]
        highs = [tuple(min(m, (b - 1) * s - p + r + 1) for b, s, p, r, m in zip(high, stride, padding, reach, out_shape))
                 for high in patch.layout.highs]
        layout = self._fit(*self._focused(node, lows, highs), out_shape)
        if layout is None:
            return None
        starts, size = layout.starts, layout.size
        # Inputs i reach outputs i*s - p .. i*s - p + r; the region from ``first`` holds every input reaching the patch.
        firsts = [tuple((o + p - r) // s for o, p, r, s in zip(start, padding, reach, stride)) for start in starts]
        in_size = tuple(max((start[i] + n - 1 + p) // s - first[i] + 1 for start, first in zip(starts, firsts))
                        for i, (n, p, s) in enumerate(zip(size, padding, stride)))
        pad = tuple(max(0, -min(f[i] for f in firsts), max(f[i] for f in firsts) + in_size[i] - in_shape[i])
                    for i in range(len(in_shape)))
        region = self._gather(source, patch, pad, 0.0, [tuple(f + q for f, q in zip(first, pad)) for first in firsts], in_size)
        dims = len(in_shape)
        full = _CONV_TRANSPOSE[dims](torch.from_numpy(region), module.weight, module.bias, stride, 0, 0, module.groups, dilation).numpy()
        values = _empty((len(starts), full.shape[1], *size), full.dtype)
        for i, (start, first) in enumerate(zip(starts, firsts)):
            offset = [o - (f * s - p) for o, f, s, p in zip(start, first, stride, padding)]
            values[i] = full[(i, slice(None), *_box(offset, size))]
        return _Patch(layout, torch.from_numpy(values))

    def _reduction(self, node: torch.fx.Node, env: dict) -> _Full:
        """A module's own patch-aware reduction, given each copy's changed box only (the rest of a patch
        holds values that cannot differ from the cache, so the reduction reads them there, bit for bit)."""
        patch = env[node.args[0]]
        layout = patch.layout
        values = [patch.values[i][(slice(None), *(slice(l - s, h - s) for l, h, s in zip(low, high, start)))]
                  for i, (low, high, start) in enumerate(zip(layout.lows, layout.highs, layout.starts))]
        return _Full(self._reduction_of(node)(values, layout.lows))

    def _reduction_of(self, node: torch.fx.Node) -> Callable:
        """``patch_reduction`` of ``node``'s module, prepared once on the cached input."""
        if node not in self._reductions:
            self._reductions[node] = self.modules[node.target].patch_reduction(self.cache[node.args[0]])
        return self._reductions[node]

    def _add(self, node: torch.fx.Node, env: dict) -> Optional[_Patch]:
        a, b = node.args
        layout = self._union(node, [env[a], env[b]], self.cache[node].shape[2:])
        if layout is None:
            return None
        zero = (0,) * len(layout.size)
        values = self._gather(a, env[a], zero, 0.0, layout.starts, layout.size)
        np.add(values, self._gather(b, env[b], zero, 0.0, layout.starts, layout.size), out=values)
        return _Patch(layout, torch.from_numpy(values))

    def _concatenate(self, node: torch.fx.Node, env: dict) -> Optional[_Patch]:
        tensors = node.args[0] if node.args else node.kwargs["tensors"]
        layout = self._union(node, [env[t] for t in tensors], self.cache[node].shape[2:])
        if layout is None:
            return None
        zero = (0,) * len(layout.size)
        parts = [self._gather(t, env[t], zero, 0.0, layout.starts, layout.size) for t in tensors]
        values = np.concatenate(parts, axis=1, out=_empty((len(layout.starts), sum(p.shape[1] for p in parts), *layout.size), parts[0].dtype))
        return _Patch(layout, torch.from_numpy(values))

    def _union(self, node: torch.fx.Node, patches: Sequence[_Patch], shape: Sequence[int]) -> Optional[_Layout]:
        """Per copy, the box holding every input's changed box (focused, laid out by :meth:`_fit`)."""
        count = len(patches[0].layout.lows)
        lows = [tuple(map(min, *(p.layout.lows[i] for p in patches))) for i in range(count)]
        highs = [tuple(map(max, *(p.layout.highs[i] for p in patches))) for i in range(count)]
        return self._fit(*self._focused(node, lows, highs), shape)

    def _fit(self, lows: Sequence[tuple[int, ...]], highs: Sequence[tuple[int, ...]], shape: Sequence[int]) -> Optional[_Layout]:
        """One patch size for all copies and each copy's start, from the boxes ``lows``..``highs`` that may change.

        Boxes smaller than the common size are moved inwards at the edges (the extra voxels hold values
        that do not change). With a field threshold, an axis longer than that share of the output is cut
        down to it around the box's centre, and the cut box is what changes from then on. None when the
        patch would cover more than ``max_fraction`` of the output (compute it whole instead).
        """
        size = [max(h[i] - l[i] for l, h in zip(lows, highs)) for i in range(len(shape))]
        limits = [max(1, math.ceil(self.field_threshold * m)) for m in shape]
        cut = [n > limit for n, limit in zip(size, limits)]
        size = tuple(min(n, limit) for n, limit in zip(size, limits))
        if math.prod(size) > self.max_fraction * math.prod(shape):
            return None
        starts, kept_lows, kept_highs = [], [], []
        for lo, hi in zip(lows, highs):
            start = tuple(min(max(0, (l + h - n) // 2) if c else l, m - n) for l, h, n, m, c in zip(lo, hi, size, shape, cut))
            starts.append(start)
            kept_lows.append(tuple(max(l, a) for l, a in zip(lo, start)))
            kept_highs.append(tuple(min(h, a + n) for h, a, n in zip(hi, start, size)))
        return _Layout(starts, size, kept_lows, kept_highs)

    def _gather(self, source: torch.fx.Node, patch: _Patch, padding: Sequence[int], pad_value: float,
                starts: Sequence[tuple[int, ...]], size: tuple[int, ...]) -> np.ndarray:
        """``[N, C, *size]`` boxes at ``starts`` (in padded coordinates) of the occluded, padded values of ``source``.

        Copies go through NumPy: its strided copies of small boxes are much faster than PyTorch's here.
        """
        region = _stack(self._padded_cache(source, tuple(padding), pad_value), starts, size)
        values = patch.values.numpy()
        for i, (start, patch_start) in enumerate(zip(starts, patch.layout.starts)):
            lo = [max(s, q + p) for s, q, p in zip(start, patch_start, padding)]
            hi = [min(s + n, q + p + m) for s, q, p, n, m in zip(start, patch_start, padding, size, patch.layout.size)]
            if any(h <= l for l, h in zip(lo, hi)):
                continue
            target = tuple(slice(l - s, h - s) for l, h, s in zip(lo, hi, start))
            origin = tuple(slice(l - q - p, h - q - p) for l, h, q, p in zip(lo, hi, patch_start, padding))
            region[(i, slice(None), *target)] = values[(i, slice(None), *origin)]
        return region

    def _padded_cache(self, source: torch.fx.Node, padding: tuple[int, ...], pad_value: float) -> np.ndarray:
        """The cached ``[C, *S]`` value of ``source`` (sample 0), padded by ``padding`` voxels of ``pad_value``."""
        key = (source, padding, pad_value)
        if key not in self._padded:
            pads = [p for p in reversed(padding) for _ in range(2)]
            self._padded[key] = F.pad(self.cache[source], pads, value=pad_value)[0].numpy() if any(padding) else self.cache[source][0].numpy()
        return self._padded[key]


class _CachingInterpreter(torch.fx.Interpreter):
    """Runs the traced network once and keeps every node's output."""

    def __init__(self, owner: IncrementalInference, graph_module: torch.fx.GraphModule) -> None:
        super().__init__(graph_module)
        self.owner = owner

    def run_node(self, node: torch.fx.Node) -> Any:
        if node.op in ("call_module", "call_function", "call_method"):
            args, kwargs = self.fetch_args_kwargs_from_env(node)
            result = self.owner.call(node, args, kwargs)
        else:
            result = super().run_node(node)
        self.owner.cache[node] = result
        return result


def occluded_inference(network: nn.Module, image: torch.Tensor, incremental: bool = True,
                       max_fraction: float = 0.5, field_threshold: float = 1.0) -> OccludedInference:
    """Incremental inference for ``network`` on ``image`` where it applies, else full inference (with the reason).

    ``field_threshold`` < 1: approximate incremental inference (projective field thresholding)."""
    if not incremental:
        return FullInference(network, image, "incremental inference switched off")
    if isinstance(network, torch.jit.ScriptModule):
        return FullInference(network, image, "TorchScript models cannot be traced")
    try:
        graph_module = torch.fx.GraphModule(network, _Tracer().trace(network))
    except Exception as error:  # noqa: BLE001 - any tracing failure means: run the network as it is
        return FullInference(network, image, f"the network cannot be traced ({type(error).__name__})")
    if sum(n.op == "placeholder" for n in graph_module.graph.nodes) != 1:
        return FullInference(network, image, "the network takes more than one input")
    engine = IncrementalInference(graph_module, image, max_fraction, field_threshold)
    if not engine.supports_first_layer():
        first = ", ".join(str(n.target) for n in engine.input_node.users)
        return FullInference(network, image, f"its first layer ({first}) is not one incremental inference handles")
    return engine


class _Tracer(torch.fx.Tracer):
    """Keeps modules with their own patch-aware reduction as single nodes."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return _reduces_patches(m) or super().is_leaf_module(m, module_qualified_name)


def _reduces_patches(module: nn.Module) -> bool:
    return callable(getattr(module, "patch_reduction", None))


def _windowed_geometry(module: nn.Module) -> Optional[tuple]:
    """``(kernel, stride, padding, dilation, pad_value)`` of a convolution or pooling layer it can patch."""
    dims = _spatial_dims(module)
    if dims is None:
        return None
    expand = torch.nn.modules.utils._ntuple(dims)
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.transposed or module.padding_mode != "zeros" or isinstance(module.padding, str):
            return None
        return module.kernel_size, module.stride, module.padding, module.dilation, 0.0
    if isinstance(module, nn.modules.pooling._MaxPoolNd):
        if module.ceil_mode or module.return_indices:
            return None
        stride = module.stride if module.stride is not None else module.kernel_size
        return expand(module.kernel_size), expand(stride), expand(module.padding), expand(module.dilation), -math.inf
    if isinstance(module, nn.modules.pooling._AvgPoolNd):
        padding = expand(module.padding)
        if module.ceil_mode or module.divisor_override is not None or (any(padding) and not module.count_include_pad):
            return None
        stride = module.stride if module.stride is not None else module.kernel_size
        return expand(module.kernel_size), expand(stride), padding, (1,) * dims, 0.0
    return None


def _transposed_geometry(module: nn.Module) -> Optional[tuple]:
    """``(kernel, stride, padding, dilation)`` of a transposed convolution it can patch."""
    if not isinstance(module, nn.modules.conv._ConvTransposeNd) or _spatial_dims(module) is None:
        return None
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        return None
    if any((k - 1) * d + 1 < s for k, d, s in zip(module.kernel_size, module.dilation, module.stride)):
        return None  # a kernel shorter than its stride leaves gaps the patch arithmetic does not cover
    return module.kernel_size, module.stride, module.padding, module.dilation


def _windowed_forward(module: nn.Module, region: torch.Tensor, stride: Sequence[int], dilation: Sequence[int]) -> torch.Tensor:
    """The layer on a region that already holds its padding."""
    dims = region.dim() - 2
    if isinstance(module, nn.modules.conv._ConvNd):
        return _CONV[dims](region, module.weight, module.bias, stride, 0, dilation, module.groups)
    if isinstance(module, nn.modules.pooling._MaxPoolNd):
        return _separable_max_pool(region, torch.nn.modules.utils._ntuple(dims)(module.kernel_size), stride, dilation)
    return _AVG_POOL[dims](region, module.kernel_size, stride, 0)


def _separable_max_pool(region: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> torch.Tensor:
    """Max pooling without padding as one running maximum per axis (a box maximum is separable).

    The same values as ``max_pool3d``, about four times faster on CPU for the small batches of patches here.
    """
    for axis, (k, s, d) in enumerate(zip(kernel, stride, dilation), start=2):
        windows = region.unfold(axis, (k - 1) * d + 1, s)
        region = (windows[..., ::d] if d > 1 else windows).amax(dim=-1)
    return region


def _spatial_dims(module: nn.Module) -> Optional[int]:
    name = type(module).__name__
    return int(name[-2]) if name[-2:] in ("1d", "2d", "3d") else None


def _in_place(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return bool(getattr(modules[node.target], "inplace", False))
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    return node.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv) or bool(node.kwargs.get("inplace"))


def _stack(array: np.ndarray, starts: Sequence[tuple[int, ...]], size: tuple[int, ...]) -> np.ndarray:
    """``[N, C, *size]``: the boxes of ``array`` ``[C, *S]`` at ``starts``, copied."""
    out = _empty((len(starts), array.shape[0], *size), array.dtype)
    for i, start in enumerate(starts):
        out[i] = array[(slice(None), *_box(start, size))]
    return out


def _channels_last(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` laid out channels-last where PyTorch has such a layout (2-D and 3-D images)."""
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    return tensor.contiguous(memory_format=formats[tensor.dim()]) if tensor.dim() in formats else tensor


def _empty(shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """An uninitialised ``[N, C, *S]`` array laid out channels-last (``[N, *S, C]`` in memory).

    PyTorch's CPU convolutions are up to 4x faster on channels-last tensors with few channels and large
    patches (the decoder's full-resolution layers), and keep that layout for their outputs.
    """
    dims = len(shape) - 2
    return np.empty((shape[0], *shape[2:], shape[1]), dtype=dtype).transpose(0, dims + 1, *range(1, dims + 1))


def _box_union(a: Optional[tuple], b: Optional[tuple]) -> Optional[tuple]:
    """The bounding box of two ``(lo, hi)`` boxes; None (everything) absorbs."""
    if a is None or b is None:
        return None
    return tuple(map(min, a[0], b[0])), tuple(map(max, a[1], b[1]))


def _box(start: Sequence[int], size: Sequence[int]) -> Box:
    return tuple(slice(s, s + n) for s, n in zip(start, size))
