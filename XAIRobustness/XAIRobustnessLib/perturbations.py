"""The perturbation catalogue: image degradations in physical units, each on a 0–5 severity scale.

Every perturbation takes the SimpleITK input image (mm, HU or MR units), a severity and a seed, and
returns a float32 image on **exactly the input's grid**. Severity 0 is the identity; the physical
parameter grows monotonically with severity (``Perturbation.levels`` holds its value at severities
0..5, fractional severities interpolate linearly). The random pattern (noise field, motion axis,
bias-field shape…) depends only on ``(seed, perturbation)``, not on the severity, so a sweep shows the
*same* degradation growing stronger, and the same seed gives byte-identical images.

Which perturbation applies to which modality, and up to which severity it is clinically plausible,
is data (``Perturbation.modalities``, ``Perturbation.plausible``). Intensities are expressed relative
to the image's *tissue contrast*: the mean of the foreground (voxels clearly above the background)
minus the background level (air: 0 for MR magnitude, about −1000 HU for CT).

MR artefacts are simulated in k-space along the phase-encoding axis, which is taken as the image's
second (``j``) axis — the anterior–posterior phase encoding of a typical axial acquisition:

* motion: the k-space lines acquired after a seeded instant come from a rigidly moved copy (Shaw et
  al., "MRI k-Space Motion Artefact Augmentation", MIDL 2019; TorchIO's ``RandomMotion``);
* ghosting: every 2nd line is attenuated (an N/2 "Nyquist" ghost, as in TorchIO's ``RandomGhosting``);
* spike: one bright k-space point, i.e. a plane wave added to the complex image before the magnitude
  (the herringbone artefact; TorchIO's ``RandomSpike``).

Images whose outside was set to one exact value after acquisition — the zeros around a skull-stripped
brain, the padding outside a CT's reconstruction circle — keep that outside: it was never measured,
so no acquisition artefact can reach it, and the preprocessing that made it (skull-stripping, FOV
masking) would blank it again. Each perturbation is applied to the whole image, then that *padding*
(see :func:`image_stats`) is reset; rotation and translation, which move the patient, and with the
patient the mask, fill the space they uncover with the same value instead. Without this, noise or
ghosts in the blank outside change what a model that normalises over non-zero voxels sees as the
anatomy, and the sweep would measure that pipeline mismatch rather than the scanner.

CT low dose follows the quantum-noise law σ ∝ 1/√dose (e.g. Yu et al., "Development and validation of
a practical lower-dose-simulation tool for optimizing CT scan protocols", JCAT 2012), with noise given
a short in-plane correlation as filtered back-projection does.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import fft, ndimage

from XAIExplainLib.errors import XAIInputError

__all__ = [
    "Perturbation",
    "ImageStats",
    "PERTURBATIONS",
    "DEFAULT_SWEEPS",
    "MAX_SEVERITY",
    "perturb",
    "get_perturbation",
    "default_perturbations",
    "applicable_perturbations",
    "image_stats",
]

MAX_SEVERITY = 5
ANY = "any"


@dataclass(frozen=True)
class ImageStats:
    """Intensity landmarks of one image: background level, tissue mean, the foreground and the padding."""

    background: float
    tissue_mean: float
    foreground: np.ndarray  # bool, (z, y, x)
    padding: Optional[np.ndarray] = None  # bool, (z, y, x): the unmeasured outside (see image_stats)
    padding_value: float = 0.0

    @property
    def contrast(self) -> float:
        """Tissue mean minus background: the unit of intensity-relative parameters."""
        return max(self.tissue_mean - self.background, 1e-6)


PerturbFn = Callable[[sitk.Image, np.ndarray, float, ImageStats, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Perturbation:
    """One degradation: what it means physically, where it applies, and how to apply it."""

    key: str
    title: str
    parameter: str  # what the physical value is, e.g. "noise σ"
    unit: str  # e.g. "% of tissue contrast", "mm FWHM"
    levels: tuple[float, ...]  # physical value at severities 0..5 (levels[0]: the identity value)
    modalities: tuple[str, ...]  # "MR", "CT" or "any"
    plausible: Mapping[str, float]  # modality (or "any") -> highest clinically plausible severity
    description: str
    fn: PerturbFn = field(repr=False, compare=False)
    identity_label: str = ""  # how severity 0 reads when its value is not a number to show (e.g. "native")
    moves_anatomy: bool = False  # rigid motion of the patient: the padding moves too, so it is not reset

    def value(self, severity: float) -> float:
        """The physical parameter at ``severity`` (linear between the integer levels)."""
        if not 0 <= severity <= MAX_SEVERITY:
            raise XAIInputError(f"Severity {severity:g} is outside 0..{MAX_SEVERITY}.")
        return float(np.interp(severity, np.arange(len(self.levels)), self.levels))

    def format_value(self, severity: float) -> str:
        value = self.value(severity)
        return self.identity_label if self.identity_label and value == self.levels[0] else f"{value:g}"

    def describe_value(self, severity: float) -> str:
        return f"{self.parameter} {self.format_value(severity)} {self.unit}"

    def applies_to(self, modality: Optional[str]) -> bool:
        return ANY in self.modalities or (modality is not None and modality.upper() in self.modalities)

    def plausible_max(self, modality: Optional[str]) -> float:
        """Highest severity still seen in clinical images of ``modality`` (0: never plausible)."""
        key = modality.upper() if modality else ANY
        return float(self.plausible.get(key, self.plausible.get(ANY, 0.0)))

    def __call__(self, image: sitk.Image, severity: float, seed: int = 0,
                 stats: Optional[ImageStats] = None) -> sitk.Image:
        """Apply at ``severity`` (0 returns an exact float32 copy); same seed, same image."""
        value = self.value(severity)
        source = sitk.Cast(image, sitk.sitkFloat32)
        if value == self.levels[0]:
            return sitk.Image(source)
        array = sitk.GetArrayFromImage(source).astype(np.float32)
        stats = stats if stats is not None else image_stats(array)
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(self.key.encode())]))
        perturbed = np.asarray(self.fn(source, array, value, stats, rng), dtype=np.float32)
        if stats.padding is not None and not self.moves_anatomy:
            perturbed[stats.padding] = stats.padding_value
        out = sitk.GetImageFromArray(perturbed)
        out.CopyInformation(image)
        return out

    def to_json(self, modality: Optional[str] = None) -> dict:
        return {"key": self.key, "title": self.title, "parameter": self.parameter, "unit": self.unit,
                "levels": list(self.levels), "modalities": list(self.modalities),
                "plausible_max_severity": self.plausible_max(modality), "description": self.description}


#: Share of the image that must hold exactly its minimum, connected to the border, to count as padding.
PADDING_MIN_SHARE = 0.05


def image_stats(array: np.ndarray) -> ImageStats:
    """Background (1st percentile), the mean of voxels above 10 % of the range over it, and the padding.

    The padding is the set of voxels holding exactly the image's minimum and connected to its border,
    when they are at least 5 % of the image: a blanked outside (skull-stripping, a CT's reconstruction
    circle, zero-filled reformatting). Measured images have noise there, so they have none."""
    background = float(np.percentile(array, 1.0))
    high = float(np.percentile(array, 99.0))
    foreground = array > background + 0.1 * (high - background)
    tissue = float(array[foreground].mean()) if foreground.any() else high
    padding_value = float(array.min())
    return ImageStats(background, tissue, foreground, _padding(array, padding_value), padding_value)


def _padding(array: np.ndarray, value: float) -> Optional[np.ndarray]:
    exact = array == value
    if exact.mean() < PADDING_MIN_SHARE:
        return None
    labels, _ = ndimage.label(exact)
    faces = [labels.take(index, axis=axis) for axis in range(labels.ndim) for index in (0, -1)]
    on_border = np.unique(np.concatenate([face.ravel() for face in faces]))
    padding = np.isin(labels, on_border[on_border > 0])
    return padding if padding.mean() >= PADDING_MIN_SHARE else None


# --- helpers -----------------------------------------------------------------------------------------

_PHASE_AXIS = 1  # array axis (z, y, x) -> y: the image's j axis


def _spacing_zyx(image: sitk.Image) -> np.ndarray:
    return np.asarray(image.GetSpacing(), dtype=float)[::-1]


def _unit_vector(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _rigid(image: sitk.Image, background: float, angle_deg: float, axis: np.ndarray,
           translation_mm: np.ndarray) -> np.ndarray:
    """Resample ``image`` after a rotation about its centre and a translation (linear, outside = background)."""
    transform = sitk.VersorRigid3DTransform()
    transform.SetCenter(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in image.GetSize()]))
    transform.SetRotation([float(a) for a in axis], float(np.deg2rad(angle_deg)))
    transform.SetTranslation([float(t) for t in translation_mm])
    moved = sitk.Resample(image, image, transform, sitk.sitkLinear, background, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(moved)


def _magnitude(complex_image: np.ndarray, background: float) -> np.ndarray:
    return (np.abs(complex_image) + background).astype(np.float32)


def _correlated_noise(rng: np.random.Generator, shape: tuple, sigma_vox: Sequence[float]) -> np.ndarray:
    """Unit-variance Gaussian noise smoothed by ``sigma_vox`` (per axis), renormalised."""
    noise = rng.standard_normal(shape).astype(np.float32)
    if any(s > 0 for s in sigma_vox):
        noise = ndimage.gaussian_filter(noise, sigma_vox, mode="wrap")
        noise /= max(float(noise.std()), 1e-12)
    return noise


def _interp_axis(array: np.ndarray, axis: int, positions: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``array`` along ``axis`` at fractional voxel ``positions`` (clamped)."""
    n = array.shape[axis]
    positions = np.clip(positions, 0, n - 1)
    low = np.floor(positions).astype(int)
    high = np.minimum(low + 1, n - 1)
    weight = (positions - low).astype(np.float32)
    shape = [1] * array.ndim
    shape[axis] = -1
    weight = weight.reshape(shape)
    return np.take(array, low, axis=axis) * (1 - weight) + np.take(array, high, axis=axis) * weight


def _estimate_noise(array: np.ndarray, mask: np.ndarray) -> float:
    """Robust noise σ: MAD of the residual to a 3x3x3 mean, corrected for the mean's own share."""
    residual = array - ndimage.uniform_filter(array, 3, mode="nearest")
    values = residual[mask] if mask.any() else residual.ravel()
    mad = float(np.median(np.abs(values - np.median(values))))
    return 1.4826 * mad / np.sqrt(26.0 / 27.0)


# --- the perturbations ------------------------------------------------------------------------------


def _gaussian_noise(image, array, percent, stats, rng):
    sigma = percent / 100.0 * stats.contrast
    return array + sigma * rng.standard_normal(array.shape).astype(np.float32)


def _rician_noise(image, array, percent, stats, rng):
    sigma = percent / 100.0 * stats.contrast
    real = array - stats.background + sigma * rng.standard_normal(array.shape).astype(np.float32)
    imaginary = sigma * rng.standard_normal(array.shape).astype(np.float32)
    return np.sqrt(real ** 2 + imaginary ** 2) + stats.background


def _gaussian_blur(image, array, fwhm_mm, stats, rng):
    sigma_vox = fwhm_mm / (2.0 * np.sqrt(2.0 * np.log(2.0))) / _spacing_zyx(image)
    return ndimage.gaussian_filter(array, sigma_vox, mode="nearest")


def _contrast(image, array, factor, stats, rng):
    return stats.tissue_mean + (array - stats.tissue_mean) * factor


def _gamma(image, array, gamma, stats, rng):
    low, high = float(array.min()), float(array.max())
    scale = max(high - low, 1e-6)
    return low + scale * ((array - low) / scale) ** gamma


def _intensity_shift(image, array, percent, stats, rng):
    return array + percent / 100.0 * stats.contrast


def _bias_field(image, array, amplitude, stats, rng):
    """Smooth multiplicative field: exp of a random cubic polynomial, scaled to ±``amplitude``."""
    axes = np.meshgrid(*(np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in array.shape), indexing="ij")
    polynomial = np.zeros(array.shape, dtype=np.float32)
    for powers in np.ndindex(4, 4, 4):
        if 0 < sum(powers) <= 3:
            term = np.ones(array.shape, dtype=np.float32)
            for axis, power in zip(axes, powers):
                term = term * axis ** power
            polynomial += rng.uniform(-1.0, 1.0) * term
    inside = polynomial[stats.foreground] if stats.foreground.any() else polynomial
    polynomial -= float(inside.mean())
    polynomial /= max(float(np.abs(polynomial[stats.foreground] if stats.foreground.any() else polynomial).max()), 1e-6)
    polynomial = np.clip(polynomial, -1.0, 1.0)
    field = np.exp(np.log1p(amplitude) * polynomial)
    return stats.background + (array - stats.background) * field


def _motion(image, array, amount, stats, rng):
    """Lines acquired after a seeded instant come from a copy rotated ``amount``° and moved ``amount`` mm."""
    axis, direction = _unit_vector(rng), _unit_vector(rng)
    onset = rng.uniform(0.35, 0.65)
    moved = _rigid(image, stats.background, amount, axis, amount * direction)
    n = array.shape[_PHASE_AXIS]
    late = fft.ifftshift(np.arange(n) / max(n - 1, 1) > onset)  # sequential order, centred k-space
    shape = [1] * array.ndim
    shape[_PHASE_AXIS] = n
    late = late.reshape(shape)
    k_still = fft.fft(array - stats.background, axis=_PHASE_AXIS)
    k_moved = fft.fft(moved - stats.background, axis=_PHASE_AXIS)
    return _magnitude(fft.ifft(np.where(late, k_moved, k_still), axis=_PHASE_AXIS), stats.background)


def _ghosting(image, array, percent, stats, rng):
    """Every 2nd k-space line attenuated by ``2·percent`` %: an N/2 ghost of ``percent`` % amplitude."""
    n = array.shape[_PHASE_AXIS]
    attenuation = np.ones(n, dtype=np.float32)
    attenuation[::2] -= min(1.0, 2.0 * percent / 100.0)
    attenuation[0] = 1.0  # keep the centre of k-space: the overall brightness does not change
    shape = [1] * array.ndim
    shape[_PHASE_AXIS] = n
    k = fft.fft(array - stats.background, axis=_PHASE_AXIS) * attenuation.reshape(shape)
    return _magnitude(fft.ifft(k, axis=_PHASE_AXIS), stats.background)


def _spike(image, array, percent, stats, rng):
    """A k-space spike: a plane wave of ``percent`` % of tissue contrast in the complex image."""
    frequencies = rng.uniform(0.1, 0.4, size=3) * rng.choice([-1.0, 1.0], size=3) * 0.5  # cycles / voxel
    phase = rng.uniform(0, 2 * np.pi)
    grids = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in array.shape), indexing="ij", sparse=True)
    angle = phase + 2 * np.pi * sum(f * g for f, g in zip(frequencies, grids))
    wave = (percent / 100.0 * stats.contrast) * np.exp(1j * angle)
    return _magnitude((array - stats.background) + wave, stats.background)


def _ct_dose(image, array, dose, stats, rng):
    """Quantum noise of a scan at ``dose`` × the original: added σ = σ₀·√(1/dose − 1)."""
    soft_tissue = (array > -500) & (array < 500)
    sigma0 = max(_estimate_noise(array, soft_tissue), 5.0)  # HU; at least a realistic 5 HU
    sigma = sigma0 * np.sqrt(1.0 / dose - 1.0)
    in_plane = 0.7 * np.array([0.0, 1.0, 1.0])  # filtered back-projection: correlated within a slice
    return array + sigma * _correlated_noise(rng, array.shape, in_plane)


def _slice_thickness(image, array, thickness_mm, stats, rng):
    """Thicker slices along the coarsest axis: box slice profile, resampled at the thicker spacing and back."""
    spacing = _spacing_zyx(image)
    axis = int(np.argmax(spacing))  # array axis of the coarsest spacing; the image's k axis on ties
    native = spacing[axis]
    if thickness_mm <= native:
        return array.copy()
    width = thickness_mm / native  # slice profile width in voxels
    radius = int(np.ceil(width / 2))
    offsets = np.arange(-radius, radius + 1, dtype=float)
    kernel = np.clip(width / 2 + 0.5 - np.abs(offsets), 0.0, 1.0)
    profiled = ndimage.convolve1d(array, (kernel / kernel.sum()).astype(np.float32), axis=axis, mode="nearest")
    n = array.shape[axis]
    centres = np.arange(0.0, n - 1 + 1e-6, width)
    thick = _interp_axis(profiled, axis, centres)
    return _interp_axis(thick, axis, np.arange(n) / width)


def _rotation(image, array, degrees, stats, rng):
    return _rigid(image, stats.background, degrees, _unit_vector(rng), np.zeros(3))


def _translation(image, array, mm, stats, rng):
    return _rigid(image, stats.background, 0.0, np.array([0.0, 0.0, 1.0]), mm * _unit_vector(rng))


def _occlusion(image, array, percent, stats, rng):
    """The field of view cut short: ``percent`` % of the anatomy's extent along a seeded axis and side
    (the foreground's bounding box, not the padded image) set to background."""
    axis = int(rng.integers(0, 3))
    from_start = bool(rng.integers(0, 2))
    present = np.flatnonzero(stats.foreground.any(axis=tuple(a for a in range(3) if a != axis)))
    first, last = (int(present[0]), int(present[-1]) + 1) if present.size else (0, array.shape[axis])
    count = int(round(percent / 100.0 * (last - first)))
    out = array.copy()
    index = [slice(None)] * 3
    index[axis] = slice(0, first + count) if from_start else slice(last - count, array.shape[axis])
    out[tuple(index)] = stats.background
    return out


_CATALOGUE = (
    Perturbation("gaussian-noise", "Gaussian noise", "noise σ", "% of tissue contrast",
                 (0, 2, 4, 8, 12, 20), (ANY,), {ANY: 2},
                 "Additive white Gaussian noise (thermal noise; low SNR).", _gaussian_noise),
    Perturbation("rician-noise", "Rician noise", "noise σ", "% of tissue contrast",
                 (0, 2, 4, 8, 12, 20), ("MR",), {"MR": 2},
                 "Complex Gaussian noise before the magnitude: the noise of MR magnitude images "
                 "(Gudbjartsson and Patz, MRM 1995).", _rician_noise),
    Perturbation("blur", "Blur / resolution loss", "Gaussian FWHM", "mm",
                 (0, 1.5, 3, 4.5, 6, 8), (ANY,), {ANY: 2},
                 "Isotropic Gaussian point-spread function: lower resolution, smoother reconstruction kernel.",
                 _gaussian_blur),
    Perturbation("contrast", "Contrast reduction", "contrast factor", "× (about the tissue mean)",
                 (1, 0.85, 0.7, 0.55, 0.4, 0.25), (ANY,), {"MR": 2, "CT": 0, ANY: 2},
                 "Intensities scaled towards the tissue mean (other scanner or protocol; not plausible in "
                 "calibrated CT).", _contrast),
    Perturbation("gamma", "Gamma", "γ", "(on the intensity range)",
                 (1, 1.2, 1.4, 1.7, 2.0, 2.5), ("MR",), {"MR": 2},
                 "Non-linear intensity response (other scanner or vendor post-processing).", _gamma),
    Perturbation("intensity-shift", "Intensity shift", "offset", "% of tissue contrast",
                 (0, 2, 5, 10, 15, 25), (ANY,), {"MR": 3, "CT": 1, ANY: 2},
                 "A constant added to every voxel (MR scaling drift; CT calibration offset, 2 % ≈ 20 HU).",
                 _intensity_shift),
    Perturbation("bias-field", "MRI bias field", "field amplitude", "± fraction",
                 (0, 0.05, 0.1, 0.2, 0.3, 0.45), ("MR",), {"MR": 3},
                 "Smooth multiplicative intensity inhomogeneity (coil sensitivity, B1 at 3 T): intensities "
                 "vary by up to ± the amplitude across the volume.", _bias_field),
    Perturbation("motion", "MRI motion", "rigid motion", "° and mm",
                 (0, 0.5, 1, 2, 3.5, 5), ("MR",), {"MR": 2},
                 "The patient moves mid-scan: k-space lines after a seeded instant come from a copy rotated "
                 "by the value in degrees and translated by the value in mm (ghosts and blur along the "
                 "phase-encoding axis).", _motion),
    Perturbation("ghosting", "MRI ghosting", "ghost amplitude", "% of the image",
                 (0, 2.5, 5, 10, 15, 25), ("MR",), {"MR": 2},
                 "N/2 (Nyquist) ghost along the phase-encoding axis from alternating k-space line "
                 "inconsistencies (EPI, periodic motion).", _ghosting),
    Perturbation("spike", "MRI spike (herringbone)", "spike amplitude", "% of tissue contrast",
                 (0, 1, 2, 4, 7, 10), ("MR",), {"MR": 1},
                 "A single corrupted k-space point: stripes across the whole image.", _spike),
    Perturbation("ct-dose", "CT low dose", "dose fraction", "× the original dose",
                 (1, 0.5, 0.25, 0.1, 0.05, 0.025), ("CT",), {"CT": 3},
                 "Quantum noise of a lower-dose acquisition: σ grows as 1/√dose from the image's own "
                 "estimated noise (at least 5 HU), correlated in-plane as in filtered back-projection.",
                 _ct_dose),
    Perturbation("slice-thickness", "Slice thickness", "slice thickness", "mm",
                 (0, 3, 4, 5, 7, 10), (ANY,), {ANY: 3},
                 "Thicker slices along the coarsest axis (box slice profile, partial volume), resampled back "
                 "to the input grid; thicknesses at or below the native spacing leave the image unchanged.",
                 _slice_thickness, identity_label="native"),
    Perturbation("rotation", "Small rotation", "rotation", "degrees",
                 (0, 1, 2, 4, 7, 10), (ANY,), {ANY: 4},
                 "Head or body tilt: rotation about a seeded axis through the image centre.", _rotation,
                 moves_anatomy=True),
    Perturbation("translation", "Small translation", "shift", "mm",
                 (0, 1, 2, 4, 7, 10), (ANY,), {ANY: 5},
                 "Positioning difference: a shift in a seeded direction.", _translation, moves_anatomy=True),
    Perturbation("occlusion", "Occlusion / field-of-view cut-off", "cut-off", "% of the extent",
                 (0, 5, 10, 15, 25, 35), (ANY,), {ANY: 2},
                 "A missing region (cropping, metal): a slab of the anatomy's extent at one (seeded) edge set "
                 "to background, as when part of the anatomy falls outside the field of view.",
                 _occlusion),
)

#: Every perturbation by key, in the order users see them.
PERTURBATIONS: dict[str, Perturbation] = {p.key: p for p in _CATALOGUE}

#: The default sweep (8 perturbations) per model modality; ``None``: modality unknown.
DEFAULT_SWEEPS: dict[Optional[str], tuple[str, ...]] = {
    "MR": ("gaussian-noise", "blur", "contrast", "bias-field", "ghosting", "motion", "slice-thickness",
           "rotation"),
    "CT": ("ct-dose", "gaussian-noise", "blur", "intensity-shift", "slice-thickness", "rotation",
           "translation", "occlusion"),
    None: ("gaussian-noise", "blur", "contrast", "intensity-shift", "slice-thickness", "rotation",
           "translation", "occlusion"),
}


def get_perturbation(key: str, modality: Optional[str] = None) -> Perturbation:
    """The catalogue entry ``key``; an :class:`XAIInputError` if unknown or not for ``modality``."""
    if key not in PERTURBATIONS:
        raise XAIInputError(f"Unknown perturbation '{key}'; choose one of {', '.join(PERTURBATIONS)}.")
    perturbation = PERTURBATIONS[key]
    if modality is not None and not perturbation.applies_to(modality):
        raise XAIInputError(
            f"Perturbation '{key}' applies to {', '.join(perturbation.modalities)} images, not to this {modality} "
            f"model; choose one of {', '.join(applicable_perturbations(modality))}.")
    return perturbation


def applicable_perturbations(modality: Optional[str]) -> list[str]:
    return [key for key, p in PERTURBATIONS.items() if p.applies_to(modality)]


def default_perturbations(modality: Optional[str]) -> tuple[str, ...]:
    key = modality.upper() if modality else None
    return DEFAULT_SWEEPS.get(key, DEFAULT_SWEEPS[None])


def perturb(image: sitk.Image, key: str, severity: float, seed: int = 0) -> sitk.Image:
    """``PERTURBATIONS[key](image, severity, seed)``: the perturbed image on the input's grid."""
    return get_perturbation(key)(image, severity, seed)
