"""Tests of fewshot_monai.transforms: intensity presets, validation, invertible slicing, label helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd

from fewshot_monai.data.io import case_loading_transforms
from fewshot_monai.errors import (
    DimensionalityError,
    EmptyMaskError,
    GeometryMismatchError,
    MissingOrganError,
    NonFiniteError,
)
from fewshot_monai.transforms import (
    CheckGeometryd,
    EnsureVolume,
    EnsureVolumed,
    IntensityPreset,
    IntensityPresetd,
    SelectOrgan,
    SelectOrgand,
    VolumeToSlices,
    VolumeToSlicesd,
    chunk_centres,
    chunk_slices,
    organ_z_extent,
    slices_to_volume,
    volume_to_slices,
)

AFFINE = torch.tensor(
    [[0.75, 0.0, 0.0, -90.5], [0.0, 0.8125, 0.0, -120.25], [0.0, 0.0, 2.5, 33.0], [0.0, 0.0, 0.0, 1.0]],
    dtype=torch.float64,
)


def _image(shape=(1, 20, 24, 7), seed=0, name="img.nii.gz") -> MetaTensor:
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(shape, generator=g) * 300.0 + 50.0
    return MetaTensor(data, affine=AFFINE.clone(), meta={"filename_or_obj": name})


def _label(shape=(1, 20, 24, 7), seed=1, name="lab.nii.gz") -> MetaTensor:
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 5, shape, generator=g).to(torch.int16)
    return MetaTensor(data, affine=AFFINE.clone(), meta={"filename_or_obj": name})


# ----------------------------------------------------------------------------------------------- intensity


def test_ct_window_clipping_is_exact():
    values = torch.tensor([-3000.0, -125.5, -125.0, -124.5, 0.0, 274.5, 275.0, 275.25, 3071.0]).reshape(1, 3, 3, 1)
    out = IntensityPreset("ct", zscore=False)(values)
    expected = torch.tensor([-125.0, -125.0, -125.0, -124.5, 0.0, 274.5, 275.0, 275.0, 275.0]).reshape(1, 3, 3, 1)
    assert out.dtype == torch.float32
    assert torch.equal(torch.as_tensor(out), expected)
    out = IntensityPreset("ct", ct_window=(-1000, 1000), zscore=False)(values)
    assert out.flatten().tolist() == [-1000.0, -125.5, -125.0, -124.5, 0.0, 274.5, 275.0, 275.25, 1000.0]


def test_ct_preset_zscores_the_clipped_volume():
    image = _image()
    out = IntensityPreset("ct")(image)
    clipped = np.clip(image.numpy().astype(np.float64), -125.0, 275.0)
    expected = (clipped - clipped.mean()) / clipped.std()
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    assert abs(float(out.mean())) < 1e-5 and abs(float(out.std(unbiased=False)) - 1.0) < 1e-5
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "img.nii.gz"
    assert torch.equal(out.affine, AFFINE)


def test_mri_preset_clips_top_half_percent():
    values = torch.arange(1000, dtype=torch.float32).reshape(1, 10, 10, 10)
    out = IntensityPreset("mri", zscore=False)(values).flatten()
    threshold = np.percentile(np.arange(1000.0), 99.5)  # 994.005
    assert torch.equal(out[:995], torch.arange(995, dtype=torch.float32))  # untouched below the percentile
    np.testing.assert_allclose(out[995:].numpy(), threshold, rtol=1e-6)
    zscored = IntensityPreset("mri")(values)
    assert abs(float(zscored.mean())) < 1e-5 and abs(float(zscored.std(unbiased=False)) - 1.0) < 1e-5


def test_preprocessed_and_none_presets():
    values = torch.randint(0, 256, (1, 8, 8, 4), dtype=torch.uint8)
    out = IntensityPreset("preprocessed")(values)
    expected = (values.double() - values.double().mean()) / values.double().std(unbiased=False)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(np.asarray(out), expected.numpy(), atol=1e-5)
    assert IntensityPreset("none")(values) is values
    assert IntensityPreset(None)(values) is values
    constant = IntensityPreset("preprocessed")(torch.full((1, 4, 4, 4), 7.0))
    assert torch.equal(torch.as_tensor(constant), torch.zeros(1, 4, 4, 4))  # std 0: only centred
    with pytest.raises(ValueError, match="unknown intensity preset 'pet'"):
        IntensityPreset("pet")
    with pytest.raises(ValueError, match="low < high"):
        IntensityPreset("ct", ct_window=(275, -125))


def test_intensity_presetd_touches_only_its_keys():
    data = {"image": _image(), "label": _label()}
    out = IntensityPresetd("image", preset="ct")(data)
    assert out["label"] is data["label"]
    assert float(out["image"].max()) < 3.0


# ----------------------------------------------------------------------------------------------- validation


def test_ensure_volume_checks_rank_channels_slices_and_finiteness():
    ok = _image()
    assert EnsureVolume()(ok) is ok
    with pytest.raises(DimensionalityError, match=r"img.nii.gz: is a 2D image \(shape \(20, 24\)\)"):
        EnsureVolume()(MetaTensor(torch.zeros(1, 20, 24), meta={"filename_or_obj": "img.nii.gz"}))
    with pytest.raises(DimensionalityError, match="has 2 channels"):
        EnsureVolume()(torch.zeros(2, 4, 4, 4))
    assert EnsureVolume(num_channels=None)(torch.zeros(2, 4, 4, 4)).shape == (2, 4, 4, 4)
    with pytest.raises(DimensionalityError, match="single slice"):
        EnsureVolume()(torch.zeros(1, 4, 4, 1))
    with pytest.raises(DimensionalityError, match="4 spatial dimensions"):
        EnsureVolume()(torch.zeros(1, 4, 4, 4, 2))
    bad = _image()
    bad[0, 1, 2, 3] = float("nan")
    with pytest.raises(NonFiniteError, match=r"img.nii.gz: contains 1 non-finite voxels \(1 NaN, 0 infinite\)"):
        EnsureVolume()(bad)
    assert EnsureVolume(check_finite=False)(bad) is bad
    out = EnsureVolumed(("image", "label"), check_finite=(True, False))({"image": ok, "label": _label()})
    assert out["image"] is ok


def test_check_geometryd():
    image, label = _image(), _label()
    CheckGeometryd()({"image": image, "label": label})
    moved = _label()
    moved.affine[0, 3] += 0.01
    with pytest.raises(GeometryMismatchError) as err:
        CheckGeometryd()({"image": image, "label": moved})
    assert str(err.value).startswith("lab.nii.gz: affine differs from that of img.nii.gz by up to 0.01")
    CheckGeometryd(atol=0.1)({"image": image, "label": moved})
    with pytest.raises(GeometryMismatchError, match=r"lab.nii.gz: spatial shape \(20, 24, 6\) does not match"):
        CheckGeometryd()({"image": image, "label": _label(shape=(1, 20, 24, 6))})


# ----------------------------------------------------------------------------------------------- slicing


def test_slicing_without_resize_is_bit_exact():
    image = _image()
    image[0, 0, 0, 0] = 1e-30  # awkward values survive untouched
    image[0, 1, 0, 0] = -0.0
    stack = VolumeToSlices(spatial_size=None, channels=3)(image)
    assert stack.shape == (7, 3, 20, 24) and stack.dtype == torch.float32
    for k in range(7):
        for c in range(3):
            assert torch.equal(stack[k, c].as_tensor(), image[0, :, :, k].as_tensor())
    assert torch.equal(stack.affine, AFFINE) and stack.meta["filename_or_obj"] == "img.nii.gz"


def test_slicing_round_trip_exact_through_inverse():
    image, label = _image(), _label()
    slicer = VolumeToSlices(spatial_size=None, channels=1, mode="nearest")
    for volume in (image, label):
        stack = slicer(volume)
        assert stack.dtype == volume.dtype
        back = slicer.inverse(stack)
        assert back.shape == volume.shape
        assert torch.equal(back.as_tensor(), volume.as_tensor())
        assert torch.equal(back.affine, volume.affine)
        assert back.meta["filename_or_obj"] == volume.meta["filename_or_obj"]
        assert back.applied_operations == []
    # spatial size equal to the in-plane size: no interpolation either
    square = _image(shape=(1, 16, 16, 5))
    same = VolumeToSlices(spatial_size=16, channels=3)
    assert torch.equal(same.inverse(same(square))[:1].as_tensor(), square.as_tensor())
    # plain function pair
    plain = volume_to_slices(label, spatial_size=None, channels=1)
    assert type(plain) is torch.Tensor
    assert torch.equal(slices_to_volume(plain, label).as_tensor(), label.as_tensor())


def test_resize_and_invert_restores_shape_and_affine():
    image = _image()
    slicer = VolumeToSlices(spatial_size=64, channels=3)
    stack = slicer(image)
    assert stack.shape == (7, 3, 64, 64)
    assert torch.equal(stack[:, 0], stack[:, 2])  # grey slice tiled
    # a 2-class probability stack from the network -> (2, X, Y, Z)
    probs = MetaTensor(torch.rand(7, 2, 64, 64)).copy_meta_from(stack)  # deep copy: stack keeps its record
    back = slicer.inverse(stack)
    assert back.shape == (3, 20, 24, 7)
    assert torch.equal(back.affine, AFFINE)
    assert float((back[0] - image[0]).abs().mean()) < 0.5 * float(image.std())  # interpolated, not garbage
    volume_probs = slicer.inverse(probs)
    assert volume_probs.shape == (2, 20, 24, 7) and torch.equal(volume_probs.affine, AFFINE)
    assert torch.equal(slices_to_volume(probs.as_tensor(), image).as_tensor(), volume_probs.as_tensor())


@pytest.mark.parametrize("in_plane", [(128, 128), (20, 24)])
def test_label_nearest_upsampling_inverts_exactly(in_plane):
    label = _label(shape=(1, *in_plane, 3))
    slicer = VolumeToSlices(spatial_size=256, channels=1, mode="nearest")
    stack = slicer(label)
    assert stack.shape == (3, 1, 256, 256) and stack.dtype == torch.int16
    if in_plane == (128, 128):  # integer factor 2: every label pixel becomes a 2x2 block
        assert torch.equal(stack[:, 0, ::2, ::2], label[0].permute(2, 0, 1).as_tensor())
        assert torch.equal(stack[:, 0, 1::2, 1::2], label[0].permute(2, 0, 1).as_tensor())
    back = slicer.inverse(stack)
    assert torch.equal(back.as_tensor(), label.as_tensor())
    assert torch.equal(back.affine, label.affine)


def test_dict_slicing_with_monai_compose_and_invertd():
    """Orientation + slicing inverted by MONAI: the prediction ends in the stored voxel order and affine."""
    lps = AFFINE.clone()
    lps[0] *= -1
    lps[1] *= -1
    image = MetaTensor(torch.rand(1, 20, 24, 6), affine=lps.clone(), meta={"filename_or_obj": "img"})
    label = MetaTensor(torch.randint(0, 3, (1, 20, 24, 6)).float(), affine=lps.clone(), meta={"filename_or_obj": "l"})
    pipeline = Compose(
        [
            case_loading_transforms(),
            VolumeToSlicesd(("image", "label"), spatial_size=32, channels=(3, 1), mode=("bilinear", "nearest")),
        ]
    )
    data = pipeline({"image": image, "label": label})
    assert data["image"].shape == (6, 3, 32, 32) and data["label"].shape == (6, 1, 32, 32)
    assert data["label"].dtype == torch.int16
    # a prediction stack inverted with the image's record (Invertd copies it, nearest for a label map)
    data["pred"] = MetaTensor(data["label"].as_tensor().float().repeat(1, 2, 1, 1))
    inverted = Invertd(keys="pred", transform=pipeline, orig_keys="image", nearest_interp=True)(data)
    assert inverted["pred"].shape == (2, 20, 24, 6)
    assert torch.equal(inverted["pred"][1].as_tensor(), label[0].as_tensor())
    assert torch.equal(inverted["pred"].affine, lps)
    # the whole pipeline inverted on the loaded data
    restored = pipeline.inverse({"image": data["image"], "label": data["label"]})
    assert torch.equal(restored["label"].as_tensor().float(), label.as_tensor())
    assert torch.equal(restored["label"].affine, lps)
    assert restored["image"].shape == (3, 20, 24, 6)
    assert float((restored["image"][0] - image[0]).abs().max()) < 0.5


def test_slicing_errors():
    with pytest.raises(GeometryMismatchError, match="lab.nii.gz: slice stack of shape"):
        slices_to_volume(torch.zeros(5, 1, 20, 24), _label())
    with pytest.raises(ValueError, match="cannot make 1 channels from a 3-channel volume"):
        volume_to_slices(torch.zeros(3, 4, 4, 4), channels=1)
    with pytest.raises(ValueError, match="channel-first volume"):
        volume_to_slices(torch.zeros(4, 4, 4))


# ----------------------------------------------------------------------------------------------- labels


def test_select_organ():
    label = _label()
    mask = SelectOrgan(3)(label)
    assert mask.dtype == torch.int16 and isinstance(mask, MetaTensor)
    assert torch.equal(mask.as_tensor(), (label == 3).as_tensor().to(torch.int16))
    assert set(torch.unique(mask).tolist()) == {0, 1}
    assert torch.equal(mask.affine, label.affine) and mask.meta["filename_or_obj"] == "lab.nii.gz"
    assert SelectOrgan(3, dtype=torch.float32)(label).dtype == torch.float32
    with pytest.raises(MissingOrganError) as err:
        SelectOrgan(6, name="liver")(label)
    assert str(err.value) == "lab.nii.gz: organ 'liver' (label id 6) does not occur in the label map; ids present: " + (
        "[0, 1, 2, 3, 4]"
    )
    out = SelectOrgand("label", label_id=2)({"label": label, "image": 1})
    assert torch.equal(out["label"].as_tensor(), (label == 2).as_tensor().to(torch.int16)) and out["image"] == 1


def test_organ_z_extent():
    mask = torch.zeros(1, 6, 6, 12, dtype=torch.int16)
    mask[0, 2, 3, 3] = 1
    mask[0, 1, 1, 7] = 1
    assert organ_z_extent(mask) == (3, 7)
    assert organ_z_extent(mask[0]) == (3, 7)
    with pytest.raises(EmptyMaskError, match=r"^support.nii.gz: mask of shape \(1, 6, 6, 12\) has no foreground"):
        organ_z_extent(MetaTensor(torch.zeros(1, 6, 6, 12), meta={"filename_or_obj": "support.nii.gz"}))


@pytest.mark.parametrize(
    "z_first, z_last, n_chunks, expected",
    [
        (10, 19, 3, [[10, 11, 12, 13], [14, 15, 16], [17, 18, 19]]),  # 10 = 4 + 3 + 3: remainder to the first
        (0, 8, 3, [[0, 1, 2], [3, 4, 5], [6, 7, 8]]),
        (0, 11, 5, [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9], [10, 11]]),
        (5, 5, 1, [[5]]),
        (4, 9, 1, [[4, 5, 6, 7, 8, 9]]),
        (0, 1, 3, [[0], [0], [1]]),  # fewer slices than chunks: slices shared, all used
        (3, 5, 5, [[3], [3], [4], [4], [5]]),
    ],
)
def test_chunk_slices_by_hand(z_first, z_last, n_chunks, expected):
    chunks = chunk_slices(z_first, z_last, n_chunks)
    assert [c.tolist() for c in chunks] == expected
    assert all(c.dtype == np.int64 for c in chunks)


def test_chunk_centres_by_hand():
    assert chunk_centres(10, 19, 3) == [12, 15, 18]
    assert chunk_centres(0, 11, 5) == [1, 4, 7, 9, 11]
    assert chunk_centres(0, 8, 3) == [1, 4, 7]
    assert chunk_centres(3, 5, 5) == [3, 3, 4, 4, 5]


def test_chunk_properties_and_errors():
    for n in range(1, 30):
        for c in range(1, 12):
            chunks = chunk_slices(7, 7 + n - 1, c)
            assert len(chunks) == c
            flat = np.concatenate(chunks)
            assert np.all(np.diff(flat) >= 0) and flat[0] == 7 and flat[-1] == 7 + n - 1
            if n >= c:
                assert flat.tolist() == list(range(7, 7 + n))  # a partition into contiguous runs
                sizes = [len(ch) for ch in chunks]
                assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
            else:
                assert sorted(set(flat.tolist())) == list(range(7, 7 + n))
    with pytest.raises(ValueError, match="empty slice range"):
        chunk_slices(5, 4, 2)
    with pytest.raises(ValueError, match="n_chunks must be >= 1"):
        chunk_centres(0, 4, 0)


def test_merge_organ_probabilities_lets_the_more_probable_organ_win():
    from fewshot_monai.transforms import merge_organ_probabilities

    liver = torch.tensor([[0.9, 0.6, 0.2, 0.4]])
    kidney = torch.tensor([[0.7, 0.8, 0.1, 0.45]])
    merged = merge_organ_probabilities({6: liver, 2: kidney})
    assert merged.dtype == torch.uint8
    assert merged.tolist() == [[6, 2, 0, 0]]
    with pytest.raises(ValueError, match="no organ"):
        merge_organ_probabilities({})
