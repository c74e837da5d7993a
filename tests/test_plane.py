"""Slicing in the acquisition plane: the plane chosen per volume, exact round trips to the file's own grid, axial
data unchanged, and a sagittal copy of a phantom segmented like the original."""

from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from fewshot_monai.batch import SegmentOptions, segment_folder, to_input_geometry
from fewshot_monai.cli.arguments import PLANE_CHOICES
from fewshot_monai.data.io import load_case, load_volume
from fewshot_monai.data.phantoms import make_phantom
from fewshot_monai.evaluation.metrics import dice_score
from fewshot_monai.transforms.plane import (
    PLANE_AXCODES,
    PLANES,
    SlicePlane,
    SlicePlaned,
    choose_plane,
    plane_of,
    slice_axis,
    to_plane,
)

SHAPE = (64, 64, 16)  # small phantoms: 64 x 64 in plane, 16 thick slices


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [k for k in range(3) if k != axis]
    rot = np.eye(4)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


def sagittal_copy(
    array: np.ndarray, affine: np.ndarray, rotate: float = 0.0, mirror: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The voxels of an axial RAS volume ``(X, Y, Z)`` (Z thick) stored as a sagittal acquisition: the thick axis
    first, running left-right, the former x axis running posterior (``mirror``) or anterior, the former y axis
    superior; ``rotate`` tilts the stack (degrees about the superior axis): an oblique acquisition."""
    sx, sy, sz = np.linalg.norm(affine[:3, :3], axis=0)
    stored = np.ascontiguousarray(np.transpose(array, (2, 0, 1)))
    new = np.diag([sz, -sx if mirror else sx, sy, 1.0])
    new[:3, 3] = [
        -sz * stored.shape[0] / 2,
        (1 if mirror else -1) * sx * stored.shape[1] / 2,
        -sy * stored.shape[2] / 2,
    ]
    return stored, _rotation(2, rotate) @ new


def _write(path, array, affine):
    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))
    return path


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """Two MRI phantoms (support seed 0, query seed 1), each written as stored (axial), as a sagittal copy and as a
    mirrored sagittal copy."""
    root = tmp_path_factory.mktemp("plane")
    files = {}
    for role, seed in (("support", 0), ("query", 1)):
        p = make_phantom(seed=seed, modality="mri", shape=SHAPE)
        for kind in ("axial", "sagittal", "mirrored"):
            folder = root / kind / role
            folder.mkdir(parents=True)
            mirror = kind == "mirrored"
            image, affine = (p.image, p.affine) if kind == "axial" else sagittal_copy(p.image, p.affine, mirror=mirror)
            label = p.label if kind == "axial" else sagittal_copy(p.label, p.affine, mirror=mirror)[0]
            files[kind, role] = (
                _write(folder / f"{role}.nii.gz", image.astype(np.float32), affine),
                _write(folder / f"{role}_label.nii.gz", label.astype(np.uint8), affine),
            )
    return root, files


def test_plane_names_agree_with_the_cli_choices():
    assert tuple(PLANE_CHOICES) == PLANES
    assert PLANE_AXCODES["axial"] == "RAS"


@pytest.mark.parametrize(
    ("spacing", "codes", "expected_axis", "expected_plane"),
    [
        ((1.5, 1.5, 7.0), "RAS", 2, "axial"),  # axial stack
        ((7.0, 1.5, 1.5), "RAS", 0, "sagittal"),  # thick axis stored first, running left-right
        ((1.5, 6.0, 1.5), "RAS", 1, "coronal"),
        ((1.0, 1.0, 1.0), "RAS", 2, "axial"),  # isotropic: the stored third axis
        ((1.0, 1.05, 1.0), "RSA", 2, "coronal"),  # equal within the tolerance: the stored third axis (A)
        ((0.7, 0.7, 3.0), "LPS", 2, "axial"),
    ],
)
def test_the_acquisition_plane_is_the_thickest_axis_or_the_stored_third(spacing, codes, expected_axis, expected_plane):
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for axis, (letter, size) in enumerate(zip(codes, spacing)):
        affine["RASLPI".index(letter) % 3, axis] = size if letter in "RAS" else -size
    assert "".join(nib.aff2axcodes(affine)) == codes
    assert slice_axis(affine) == expected_axis
    assert choose_plane(affine) == expected_plane
    assert choose_plane(affine, "stored") == {"S": "axial", "I": "axial", "A": "coronal"}.get(codes[2], "sagittal")
    for forced in ("axial", "coronal", "sagittal"):
        assert choose_plane(affine, forced) == forced


def test_an_unknown_plane_is_one_clear_error():
    with pytest.raises(ValueError, match="plane must be one of auto, stored, axial, coronal, sagittal; got 'oblique'"):
        SlicePlane("oblique")
    with pytest.raises(ValueError, match="plane must be one of"):
        SegmentOptions(plane="transverse")


def test_axial_data_loads_exactly_as_before(phantoms, tmp_path):
    """The default plane gives the arrays and affines of the former ``orientation="RAS"``, also for a volume whose
    stored voxel order is permuted and flipped but whose geometry is still axial."""
    _, files = phantoms
    image, label = files["axial", "query"]
    new, old = load_case(image, label), load_case(image, label, orientation="RAS")
    for key in ("image", "label"):
        assert torch.equal(new[key].as_tensor(), old[key].as_tensor())
        assert torch.equal(new[key].affine, old[key].affine)
    # same world geometry, thick axis stored first (and y reversed): still an axial acquisition
    stored = nib.load(image)
    data = np.transpose(np.asarray(stored.dataobj), (2, 0, 1))[:, :, ::-1]
    perm = np.zeros((4, 4))
    perm[2, 0] = perm[0, 1] = 1.0
    perm[1, 2] = -1.0
    perm[1, 3] = SHAPE[1] - 1
    perm[3, 3] = 1.0
    moved = _write(tmp_path / "moved.nii.gz", np.ascontiguousarray(data), stored.affine @ perm)
    again = load_volume(moved)
    assert plane_of(again) == "axial"
    assert torch.equal(again.as_tensor(), old["image"].as_tensor())
    np.testing.assert_allclose(again.affine.numpy(), old["image"].affine.numpy(), atol=1e-4)


def test_a_sagittal_copy_is_cut_along_its_thick_axis_and_goes_back_exactly(phantoms, caplog):
    _, files = phantoms
    image, label = files["mirrored", "query"]
    axial = load_case(*files["axial", "query"])
    with caplog.at_level(logging.INFO, logger="fewshot_monai.transforms.plane"):
        case = load_case(image, label)
    lines = [r.getMessage() for r in caplog.records if "plane" in r.getMessage()]
    assert len(lines) == 1 and str(image) in lines[0] and "sagittal plane" in lines[0]  # one line, the image only
    assert plane_of(case["image"]) == "sagittal" and "".join(nib.aff2axcodes(case["image"].affine.numpy())) == "ASR"
    assert case["image"].shape == axial["image"].shape == (1, *SHAPE)  # the thick axis is last again
    # the same slices as the axial original, each mirrored (the copy's first in-plane axis runs posterior)
    assert torch.equal(case["image"].as_tensor(), torch.flip(axial["image"].as_tensor(), dims=(1,)))
    assert torch.equal(case["label"].as_tensor(), torch.flip(axial["label"].as_tensor(), dims=(1,)))
    # back onto the file's own voxel grid, exactly
    back, affine = to_input_geometry(case["label"], case["image"])
    stored = nib.load(label)
    assert torch.equal(back[0], torch.as_tensor(np.asarray(stored.dataobj)).to(back.dtype))
    np.testing.assert_allclose(affine, stored.affine, atol=1e-4)


@pytest.mark.parametrize("degrees", [20.0, -25.0])
def test_an_oblique_stack_picks_its_own_slice_axis(phantoms, tmp_path, degrees):
    _, files = phantoms
    p = make_phantom(seed=1, modality="mri", shape=SHAPE)
    data, affine = sagittal_copy(p.image, p.affine, rotate=degrees)
    path = _write(tmp_path / "oblique.nii.gz", data.astype(np.float32), affine)
    assert slice_axis(affine) == 0 and choose_plane(affine) == "sagittal"
    loaded = load_volume(path)
    assert tuple(loaded.shape) == (1, *SHAPE) and plane_of(loaded) == "sagittal"
    back, back_affine = to_input_geometry(loaded, loaded)
    assert torch.equal(back[0], torch.as_tensor(data))
    np.testing.assert_allclose(back_affine, affine, atol=1e-4)


def test_dictionary_transform_inverts_and_labels_follow_the_image():
    affine = torch.as_tensor(sagittal_copy(np.zeros((4, 5, 3)), np.diag([1.5, 1.5, 6.0, 1.0]))[1])
    image = MetaTensor(torch.rand(1, 3, 4, 5), affine=affine.clone(), meta={"filename_or_obj": "img"})
    label = MetaTensor(torch.randint(0, 3, (1, 3, 4, 5)), affine=affine.clone(), meta={"filename_or_obj": "lbl"})
    xform = SlicePlaned(("image", "label"))
    out = xform({"image": image, "label": label})
    assert out["image"].shape == out["label"].shape == (1, 4, 5, 3)
    assert torch.equal(out["image"].affine, out["label"].affine)
    back = xform.inverse(out)
    assert torch.equal(back["image"].as_tensor(), image.as_tensor())
    assert torch.equal(back["label"].as_tensor(), label.as_tensor())
    assert torch.allclose(back["image"].affine, affine.to(back["image"].affine.dtype))


def test_to_plane_resamples_with_square_pixels(phantoms):
    _, files = phantoms
    sagittal = load_case(*files["mirrored", "query"])
    axial = to_plane(sagittal["image"], "axial", slice_spacing=7.0)
    label = to_plane(sagittal["label"], "axial", slice_spacing=7.0, mode="nearest")
    assert plane_of(axial) == "axial" and axial.shape == label.shape
    spacing = np.linalg.norm(axial.affine.numpy()[:3, :3], axis=0)
    assert spacing[0] == pytest.approx(spacing[1]) and spacing[2] == pytest.approx(7.0)
    assert label.dtype == sagittal["label"].dtype
    assert set(torch.unique(label).tolist()) <= set(torch.unique(sagittal["label"]).tolist())


def _segment(support, query_folder, out, **options):
    opts = {
        "organs": {"liver": 1, "spleen": 4},
        "intensity": "mri",
        "pseudo_label": "none",
        "adapt_iterations": 0,
        "overlays": False,
        "progress": False,
        **options,
    }
    summary = segment_folder(query_folder, out, [support[0]], [support[1]], opts)
    assert summary["done"] == 1, summary
    return out / "query_seg.nii.gz", json.loads((out / "query.json").read_text())


def _dice(seg_path, truth_path):
    seg, truth = nib.load(seg_path), nib.load(truth_path)
    assert seg.shape == truth.shape  # the mask lies on the input file's own voxel grid
    np.testing.assert_allclose(seg.affine, truth.affine, atol=1e-4)
    s, t = np.asarray(seg.dataobj), np.asarray(truth.dataobj)
    return {organ: dice_score(s == i, t == i) for organ, i in (("liver", 1), ("spleen", 4))}


@pytest.mark.slow
def test_a_sagittal_copy_segments_like_the_axial_original(phantoms, tmp_path, caplog):
    root, files = phantoms
    axial_seg, axial_report = _segment(
        files["axial", "support"], root / "axial" / "query" / "query.nii.gz", tmp_path / "axial"
    )
    sag_seg, sag_report = _segment(
        files["sagittal", "support"], root / "sagittal" / "query" / "query.nii.gz", tmp_path / "sagittal"
    )
    axial_dice = _dice(axial_seg, files["axial", "query"][1])
    sag_dice = _dice(sag_seg, files["sagittal", "query"][1])
    assert axial_dice["liver"] > 0.6
    for organ in axial_dice:
        assert sag_dice[organ] == pytest.approx(axial_dice[organ], abs=0.01), (axial_dice, sag_dice)
    assert (axial_report["plane"], sag_report["plane"]) == ("axial", "sagittal")
    assert "axial slice" in axial_report["z_range_note"] and "RAS" in axial_report["z_range_note"]
    assert "sagittal plane" in sag_report["z_range_note"] and "axial" not in sag_report["z_range_note"]
    # an axial support with the sagittal query: the query is resampled into the support's plane (one log line) and
    # its mask still lands on its own file's grid
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fewshot_monai.transforms.plane"):
        mixed_seg, _ = _segment(
            files["axial", "support"], root / "sagittal" / "query" / "query.nii.gz", tmp_path / "mixed"
        )
    resampled = [r.getMessage() for r in caplog.records if "resampled into the axial plane" in r.getMessage()]
    assert len(resampled) == 1 and "query cut in the sagittal plane" in resampled[0]
    _dice(mixed_seg, files["sagittal", "query"][1])  # the grid checks


def test_cached_superpixels_are_redone_when_the_plane_changes(tmp_path):
    """The superpixel cache holds the slices of the plane they were computed in: a cube loaded in another plane has
    the same shape but not the same slices, so its superpixels are computed again."""
    from fewshot_monai.data.episodes import SuperpixelCache
    from fewshot_monai.transforms.superpixels import SuperpixelParams

    p = make_phantom(seed=2, modality="mri", shape=(32, 32, 32), spacing=(2.0, 2.0, 2.0))
    path = _write(tmp_path / "cube.nii.gz", p.image.astype(np.float32), p.affine)
    cache = SuperpixelCache(tmp_path / "cache")
    params = SuperpixelParams(min_size=20)
    axial = load_case(path, intensity="mri")["image"]
    first = cache.get(path, params, "mri", axial)
    assert torch.equal(cache.get(path, params, "mri", axial).as_tensor(), first.as_tensor())  # reused as stored
    coronal = load_case(path, intensity="mri", plane="coronal")["image"]
    assert coronal.shape == axial.shape and plane_of(coronal) == "coronal"
    again = cache.get(path, params, "mri", coronal)
    assert torch.equal(again.affine.float(), coronal.affine.float())  # recomputed on the coronal slices
    assert torch.equal(cache.load(path).affine.float(), coronal.affine.float())
