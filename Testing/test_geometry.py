"""The model-grid round trip: every map comes back on the input's own grid, in the right place."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image, rotation

from XAIExplainLib.errors import XAIModelError
from XAIExplainLib.preprocessing import (
    InputSpec,
    IntensitySpec,
    model_grid,
    normalise_intensity,
    orientation_direction,
    to_input_grid,
    to_model_grid,
)

GEOMETRIES = {
    "axis-aligned": dict(size=(40, 36, 32), spacing=(1.0, 1.0, 1.0)),
    "anisotropic-odd": dict(size=(37, 41, 13), spacing=(0.7, 0.9, 3.3), origin=(-12.5, 40.0, -7.25)),
    "oblique": dict(size=(35, 33, 29), spacing=(1.1, 1.3, 1.7), direction=rotation("z", 25) @ rotation("x", -15),
                    origin=(10.0, -5.0, 3.0)),
    "flipped-lps": dict(size=(31, 30, 29), spacing=(1.5, 1.0, 1.2), direction=np.diag([-1.0, 1.0, -1.0])),
}


def _blob_centre_physical(image: sitk.Image, threshold: float = 160.0) -> np.ndarray:
    """Physical centre of the bright blob (tissue is 100, the blob 220, plus noise)."""
    array = sitk.GetArrayViewFromImage(image)
    k, j, i = np.nonzero(array > threshold)
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint((i.mean(), j.mean(), k.mean())))


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_round_trip_returns_the_input_grid_exactly(name):
    params = GEOMETRIES[name]
    image = make_image(**params)
    grid = model_grid(image, InputSpec(spacing_mm=(2.0, 2.0, 2.0), size=(24, 28, 20)))
    back = to_input_grid(to_model_grid(image, grid), grid, image)
    assert back.GetSize() == image.GetSize()
    assert back.GetSpacing() == image.GetSpacing()
    assert back.GetOrigin() == image.GetOrigin()
    assert back.GetDirection() == image.GetDirection()
    assert back.GetPixelID() == sitk.sitkFloat32


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_a_lesion_stays_where_it_is_through_the_model_grid(name):
    params = GEOMETRIES[name]
    size = params["size"]
    blob = (size[0] // 3, size[1] // 2 + 3, size[2] // 2)
    image = make_image(**params, blob_index=blob, blob_radius=3.5)
    expected = np.asarray(image.TransformIndexToPhysicalPoint(blob))
    grid = model_grid(image, InputSpec(spacing_mm=(1.5, 1.5, 1.5), size=None, divisible_by=8))
    on_grid = to_model_grid(image, grid)
    assert np.all(np.asarray(on_grid.shape) % 8 == 0)
    back = to_input_grid(on_grid, grid, image)
    # The blob is found within a millimetre of where it was, whatever the input's geometry.
    assert np.linalg.norm(_blob_centre_physical(back) - expected) < 1.0


def test_whole_image_grid_covers_an_oblique_image():
    image = make_image(**GEOMETRIES["oblique"])
    grid = model_grid(image, InputSpec(spacing_mm=(2.0, 2.0, 2.0), size=None))
    # Every corner of the input lies inside the model grid (nothing is cut off).
    for corner in np.ndindex(2, 2, 2):
        point = image.TransformIndexToPhysicalPoint([c * (s - 1) for c, s in zip(corner, image.GetSize())])
        index = np.asarray(grid.TransformPhysicalPointToContinuousIndex(point))
        assert np.all(index >= -0.5) and np.all(index <= np.asarray(grid.GetSize()) - 0.5)


def test_ras_orientation_puts_the_patients_right_at_high_index_on_axis_zero():
    # In LPS, the patient's right is -x: a blob at low i (image axis-aligned in LPS) is on the left.
    image = make_image(size=(40, 30, 30), blob_index=(30, 15, 15), blob_radius=3)  # +x = patient's left
    grid = model_grid(image, InputSpec(spacing_mm=(1.0, 1.0, 1.0), orientation="RAS", size=(40, 30, 30)))
    array = to_model_grid(image, grid)
    i, _, _ = np.unravel_index(int(np.argmax(array)), array.shape)
    assert i < 20  # on the left, so at the low end of an axis that points right
    np.testing.assert_allclose(orientation_direction("RAS"), np.diag([-1.0, -1.0, 1.0]))
    np.testing.assert_allclose(orientation_direction("LPS"), np.eye(3))


@pytest.mark.parametrize("code", ["RAX", "RRS", "RA"])
def test_bad_orientation_codes_are_refused(code):
    with pytest.raises(XAIModelError):
        orientation_direction(code)


def test_intensity_normalisations():
    rng = np.random.default_rng(0)
    array = np.concatenate([np.zeros(1000), rng.normal(500, 50, 4000)]).astype(np.float32)
    z = normalise_intensity(array, IntensitySpec("zscore", {"nonzero": True}))
    assert abs(float(z[1000:].mean())) < 0.05 and abs(float(z[1000:].std()) - 1) < 0.05
    p = normalise_intensity(array, IntensitySpec("percentile", {"lower": 1, "upper": 99}))
    assert p.min() == 0.0 and p.max() == 1.0
    ct = normalise_intensity(np.array([-2000.0, -600.0, 3000.0]), IntensitySpec("ct_window", {"center": -600, "width": 1500}))
    np.testing.assert_allclose(ct, [0.0, 0.5, 1.0])
