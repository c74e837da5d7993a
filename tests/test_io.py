"""Tests of fewshot_monai.data.io: loading, saving, DICOM/NRRD/MHA, and every bad-input error."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import Dataset, MetaTensor

from fewshot_monai.data.io import (
    LABEL_DTYPE,
    LoadVolume,
    case_id_from_path,
    case_loading_transforms,
    find_input_error,
    load_case,
    load_volume,
    save_volume,
)
from fewshot_monai.errors import (
    DimensionalityError,
    EmptyMaskError,
    GeometryMismatchError,
    InputError,
    MissingOrganError,
    NonFiniteError,
    UnreadableFileError,
)
from fewshot_monai.transforms import SelectOrgan, organ_z_extent, plane_of

DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CHAOS = DATA_ROOT / "chaos_t2spir"
SABS = DATA_ROOT / "sabs_ct"

# float32-representable geometry, so that NIfTI (float32 header) round-trips it bit-exactly
RAS_AFFINE = np.array(
    [[0.75, 0.0, 0.0, -90.5], [0.0, 0.8125, 0.0, -120.25], [0.0, 0.0, 2.5, 33.0], [0.0, 0.0, 0.0, 1.0]]
)


def _need(*paths: Path) -> None:
    for path in paths:
        if not path.exists():
            pytest.skip(f"real data not available: {path}")


def _spacing(affine) -> np.ndarray:
    a = np.asarray(affine, dtype=np.float64)
    return np.sqrt((a[:3, :3] ** 2).sum(axis=0))


def _volume(shape=(20, 24, 7), seed=0, affine=RAS_AFFINE, name="mem.nii.gz") -> MetaTensor:
    rng = np.random.default_rng(seed)
    data = torch.from_numpy(rng.normal(100.0, 30.0, size=(1, *shape)).astype(np.float32))
    return MetaTensor(data, affine=torch.as_tensor(affine, dtype=torch.float64), meta={"filename_or_obj": name})


def _labels(shape=(20, 24, 7), seed=1, affine=RAS_AFFINE) -> MetaTensor:
    rng = np.random.default_rng(seed)
    data = torch.from_numpy(rng.integers(0, 5, size=(1, *shape)).astype(np.int16))
    return MetaTensor(data, affine=torch.as_tensor(affine, dtype=torch.float64))


def _rotation(angle_deg: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


# ----------------------------------------------------------------------------------------------- real data


@pytest.mark.real_data
def test_load_chaos_case_shape_spacing_labels():
    _need(CHAOS / "image_1.nii.gz", CHAOS / "label_1.nii.gz")
    case = load_case(CHAOS / "image_1.nii.gz", CHAOS / "label_1.nii.gz")
    image, label = case["image"], case["label"]
    assert case["id"] == "image_1"
    # stored 256x256x37 LAS (qform = sform): RAS orientation flips the first axis, the shape is unchanged
    assert image.shape == (1, 256, 256, 37) and label.shape == (1, 256, 256, 37)
    assert image.dtype == torch.float32 and label.dtype == LABEL_DTYPE == torch.int16
    affine = image.affine.numpy()
    # header pixdim (1.25, 1.25, 7.7) stored as float32: 7.7 -> 7.69999980926...
    np.testing.assert_allclose(_spacing(affine), [1.25, 1.25, 7.7], atol=1e-6)
    np.testing.assert_array_equal(np.sign(np.diag(affine)[:3]), [1, 1, 1])  # RAS
    np.testing.assert_allclose(affine[:3, 3], [192.65368652 - 255 * 1.25, -200.6612854, -77.09216309], atol=1e-6)
    assert torch.equal(label.affine, image.affine)
    assert sorted(torch.unique(label).tolist()) == [0, 1, 2, 3, 4]
    raw = nib.load(CHAOS / "label_1.nii.gz")
    np.testing.assert_array_equal(label[0].numpy(), np.asanyarray(raw.dataobj)[::-1].astype(np.int16))
    assert image.meta["filename_or_obj"] == str(CHAOS / "image_1.nii.gz")


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["chaos_t2spir/image_1", "chaos_t2spir/image_8", "sabs_ct/image_0", "sabs_ct/image_5"])
def test_axial_real_volumes_load_in_the_acquisition_plane_exactly_as_ras(name):
    """The default plane ("auto") leaves the axial shared data sets exactly as the former orientation="RAS"
    (all 20 CHAOS and 30 SABS volumes were checked once; these four keep it checked)."""
    image = DATA_ROOT / f"{name}.nii.gz"
    label = DATA_ROOT / f"{name.replace('image_', 'label_')}.nii.gz"
    _need(image, label)
    new, old = load_case(image, label), load_case(image, label, orientation="RAS")
    assert plane_of(new["image"]) == "axial"
    for key in ("image", "label"):
        assert torch.equal(new[key].as_tensor(), old[key].as_tensor())
        assert torch.equal(new[key].affine, old[key].affine)


@pytest.mark.real_data
def test_load_sabs_case_shape_spacing_labels_and_preset():
    _need(SABS / "image_0.nii.gz", SABS / "label_0.nii.gz")
    case = load_case(SABS / "image_0.nii.gz", SABS / "label_0.nii.gz", intensity="preprocessed")
    image, label = case["image"], case["label"]
    # stored 257x257x148 uint8, LPS (qform only): RAS flips the first two axes
    assert image.shape == (1, 257, 257, 148) and label.shape == (1, 257, 257, 148)
    assert image.dtype == torch.float32 and label.dtype == torch.int16
    np.testing.assert_allclose(_spacing(image.affine), [1.1689453, 1.1689453, 3.0], atol=1e-6)
    np.testing.assert_allclose(image.affine.numpy()[:3, 3], [-299.25, -299.25, 0.0], atol=1e-3)
    assert sorted(torch.unique(label).tolist()) == list(range(14))  # all 13 BTCV organs + background
    raw_label = np.asanyarray(nib.load(SABS / "label_0.nii.gz").dataobj)
    np.testing.assert_array_equal(label[0].numpy(), raw_label[::-1, ::-1, :])
    assert abs(float(image.mean())) < 1e-4 and abs(float(image.std(unbiased=False)) - 1.0) < 1e-4
    assert nib.load(SABS / "image_0.nii.gz").get_data_dtype() == np.uint8  # 8-bit intensities, not HU


@pytest.mark.real_data
def test_real_label_helpers_name_the_file():
    _need(CHAOS / "label_1.nii.gz")
    label = load_volume(CHAOS / "label_1.nii.gz", is_label=True)
    liver = SelectOrgan(1, name="liver")(label)
    z_first, z_last = organ_z_extent(liver)
    assert 0 <= z_first < z_last < 37
    with pytest.raises(MissingOrganError) as err:
        SelectOrgan(6, name="liver")(label)
    assert str(CHAOS / "label_1.nii.gz") in str(err.value) and "ids present: [0, 1, 2, 3, 4]" in str(err.value)
    with pytest.raises(EmptyMaskError) as err:
        organ_z_extent(label * 0)
    assert str(CHAOS / "label_1.nii.gz") in str(err.value) and "no foreground" in str(err.value)


@pytest.mark.real_data
def test_real_save_load_round_trip_is_exact(tmp_path):
    _need(CHAOS / "image_1.nii.gz", CHAOS / "label_1.nii.gz")
    case = load_case(CHAOS / "image_1.nii.gz", CHAOS / "label_1.nii.gz")
    for key, is_label in (("image", False), ("label", True)):
        path = save_volume(case[key], tmp_path / f"{key}.nii.gz", is_label=is_label)
        back = load_volume(path, is_label=is_label)
        assert back.dtype == case[key].dtype
        assert torch.equal(back.as_tensor(), case[key].as_tensor())
        assert torch.equal(back.affine, case[key].affine)


@pytest.mark.real_data
def test_real_dicom_series_matches_nifti(tmp_path):
    _need(CHAOS / "image_1.nii.gz")
    image = load_volume(CHAOS / "image_1.nii.gz")
    assert torch.equal(image, torch.round(image))  # integer-valued MR intensities: int16 DICOM holds them exactly
    _write_dicom_series(image[0].numpy().astype(np.int16), image.affine.numpy(), tmp_path / "dicom")
    dicom = load_volume(tmp_path / "dicom")
    assert dicom.shape == image.shape
    assert torch.equal(dicom.as_tensor(), image.as_tensor())
    np.testing.assert_allclose(dicom.affine.numpy(), image.affine.numpy(), atol=1e-4)


# ----------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_save_load_round_trip_exact(tmp_path, suffix):
    image, label = _volume(), _labels()
    image_path = save_volume(image, tmp_path / f"image{suffix}")
    label_path = save_volume(label, tmp_path / f"label{suffix}", reference=image, is_label=True)
    back = load_case(image_path, label_path)
    assert back["id"] == "image"
    assert back["image"].dtype == torch.float32 and back["label"].dtype == torch.int16
    assert torch.equal(back["image"].as_tensor(), image.as_tensor())
    assert torch.equal(back["label"].as_tensor(), label.as_tensor())
    assert torch.equal(back["image"].affine, image.affine)
    assert torch.equal(back["label"].affine, image.affine)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"image{suffix}", f"label{suffix}"])


def test_nrrd_and_mha_written_by_itk_in_lps_load_as_ras(tmp_path):
    """Geometry check independent of save_volume: an ITK image with identity (LPS) direction."""
    import itk

    arr_xyz = np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4)
    itk_image = itk.image_from_array(np.ascontiguousarray(arr_xyz.T))  # ITK wants (z, y, x)
    itk_image.SetSpacing([0.5, 0.625, 2.0])
    itk_image.SetOrigin([10.0, 20.0, 30.0])
    expected_affine = np.array(
        [[0.5, 0, 0, -(10.0 + 0.5 * 5)], [0, 0.625, 0, -(20.0 + 0.625 * 4)], [0, 0, 2.0, 30.0], [0, 0, 0, 1.0]]
    )
    for suffix in (".nrrd", ".mha"):
        path = tmp_path / f"lps{suffix}"
        itk.imwrite(itk_image, str(path))
        volume = load_volume(path)
        assert volume.shape == (1, 6, 5, 4)
        np.testing.assert_array_equal(volume[0].numpy(), arr_xyz[::-1, ::-1, :])  # L->R and P->A flips
        np.testing.assert_allclose(volume.affine.numpy(), expected_affine, atol=1e-12)
        stored = load_volume(path, orientation=None)  # voxel order as stored
        np.testing.assert_array_equal(stored[0].numpy(), arr_xyz)


def test_save_volume_writes_reference_geometry_for_plain_arrays(tmp_path):
    reference = _volume()
    prediction = np.asarray(reference[0].numpy() > 100.0, dtype=np.int64)  # plain (X, Y, Z) array
    path = save_volume(prediction, tmp_path / "pred.nii.gz", reference=reference, is_label=True)
    assert nib.load(path).get_data_dtype() == np.uint8
    back = load_volume(path, is_label=True)
    assert torch.equal(back.affine, reference.affine)
    np.testing.assert_array_equal(back[0].numpy(), prediction)


def test_save_volume_rejects_bad_requests(tmp_path):
    reference = _volume()
    with pytest.raises(GeometryMismatchError) as err:
        save_volume(torch.zeros(1, 20, 24, 6), tmp_path / "pred.nii.gz", reference=reference)
    assert "pred.nii.gz" in str(err.value) and "spatial shape (20, 24, 6)" in str(err.value)
    with pytest.raises(InputError) as err:
        save_volume(torch.full((1, 4, 4, 4), 0.5), tmp_path / "label.nii.gz", is_label=True)
    assert "label.nii.gz" in str(err.value) and "non-integer" in str(err.value)
    with pytest.raises(ValueError, match="cannot write .mhd"):
        save_volume(reference, tmp_path / "two_files.mhd")
    assert list(tmp_path.iterdir()) == []


def test_save_volume_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "out.nii.gz"
    target.write_bytes(b"previous content")

    def failing_save(obj, filename):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_volume(_volume(), target)
    assert target.read_bytes() == b"previous content"
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]  # no temporary file left behind


def _write_dicom_series(volume: np.ndarray, affine_ras: np.ndarray, folder: Path) -> None:
    """Write an (X, Y, Z) int16 volume with an RAS affine as one DICOM MR series, one file per axial slice."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine_ras, dtype=np.float64)  # DICOM patient space is LPS
    spacing = _spacing(lps)
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]  # voxel axes i (columns), j (rows)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()

    def ds_list(values):
        return [f"{v:.10g}" for v in values]

    for k in range(volume.shape[2]):
        file_meta = FileMetaDataset()
        file_meta.MediaStorageSOPClassUID = MRImageStorage
        file_meta.MediaStorageSOPInstanceUID = generate_uid()
        file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = file_meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.SeriesNumber, ds.InstanceNumber = "MR", "phantom", 1, k + 1
        ds.ImageOrientationPatient = ds_list([*row_dir, *col_dir])
        ds.ImagePositionPatient = ds_list((lps @ np.array([0.0, 0.0, k, 1.0]))[:3])
        ds.PixelSpacing = ds_list([spacing[1], spacing[0]])  # (between rows, between columns)
        ds.SliceThickness = f"{spacing[2]:.10g}"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T.astype("<i2")).tobytes()  # rows = j, columns = i
        ds.save_as(folder / f"slice_{k:03d}.dcm", enforce_file_format=True)


def test_dicom_series_round_trip_matches_nifti(tmp_path):
    """An oblique volume: NIfTI -> load (RAS) -> DICOM series -> load gives the same voxels and geometry."""
    rng = np.random.default_rng(3)
    affine = np.eye(4)
    affine[:3, :3] = _rotation(20.0) @ np.diag([0.75, 0.8125, 2.5])
    affine[:3, 3] = [-90.5, -120.25, 33.0]
    affine = np.diag([-1.0, 1.0, 1.0, 1.0]) @ affine  # stored as LAS-like: flipped by the RAS orientation
    values = rng.integers(-1000, 2000, size=(20, 24, 7)).astype(np.float32)
    nifti_path = tmp_path / "volume.nii.gz"
    nib.save(nib.Nifti1Image(values, affine), nifti_path)
    from_nifti = load_volume(nifti_path)

    _write_dicom_series(from_nifti[0].numpy().astype(np.int16), from_nifti.affine.numpy(), tmp_path / "series")
    from_dicom = load_volume(tmp_path / "series")
    assert case_id_from_path(tmp_path / "series") == "series"
    assert from_dicom.shape == from_nifti.shape == (1, 20, 24, 7)
    assert from_dicom.dtype == torch.float32
    assert torch.equal(from_dicom.as_tensor(), from_nifti.as_tensor())
    np.testing.assert_allclose(from_dicom.affine.numpy(), from_nifti.affine.numpy(), atol=1e-5)
    np.testing.assert_allclose(_spacing(from_dicom.affine), [0.75, 0.8125, 2.5], atol=1e-6)


def test_spacing_resampling_bilinear_images_nearest_labels(tmp_path):
    image, label = _volume(), _labels()
    image_path, label_path = save_volume(image, tmp_path / "i.nii.gz"), save_volume(label, tmp_path / "l.nii.gz")
    case = load_case(image_path, label_path, spacing=(1.5, 1.625, 5.0))
    assert case["image"].shape == case["label"].shape == (1, 10, 12, 4)
    np.testing.assert_allclose(_spacing(case["image"].affine), [1.5, 1.625, 5.0])
    assert case["label"].dtype == torch.int16
    assert set(torch.unique(case["label"]).tolist()) <= {0, 1, 2, 3, 4}
    assert case["image"].dtype == torch.float32


def test_label_geometry_compared_after_orientation(tmp_path):
    """A label stored in another voxel order but covering the same world grid is accepted and realigned."""
    image = _volume()
    label = _labels()
    flipped_affine = RAS_AFFINE.copy()
    flipped_affine[0, 0] = -RAS_AFFINE[0, 0]
    flipped_affine[0, 3] = RAS_AFFINE[0, 3] + RAS_AFFINE[0, 0] * (label.shape[1] - 1)
    flipped = MetaTensor(torch.flip(label.as_tensor(), dims=[1]), affine=torch.as_tensor(flipped_affine))
    image_path = save_volume(image, tmp_path / "image.nii.gz")
    label_path = save_volume(flipped, tmp_path / "label_las.nii.gz", is_label=True)
    case = load_case(image_path, label_path)
    assert torch.equal(case["label"].as_tensor(), label.as_tensor())
    assert torch.equal(case["label"].affine, case["image"].affine)


def test_case_loading_transforms_in_monai_dataset(tmp_path):
    image_path = save_volume(_volume(), tmp_path / "image.nii.gz")
    label_path = save_volume(_labels(), tmp_path / "label.nii.gz", is_label=True)
    dataset = Dataset(
        [{"image": image_path, "label": label_path}, {"image": tmp_path / "gone.nii.gz", "label": label_path}],
        transform=case_loading_transforms(intensity="mri"),
    )
    item = dataset[0]
    assert item["image"].shape == item["label"].shape == (1, 20, 24, 7)
    assert abs(float(item["image"].mean())) < 1e-5
    with pytest.raises(Exception) as err:  # MONAI wraps transform errors in RuntimeError
        dataset[1]
    found = find_input_error(err.value)
    assert isinstance(found, UnreadableFileError) and "gone.nii.gz" in str(found)


def test_in_memory_volumes_are_validated_and_cast():
    loader = LoadVolume(is_label=True)
    label = loader(MetaTensor(torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]] * 2]), meta={"filename_or_obj": "mem"}))
    assert label.dtype == torch.int16 and label.shape == (1, 2, 2, 2)
    with pytest.raises(InputError, match="int16"):
        loader(torch.full((1, 2, 2, 2), 40000.0))


# ----------------------------------------------------------------------------------------------- bad input


def _assert_names(err: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    message = str(err.value)
    assert str(path) in message, message
    assert err.value.source == str(path)
    for word in words:
        assert word in message, message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.nii.gz"
    with pytest.raises(UnreadableFileError) as err:
        load_volume(path)
    _assert_names(err, path, "does not exist")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_file(tmp_path, suffix):
    good = save_volume(_volume(), tmp_path / f"good{suffix}")
    data = good.read_bytes()
    path = tmp_path / f"truncated{suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableFileError) as err:
        load_volume(path)
    _assert_names(err, path, "cannot be read")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".txt"])
def test_garbage_bytes(tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(UnreadableFileError) as err:
        load_volume(path)
    _assert_names(err, path, "cannot be read")


def test_empty_file_and_folders(tmp_path):
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    with pytest.raises(UnreadableFileError) as err:
        load_volume(empty)
    _assert_names(err, empty, "empty (0 bytes)")
    folder = tmp_path / "dicom_empty"
    folder.mkdir()
    with pytest.raises(UnreadableFileError) as err:
        load_volume(folder)
    _assert_names(err, folder, "folder is empty", "DICOM")
    (folder / "readme.txt").write_text("not dicom")
    with pytest.raises(UnreadableFileError) as err:
        load_volume(folder)
    _assert_names(err, folder, "no readable DICOM series")


def test_2d_and_single_slice_images(tmp_path):
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 12), np.float32), np.eye(4)), flat)
    with pytest.raises(DimensionalityError) as err:
        load_volume(flat)
    _assert_names(err, flat, "2D image", "(10, 12)")
    one = tmp_path / "one_slice.nrrd"
    save_volume(torch.zeros(1, 10, 12, 1), one)
    with pytest.raises(DimensionalityError) as err:
        load_volume(one)
    _assert_names(err, one, "single slice")


def test_multichannel_volume(tmp_path):
    path = save_volume(torch.rand(3, 10, 12, 5), tmp_path / "three_channels.nii.gz")
    assert nib.load(path).shape == (10, 12, 5, 3)
    with pytest.raises(DimensionalityError) as err:
        load_volume(path)
    _assert_names(err, path, "3 channels", "(3, 10, 12, 5)")


def test_non_finite_intensities(tmp_path):
    values = np.random.default_rng(0).random((10, 12, 5)).astype(np.float32)
    values[1, 1, 1] = values[3, 3, 3] = np.nan
    values[2, 2, 2] = -np.inf
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(values, np.eye(4)), path)
    with pytest.raises(NonFiniteError) as err:
        load_case(path)
    _assert_names(err, path, "3 non-finite voxels (2 NaN, 1 infinite) out of 600")


def test_label_shape_mismatch(tmp_path):
    image_path = save_volume(_volume(), tmp_path / "image.nii.gz")
    label_path = save_volume(_labels(shape=(20, 24, 6)), tmp_path / "label.nii.gz", is_label=True)
    with pytest.raises(GeometryMismatchError) as err:
        load_case(image_path, label_path)
    _assert_names(err, label_path, "spatial shape (20, 24, 6)", "(20, 24, 7)", str(image_path))


def test_label_affine_mismatch_beyond_tolerance(tmp_path):
    image_path = save_volume(_volume(), tmp_path / "image.nii.gz")
    shifted = RAS_AFFINE.copy()
    shifted[2, 3] += 5.0
    label_path = save_volume(_labels(affine=shifted), tmp_path / "label.nii.gz", is_label=True)
    with pytest.raises(GeometryMismatchError) as err:
        load_case(image_path, label_path)
    _assert_names(err, label_path, "affine differs", "by up to 5", "origin (-90.5, -120.25, 38)", str(image_path))

    nearly = RAS_AFFINE.copy()
    nearly[2, 3] += 1e-4  # within the default 1e-3 tolerance
    ok_path = save_volume(_labels(affine=nearly), tmp_path / "label_ok.nii.gz", is_label=True)
    assert load_case(image_path, ok_path)["label"].shape == (1, 20, 24, 7)


def test_non_integer_label(tmp_path):
    image_path = save_volume(_volume(), tmp_path / "image.nii.gz")
    label_path = save_volume(_volume(seed=5), tmp_path / "not_a_label.nii.gz")  # an image passed as label
    with pytest.raises(InputError) as err:
        load_case(image_path, label_path)
    _assert_names(err, label_path, "non-integer")
