"""nnU-Net v2 results folders as models: nnU-Net's own preprocessing, network and sliding window, read safely.

Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image segmentation",
Nature Methods 2021. A trained model folder (``Dataset…/Trainer__Plans__Configuration``, or one of its
``fold_N`` folders) holds ``dataset.json``, ``plans.json`` and ``fold_N/checkpoint_final.pth``:

- The card comes from those two files: class names from ``labels``, one input per ``channel_names`` entry,
  the configuration's patch size and target spacing, the training spacings (``dataset_fingerprint.json``)
  as the applicability domain.
- The checkpoint is read with ``weights_only=True`` (plain tensors and numbers: no pickled code runs);
  nnU-Net's own loader unpickles it whole.
- The network is built by nnunetv2's ``get_network_from_plans``, which imports the classes the plans name.
  Untrusted plans may name only dynamic_network_architectures' U-Nets and torch.nn's convolution,
  normalisation, dropout and activation layers; anything else needs ``--trust-bundle``.
- Preprocessing is nnU-Net's ``DefaultPreprocessor`` (transpose, crop to the nonzero box, the plans'
  normalisation, resampling to the target spacing); prediction is nnU-Net's ``nnUNetPredictor`` sliding
  window (Gaussian blending, tile step 0.5) with its test-time mirroring. Explanations use the same windows
  and blending (:mod:`XAIExplainLib.explainers.windowed`) of the network without mirroring.

The engine's tensors are indexed like SimpleITK (x, y, z); nnU-Net's arrays are (z, y, x) after its
``transpose_forward``. :class:`NNUNetNetwork` turns one into the other around the network, and the model
grid handed to the engine is the physical geometry of nnU-Net's preprocessed array (its resampling keeps
voxel centres aligned as ``skimage.transform.resize`` does), so maps go back onto the input like any other.
"""

from __future__ import annotations

import contextlib
import io
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import XAIModelError
from ..nnunet_card import checkpoint_file, configuration_name, model_folder, read_json

__all__ = ["load_nnunet_network", "NNUNetRuntime", "NNUNetNetwork"]

#: What untrusted plans may name: the networks nnU-Net plans by default, and the torch.nn layers they take.
_NETWORKS = {
    "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
}
_LAYERS = {f"torch.nn.modules.{module}.{name}" for module, names in {
    "conv": ("Conv1d", "Conv2d", "Conv3d"),
    "instancenorm": ("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"),
    "batchnorm": ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"),
    "dropout": ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d"),
    "activation": ("LeakyReLU", "ReLU", "PReLU", "GELU"),
}.items() for name in names} | {f"torch.nn.{name}" for name in ("LeakyReLU", "ReLU", "PReLU", "GELU", "Conv3d",
                                                                   "InstanceNorm3d", "BatchNorm3d", "Dropout3d")}
def _read_checkpoint(file: Path) -> dict:
    """The checkpoint as plain data: tensors, numbers, strings (numpy scalars of the training log allowed)."""
    safe = [np.dtype, *(type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "bool"))]
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    try:
        with torch.serialization.safe_globals([scalar, *safe]):
            checkpoint = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - whatever the unpickler refuses is one line for the user
        reason = str(error).split("WeightsUnpickler error:")[-1].strip().splitlines()[0][:160]
        raise XAIModelError(f"{file.parent.name}/{file.name} is not a plain nnU-Net checkpoint ({reason}); refused "
                            f"(it is read with weights_only=True, without running pickled code).") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("network_weights"), dict):
        raise XAIModelError(f"{file.parent.name}/{file.name} has no 'network_weights': not an nnU-Net checkpoint.")
    return checkpoint


@dataclass
class NNUNetParts:
    """What nnunetv2 needs to preprocess and predict for one trained model folder."""

    plans_manager: Any
    configuration: Any
    label_manager: Any
    dataset: dict
    mirror_axes: Optional[tuple[int, ...]]
    trainer: str
    checkpoint: Path


def load_nnunet_network(path: Path, trust: bool) -> tuple[torch.nn.Module, NNUNetParts]:
    """The fold's network, built by nnunetv2 from the plans (names checked unless ``trust``), with its weights."""
    try:
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    except ImportError:
        raise XAIModelError("This is an nnU-Net v2 model folder; explaining it needs the nnunetv2 package "
                            "(pip install nnunetv2).") from None
    folder = model_folder(path)
    dataset, plans = read_json(folder / "dataset.json"), read_json(folder / "plans.json")
    checkpoint_path = checkpoint_file(path)
    checkpoint = _read_checkpoint(checkpoint_path)
    recorded = checkpoint.get("init_args", {})
    name = configuration_name(folder, plans, recorded.get("configuration") if isinstance(recorded, dict) else None)
    if not isinstance(plans["configurations"][name].get("architecture"), dict):
        raise XAIModelError(f"nnU-Net model {folder.name}: plans.json architecture must be an object.")
    plans_manager = PlansManager(plans)
    configuration = plans_manager.get_configuration(name)
    network_class = configuration.network_arch_class_name
    imported = {key: configuration.network_arch_init_kwargs.get(key)
                for key in configuration.network_arch_init_kwargs_req_import}
    if not trust:
        if network_class not in _NETWORKS:
            raise XAIModelError(f"nnU-Net plans name the network class {network_class!r}, which is not one nnU-Net "
                                f"plans by default ({', '.join(sorted(n.rsplit('.', 1)[1] for n in _NETWORKS))}); "
                                f"refused — pass --trust-bundle only if you trust this model.")
        odd = {k: v for k, v in imported.items() if v is not None and v not in _LAYERS}
        if odd:
            raise XAIModelError(f"nnU-Net plans import {', '.join(f'{k}={v!r}' for k, v in odd.items())}, which is "
                                f"not a torch.nn layer nnU-Net uses; refused — pass --trust-bundle only if you trust "
                                f"this model.")
    label_manager = plans_manager.get_label_manager(dataset)
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    try:
        network = get_network_from_plans(network_class, configuration.network_arch_init_kwargs,
                                         configuration.network_arch_init_kwargs_req_import, len(channels),
                                         label_manager.num_segmentation_heads, allow_init=False,
                                         deep_supervision=False)
        network.load_state_dict(checkpoint["network_weights"])
    except (RuntimeError, TypeError, ValueError, KeyError, ImportError) as error:
        raise XAIModelError(f"nnU-Net model {folder.name}: the network of its plans does not take the checkpoint's "
                            f"weights ({str(error).splitlines()[0][:200]}).") from None
    mirror = checkpoint.get("inference_allowed_mirroring_axes")
    mirror = tuple(int(a) for a in mirror) if isinstance(mirror, (list, tuple)) else None
    trainer = str(checkpoint.get("trainer_name", "nnUNetTrainer"))
    return network, NNUNetParts(plans_manager, configuration, label_manager, dataset, mirror, trainer, checkpoint_path)


class NNUNetNetwork(torch.nn.Module):
    """The nnU-Net network on the engine's (x, y, z) tensors: inputs and outputs permuted around it."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.network(inputs.permute(0, 1, 4, 3, 2)).permute(0, 1, 4, 3, 2)


class NNUNetRuntime:
    """nnU-Net's preprocessing, sliding window and mirroring for the engine (see the module notes)."""

    TILE_STEP = 0.5

    def __init__(self, parts: NNUNetParts) -> None:
        self.parts = parts
        transpose = list(parts.plans_manager.transpose_forward)
        if transpose != [0, 1, 2]:
            # The engine's axis reversal stands for nnU-Net's array order; another transpose would need its own.
            raise XAIModelError(f"nnU-Net plans with transpose_forward {transpose} are not supported yet (only "
                                f"[0, 1, 2]).")

    def prepare(self, volumes: Sequence[sitk.Image]) -> tuple[sitk.Image, torch.Tensor]:
        """The model grid (the geometry of nnU-Net's preprocessed array) and the network input ``[1, C, x, y, z]``."""
        from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

        image = volumes[0]
        # nnU-Net takes the channels of one case on one grid: the others are resampled onto the first's.
        same_grid = [v if _same_geometry(v, image) else sitk.Resample(v, image, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                                      sitk.sitkFloat32) for v in volumes]
        data = np.stack([sitk.GetArrayFromImage(v).astype(np.float32) for v in same_grid])
        properties = {"spacing": list(image.GetSpacing())[::-1]}
        preprocessed, _, properties = DefaultPreprocessor(verbose=False).run_case_npy(
            data, None, properties, self.parts.plans_manager, self.parts.configuration, self.parts.dataset)
        grid = _preprocessed_grid(image, properties["bbox_used_for_cropping"],
                                  properties["shape_after_cropping_and_before_resampling"], preprocessed.shape[1:])
        inputs = torch.from_numpy(np.ascontiguousarray(preprocessed.transpose(0, 3, 2, 1)))[None]
        return grid, inputs.to(torch.float32)

    def predictor(self, network: torch.nn.Module):
        """nnU-Net's own predictor of ``network`` (made once; nnU-Net prints its settings, kept off stdout)."""
        if getattr(self, "_predictor", None) is None or self._predictor.network is not network:
            from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

            with contextlib.redirect_stdout(io.StringIO()):
                predictor = nnUNetPredictor(tile_step_size=self.TILE_STEP, use_gaussian=True, use_mirroring=True,
                                            perform_everything_on_device=False, device=torch.device("cpu"),
                                            verbose=False, verbose_preprocessing=False, allow_tqdm=False)
                predictor.manual_initialization(network, self.parts.plans_manager, self.parts.configuration,
                                                [network.state_dict()],
                                                self.parts.dataset, self.parts.trainer, self.parts.mirror_axes)
            self._predictor = predictor
        return self._predictor

    def predict_logits(self, network: NNUNetNetwork, inputs: torch.Tensor) -> torch.Tensor:
        """nnU-Net's sliding-window prediction with mirroring, per batch item, as ``[B, K, x, y, z]`` float32."""
        predictor = self.predictor(network.network)
        with contextlib.redirect_stdout(io.StringIO()):
            outputs = [predictor.predict_sliding_window_return_logits(item.permute(0, 3, 2, 1).contiguous())
                       for item in inputs]
        return torch.stack([o.float().permute(0, 3, 2, 1) for o in outputs])

    def sliding_windows(self, spatial: Sequence[int]):
        """nnU-Net's windows (its steps, its Gaussian) on an engine grid of ``spatial`` (x, y, z)."""
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

        from ..explainers.windowed import SlidingWindows

        patch = tuple(int(p) for p in self.parts.configuration.patch_size)  # (z, y, x)
        padded = tuple(max(int(s), p) for s, p in zip(reversed(tuple(spatial)), patch))
        steps = compute_steps_for_sliding_window(padded, patch, self.TILE_STEP)
        boxes = [tuple(slice(s, s + p) for s, p in zip(reversed(start), reversed(patch)))
                 for start in itertools.product(*steps)]
        gaussian = compute_gaussian(patch, sigma_scale=1.0 / 8, value_scaling_factor=10, device=torch.device("cpu"))
        return SlidingWindows.from_boxes(spatial, tuple(reversed(patch)), boxes, gaussian.float().permute(2, 1, 0))

    def describe(self) -> dict:
        configuration = self.parts.configuration
        return {
            "framework": "nnU-Net v2",
            "preprocessor": "DefaultPreprocessor (transpose, crop to nonzero, normalise, resample)",
            "normalization": list(configuration.normalization_schemes),
            "spacing_mm": [float(s) for s in reversed(configuration.spacing)],
            "sliding_window": {"size": [int(p) for p in reversed(configuration.patch_size)],
                               "tile_step_size": self.TILE_STEP, "blending": "gaussian (sigma 1/8)"},
            "mirroring_axes": list(self.parts.mirror_axes) if self.parts.mirror_axes else None,
            "mirroring_in_explanations": False,
            "checkpoint": f"{self.parts.checkpoint.parent.name}/{self.parts.checkpoint.name}",
            "trainer": self.parts.trainer,
        }


def _same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing()) and \
        np.allclose(a.GetOrigin(), b.GetOrigin()) and np.allclose(a.GetDirection(), b.GetDirection())


def _preprocessed_grid(image: sitk.Image, bbox: Sequence[Sequence[int]], cropped_shape: Sequence[int],
                       new_shape: Sequence[int]) -> sitk.Image:
    """The physical geometry of nnU-Net's preprocessed array (axes z, y, x) as an image indexed (x, y, z).

    Voxel ``o`` along array axis ``a`` is at the cropped array's continuous index ``(o + 0.5) * n / m - 0.5``
    (``n`` cropped, ``m`` resampled voxels: centres aligned, as ``skimage.transform.resize``), offset by the crop.
    """
    scale = [n / m for n, m in zip(cropped_shape, new_shape)]  # array order (z, y, x)
    start = [lo for lo, _ in bbox]
    first = [start[a] + 0.5 * scale[a] - 0.5 for a in range(3)]
    grid = sitk.Image([int(m) for m in reversed(new_shape)], sitk.sitkUInt8)
    grid.SetDirection(image.GetDirection())
    grid.SetSpacing([s * k for s, k in zip(image.GetSpacing(), reversed(scale))])
    grid.SetOrigin(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in reversed(first)]))
    return grid
