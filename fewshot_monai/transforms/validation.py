"""Validation transforms: reject bad input volumes early, naming the file and the problem.

Each check raises a :mod:`fewshot_monai.errors` type (an ``InputError`` subclass) whose ``source`` is the file the
volume was loaded from (``MetaTensor.meta["filename_or_obj"]``), so that batch jobs can log the error and go on.

- :class:`EnsureVolume` / :class:`EnsureVolumed`: a channel-first single-channel 3D volume ``(1, X, Y, Z)`` with
  finite intensities (:class:`~fewshot_monai.errors.DimensionalityError`,
  :class:`~fewshot_monai.errors.NonFiniteError`).
- :class:`CheckGeometryd`: volumes that must be voxel-aligned (an image and its label) have the same spatial shape
  and the same affine within a tolerance (:class:`~fewshot_monai.errors.GeometryMismatchError`).
- :func:`check_label_values`: a label map holds integer values only (:class:`~fewshot_monai.errors.InputError`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import ImageMetaKey

from fewshot_monai.errors import DimensionalityError, GeometryMismatchError, InputError, NonFiniteError

__all__ = [
    "source_of",
    "check_volume",
    "check_finite",
    "check_geometry",
    "check_label_values",
    "LABEL_INTEGER_ATOL",
    "EnsureVolume",
    "EnsureVolumed",
    "CheckGeometryd",
]


def source_of(data, default: str | None = None) -> str | None:
    """The file a volume came from (``meta["filename_or_obj"]`` of a ``MetaTensor``), else ``default``."""
    if isinstance(data, MetaTensor):
        name = data.meta.get(ImageMetaKey.FILENAME_OR_OBJ)
        if name not in (None, ""):
            return str(name)
    return default


def _shape(data) -> tuple[int, ...]:
    return tuple(int(s) for s in data.shape)


def check_volume(
    data,
    *,
    num_channels: int | None = 1,
    allow_single_slice: bool = False,
    source: str | None = None,
) -> None:
    """Raise :class:`DimensionalityError` unless ``data`` is a channel-first 3D volume ``(C, X, Y, Z)``.

    Args:
        data: array-like with a ``shape``.
        num_channels: required number of channels ``C`` (``None``: any).
        allow_single_slice: accept ``Z == 1``. By default a single-slice volume is rejected: it is almost always a
            2D image stored in a 3D container.
        source: file name for the message (default: taken from the ``MetaTensor`` meta).
    """
    source = source or source_of(data)
    shape = _shape(data)
    if len(shape) == 3:
        raise DimensionalityError(source, f"is a 2D image (shape {shape[1:]}); a 3D volume is expected")
    if len(shape) != 4:
        raise DimensionalityError(
            source, f"has {len(shape) - 1} spatial dimensions (channel-first shape {shape}); a 3D volume is expected"
        )
    if num_channels is not None and shape[0] != num_channels:
        raise DimensionalityError(
            source,
            f"has {shape[0]} channels or time points (channel-first shape {shape}); "
            f"a {num_channels}-channel 3D volume is expected",
        )
    if not allow_single_slice and shape[-1] == 1:
        raise DimensionalityError(
            source, f"has a single slice (shape {shape[1:]}), i.e. it is a 2D image; a 3D volume is expected"
        )


def check_finite(data, *, source: str | None = None) -> None:
    """Raise :class:`NonFiniteError` (with the number of NaN and infinite voxels) if ``data`` is not all finite."""
    source = source or source_of(data)
    t = torch.as_tensor(data.as_tensor() if isinstance(data, MetaTensor) else data)
    if not t.is_floating_point():
        return
    finite = torch.isfinite(t)
    if bool(finite.all()):
        return
    n_nan = int(torch.isnan(t).sum())
    n_inf = int((~finite).sum()) - n_nan
    raise NonFiniteError(
        source,
        f"contains {n_nan + n_inf} non-finite voxels ({n_nan} NaN, {n_inf} infinite) out of {t.numel()}",
    )


LABEL_INTEGER_ATOL = 1e-3
"""A float label voxel within this distance of an integer counts as that integer (float conversions of label maps
leave values such as 5.9999995); :class:`~fewshot_monai.data.io.LoadVolume` rounds them."""


def check_label_values(data, *, source: str | None = None) -> None:
    """Raise :class:`InputError` if a label map holds non-integer values (for example an image passed as label).

    Float label maps are accepted when every value is an integer up to :data:`LABEL_INTEGER_ATOL` (label maps
    converted to float32/float64 by other tools).
    """
    source = source or source_of(data)
    t = torch.as_tensor(data.as_tensor() if isinstance(data, MetaTensor) else data)
    if not t.is_floating_point():
        return
    check_finite(t, source=source)
    frac = (t - torch.round(t)).abs() > LABEL_INTEGER_ATOL
    if bool(frac.any()):
        example = float(t[frac].flatten()[0])
        raise InputError(
            source,
            f"label map has {int(frac.sum())} non-integer voxels (e.g. {example:.6g}); "
            "expected integer label ids (is this an image rather than a label?)",
        )


def _affine_of(data) -> np.ndarray | None:
    if isinstance(data, MetaTensor):
        return np.asarray(data.affine.detach().cpu().numpy(), dtype=np.float64)
    return None


def _describe_affine(affine: np.ndarray) -> str:
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    origin = affine[:3, 3]
    return f"spacing ({', '.join(f'{s:.6g}' for s in spacing)}) origin ({', '.join(f'{o:.6g}' for o in origin)})"


def check_geometry(reference, other, *, atol: float = 1e-3, reference_source=None, source=None) -> None:
    """Raise :class:`GeometryMismatchError` if ``other`` is not voxel-aligned with ``reference``.

    Both are channel-first; the spatial shapes (``shape[1:]``) must be equal and, when both carry an affine
    (``MetaTensor``), the affines must agree element-wise within ``atol`` (millimetres for the origin). The
    error's source is ``other``'s file; the message also names the reference file.
    """
    source = source or source_of(other)
    reference_source = reference_source or source_of(reference, "the reference volume")
    ref_shape, shape = _shape(reference)[1:], _shape(other)[1:]
    if ref_shape != shape:
        raise GeometryMismatchError(source, f"spatial shape {shape} does not match {ref_shape} of {reference_source}")
    ref_affine, affine = _affine_of(reference), _affine_of(other)
    if ref_affine is None or affine is None:
        return
    diff = float(np.abs(ref_affine - affine).max())
    if not diff <= atol:
        raise GeometryMismatchError(
            source,
            f"affine differs from that of {reference_source} by up to {diff:.4g} (tolerance {atol:g}): "
            f"{_describe_affine(affine)} vs {_describe_affine(ref_affine)}",
        )


class EnsureVolume(Transform):
    """Check that the input is a channel-first 3D volume with finite intensities; return it unchanged.

    Args:
        check_finite: also reject NaN/inf voxels (:class:`NonFiniteError`); integer arrays always pass.
        num_channels: required number of channels (``None``: any), default 1.
        allow_single_slice: accept volumes with a single slice (``Z == 1``), rejected by default.

    Raises:
        DimensionalityError: not ``(C, X, Y, Z)``, wrong channel count, or a single slice.
        NonFiniteError: NaN or infinite intensities (the message gives the counts).
    """

    def __init__(self, check_finite: bool = True, num_channels: int | None = 1, allow_single_slice: bool = False):
        self.check_finite = check_finite
        self.num_channels = num_channels
        self.allow_single_slice = allow_single_slice

    def __call__(self, img, source: str | None = None):
        check_volume(img, num_channels=self.num_channels, allow_single_slice=self.allow_single_slice, source=source)
        if self.check_finite:
            check_finite(img, source=source)
        return img


class EnsureVolumed(MapTransform):
    """Dictionary version of :class:`EnsureVolume` (``check_finite`` may be given per key)."""

    def __init__(
        self,
        keys: KeysCollection,
        check_finite: bool | Sequence[bool] = True,
        num_channels: int | None = 1,
        allow_single_slice: bool = False,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        flags = (check_finite,) * len(self.keys) if isinstance(check_finite, bool) else tuple(check_finite)
        if len(flags) != len(self.keys):
            raise ValueError(f"check_finite has {len(flags)} entries for {len(self.keys)} keys")
        self.checkers = {
            key: EnsureVolume(flag, num_channels, allow_single_slice) for key, flag in zip(self.keys, flags)
        }

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.checkers[key](d[key])
        return d


class CheckGeometryd(MapTransform):
    """Check that the volumes under ``keys`` are voxel-aligned with the first key's volume.

    Use it after loading (and after orientation) and before any resampling, e.g. to check that a label matches
    its image. Shapes must be equal and affines equal within ``atol``; see :func:`check_geometry`.

    Raises:
        GeometryMismatchError: naming the mismatching file, the reference file and the difference.
    """

    def __init__(self, keys: KeysCollection = ("image", "label"), atol: float = 1e-3, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.atol = atol

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        present = list(self.key_iterator(d))
        if not present:
            return d
        reference = d[present[0]]
        for key in present[1:]:
            check_geometry(reference, d[key], atol=self.atol, reference_source=source_of(reference, str(present[0])))
        return d
