"""Dataset descriptors and datalists (CHAOS, SABS, folders, nnU-Net raw layout)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fewshot_monai.data.datasets import (
    CHAOS_T2SPIR,
    SABS_CT,
    datalist,
    generic_datalist,
    get_descriptor,
    nnunet_datalist,
)
from fewshot_monai.errors import UnreadableFileError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CHAOS_IDS = [
    "1",
    "2",
    "3",
    "5",
    "8",
    "10",
    "13",
    "15",
    "19",
    "20",
    "21",
    "22",
    "31",
    "32",
    "33",
    "34",
    "36",
    "37",
    "38",
    "39",
]


def _tiny(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.uint8), np.eye(4)), path)


def test_label_maps_and_lookup():
    assert CHAOS_T2SPIR.label_map == {"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}
    assert SABS_CT.label_map == {"liver": 6, "spleen": 1, "left_kidney": 3, "right_kidney": 2}
    assert SABS_CT.intensity == "preprocessed" and CHAOS_T2SPIR.intensity == "mri"
    assert get_descriptor("sabs") is SABS_CT
    assert SABS_CT.organ_ids(["pancreas"]) == {"pancreas": 11}
    with pytest.raises(ValueError, match="chaos"):
        get_descriptor("nope")
    with pytest.raises(ValueError, match="kidneys"):
        CHAOS_T2SPIR.organ_ids(["kidneys"])


@pytest.mark.real_data
def test_real_datalists_are_sorted_numerically():
    if not DATA.is_dir():
        pytest.skip("../shared/data not present")
    chaos = datalist(DATA / "chaos_t2spir", "chaos")
    assert [c["id"] for c in chaos] == CHAOS_IDS
    sabs = datalist(DATA / "sabs_ct", SABS_CT)
    assert [c["id"] for c in sabs] == [str(i) for i in range(30)]
    assert all(Path(c["image"]).is_file() and Path(c["label"]).is_file() for c in chaos + sabs)


def test_missing_label_is_named(tmp_path):
    _tiny(tmp_path / "image_1.nii.gz")
    _tiny(tmp_path / "label_1.nii.gz")
    _tiny(tmp_path / "image_2.nii.gz")
    with pytest.raises(UnreadableFileError, match="label_2.nii.gz"):
        datalist(tmp_path, "chaos")
    with pytest.raises(UnreadableFileError, match="not found"):
        datalist(tmp_path / "absent", "chaos")


def test_generic_folder_pairs_by_stem_and_accepts_dicom_folders(tmp_path):
    for name in ("ct_10", "ct_2", "mr_a"):
        _tiny(tmp_path / "images" / f"{name}.nii.gz")
    _tiny(tmp_path / "labels" / "ct_2_seg.nii.gz")
    series = tmp_path / "images" / "patient_x"
    series.mkdir()
    (series / "IM0001.dcm").write_bytes(b"")
    cases = generic_datalist(str(tmp_path / "images"), str(tmp_path / "labels"), label_suffix="_seg")
    assert [c["id"] for c in cases] == ["ct_10", "ct_2", "mr_a", "patient_x"]
    assert cases[1]["label"].endswith("ct_2_seg.nii.gz") and cases[0]["label"] is None
    assert cases[3]["image"] == str(series)
    globbed = generic_datalist(str(tmp_path / "images" / "ct_*.nii.gz"))
    assert [c["id"] for c in globbed] == ["ct_10", "ct_2"]
    with pytest.raises(UnreadableFileError, match="no image volume"):
        generic_datalist(str(tmp_path / "labels" / "*.nrrd"))


def test_nnunet_raw_layout(tmp_path):
    for case in ("abd_001", "abd_002"):
        _tiny(tmp_path / "imagesTr" / f"{case}_0000.nii.gz")
        _tiny(tmp_path / "labelsTr" / f"{case}.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2}}))
    cases, label_map = nnunet_datalist(tmp_path)
    assert [c["id"] for c in cases] == ["abd_001", "abd_002"]
    assert cases[0]["label"].endswith("labelsTr/abd_001.nii.gz")
    assert label_map == {"liver": 1, "spleen": 2}
    (tmp_path / "labelsTr" / "abd_002.nii.gz").unlink()
    with pytest.raises(UnreadableFileError, match="abd_002.nii.gz"):
        nnunet_datalist(tmp_path)
