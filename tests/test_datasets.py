"""Dataset descriptors and datalists (CHAOS, SABS, phantoms, generic folders, nnU-Net raw layout)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fewshot_monai.data.datasets import (
    CHAOS_T2SPIR,
    DESCRIPTORS,
    PHANTOM,
    SABS_CT,
    DatasetDescriptor,
    datalist,
    generic_datalist,
    get_descriptor,
    natural_key,
    nnunet_datalist,
    nnunet_label_map,
)
from fewshot_monai.errors import UnreadableFileError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CHAOS_IDS = "1 2 3 5 8 10 13 15 19 20 21 22 31 32 33 34 36 37 38 39".split()


def _tiny(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.uint8), np.eye(4)), path)
    return path


def _real(name: str) -> Path:
    root = DATA / name
    if not root.is_dir():
        pytest.skip(f"../shared/data/{name} not present")
    return root


def test_built_in_descriptors():
    assert CHAOS_T2SPIR.label_map == {"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}
    assert SABS_CT.label_map == {"liver": 6, "spleen": 1, "left_kidney": 3, "right_kidney": 2}
    assert len(SABS_CT.all_labels) == 13 and SABS_CT.all_labels["pancreas"] == 11
    assert (CHAOS_T2SPIR.intensity, SABS_CT.intensity, PHANTOM.intensity) == ("mri", "preprocessed", "mri")
    assert (CHAOS_T2SPIR.modality, SABS_CT.modality) == ("mri", "ct")
    assert get_descriptor("sabs") is SABS_CT and get_descriptor("CHAOS") is CHAOS_T2SPIR
    assert get_descriptor(PHANTOM) is PHANTOM and get_descriptor("phantom_ct").intensity == "ct"
    assert SABS_CT.organ_ids(["pancreas", "liver"]) == {"pancreas": 11, "liver": 6}
    assert CHAOS_T2SPIR.organ_ids() == CHAOS_T2SPIR.label_map
    assert PHANTOM.image_path("/d", "case3") == Path("/d/case3_image.nii.gz")


def test_unknown_names_give_clear_errors():
    with pytest.raises(ValueError, match=r"'nope'.*chaos.*phantom.*sabs"):
        get_descriptor("nope")
    with pytest.raises(ValueError, match="kidneys"):
        CHAOS_T2SPIR.organ_ids(["kidneys"])
    with pytest.raises(ValueError, match="{id}"):
        DatasetDescriptor("bad", "ct", "ct", {"liver": 1}, image_pattern="image.nii.gz")
    assert sorted(DESCRIPTORS) == ["chaos", "phantom", "phantom_ct", "sabs"]


def test_natural_order():
    ids = ["case10", "case2", "case1", "10", "9", "ct_b", "ct_a"]
    assert sorted(ids, key=natural_key) == ["9", "10", "case1", "case2", "case10", "ct_a", "ct_b"]


@pytest.mark.real_data
def test_chaos_datalist_has_the_documented_cases_in_numeric_order():
    root = _real("chaos_t2spir")
    cases = datalist(root, "chaos")
    assert [c["id"] for c in cases] == CHAOS_IDS  # the order the cross-validation folds are cut from
    assert all(Path(c["image"]).is_file() and Path(c["label"]).is_file() for c in cases)
    assert Path(cases[3]["image"]).name == "image_5.nii.gz" and Path(cases[3]["label"]).name == "label_5.nii.gz"
    values = np.unique(np.asarray(nib.load(cases[0]["label"]).dataobj))
    assert set(values.astype(int).tolist()) == {0, *CHAOS_T2SPIR.label_map.values()}


@pytest.mark.real_data
def test_sabs_datalist_has_30_cases_in_numeric_order():
    root = _real("sabs_ct")
    cases = datalist(root, SABS_CT)
    assert [c["id"] for c in cases] == [str(i) for i in range(30)]
    assert all(Path(c["image"]).is_file() and Path(c["label"]).is_file() for c in cases)
    values = set(np.unique(np.asarray(nib.load(cases[0]["label"]).dataobj)).tolist())
    assert set(SABS_CT.label_map.values()) <= values


def test_datalist_sorts_numerically_and_ignores_other_files(tmp_path):
    for i in (10, 2, 1):
        _tiny(tmp_path / f"image_{i}.nii.gz")
        _tiny(tmp_path / f"label_{i}.nii.gz")
    (tmp_path / "classmap_1.json").write_text("{}")
    (tmp_path / ".image_3.abc.nii.gz").write_bytes(b"")  # an interrupted atomic write
    (tmp_path / "image_7.nii.gz").mkdir()  # not a file
    cases = datalist(tmp_path, "chaos")
    assert [c["id"] for c in cases] == ["1", "2", "10"]
    assert cases[2] == {
        "id": "10",
        "image": str(tmp_path / "image_10.nii.gz"),
        "label": str(tmp_path / "label_10.nii.gz"),
    }


def test_datalist_errors_name_the_file(tmp_path):
    _tiny(tmp_path / "image_1.nii.gz")
    _tiny(tmp_path / "label_1.nii.gz")
    _tiny(tmp_path / "image_2.nii.gz")
    with pytest.raises(UnreadableFileError, match="label_2.nii.gz") as err:
        datalist(tmp_path, "chaos")
    assert err.value.source == str(tmp_path / "label_2.nii.gz")
    with pytest.raises(UnreadableFileError, match="not found"):
        datalist(tmp_path / "absent", "chaos")
    with pytest.raises(UnreadableFileError, match="no image matching"):
        datalist(tmp_path, "phantom")


def test_generic_folder_pairs_by_stem(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    for name in ("ct_10", "ct_2", "mr_a", "image_3", "scan_4_0000"):
        _tiny(images / f"{name}.nii.gz")
    (images / "notes.txt").write_text("not a volume")
    for name in ("ct_2", "ct_10_seg", "label_3", "scan_4"):
        _tiny(labels / f"{name}.nii.gz")
    cases = generic_datalist(images, labels)
    assert [c["id"] for c in cases] == ["ct_2", "ct_10", "image_3", "mr_a", "scan_4_0000"]
    paired = {c["id"]: None if c["label"] is None else Path(c["label"]).name for c in cases}
    assert paired == {
        "ct_2": "ct_2.nii.gz",  # same stem
        "ct_10": "ct_10_seg.nii.gz",  # role words and channel suffixes are not part of the case name
        "image_3": "label_3.nii.gz",
        "mr_a": None,  # no label: kept for inference
        "scan_4_0000": "scan_4.nii.gz",
    }
    with pytest.raises(UnreadableFileError, match="mr_a") as err:
        generic_datalist(images, labels, require_labels=True)
    assert err.value.source.endswith("mr_a.nii.gz")


def test_generic_suffix_glob_file_and_formats(tmp_path):
    images = tmp_path / "images"
    for name in ("ct_1.nii.gz", "ct_2.nrrd", "ct_3.mha", "ct_4.nii"):
        _tiny(images / "x.nii.gz").rename(images / name)
    _tiny(tmp_path / "labels" / "ct_1_mask.nii.gz")
    cases = generic_datalist(images, tmp_path / "labels", label_suffix="_mask")
    assert [c["id"] for c in cases] == ["ct_1", "ct_2", "ct_3", "ct_4"]
    assert cases[0]["label"].endswith("ct_1_mask.nii.gz") and cases[1]["label"] is None
    assert [c["id"] for c in generic_datalist(str(images / "ct_*.n*"))] == ["ct_1", "ct_2", "ct_4"]
    assert generic_datalist(images / "ct_3.mha") == [{"id": "ct_3", "image": str(images / "ct_3.mha"), "label": None}]
    only_nifti = generic_datalist(images, image_suffixes=(".nii.gz",))
    assert [c["id"] for c in only_nifti] == ["ct_1"]
    with pytest.raises(UnreadableFileError, match="no image volume"):
        generic_datalist(str(tmp_path / "labels" / "*.nrrd"))


def test_generic_accepts_dicom_series_folders(tmp_path):
    images = tmp_path / "images"
    direct = images / "patient_10"
    direct.mkdir(parents=True)
    (direct / "IM0001.dcm").write_bytes(b"")
    nested = images / "patient_9" / "T2SPIR" / "DICOM_anon"
    nested.mkdir(parents=True)
    (nested / "IM0001.DCM").write_bytes(b"")
    (images / "empty_folder").mkdir()
    _tiny(tmp_path / "labels" / "patient_9.nii.gz")
    cases = generic_datalist(images, tmp_path / "labels")
    assert cases == [
        {"id": "patient_9", "image": str(nested), "label": str(tmp_path / "labels" / "patient_9.nii.gz")},
        {"id": "patient_10", "image": str(direct), "label": None},
    ]
    second = images / "patient_9" / "T1DUAL"
    second.mkdir()
    (second / "IM0001.dcm").write_bytes(b"")
    with pytest.raises(UnreadableFileError, match="several DICOM series"):
        generic_datalist(images)


def test_generic_ambiguous_pairing_is_an_error(tmp_path):
    _tiny(tmp_path / "images" / "ct_1.nii.gz")
    _tiny(tmp_path / "labels" / "ct_1_seg.nii.gz")
    _tiny(tmp_path / "labels" / "ct_1_mask.nii.gz")
    with pytest.raises(UnreadableFileError, match="ambiguous"):
        generic_datalist(tmp_path / "images", tmp_path / "labels")


def test_nnunet_raw_layout(tmp_path):
    for case in ("abd_010", "abd_002"):
        _tiny(tmp_path / "imagesTr" / f"{case}_0000.nii.gz")
        _tiny(tmp_path / "imagesTr" / f"{case}_0001.nii.gz")  # a second channel: ignored
        _tiny(tmp_path / "labelsTr" / f"{case}.nii.gz")
    _tiny(tmp_path / "imagesTs" / "abd_100_0000.nii.gz")
    labels = {"background": 0, "Liver": 1, "Right Kidney": 2, "kidneys": [2, 3]}
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": labels, "file_ending": ".nii.gz"}))
    cases, label_map = nnunet_datalist(tmp_path)
    assert [c["id"] for c in cases] == ["abd_002", "abd_010"]
    assert cases[0]["image"].endswith("imagesTr/abd_002_0000.nii.gz")
    assert cases[0]["label"].endswith("labelsTr/abd_002.nii.gz")
    assert label_map == {"liver": 1, "right_kidney": 2}  # snake case, no background, no region entry
    test_cases, _ = nnunet_datalist(tmp_path, split="test")
    assert test_cases == [{"id": "abd_100", "image": str(tmp_path / "imagesTs" / "abd_100_0000.nii.gz"), "label": None}]
    (tmp_path / "labelsTr" / "abd_010.nii.gz").unlink()
    with pytest.raises(UnreadableFileError, match="abd_010.nii.gz"):
        nnunet_datalist(tmp_path)


def test_nnunet_v1_labels_file_ending_and_errors(tmp_path):
    _tiny(tmp_path / "imagesTr" / "liver_7_0000.nii.gz").rename(tmp_path / "imagesTr" / "liver_7_0000.nrrd")
    _tiny(tmp_path / "labelsTr" / "liver_7.nii.gz").rename(tmp_path / "labelsTr" / "liver_7.nrrd")
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "liver"}}))
    with pytest.raises(UnreadableFileError, match="_0000.nii.gz"):  # the default ending is .nii.gz
        nnunet_datalist(tmp_path)
    (tmp_path / "dataset.json").write_text(
        json.dumps({"labels": {"0": "background", "1": "liver"}, "file_ending": ".nrrd"})
    )
    cases, label_map = nnunet_datalist(tmp_path)
    assert [c["id"] for c in cases] == ["liver_7"] and label_map == {"liver": 1}
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(UnreadableFileError, match="dataset.json"):
        nnunet_label_map(tmp_path)
    with pytest.raises(UnreadableFileError, match="imagesTr"):
        nnunet_datalist(tmp_path / "absent")
    assert nnunet_label_map(tmp_path / "absent") == {}


# ------------------------------------------------------------------------------------------- generic data sets


def test_generic_dataset_layouts_and_patterns(tmp_path):
    from fewshot_monai.data.datasets import load_labelled_dataset
    from fewshot_monai.errors import InputError

    only = tmp_path / "only_images"  # the images themselves, no labels anywhere
    for k in (2, 10, 1):
        _tiny(only / f"mr_{k}.nii.gz")
    data = load_labelled_dataset(only, "generic", require_labels=False)
    assert data.order == ["mr_1", "mr_2", "mr_10"] and all(i["label"] is None for i in data.items.values())
    assert data.label_map == {} and data.intensity == "preprocessed" and data.modality == "mri"
    with pytest.raises(InputError, match=r"needs a label for every scan; none for \['mr_1', 'mr_2', 'mr_10'\]"):
        load_labelled_dataset(only, "generic", {"liver": 1})
    with pytest.raises(ValueError, match="no label map"):
        load_labelled_dataset(only, "generic")

    # the user's layout: a series folder and labels in a separate folder, chosen by pattern (folder or glob)
    mine = tmp_path / "mine"
    for k in (1, 2):
        _tiny(mine / "series" / f"scan{k}.nii.gz")
        _tiny(mine / "segmentations" / f"scan{k}_seg.nii.gz")
    _tiny(mine / "series" / "scan3.nii.gz")  # not labelled
    (mine / "series" / "notes.txt").write_text("not a volume")
    data = load_labelled_dataset(
        mine, "generic", images="series/*.nii.gz", labels="segmentations", require_labels=False
    )
    assert data.order == ["scan1", "scan2", "scan3"]
    assert [Path(data.items[i]["label"]).name if data.items[i]["label"] else None for i in data.order] == [
        "scan1_seg.nii.gz",
        "scan2_seg.nii.gz",
        None,
    ]
    with pytest.raises(InputError, match=r"none for \['scan3'\] \(labels looked for in .*segmentations\)"):
        load_labelled_dataset(mine, "generic", {"liver": 1}, images="series", labels="segmentations")
    with pytest.raises(ValueError, match="patterns are for generic data"):
        load_labelled_dataset(mine, "chaos", images="series")

    # images/ + labels/ found without patterns
    both = tmp_path / "both"
    _tiny(both / "images" / "a.nii.gz")
    _tiny(both / "labels" / "a.nii.gz")
    data = load_labelled_dataset(both, "generic", {"liver": 1})
    assert data.items["a"]["label"].endswith("labels/a.nii.gz")


def test_float_label_files_holding_integers_are_accepted(tmp_path):
    from fewshot_monai.data.io import load_volume
    from fewshot_monai.errors import InputError

    values = np.zeros((6, 6, 3), np.float64)
    values[1:3, 1:3, 1] = 6.0
    values[4, 4, 2] = 5.9999995  # float conversions of label maps leave such values
    values[0, 5, 0] = 1.0000002
    nib.save(nib.Nifti1Image(values, np.eye(4)), tmp_path / "float64_label.nii.gz")
    nib.save(nib.Nifti1Image(values.astype(np.float32), np.eye(4)), tmp_path / "float32_label.nii.gz")
    for name in ("float64_label.nii.gz", "float32_label.nii.gz"):
        label = load_volume(tmp_path / name, is_label=True, orientation=None)
        assert label.dtype.is_floating_point is False
        assert sorted(label.unique().tolist()) == [0, 1, 6] and int((label == 6).sum()) == 5

    values[2, 2, 2] = 0.5  # a real fraction: an image passed as a label, or a probability map
    nib.save(nib.Nifti1Image(values, np.eye(4)), tmp_path / "probabilities.nii.gz")
    with pytest.raises(InputError, match=r"probabilities\.nii\.gz: label map has 1 non-integer voxels \(e\.g\. 0\.5\)"):
        load_volume(tmp_path / "probabilities.nii.gz", is_label=True)
