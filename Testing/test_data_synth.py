"""The synthetic case generators: reproducible, real geometry, masks where the lesions are, labels.csv
consistent with the masks."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from XAIExplainLib.data import KINDS, make_case, read_labels_csv, synthesize
from XAIExplainLib.data.records import describe_lesions

# (kind, seed, indices): a seed whose first cases contain both lesion-free and lesion cases.
SETS = {"brain-mri": (5, range(4)), "chest-ct": (5, range(4))}


@pytest.fixture(scope="module")
def cases():
    out = {}
    for kind, (seed, indices) in SETS.items():
        out[kind] = [make_case(kind, seed, i) for i in indices]
    return out


def _arrays(case):
    image, mask, _ = case
    return sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(mask)


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_gives_identical_arrays(kind, cases):
    seed, _ = SETS[kind]
    again = make_case(kind, seed, 1)
    first = cases[kind][1]
    for a, b in zip(_arrays(first), _arrays(again)):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert first[0].GetOrigin() == again[0].GetOrigin()
    assert first[0].GetSpacing() == again[0].GetSpacing()
    other = make_case(kind, seed + 1, 1)
    assert _arrays(other)[0].shape != _arrays(first)[0].shape or \
        not np.array_equal(_arrays(other)[0], _arrays(first)[0])


@pytest.mark.parametrize("kind", KINDS)
def test_both_labels_occur_and_lesion_free_masks_are_empty(kind, cases):
    labels = [info["label"] for _, _, info in cases[kind]]
    assert set(labels) == {0, 1}
    for image, mask, info in cases[kind]:
        mask_array = sitk.GetArrayViewFromImage(mask)
        assert info["label"] == int(mask_array.any())
        assert len(info["lesions"]) == len(np.unique(mask_array)) - 1


@pytest.mark.parametrize("kind", KINDS)
def test_geometry_is_real(kind, cases):
    for image, mask, info in cases[kind]:
        direction = np.asarray(image.GetDirection()).reshape(3, 3)
        assert np.allclose(direction @ direction.T, np.eye(3), atol=1e-6)
        spacing = np.asarray(image.GetSpacing())
        assert image.GetPixelID() == sitk.sitkInt16 and mask.GetPixelID() == sitk.sitkUInt8
        assert mask.GetSize() == image.GetSize() and mask.GetOrigin() == image.GetOrigin()
        assert mask.GetSpacing() == image.GetSpacing() and mask.GetDirection() == image.GetDirection()
        extent = spacing * np.asarray(image.GetSize())
        if kind == "brain-mri":
            assert 1.8 <= spacing[0] == spacing[1] <= 2.2 and 2.0 <= spacing[2] <= 3.0
            assert np.allclose(direction, np.diag([-1.0, -1.0, 1.0]))  # RAS-stored, like the MNI template
            centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
            assert np.linalg.norm(np.asarray(centre) - np.array([0.0, 18.0, 22.0])) < 12.0  # MNI centre (LPS)
            assert np.all(extent > 180) and np.all(extent < 250)
        else:
            assert 2.0 <= spacing[0] == spacing[1] <= 2.5 and spacing[2] in (3.0, 4.0, 5.0)
            assert np.allclose(direction, np.eye(3))
            assert np.all(extent > 250) and np.all(extent < 380)


def test_brain_lesions_lie_in_brain_tissue(cases):
    for image, mask, info in cases["brain-mri"]:
        array, mask_array = _arrays((image, mask, info))
        assert (array[mask_array > 0] > 0).all()
        background = array == 0
        assert background.mean() > 0.4  # skull stripped: a zero background
        for lesion in info["lesions"]:
            assert 4.0 <= lesion["size_mm"] <= 30.0


def test_chest_phantom_is_in_hounsfield_units_and_nodules_sit_in_lung(cases):
    for image, mask, info in cases["chest-ct"]:
        array, mask_array = _arrays((image, mask, info))
        assert np.median(array[array < -900]) < -950  # air
        lung_like = (array > -950) & (array < -700)
        assert lung_like.mean() > 0.05
        for lesion in info["lesions"]:
            nodule = mask_array == lesion["label"]
            ring = ndimage.binary_dilation(nodule, iterations=3) & ~ndimage.binary_dilation(nodule, iterations=1)
            assert np.median(array[ring]) < -500, "a nodule must be surrounded by lung"
            assert np.median(array[nodule]) > -700
            assert 3.0 <= lesion["size_mm"] <= 25.0


@pytest.mark.parametrize("kind", KINDS)
def test_synthesize_writes_cases_and_consistent_labels(kind, tmp_path):
    seed, indices = SETS[kind]
    messages = []
    out = synthesize(kind, 3, seed, tmp_path / kind, progress=lambda f, m: messages.append((f, m)))
    assert [f for f, _ in messages] == pytest.approx([1 / 3, 2 / 3, 1.0])
    rows = read_labels_csv(out / "labels.csv")
    assert [r["case"] for r in rows] == [f"{kind}-s{seed}-{i:04d}" for i in range(3)]
    for row in rows:
        image = sitk.ReadImage(str(out / f"{row['case']}.nii.gz"))
        mask = sitk.ReadImage(str(out / f"{row['case']}_mask.nii.gz"))
        assert mask.GetPixelID() == sitk.sitkUInt8
        lesions = describe_lesions(mask)
        assert int(row["lesion_count"]) == len(lesions)
        assert int(row["label"]) == int(bool(lesions))
        sizes = [float(s) for s in row["lesion_sizes_mm"].split(";") if s]
        assert sizes == pytest.approx([l["size_mm"] for l in lesions], abs=0.06)
        centres = [[float(c) for c in s.split()] for s in row["lesion_centres_ras_mm"].split(";") if s]
        for centre, lesion in zip(centres, lesions):
            assert centre == pytest.approx(lesion["centre_ras_mm"], abs=0.06)
            lps = [-centre[0], -centre[1], centre[2]]
            index = image.TransformPhysicalPointToIndex(lps)
            assert sitk.GetArrayViewFromImage(mask)[index[::-1]] > 0 or lesion["voxels"] < 30
        # Written files are the in-memory case, byte for byte.
        in_memory, _, _ = make_case(kind, seed, rows.index(row))
        assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(in_memory))


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ValueError):
        synthesize("knee-xray", 1, 0, tmp_path)
    with pytest.raises(ValueError):
        make_case("brain-mri", -1, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_forced_twins_share_anatomy_and_differ_only_near_lesions(kind):
    with_lesion = make_case(kind, 11, 2, lesions=True)
    without = make_case(kind, 11, 2, lesions=False)
    assert with_lesion[2]["label"] == 1 and without[2]["label"] == 0
    assert with_lesion[0].GetSize() == without[0].GetSize()
    a, mask = _arrays(with_lesion)
    b, empty = _arrays(without)
    assert not empty.any()
    near = ndimage.binary_dilation(mask > 0, iterations=10)
    assert np.array_equal(a[~near], b[~near])
    assert np.abs(a[mask > 0].astype(float) - b[mask > 0]).mean() > 0


def test_a_training_set_can_show_more_small_nodules_without_changing_the_anatomy_or_the_default_set():
    sizes = {}
    for fraction in (0.0, 1.0):
        image, _mask, info = make_case("chest-ct", 3, 0, lesions=True, small_nodule_fraction=fraction)
        sizes[fraction] = [lesion["nominal_diameter_mm"] for lesion in info["lesions"]]
        lung = sitk.GetArrayFromImage(image) < -700
        if fraction == 0.0:
            default_image, _, default_info = make_case("chest-ct", 3, 0, lesions=True)
            assert np.array_equal(sitk.GetArrayFromImage(default_image), sitk.GetArrayFromImage(image))
            assert default_info["lesions"] == info["lesions"]
            default_lung = lung
    assert all(6.0 <= d <= 10.0 for d in sizes[1.0]) and len(sizes[1.0]) == len(sizes[0.0])
    assert (lung == default_lung).mean() > 0.99  # same case, other nodules
    with pytest.raises(ValueError, match="chest CT option"):
        make_case("brain-mri", 3, 0, small_nodule_fraction=0.5)
