"""Synthetic phantoms: deterministic, anatomically arranged, plausible intensities, exact NIfTI round trip."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from fewshot_monai.data.datasets import datalist
from fewshot_monai.data.phantoms import (
    DEFAULT_SHAPE,
    PHANTOM_LABELS,
    REFERENCE_FOV,
    make_phantom,
    make_phantom_dataset,
    write_phantom,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SMALL = {"shape": (64, 64, 16), "spacing": (4.8, 4.8, 18.0)}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _centroid_world(phantom, organ: str) -> np.ndarray:
    centroid = np.argwhere(phantom.organ_mask(organ)).mean(axis=0)
    return (phantom.affine @ np.append(centroid, 1.0))[:3]


@pytest.fixture(scope="module")
def ct0():
    return make_phantom(seed=0, modality="ct")


@pytest.fixture(scope="module")
def mri0():
    return make_phantom(seed=0, modality="mri")


@pytest.fixture(scope="module")
def ct1():
    return make_phantom(seed=1, modality="ct")


def test_same_seed_is_bit_identical(ct0):
    again = make_phantom(seed=0, modality="ct")
    assert np.array_equal(again.image, ct0.image) and np.array_equal(again.label, ct0.label)
    assert np.array_equal(again.affine, ct0.affine)
    assert ct0.image.dtype == np.float32 and ct0.label.dtype == np.uint8
    assert ct0.shape == DEFAULT_SHAPE and ct0.image.flags.c_contiguous


def test_seeds_differ_but_stay_alike(ct0, ct1, mri0):
    assert not np.array_equal(ct0.image, ct1.image)
    liver = _dice(ct0.organ_mask("liver"), ct1.organ_mask("liver"))
    assert 0.5 < liver < 0.95, liver  # support and query alike, not identical: a real few-shot task
    # the seed draws the anatomy: both intensity models of one seed share the label volume
    assert np.array_equal(ct0.label, mri0.label)
    assert not np.array_equal(ct0.image, mri0.image)


def test_every_organ_present_with_plausible_volumes(ct0, ct1):
    for p in (ct0, ct1):
        assert set(np.unique(p.label).tolist()) == {0, *PHANTOM_LABELS.values()}
        voxel_ml = float(np.prod(p.spacing)) / 1000.0
        ml = {organ: float(p.organ_mask(organ).sum()) * voxel_ml for organ in PHANTOM_LABELS}
        assert 1000 < ml["liver"] < 2600, ml  # CHAOS livers: about 1.5-2.1 l
        for organ in ("right_kidney", "left_kidney", "spleen"):
            assert 80 < ml[organ] < 400, ml
        assert ml["liver"] > 4 * max(ml["right_kidney"], ml["left_kidney"], ml["spleen"])


def test_organs_are_anatomically_placed(ct0, ct1):
    for p in (ct0, ct1):
        assert nib.aff2axcodes(p.affine) == ("R", "A", "S")
        c = {organ: _centroid_world(p, organ) for organ in PHANTOM_LABELS}
        # RAS+: world x grows toward the patient's right, y anterior, z superior
        assert c["liver"][0] > 20 and c["spleen"][0] < -20
        assert c["right_kidney"][0] > 20 and c["left_kidney"][0] < -20
        assert c["liver"][2] > max(c["right_kidney"][2], c["left_kidney"][2]) + 20  # liver superior to kidneys
        assert c["spleen"][2] > c["left_kidney"][2] + 20  # spleen above the left kidney
        assert max(c["right_kidney"][1], c["left_kidney"][1], c["spleen"][1]) < c["liver"][1]  # posterior


def test_organs_lie_inside_the_body(ct0):
    body = ct0.image > -400
    for k in range(body.shape[2]):  # the body cross-section, including its air/gas-filled cavities
        body[..., k] = ndimage.binary_fill_holes(ndimage.binary_opening(body[..., k], iterations=2))
    organs = ct0.label > 0
    assert not (organs & ~body).any()
    assert not organs[[0, -1]].any() and not organs[:, [0, -1]].any()  # never cut by the field of view
    assert (ct0.image[~body] < -900).mean() > 0.95  # air around the body (the table aside)


def test_ct_intensities_are_hounsfield_like(ct0, ct1):
    for p in (ct0, ct1):
        median = {organ: float(np.median(p.image[p.organ_mask(organ)])) for organ in PHANTOM_LABELS}
        assert 45 < median["liver"] < 75, median
        assert 35 < median["spleen"] < 65, median
        assert 120 < median["right_kidney"] < 185 and 120 < median["left_kidney"] < 185, median
        assert p.image.min() < -950  # air
        assert np.percentile(p.image, 99.95) > 350  # vertebrae and ribs
        body = p.image[p.label == 0]
        assert ((body > -130) & (body < -70)).mean() > 0.05  # a real share of fat voxels


def test_mri_intensities_are_t2_spir_like(mri0):
    median = {organ: float(np.median(mri0.image[mri0.organ_mask(organ)])) for organ in PHANTOM_LABELS}
    assert mri0.image.min() >= 0  # magnitude image with Rician noise
    assert 200 < median["liver"] < 600, median
    assert median["spleen"] > 1.4 * median["liver"] and median["right_kidney"] > 1.5 * median["liver"], median
    corner = mri0.image[:12, :12]  # air: only the Rician noise floor
    assert 3 < corner.mean() < 60
    assert mri0.image.max() < 3000


def test_shape_only_sets_the_sampling(ct0):
    low = make_phantom(seed=0, modality="ct", shape=(96, 96, 40))
    assert low.spacing == pytest.approx((REFERENCE_FOV[0] / 96, REFERENCE_FOV[1] / 96, REFERENCE_FOV[2] / 40))
    for organ in PHANTOM_LABELS:  # the same anatomy, sampled every other voxel in-plane
        assert _dice(low.organ_mask(organ), ct0.organ_mask(organ)[::2, ::2]) > 0.85, organ
    custom = make_phantom(seed=0, modality="ct", shape=(96, 96, 40), spacing=(1.0, 1.0, 2.0))
    assert np.array_equal(custom.label, low.label) and custom.spacing == pytest.approx((1.0, 1.0, 2.0))


def test_write_phantom_round_trips_through_nifti(tmp_path):
    image_path, label_path = write_phantom(tmp_path, "case", seed=5, modality="mri", **SMALL)
    phantom = make_phantom(seed=5, modality="mri", **SMALL)
    image, label = nib.load(image_path), nib.load(label_path)
    assert np.array_equal(np.asarray(image.dataobj), phantom.image)
    assert np.asarray(label.dataobj).dtype == np.uint8
    assert np.array_equal(np.asarray(label.dataobj), phantom.label)
    for img in (image, label):
        np.testing.assert_allclose(img.affine, phantom.affine, atol=1e-5)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert img.header.get_zooms() == pytest.approx(SMALL["spacing"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_image.nii.gz", "case_label.nii.gz"]  # no temp


def test_dataset_writer_matches_the_phantom_descriptor(tmp_path):
    cases = make_phantom_dataset(tmp_path, n=3, modality="ct", first_seed=7, **SMALL)
    assert [c["id"] for c in cases] == ["case0", "case1", "case2"]
    assert datalist(tmp_path, "phantom") == cases
    second = make_phantom(seed=8, modality="ct", **SMALL)
    assert np.array_equal(np.asarray(nib.load(cases[1]["label"]).dataobj), second.label)


def test_metatensors_and_organ_masks(mri0):
    image, label = mri0.to_metatensors()
    assert tuple(image.shape) == (1, *mri0.shape) and tuple(label.shape) == (1, *mri0.shape)
    np.testing.assert_allclose(image.affine.numpy(), mri0.affine)
    assert str(label.dtype) == "torch.int16"
    with pytest.raises(KeyError, match="liver"):
        mri0.organ_mask("pancreas")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"modality": "pet"}, "modality"),
        ({"seed": -1}, "seed"),
        ({"shape": (64, 64)}, "shape"),
        ({"spacing": (1.0, 1.0, 0.0)}, "spacing"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_phantom(**kwargs)


def test_generation_is_fast():
    # CPU time, not wall time: the machine is shared (about 1 s of CPU, 1-2 s of wall time on 2 busy cores)
    start = time.process_time()
    make_phantom(seed=11, modality="mri")
    cpu = time.process_time() - start
    assert cpu < 2.0, f"{cpu:.2f} s of CPU for a default {DEFAULT_SHAPE} phantom"


@pytest.mark.real_data
def test_layout_is_close_to_chaos(ct0, ct1):
    """Organ centroids (as fractions of the field of view) fall in the range seen on CHAOS T2-SPIR."""
    root = DATA / "chaos_t2spir"
    if not root.is_dir():
        pytest.skip("../shared/data/chaos_t2spir not present")
    real = []
    for case in (1, 2, 5, 13, 38):
        lab = nib.as_closest_canonical(nib.load(root / f"label_{case}.nii.gz"))
        arr = np.asarray(lab.dataobj).astype(np.uint8)
        real.append([np.array(ndimage.center_of_mass(arr == i)) / arr.shape for i in PHANTOM_LABELS.values()])
    real = np.array(real)  # (case, organ, axis) fractions, RAS voxel order
    lo, hi = real.min(axis=0) - 0.1, real.max(axis=0) + 0.1
    for p in (ct0, ct1):
        ours = np.array([np.array(ndimage.center_of_mass(p.label == i)) / p.shape for i in PHANTOM_LABELS.values()])
        assert ((ours >= lo) & (ours <= hi)).all(), (ours.round(2), lo.round(2), hi.round(2))
