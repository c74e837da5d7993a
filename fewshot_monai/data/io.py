"""Reading and writing 3D volumes: NIfTI, NRRD/MHA/MHD and DICOM series folders.

Everything goes through one MONAI pipeline, :func:`case_loading_transforms`, which :func:`load_volume` and
:func:`load_case` run and which can be plugged into a ``monai.data.Dataset``:

1. :class:`LoadVolumed` — read with :class:`monai.transforms.LoadImage` (``NibabelReader`` for ``.nii``/``.nii.gz``,
   ``ITKReader`` for everything else: NRRD, MHA/MHD, DICOM series folders), make channel-first ``(1, X, Y, Z)``,
   validate (3D, finite, integer labels) and cast: images ``float32``, labels ``int16``;
2. :class:`~fewshot_monai.transforms.SlicePlaned` to the slicing ``plane`` (default ``"auto"``: the acquisition
   plane, so axis -1 is the through-plane axis; axial stacks get ``RAS`` exactly as before), or
   :class:`monai.transforms.Orientationd` to explicit ``orientation`` axis codes;
3. :class:`~fewshot_monai.transforms.CheckGeometryd` — the label is voxel-aligned with the image;
4. optional :class:`monai.transforms.Spacingd` to ``spacing`` (bilinear for images, nearest for labels);
5. optional :class:`~fewshot_monai.transforms.IntensityPresetd` on the images.

Bad input raises a :mod:`fewshot_monai.errors` type naming the file and the problem. Inside a MONAI ``Compose``
or ``Dataset`` these arrive wrapped in ``RuntimeError("applying transform ...")``; :func:`find_input_error`
digs them out.

:func:`save_volume` writes ``.nii``/``.nii.gz`` (nibabel) or ``.nrrd``/``.mha`` (ITK) atomically. NIfTI-1 stores
the affine in float32: loading a saved volume gives back the same array and an affine equal to the saved one
rounded to float32 (bit-identical for affines read from NIfTI and reoriented by flips, such as the shared data
sets). NRRD and MHA store the geometry in float64.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import ITKReader, ITKWriter, MetaTensor, NibabelReader, NibabelWriter
from monai.transforms import (
    CastToTyped,
    Compose,
    EnsureChannelFirst,
    LoadImage,
    MapTransform,
    Orientationd,
    Spacingd,
    Transform,
)
from monai.utils import ImageMetaKey, ensure_tuple

from fewshot_monai.errors import DimensionalityError, GeometryMismatchError, InputError, UnreadableFileError
from fewshot_monai.transforms.intensity import IntensityPresetd
from fewshot_monai.transforms.plane import SlicePlaned, check_plane
from fewshot_monai.transforms.validation import (
    CheckGeometryd,
    check_finite,
    check_label_values,
    check_volume,
    source_of,
)
from fewshot_monai.utils.files import atomic_path

__all__ = [
    "IMAGE_DTYPE",
    "LABEL_DTYPE",
    "READABLE_SUFFIXES",
    "WRITABLE_SUFFIXES",
    "LoadVolume",
    "LoadVolumed",
    "case_loading_transforms",
    "load_volume",
    "load_case",
    "save_volume",
    "case_id_from_path",
    "find_input_error",
    "dicom_series",
]

IMAGE_DTYPE = torch.float32
LABEL_DTYPE = torch.int16

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
READABLE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
WRITABLE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")

_INT16 = torch.iinfo(torch.int16)

FOLLOW_PLANE = "plane"  # the default ``orientation``: reorient as ``plane`` says


def _suffix(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def case_id_from_path(path: str | os.PathLike) -> str:
    """A case identifier from a file or folder name: the name without its volume suffix.

    ``/data/image_1.nii.gz -> "image_1"``, ``/data/ct_07.nrrd -> "ct_07"``, ``/dicom/patient3/ -> "patient3"``.
    """
    p = Path(path)
    name = p.name
    suffix = _suffix(p)
    if suffix in READABLE_SUFFIXES:
        return name[: -len(suffix)]
    return name


def find_input_error(err: BaseException) -> InputError | None:
    """The :class:`~fewshot_monai.errors.InputError` behind ``err`` (itself, or in its ``__cause__`` chain).

    MONAI's ``Compose``/``Dataset`` re-raise transform errors as ``RuntimeError("applying transform ...")``;
    batch jobs use this to log the original "<file>: <problem>" message.
    """
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, InputError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _short(err: BaseException, limit: int = 300) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = " ".join(lines)[:limit] if lines else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@functools.lru_cache(maxsize=1)
def _image_loader() -> LoadImage:
    """One shared ``LoadImage``: building one registers (and logs about) every default reader. It is always
    called with the caller's own reader instance, so sharing it adds no state between ``LoadVolume`` objects."""
    return LoadImage(image_only=True, dtype=None, ensure_channel_first=False)


class LoadVolume(Transform):
    """Load one volume as a validated channel-first ``MetaTensor`` ``(1, X, Y, Z)`` (no reorientation).

    Args:
        is_label: load as a label map: values must be integers and are cast to ``int16``; otherwise ``float32``.
        series: the DICOM series to read from a folder holding several (an identifier listed by
            :func:`dicom_series`); without it such a folder is an error that lists them.

    The input is a path (file, or folder holding one DICOM series), or an in-memory array/``MetaTensor`` that is
    validated and cast the same way (a plain array gets an identity affine). ``NibabelReader`` reads NIfTI (the
    affine nibabel reports: sform if set, else qform); ``ITKReader`` reads the rest, converted from ITK's LPS to
    RAS world coordinates. ``meta["filename_or_obj"]`` holds the path.

    Raises:
        UnreadableFileError: missing, truncated or undecodable file, a folder without a DICOM series, or with several
            and no ``series`` chosen.
        DimensionalityError: not a single-channel 3D volume (2D image, several channels/time points).
        NonFiniteError: NaN/inf intensities.
        InputError: non-integer (or beyond int16) values in a label map.
    """

    def __init__(self, is_label: bool = False, series: str | None = None):
        self.is_label = is_label
        self.series = series
        self._nifti_reader = NibabelReader()
        self._itk_reader = ITKReader()

    def read(self, path: str | os.PathLike) -> MetaTensor:
        """Read ``path`` as it is stored (channel-first, native dtype), converting every failure to
        :class:`UnreadableFileError`."""
        path = Path(path).expanduser()
        if not path.exists():
            raise UnreadableFileError(path, "file or folder does not exist")
        if path.is_dir():
            if not any(child.is_file() for child in path.iterdir()):
                raise UnreadableFileError(path, "folder is empty; expected the files of one DICOM series")
            reader, problem = self._series_reader(path), "folder holds no readable DICOM series"
        elif path.stat().st_size == 0:
            raise UnreadableFileError(path, "file is empty (0 bytes)")
        elif _suffix(path) in NIFTI_SUFFIXES:
            reader, problem = self._nifti_reader, "cannot be read as NIfTI (truncated or corrupt file?)"
        else:
            reader, problem = self._itk_reader, "cannot be read by ITK (truncated, corrupt or unsupported format?)"
        try:
            img = _image_loader()(str(path), reader=reader)
        except Exception as err:  # any reader failure is a property of the file
            raise UnreadableFileError(path, f"{problem}: {_short(err)}") from err
        try:
            img = EnsureChannelFirst()(img)
        except Exception as err:
            raise DimensionalityError(path, f"cannot determine the channel axis of shape {tuple(img.shape)}") from err
        img.meta[ImageMetaKey.FILENAME_OR_OBJ] = str(path)
        return img

    def _series_reader(self, folder: Path) -> ITKReader:
        """The reader of ``folder``'s one DICOM series (or of the chosen one)."""
        series = dicom_series(folder)
        if self.series is not None:
            if self.series not in series:
                listed = ", ".join(series) or "none"
                raise UnreadableFileError(folder, f"has no DICOM series {self.series!r}; it holds: {listed}")
            return ITKReader(series_name=self.series)
        if len(series) > 1:
            listed = "; ".join(f"{uid} ({n} files)" for uid, n in series.items())
            raise UnreadableFileError(folder, f"holds {len(series)} DICOM series, choose one (--series): {listed}")
        return self._itk_reader

    def __call__(self, data) -> MetaTensor:
        if isinstance(data, (str, os.PathLike)):
            img = self.read(data)
        elif isinstance(data, MetaTensor):
            img = data
        else:
            img = MetaTensor(torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data))
        source = source_of(img)
        check_volume(img, source=source)
        if self.is_label:
            check_label_values(img, source=source)
            if img.numel() and (int(img.min()) < _INT16.min or int(img.max()) > _INT16.max):
                raise InputError(source, f"label ids {int(img.min())}..{int(img.max())} do not fit int16")
            return (img.round() if img.is_floating_point() else img).to(LABEL_DTYPE)  # 5.9999995 -> 6
        img = img.to(IMAGE_DTYPE)
        check_finite(img, source=source)  # after the cast: float64 values beyond float32 become inf too
        return img


class LoadVolumed(MapTransform):
    """Dictionary version of :class:`LoadVolume`; ``is_label`` may be given per key, ``series`` applies to all."""

    def __init__(
        self,
        keys: KeysCollection,
        is_label: bool | Sequence[bool] = False,
        allow_missing_keys: bool = False,
        series: str | None = None,
    ):
        super().__init__(keys, allow_missing_keys)
        flags = (is_label,) * len(self.keys) if isinstance(is_label, bool) else tuple(is_label)
        if len(flags) != len(self.keys):
            raise ValueError(f"is_label has {len(flags)} entries for {len(self.keys)} keys")
        self.loaders = {key: LoadVolume(flag, series) for key, flag in zip(self.keys, flags)}

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loaders[key](d[key])
        return d


def dicom_series(folder: str | os.PathLike) -> dict[str, int]:
    """The DICOM series in ``folder`` as ITK/GDCM identifies them (the names :class:`LoadVolume` ``series`` takes)
    -> number of files; empty when the folder holds none."""
    import itk

    names = itk.GDCMSeriesFileNames.New()
    names.SetUseSeriesDetails(True)  # as MONAI's ITKReader, so the identifiers match its ``series_name``
    names.AddSeriesRestriction("0008|0021")  # series date, as MONAI's ITKReader
    names.SetGlobalWarningDisplay(False)
    names.SetDirectory(str(folder))
    return {str(uid): len(names.GetFileNames(uid)) for uid in names.GetSeriesUIDs()}


def case_loading_transforms(
    image_keys: KeysCollection = ("image",),
    label_keys: KeysCollection = ("label",),
    *,
    intensity: str | None = None,
    plane: str | None = "auto",
    orientation: str | None = FOLLOW_PLANE,
    spacing: Sequence[float] | float | None = None,
    geometry_atol: float = 1e-3,
    allow_missing_keys: bool = False,
    series: str | None = None,
) -> Compose:
    """The case loading pipeline as a MONAI ``Compose`` of dictionary transforms (see the module docstring).

    Args:
        image_keys: keys holding image paths (or arrays); loaded as float32.
        label_keys: keys holding label paths (or arrays); loaded as int16 and checked against the first image key
            (or the first label key when there is no image key).
        intensity: intensity preset for the images (``"ct"``, ``"mri"``, ``"preprocessed"``, ``"none"``/``None``).
        plane: the slicing plane (:data:`fewshot_monai.transforms.plane.PLANES`: ``"auto"`` the acquisition
            plane, ``"stored"``, ``"axial"``, ``"coronal"``, ``"sagittal"``), chosen from the first key's geometry
            and applied to every key; ``None`` keeps the stored voxel order.
        orientation: explicit target axis codes (e.g. ``"RAS"``) instead of ``plane``, or ``None`` to keep the
            stored voxel order; the default follows ``plane``.
        spacing: target voxel size in mm (``(sx, sy, sz)`` or one number), or ``None`` to keep the grid.
        geometry_atol: tolerance on the affines of image and label (see ``CheckGeometryd``).
        allow_missing_keys: skip keys absent from the data dictionary.
        series: the DICOM series to read from image folders holding several (:class:`LoadVolume`).

    Example::

        from monai.data import Dataset
        ds = Dataset([{"image": "ct_1.nii.gz", "label": "seg_1.nii.gz"}],
                     transform=case_loading_transforms(intensity="ct"))
    """
    image_keys, label_keys = ensure_tuple(image_keys), ensure_tuple(label_keys)
    keys = image_keys + label_keys
    if not keys:
        raise ValueError("case_loading_transforms needs at least one image or label key")
    xforms: list[Transform] = []
    if image_keys:
        xforms.append(LoadVolumed(image_keys, is_label=False, allow_missing_keys=allow_missing_keys, series=series))
    if label_keys:
        xforms.append(LoadVolumed(label_keys, is_label=True, allow_missing_keys=allow_missing_keys))
    if orientation != FOLLOW_PLANE:
        if orientation:
            xforms.append(Orientationd(keys, axcodes=orientation, labels=None, allow_missing_keys=allow_missing_keys))
    elif plane is not None:
        xforms.append(SlicePlaned(keys, plane=check_plane(plane), allow_missing_keys=allow_missing_keys))
    if len(keys) > 1:
        xforms.append(CheckGeometryd(keys, atol=geometry_atol, allow_missing_keys=True))
    if spacing is not None:
        modes = ("bilinear",) * len(image_keys) + ("nearest",) * len(label_keys)
        xforms.append(Spacingd(keys, pixdim=spacing, mode=modes, allow_missing_keys=allow_missing_keys))
        if label_keys:  # Spacing outputs float32
            xforms.append(CastToTyped(label_keys, dtype=LABEL_DTYPE, allow_missing_keys=allow_missing_keys))
    if image_keys and intensity not in (None, "none"):
        xforms.append(IntensityPresetd(image_keys, preset=intensity, allow_missing_keys=allow_missing_keys))
    return Compose(xforms)


def _run(pipeline: Compose, data: dict) -> dict:
    try:
        return pipeline(data)
    except Exception as err:
        input_error = find_input_error(err)
        if input_error is None:
            raise
        raise input_error from err


def load_volume(
    path: str | os.PathLike,
    *,
    is_label: bool = False,
    plane: str | None = "auto",
    orientation: str | None = FOLLOW_PLANE,
    spacing: Sequence[float] | float | None = None,
) -> MetaTensor:
    """Load one volume as a ``MetaTensor`` ``(1, X, Y, Z)``: float32 image or int16 label, reoriented so that its
    slicing ``plane``'s through-plane axis is last (or to explicit ``orientation`` axis codes; ``None`` keeps the
    stored order; see :func:`case_loading_transforms`) and optionally resampled to ``spacing`` mm (bilinear for
    images, nearest for labels).

    ``path`` is a ``.nii``/``.nii.gz``/``.nrrd``/``.nhdr``/``.mha``/``.mhd`` file or a DICOM series folder.
    Raises the :mod:`fewshot_monai.errors` types listed in :class:`LoadVolume`.
    """
    key = "label" if is_label else "image"
    keys = {"image_keys": (), "label_keys": ("label",)} if is_label else {"image_keys": ("image",), "label_keys": ()}
    pipeline = case_loading_transforms(**keys, plane=plane, orientation=orientation, spacing=spacing)
    return _run(pipeline, {key: path})[key]


def load_case(
    image: str | os.PathLike,
    label: str | os.PathLike | None = None,
    *,
    intensity: str | None = None,
    plane: str | None = "auto",
    orientation: str | None = FOLLOW_PLANE,
    spacing: Sequence[float] | float | None = None,
    case_id: str | None = None,
    series: str | None = None,
) -> dict:
    """Load an image and (optionally) its label, validated, reoriented to the slicing ``plane`` (chosen from the
    image; ``orientation``: explicit axis codes instead, see :func:`case_loading_transforms`), resampled and
    intensity-normalised.

    Returns:
        ``{"image": MetaTensor (1, X, Y, Z) float32, "label": MetaTensor (1, X, Y, Z) int16 or None,
        "id": case_id or the image's name without suffix}``.

    Raises:
        UnreadableFileError, DimensionalityError, NonFiniteError, GeometryMismatchError, InputError: bad input,
            the message names the file and the problem.
    """
    pipeline = case_loading_transforms(
        ("image",),
        ("label",) if label is not None else (),
        intensity=intensity,
        plane=plane,
        orientation=orientation,
        spacing=spacing,
        series=series,
    )
    data = {"image": image} if label is None else {"image": image, "label": label}
    out = _run(pipeline, data)
    return {"image": out["image"], "label": out.get("label"), "id": case_id or case_id_from_path(image)}


def _label_dtype(arr: np.ndarray) -> np.dtype:
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    raise ValueError(f"label ids {lo}..{hi} do not fit int32")


def save_volume(
    array,
    path: str | os.PathLike,
    *,
    reference: MetaTensor | None = None,
    is_label: bool = False,
) -> Path:
    """Write a volume to ``path`` (``.nii``, ``.nii.gz``, ``.nrrd`` or ``.mha``), atomically.

    Args:
        array: ``(C, X, Y, Z)`` channel-first (``C == 1`` is written as a plain 3D volume, ``C > 1`` as a
            4D/vector volume) or ``(X, Y, Z)``; tensor, ``MetaTensor`` or numpy array.
        path: output file; the format follows the suffix. Two-file formats (``.mhd``, ``.nhdr``) are refused
            because they cannot be written atomically.
        reference: volume whose affine (geometry) is written; default: ``array``'s own affine if it is a
            ``MetaTensor``, else the identity. Its spatial shape must match ``array``'s.
        is_label: write integer label ids (the smallest of uint8/int16/int32 that holds them; values must be
            integers), else float32.

    Returns:
        the written path. The file appears complete or not at all (``fewshot_monai.utils.files.atomic_path``).

    Raises:
        GeometryMismatchError: ``array`` and ``reference`` differ in spatial shape.
        InputError: non-integer values with ``is_label=True``.
        ValueError: unsupported suffix or array rank.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in WRITABLE_SUFFIXES:
        raise ValueError(f"{path}: cannot write {suffix or 'files without suffix'}; use one of {WRITABLE_SUFFIXES}")
    data = array.as_tensor() if isinstance(array, MetaTensor) else torch.as_tensor(np.asarray(array))
    data = data.detach().cpu()
    if data.ndim == 3:
        data = data[None]
    if data.ndim != 4:
        raise ValueError(f"{path}: expected a (C, X, Y, Z) or (X, Y, Z) array, got shape {tuple(data.shape)}")
    ref = reference if reference is not None else array
    if isinstance(ref, MetaTensor):
        affine = np.asarray(ref.affine.detach().cpu().numpy(), dtype=np.float64)
        if reference is not None and tuple(reference.shape[-3:]) != tuple(data.shape[1:]):
            raise GeometryMismatchError(
                path,
                f"array of spatial shape {tuple(data.shape[1:])} cannot be written with the geometry of "
                f"{source_of(reference, 'the reference')} (spatial shape {tuple(reference.shape[-3:])})",
            )
    else:
        affine = np.eye(4)
    if is_label:
        check_label_values(data, source=str(path))
        np_data = data.numpy()
        np_data = np_data.astype(_label_dtype(np_data))
    else:
        np_data = data.numpy().astype(np.float32)
    channels = np_data.shape[0]
    channel_last = np_data[0] if channels == 1 else np.moveaxis(np_data, 0, -1)
    with atomic_path(path) as tmp:
        if suffix in NIFTI_SUFFIXES:
            obj = NibabelWriter.create_backend_obj(channel_last, affine=affine, dtype=channel_last.dtype)
            obj.set_sform(affine, code=1)
            obj.set_qform(affine, code=1)
            nib.save(obj, str(tmp))
        else:
            import itk

            obj = ITKWriter.create_backend_obj(
                channel_last, channel_dim=None if channels == 1 else -1, affine=affine, dtype=channel_last.dtype
            )
            itk.imwrite(obj, str(tmp), compression=True)
    return path
