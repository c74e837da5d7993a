"""Dataset descriptors and datalists: which files form a case, which label id is which organ.

A datalist is a list of dicts ``{"id": str, "image": path, "label": path | None}``, MONAI's usual input format,
sorted by numeric id where the ids are numbers (the cross-validation folds are defined on that order).
"""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from fewshot_monai.errors import UnreadableFileError

__all__ = [
    "DatasetDescriptor",
    "CHAOS_T2SPIR",
    "SABS_CT",
    "PHANTOM",
    "DESCRIPTORS",
    "get_descriptor",
    "datalist",
    "generic_datalist",
    "nnunet_datalist",
    "VOLUME_SUFFIXES",
]

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

BTCV_LABELS = {
    "spleen": 1,
    "right_kidney": 2,
    "left_kidney": 3,
    "gallbladder": 4,
    "esophagus": 5,
    "liver": 6,
    "stomach": 7,
    "aorta": 8,
    "inferior_vena_cava": 9,
    "portal_and_splenic_vein": 10,
    "pancreas": 11,
    "right_adrenal_gland": 12,
    "left_adrenal_gland": 13,
}


@dataclass(frozen=True)
class DatasetDescriptor:
    """How a dataset folder is laid out and labelled.

    Attributes:
        name: short name used on the command line.
        modality: "mri" or "ct".
        intensity: intensity preset of :class:`fewshot_monai.transforms.IntensityPreset` for its images.
        label_map: the organs evaluated by default, name -> label id.
        all_labels: every label of the dataset, name -> id.
        image_pattern / label_pattern: file names with ``{id}``.
    """

    name: str
    modality: str
    intensity: str
    label_map: dict[str, int]
    all_labels: dict[str, int] = field(default_factory=dict)
    image_pattern: str = "image_{id}.nii.gz"
    label_pattern: str = "label_{id}.nii.gz"

    def organ_ids(self, organs=None) -> dict[str, int]:
        """``label_map`` restricted to ``organs`` (names); a clear error for an unknown name."""
        if organs is None:
            return dict(self.label_map)
        known = {**self.all_labels, **self.label_map}
        unknown = [o for o in organs if o not in known]
        if unknown:
            raise ValueError(f"dataset {self.name!r} has no organ(s) {unknown}; known: {sorted(known)}")
        return {o: known[o] for o in organs}


CHAOS_T2SPIR = DatasetDescriptor(
    name="chaos",
    modality="mri",
    intensity="mri",
    label_map={"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4},
    all_labels={"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4},
)
SABS_CT = DatasetDescriptor(
    name="sabs",
    modality="ct",
    intensity="preprocessed",  # the shared copy is 8-bit, already windowed: no HU window
    label_map={"liver": 6, "spleen": 1, "left_kidney": 3, "right_kidney": 2},
    all_labels=dict(BTCV_LABELS),
)
PHANTOM = DatasetDescriptor(
    name="phantom",
    modality="mri",
    intensity="mri",
    label_map={"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4},
    all_labels={"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4},
    image_pattern="{id}_image.nii.gz",
    label_pattern="{id}_label.nii.gz",
)
DESCRIPTORS = {d.name: d for d in (CHAOS_T2SPIR, SABS_CT, PHANTOM)}


def get_descriptor(name: str) -> DatasetDescriptor:
    """The built-in descriptor called ``name`` ("chaos", "sabs", "phantom")."""
    try:
        return DESCRIPTORS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DESCRIPTORS)}") from None


def _sort_key(case_id: str):
    return (0, int(case_id), "") if case_id.isdigit() else (1, 0, case_id)


def datalist(root: str | os.PathLike, descriptor: DatasetDescriptor | str) -> list[dict]:
    """Cases of a dataset folder laid out as ``descriptor`` says, sorted by numeric id.

    Raises:
        UnreadableFileError: the folder is missing or has no image, or an image has no label file.
    """
    descriptor = get_descriptor(descriptor) if isinstance(descriptor, str) else descriptor
    root = Path(root)
    if not root.is_dir():
        raise UnreadableFileError(root, f"dataset folder for {descriptor.name!r} not found")
    prefix, suffix = descriptor.image_pattern.split("{id}")
    pattern = re.compile(re.escape(prefix) + r"(.+?)" + re.escape(suffix) + "$")
    ids = [m.group(1) for p in root.iterdir() if (m := pattern.match(p.name))]
    if not ids:
        raise UnreadableFileError(root, f"no image matching {descriptor.image_pattern!r}")
    cases = []
    for case_id in sorted(ids, key=_sort_key):
        label = root / descriptor.label_pattern.format(id=case_id)
        if not label.is_file():
            raise UnreadableFileError(label, f"label file of case {case_id} is missing")
        cases.append(
            {"id": case_id, "image": str(root / descriptor.image_pattern.format(id=case_id)), "label": str(label)}
        )
    return cases


def _volume_stem(path: Path) -> str | None:
    for suffix in VOLUME_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def _is_dicom_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() == ".dcm" for p in path.iterdir())


def _collect_volumes(spec: str) -> dict[str, Path]:
    """stem -> path for a folder (volume files and DICOM series sub-folders) or a glob."""
    path = Path(spec)
    candidates = list(path.iterdir()) if path.is_dir() else [Path(p) for p in glob.glob(spec)]
    found: dict[str, Path] = {}
    for candidate in sorted(candidates):
        stem = candidate.name if _is_dicom_folder(candidate) else _volume_stem(candidate)
        if stem is not None and not stem.startswith("."):
            found[stem] = candidate
    return found


def generic_datalist(images: str, labels: str | None = None, *, label_suffix: str = "") -> list[dict]:
    """Pair images and labels by file stem.

    Args:
        images: a folder or a glob of image volumes; a sub-folder holding ``.dcm`` files is one DICOM series.
        labels: a folder or glob of label volumes, or None (inference only).
        label_suffix: text after the image stem in label names (e.g. ``"_label"`` for ``ct_1_label.nii.gz``).

    Returns:
        cases sorted by id (numeric ids numerically); ``label`` is None for images without a label file, so an
        inference batch can still run; evaluation code checks labels where it needs them.

    Raises:
        UnreadableFileError: no image matched ``images``.
    """
    image_files = _collect_volumes(images)
    if not image_files:
        raise UnreadableFileError(images, "no image volume (NIfTI, NRRD, MHA or DICOM folder) found")
    label_files = _collect_volumes(labels) if labels is not None else {}
    cases = []
    for stem in sorted(image_files, key=_sort_key):
        label = label_files.get(stem + label_suffix)
        cases.append({"id": stem, "image": str(image_files[stem]), "label": None if label is None else str(label)})
    return cases


def nnunet_datalist(root: str | os.PathLike) -> tuple[list[dict], dict[str, int]]:
    """Training cases of an nnU-Net raw dataset folder and its label map.

    Layout: ``imagesTr/<case>_0000.nii.gz`` (first channel) and ``labelsTr/<case>.nii.gz``; ``dataset.json``
    (optional) gives the label names.

    Returns:
        (cases, label_map) with label_map name -> id without the background.
    """
    root = Path(root)
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        raise UnreadableFileError(images_dir, "nnU-Net folder has no imagesTr/")
    cases = []
    for image in sorted(images_dir.glob("*_0000.nii.gz"), key=lambda p: _sort_key(p.name[: -len("_0000.nii.gz")])):
        case_id = image.name[: -len("_0000.nii.gz")]
        label = labels_dir / f"{case_id}.nii.gz"
        if not label.is_file():
            raise UnreadableFileError(label, f"label file of case {case_id} is missing")
        cases.append({"id": case_id, "image": str(image), "label": str(label)})
    if not cases:
        raise UnreadableFileError(images_dir, "no '<case>_0000.nii.gz' image found")
    label_map: dict[str, int] = {}
    meta = root / "dataset.json"
    if meta.is_file():
        try:
            labels = json.loads(meta.read_text()).get("labels", {})
        except json.JSONDecodeError as err:
            raise UnreadableFileError(meta, f"not valid JSON ({err})") from None
        # nnU-Net v2: {"background": 0, "liver": 1}; v1: {"0": "background", "1": "liver"}
        for key, value in labels.items():
            name, idx = (key, value) if isinstance(value, int) else (value, int(key))
            if int(idx) != 0:
                label_map[str(name)] = int(idx)
    return cases, label_map
