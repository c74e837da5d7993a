"""Synthetic phantoms: deterministic, anatomically arranged, plausible intensities, exact NIfTI round trip."""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pytest

from fewshot_monai.data.phantoms import PHANTOM_LABELS, make_phantom, make_phantom_dataset, write_phantom
from fewshot_monai.evaluation.metrics import dice_score


@pytest.fixture(scope="module")
def ct():
    return make_phantom(seed=3, modality="ct")


def test_same_seed_is_bit_identical_and_seeds_differ():
    a, b, c = make_phantom(0), make_phantom(0), make_phantom(1)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    liver = PHANTOM_LABELS["liver"]
    d = dice_score(a.label == liver, c.label == liver)
    assert 0.5 < d < 0.97  # alike but not identical: a real few-shot task


def test_every_organ_present_with_plausible_sizes(ct):
    volumes = {name: int((ct.label == idx).sum()) for name, idx in PHANTOM_LABELS.items()}
    assert all(v > 1000 for v in volumes.values()), volumes
    assert volumes["liver"] == max(volumes.values())
    assert volumes["liver"] > 2 * volumes["spleen"]
    assert set(np.unique(ct.label)) == {0, *PHANTOM_LABELS.values()}


def test_organs_lie_inside_the_body_and_sides_are_anatomical(ct):
    assert (ct.image[ct.label > 0] > -500).all()  # no organ voxel in air
    world_x = {}
    for name, idx in PHANTOM_LABELS.items():
        centroid = np.argwhere(ct.label == idx).mean(axis=0)
        world_x[name] = (ct.affine @ np.append(centroid, 1.0))[0]
    # RAS+: world x grows toward the patient's right
    assert world_x["liver"] > 0 > world_x["spleen"]
    assert world_x["right_kidney"] > 0 > world_x["left_kidney"]


def test_ct_intensities_are_hounsfield_like(ct):
    median = {name: float(np.median(ct.image[ct.label == idx])) for name, idx in PHANTOM_LABELS.items()}
    assert 40 < median["liver"] < 80
    assert 30 < median["spleen"] < 70
    assert 120 < median["right_kidney"] < 180
    assert ct.image.min() < -900  # air around the body


def test_mri_organ_contrast():
    mr = make_phantom(seed=2, modality="mri")
    median = {name: float(np.median(mr.image[mr.label == idx])) for name, idx in PHANTOM_LABELS.items()}
    assert mr.image.min() >= 0  # magnitude image (Rician noise)
    assert median["spleen"] > median["liver"] and median["left_kidney"] > median["liver"]


def test_write_phantom_round_trips_through_nifti(tmp_path):
    image_path, label_path = write_phantom(tmp_path, "case", seed=5, modality="mri")
    phantom = make_phantom(seed=5, modality="mri")
    image, label = nib.load(image_path), nib.load(label_path)
    assert np.array_equal(image.get_fdata(dtype=np.float32), phantom.image)
    assert np.array_equal(np.asarray(label.dataobj), phantom.label)
    np.testing.assert_allclose(image.affine, phantom.affine, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_image.nii.gz", "case_label.nii.gz"]


def test_dataset_writer_and_speed(tmp_path):
    start = time.perf_counter()
    cases = make_phantom_dataset(tmp_path, n=2, modality="ct", first_seed=7)
    assert [c["id"] for c in cases] == ["case0", "case1"]
    assert time.perf_counter() - start < 20  # generous: the machine may be shared
    with pytest.raises(ValueError, match="modality"):
        make_phantom(modality="pet")
