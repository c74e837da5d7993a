"""Dataset descriptors and datalists: which files form a case, which label id is which organ.

A *datalist* is MONAI's usual input format, a list of dicts ``{"id": str, "image": str, "label": str | None}``.
Every function here returns it in natural order of the ids (numbers compared as numbers: ``1, 2, 3, 5, 8, 10``,
``case2`` before ``case10``): the cross-validation folds of :mod:`fewshot_monai.evaluation.folds` are defined on
that order, so it must not depend on the file system.

- :class:`DatasetDescriptor` describes a dataset folder (file name patterns, label map, modality, intensity
  preset); :data:`CHAOS_T2SPIR`, :data:`SABS_CT`, :data:`PHANTOM` (and :data:`PHANTOM_CT`) are built in and
  :func:`get_descriptor` finds them by name; :func:`datalist` lists a folder laid out as a descriptor says.
- :func:`generic_datalist` pairs any folder (or glob) of images with a folder of labels by file stem.
- :func:`nnunet_datalist` reads the nnU-Net raw layout (``imagesTr/``, ``labelsTr/``, ``dataset.json``).

Errors name the file: a missing label raises :class:`~fewshot_monai.errors.UnreadableFileError` with the path
of the label file that was expected.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from fewshot_monai.errors import InputError, UnreadableFileError

__all__ = [
    "DatasetDescriptor",
    "CHAOS_T2SPIR",
    "SABS_CT",
    "PHANTOM",
    "PHANTOM_CT",
    "DESCRIPTORS",
    "BTCV_LABELS",
    "VOLUME_SUFFIXES",
    "get_descriptor",
    "natural_key",
    "datalist",
    "generic_datalist",
    "find_volumes",
    "is_dicom_file",
    "LabelledDataset",
    "load_labelled_dataset",
    "labels_location",
    "nnunet_datalist",
    "nnunet_label_map",
]

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
"""File endings recognised as volumes (DICOM series are folders of ``.dcm`` files)."""

BTCV_LABELS: dict[str, int] = {
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
"""The 13 labels of the BTCV (Synapse multi-organ) abdominal CT set, as in the SABS copy."""

_CHAOS_LABELS = {"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}


def natural_key(text: str) -> tuple:
    """Sort key comparing digit runs as numbers: ``"2" < "10"``, ``"case2" < "case10"``, ``"ct_9" < "ct_10"``."""
    parts = re.split(r"(\d+)", str(text))
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p.lower()) for p in parts if p != "")


@dataclass(frozen=True)
class DatasetDescriptor:
    """How a dataset folder is laid out and labelled.

    Attributes:
        name: short name used on the command line (``get_descriptor(name)``).
        modality: ``"mri"`` or ``"ct"``.
        intensity: intensity preset of :class:`fewshot_monai.transforms.IntensityPreset` for its images
            (``"mri"``, ``"ct"`` for Hounsfield units, ``"preprocessed"`` for data already windowed or 8-bit).
        label_map: the organs evaluated by default, name -> label id.
        all_labels: every label of the dataset, name -> id (a superset of ``label_map``).
        image_pattern: image file name with an ``{id}`` placeholder, relative to the dataset folder.
        label_pattern: label file name with an ``{id}`` placeholder.
        id_sort: ``"natural"`` (digit runs compared as numbers; plain numbers sort numerically) or ``"lexical"``.
        description: one line for listings and reports.
    """

    name: str
    modality: str
    intensity: str
    label_map: dict[str, int]
    all_labels: dict[str, int] = field(default_factory=dict)
    image_pattern: str = "image_{id}.nii.gz"
    label_pattern: str = "label_{id}.nii.gz"
    id_sort: str = "natural"
    description: str = ""

    def __post_init__(self):
        for pattern in (self.image_pattern, self.label_pattern):
            if pattern.count("{id}") != 1:
                raise ValueError(f"dataset {self.name!r}: file pattern {pattern!r} must contain '{{id}}' once")
        if self.id_sort not in ("natural", "lexical"):
            raise ValueError(f"dataset {self.name!r}: id_sort must be 'natural' or 'lexical', got {self.id_sort!r}")

    def organ_ids(self, organs=None) -> dict[str, int]:
        """``label_map`` restricted to ``organs`` (names, looked up in ``all_labels`` too); clear error if unknown."""
        if organs is None:
            return dict(self.label_map)
        known = {**self.all_labels, **self.label_map}
        unknown = [o for o in organs if o not in known]
        if unknown:
            raise ValueError(f"dataset {self.name!r} has no organ(s) {unknown}; known: {sorted(known)}")
        return {o: known[o] for o in organs}

    def image_path(self, root: str | os.PathLike, case_id: str) -> Path:
        return Path(root) / self.image_pattern.format(id=case_id)

    def label_path(self, root: str | os.PathLike, case_id: str) -> Path:
        return Path(root) / self.label_pattern.format(id=case_id)

    def sort_ids(self, ids) -> list[str]:
        """``ids`` in this dataset's order (the order cross-validation folds are defined on)."""
        return sorted(ids, key=natural_key) if self.id_sort == "natural" else sorted(ids)


CHAOS_T2SPIR = DatasetDescriptor(
    name="chaos",
    modality="mri",
    intensity="mri",
    label_map=dict(_CHAOS_LABELS),
    all_labels=dict(_CHAOS_LABELS),
    description="CHAOS T2-SPIR MRI, 20 scans (SSL-ALPNet preprocessing), ids 1..39",
)
SABS_CT = DatasetDescriptor(
    name="sabs",
    modality="ct",
    intensity="preprocessed",  # the shared copy is 8-bit, already windowed: no HU window
    label_map={"liver": 6, "spleen": 1, "left_kidney": 3, "right_kidney": 2},
    all_labels=dict(BTCV_LABELS),
    description="Synapse/BTCV abdominal CT, 30 scans (SSL-ALPNet preprocessing, 8-bit), ids 0..29",
)
PHANTOM = DatasetDescriptor(
    name="phantom",
    modality="mri",
    intensity="mri",
    label_map=dict(_CHAOS_LABELS),
    all_labels=dict(_CHAOS_LABELS),
    image_pattern="{id}_image.nii.gz",
    label_pattern="{id}_label.nii.gz",
    description="synthetic MRI phantoms of fewshot_monai.data.phantoms.make_phantom_dataset (ids case0, case1, ...)",
)
PHANTOM_CT = dataclasses.replace(
    PHANTOM,
    name="phantom_ct",
    modality="ct",
    intensity="ct",
    description="synthetic CT phantoms (Hounsfield-like units) of make_phantom_dataset(modality='ct')",
)
DESCRIPTORS: dict[str, DatasetDescriptor] = {d.name: d for d in (CHAOS_T2SPIR, SABS_CT, PHANTOM, PHANTOM_CT)}


def get_descriptor(name: str | DatasetDescriptor) -> DatasetDescriptor:
    """The built-in descriptor called ``name`` (``"chaos"``, ``"sabs"``, ``"phantom"``, ``"phantom_ct"``).

    A :class:`DatasetDescriptor` is returned unchanged. Raises ``ValueError`` listing the valid names otherwise.
    """
    if isinstance(name, DatasetDescriptor):
        return name
    try:
        return DESCRIPTORS[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DESCRIPTORS)}") from None


def datalist(root: str | os.PathLike, descriptor: DatasetDescriptor | str) -> list[dict]:
    """Cases of a dataset folder laid out as ``descriptor`` says, in the descriptor's id order.

    Args:
        root: the dataset folder (for example ``../shared/data/chaos_t2spir``).
        descriptor: a :class:`DatasetDescriptor` or a built-in name.

    Returns:
        ``[{"id": "1", "image": ".../image_1.nii.gz", "label": ".../label_1.nii.gz"}, ...]`` (ids are strings).

    Raises:
        UnreadableFileError: the folder is missing, holds no image matching the pattern, or an image has no
            label file (the message names the missing label file).
    """
    descriptor = get_descriptor(descriptor)
    root = Path(root)
    if not root.is_dir():
        raise UnreadableFileError(root, f"dataset folder for {descriptor.name!r} not found")
    prefix, suffix = descriptor.image_pattern.split("{id}")
    pattern = re.compile(re.escape(prefix) + r"(.+?)" + re.escape(suffix) + r"\Z")
    ids = [m.group(1) for p in root.iterdir() if (m := pattern.match(p.name)) and p.is_file()]
    if not ids:
        raise UnreadableFileError(root, f"no image matching {descriptor.image_pattern!r} ({descriptor.name})")
    cases = []
    for case_id in descriptor.sort_ids(ids):
        label = descriptor.label_path(root, case_id)
        if not label.is_file():
            raise UnreadableFileError(label, f"label file of case {case_id} is missing")
        cases.append({"id": case_id, "image": str(descriptor.image_path(root, case_id)), "label": str(label)})
    return cases


# ------------------------------------------------------------------------------------------- generic folders

# words that name the role of a file rather than the case: "image_1" and "label_1" are the same case
_ROLE_WORDS = r"images?|imgs?|volumes?|vols?|scans?|labels?|labelmaps?|segs?|segmentations?|masks?|gts?|ground_?truth"
_ROLE = re.compile(rf"^(?:{_ROLE_WORDS})[_\-.]+|[_\-.]+(?:{_ROLE_WORDS})$|[_\-.]0000$", re.IGNORECASE)


def _case_key(stem: str) -> str:
    """The case part of a file stem: role words (image, label, seg, mask...) and a ``_0000`` channel removed."""
    key, previous = stem, None
    while key != previous:
        previous, key = key, _ROLE.sub("", key)
    return key.lower() or stem.lower()


def _volume_stem(path: Path, suffixes) -> str | None:
    for suffix in sorted(suffixes, key=len, reverse=True):  # ".nii.gz" before ".nii" / ".gz"
        if path.name.lower().endswith(suffix.lower()) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def is_dicom_file(path: Path) -> bool:
    """A ``.dcm`` file, or a file of any name with the DICOM preamble (``DICM`` at byte 128)."""
    if not path.is_file():
        return False
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _dicom_series(folder: Path) -> Path | None:
    """The folder holding the DICOM files of a case folder (itself or one nested folder), None if not DICOM."""
    if any(is_dicom_file(p) for p in folder.iterdir()):
        return folder
    series = sorted({p.parent for p in folder.rglob("*") if is_dicom_file(p)})
    if len(series) > 1:
        names = ", ".join(str(s.relative_to(folder)) for s in series[:4])
        raise UnreadableFileError(folder, f"holds several DICOM series ({names}...); point at one series folder")
    return series[0] if series else None


def _collect(spec: str | os.PathLike, suffixes, dicom: bool, ignored: list | None = None) -> dict[str, Path]:
    """stem -> path for a folder (volume files, DICOM series sub-folders), a glob, or a single file; a folder that
    is itself a DICOM series is one case. Files that are not volumes are appended to ``ignored``."""
    path = Path(spec)
    if path.is_dir():
        if dicom and any(is_dicom_file(p) for p in path.iterdir()):
            return {path.name: path}
        candidates = sorted(path.iterdir())
    elif path.is_file():
        candidates = [path]
    else:
        candidates = sorted(Path(p) for p in glob.glob(str(spec)))
    found: dict[str, Path] = {}
    for candidate in candidates:
        if candidate.name.startswith("."):  # hidden or temporary files (atomic writes use ".<name>.*")
            continue
        if candidate.is_dir():
            series = _dicom_series(candidate) if dicom else None
            if series is not None:
                found[candidate.name] = series
            elif ignored is not None:
                ignored.append(candidate)
            continue
        stem = _volume_stem(candidate, suffixes)
        if stem is not None:
            found[stem] = candidate
        elif ignored is not None:
            ignored.append(candidate)
    return found


def find_volumes(spec: str | os.PathLike, suffixes=VOLUME_SUFFIXES) -> tuple[list[dict], list[Path]]:
    """The volumes to segment in a folder, a glob or one file, and the entries that are not volumes.

    Volumes are files ending in one of ``suffixes`` (NIfTI, NRRD, MHA, ...) and DICOM series (a folder holding
    DICOM files, directly or in one nested folder; ``spec`` itself may be such a folder). Other files (notes,
    ``SOURCE.txt``, spreadsheets) and folders without DICOM files are returned as ignored, not read.

    Returns:
        ``([{"id": name, "image": path}, ...] in natural id order, [ignored paths])``.

    Raises:
        UnreadableFileError: ``spec`` does not exist (nothing matches it) or holds no volume at all; the message
            says which.
    """
    path = Path(spec).expanduser()
    if not path.exists() and not glob.glob(str(spec)):
        raise UnreadableFileError(spec, "input does not exist (no file, folder or glob match)")
    ignored: list[Path] = []
    found = _collect(path if path.exists() else spec, suffixes, dicom=True, ignored=ignored)
    if not found:
        what = f"; it holds only {len(ignored)} other file(s), e.g. {ignored[0].name}" if ignored else " (empty)"
        raise UnreadableFileError(spec, f"no volume to segment (NIfTI, NRRD, MHA or DICOM series){what}")
    cases = [{"id": stem, "image": str(found[stem])} for stem in sorted(found, key=natural_key)]
    return cases, ignored


def generic_datalist(
    images: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    *,
    label_suffix: str = "",
    image_suffixes=VOLUME_SUFFIXES,
    require_labels: bool = False,
) -> list[dict]:
    """Pair a folder (or glob) of images with a folder (or glob) of labels by file stem.

    Images are volume files ending in one of ``image_suffixes`` or DICOM series: a sub-folder holding ``.dcm``
    files (directly, or in a single nested folder) is one case named after the sub-folder. A label matches an
    image when its stem is the image stem + ``label_suffix``; without ``label_suffix``, when the stems are equal
    or, failing that, equal once role words are removed (``image_3``/``label_3``, ``ct_3``/``ct_3_seg``,
    ``ct_3_0000``/``ct_3``; see :func:`_case_key`).

    Args:
        images: a folder, a glob (``"scans/*.nrrd"``) or one file.
        labels: a folder, glob or file of label volumes, or None (inference only).
        label_suffix: text after the image stem in label names (``"_seg"`` for ``ct_1_seg.nii.gz``).
        image_suffixes: file endings accepted as volumes (for images and labels).
        require_labels: raise for an image without a label instead of giving it ``label: None``.

    Returns:
        ``[{"id": stem, "image": str, "label": str | None}, ...]`` in natural id order. An image without a
        label gets ``label: None`` (an inference batch can still run; evaluation checks labels where it needs
        them) unless ``require_labels``.

    Raises:
        UnreadableFileError: no image found; two images or two labels claim the same case; a required label
            is missing (the message names the image and where the label was looked for).
    """
    image_files = _collect(images, image_suffixes, dicom=True)
    if not image_files:
        raise UnreadableFileError(images, "no image volume (NIfTI, NRRD, MHA or DICOM folder) found")
    label_files = _collect(labels, image_suffixes, dicom=False) if labels is not None else {}
    labels_by_key: dict[str, list[Path]] = {}
    for stem, path in label_files.items():
        labels_by_key.setdefault(_case_key(stem), []).append(path)
    images_by_key: dict[str, list[str]] = {}
    for stem in image_files:
        images_by_key.setdefault(_case_key(stem), []).append(stem)

    cases = []
    for stem in sorted(image_files, key=natural_key):
        if label_suffix:
            label = label_files.get(stem + label_suffix)
        else:
            label = label_files.get(stem)
            key = _case_key(stem)
            if label is None and key in labels_by_key:  # fall back on the case key, if unambiguous
                claims = [str(p.name) for p in labels_by_key[key]] + [s for s in images_by_key[key] if s != stem]
                if len(labels_by_key[key]) > 1 or len(images_by_key[key]) > 1:
                    raise UnreadableFileError(
                        image_files[stem], f"ambiguous label pairing for case {key!r}: {sorted(claims)}"
                    )
                label = labels_by_key[key][0]
        if label is None and require_labels:
            where = labels if labels is not None else "(no labels given)"
            raise UnreadableFileError(image_files[stem], f"no label for case {stem!r} in {where}")
        cases.append({"id": stem, "image": str(image_files[stem]), "label": None if label is None else str(label)})
    return cases


# ---------------------------------------------------------------------------------------------------- nnU-Net


def _snake(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", str(name).strip().lower()).strip("_")


def nnunet_label_map(root: str | os.PathLike) -> dict[str, int]:
    """Organ name -> label id from an nnU-Net ``dataset.json`` (empty if the file is absent).

    Reads nnU-Net v2 (``{"background": 0, "liver": 1}``) and v1/MSD (``{"0": "background", "1": "liver"}``)
    label tables; names become lower-case snake case (``"Right Kidney"`` -> ``right_kidney``); background and
    region-based entries (lists of ids) are left out.
    """
    meta = Path(root) / "dataset.json"
    if not meta.is_file():
        return {}
    try:
        labels = json.loads(meta.read_text()).get("labels", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise UnreadableFileError(meta, f"not a valid nnU-Net dataset.json ({err})") from None
    if not isinstance(labels, dict):
        raise UnreadableFileError(meta, "'labels' must be a mapping")
    label_map: dict[str, int] = {}
    for key, value in labels.items():
        if isinstance(value, (list, tuple)):
            continue  # region-based training entry, not a single label
        try:
            name, idx = (key, int(value)) if isinstance(value, int) else (value, int(key))
        except (TypeError, ValueError):
            raise UnreadableFileError(meta, f"label entry {key!r}: {value!r} is not a name/id pair") from None
        if idx != 0:
            label_map[_snake(name)] = idx
    return label_map


def nnunet_datalist(root: str | os.PathLike, split: str = "train") -> tuple[list[dict], dict[str, int]]:
    """Cases of an nnU-Net raw dataset folder and its label map.

    Layout: ``imagesTr/<case>_0000<ending>`` (the first channel is the image; other channels are ignored),
    ``labelsTr/<case><ending>`` and an optional ``dataset.json`` (label names, ``file_ending``, default
    ``.nii.gz``). ``split="test"`` lists ``imagesTs/`` with ``label: None``.

    Returns:
        ``(cases, label_map)``: the datalist in natural case order and :func:`nnunet_label_map`.

    Raises:
        UnreadableFileError: no images folder or no ``_0000`` image, a training label missing (named), or an
            unreadable ``dataset.json``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    label_map = nnunet_label_map(root)
    ending = ".nii.gz"
    meta = root / "dataset.json"
    if meta.is_file():
        ending = str(json.loads(meta.read_text()).get("file_ending", ending))
    images_dir = root / ("imagesTr" if split == "train" else "imagesTs")
    labels_dir = root / "labelsTr"
    if not images_dir.is_dir():
        raise UnreadableFileError(images_dir, f"nnU-Net folder has no {images_dir.name}/")
    channel0 = "_0000" + ending
    ids = [p.name[: -len(channel0)] for p in images_dir.iterdir() if p.name.endswith(channel0) and p.is_file()]
    if not ids:
        raise UnreadableFileError(images_dir, f"no '<case>{channel0}' image found")
    cases = []
    for case_id in sorted(ids, key=natural_key):
        label = None
        if split == "train":
            label = labels_dir / f"{case_id}{ending}"
            if not label.is_file():
                raise UnreadableFileError(label, f"label file of case {case_id} is missing")
        image = images_dir / f"{case_id}{channel0}"
        cases.append({"id": case_id, "image": str(image), "label": None if label is None else str(label)})
    return cases, label_map


# ------------------------------------------------------------------------------------------- labelled data sets


@dataclass
class LabelledDataset:
    """A labelled data set ready for cross-validation: cases by id, their order, organs, intensity, modality."""

    items: dict[str, dict]  # id -> {"image", "label", "id"}
    order: list[str]
    label_map: dict[str, int]
    intensity: str | None
    modality: str


def _generic_items(
    root: Path, images: str | None = None, labels: str | None = None
) -> tuple[list[dict], dict[str, int]]:
    """Cases of a generic folder and the label map it declares (nnU-Net ``dataset.json``; else empty).

    ``images``/``labels`` (a folder or glob, relative to ``root`` unless absolute) choose the files; without them:
    an nnU-Net raw folder (``imagesTr/``, ``labelsTr/``), else ``images/`` (+ ``labels/`` if present), else the
    volumes in ``root`` itself (no labels). Images and labels are paired by stem (:func:`generic_datalist`).
    """
    if images is not None:
        labels_spec = None if labels is None else str(root / labels)
        return generic_datalist(str(root / images), labels_spec), nnunet_label_map(root)
    if (root / "imagesTr").is_dir():
        if (root / "labelsTr").is_dir():
            return nnunet_datalist(root)
        return generic_datalist(str(root / "imagesTr"), labels), nnunet_label_map(root)
    if (root / "images").is_dir():
        found = str(root / (labels or "labels")) if labels or (root / "labels").is_dir() else None
        return generic_datalist(str(root / "images"), found), {}
    labels = labels or ("labels" if (root / "labels").is_dir() else None)
    return generic_datalist(str(root), None if labels is None else str(root / labels)), {}


def labels_location(root: str | os.PathLike, labels: str | None = None) -> str:
    """Where a generic data set's label files are looked for (``labels`` relative to ``root``), for error messages."""
    root = Path(root)
    if labels is not None:
        return f"labels looked for in {root / labels}"
    return f"labels looked for in {root / 'labelsTr'}, {root / 'labels'}; set the label folder or glob"


def load_labelled_dataset(
    data: str | os.PathLike,
    dataset: str,
    label_map: dict[str, int] | None = None,
    organs: list[str] | None = None,
    intensity: str | None = None,
    *,
    images: str | None = None,
    labels: str | None = None,
    require_labels: bool = True,
) -> LabelledDataset:
    """Every case of ``data``: the labelled cases of an evaluation, or (``require_labels=False``) training scans.

    Args:
        data: the data folder.
        dataset: a descriptor name (``chaos``, ``sabs``, ``phantom``) or ``generic``: any folder of volumes
            (see :func:`_generic_items`: nnU-Net raw, ``images/`` + ``labels/``, or the images themselves), its
            organs from ``label_map`` or nnU-Net's dataset.json.
        label_map: organ name -> label id (overrides the descriptor's).
        organs: the descriptor's organs to keep (default: all).
        intensity: intensity preset override (default: the descriptor's; ``preprocessed`` for generic data).
        images, labels: generic data only: the image and label folders or globs, relative to ``data``
            (``"scans/*.nii.gz"``, ``"../segmentations"``); ``labels`` may be None (training without labels).
        require_labels: every case needs a label and the label map must be known (evaluation); False lists
            images without labels too (``label: None``) and allows an empty label map (self-supervised training).

    Raises:
        UnreadableFileError: the folder does not exist or holds no image; InputError: a scan has no label
        (``require_labels``); ValueError: no label map (``require_labels``).
    """
    root = Path(data)
    if not root.is_dir():
        raise UnreadableFileError(root, "data folder does not exist")
    if dataset == "generic":
        items, found_map = _generic_items(root, images, labels)
        label_map = dict(label_map or found_map)
        intensity = intensity or "preprocessed"
        modality = "ct" if intensity == "ct" else "mri"
    else:
        if images is not None or labels is not None:
            raise ValueError(f"image/label patterns are for generic data; {dataset!r} has its own layout")
        descriptor = get_descriptor(dataset)
        label_map = dict(label_map) if label_map else descriptor.organ_ids(organs)
        intensity = intensity or descriptor.intensity
        modality = descriptor.modality
        items = datalist(root, descriptor)
    if not label_map and require_labels:
        raise ValueError(f"no label map for {root}: pass label_map (--label-map name=id,...)")
    items = [dict(item, id=str(item["id"])) for item in items]
    missing = [item["id"] for item in items if not item.get("label")]
    if missing and require_labels:
        raise InputError(
            root, f"the evaluation needs a label for every scan; none for {missing} ({labels_location(root, labels)})"
        )
    return LabelledDataset({i["id"]: i for i in items}, [i["id"] for i in items], label_map, intensity, str(modality))
