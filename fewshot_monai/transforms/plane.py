"""The slicing plane: which voxel axis a volume is cut along, and the orientation that puts it last.

fewshot-monai cuts every volume along its last axis (:mod:`fewshot_monai.transforms.slicing`). Which axis that is
is decided here, per volume, from its own geometry, and the volume is reoriented with
:class:`monai.transforms.Orientation` (a pure flip/permutation of voxels: exact, and inverted exactly):

- ``axial``: axis codes ``RAS``, slices along S (slice 0 most inferior); displayed (``radiological_view``)
  anterior up, the patient's right on the viewer's left;
- ``coronal``: ``RSA``, slices along A (slice 0 most posterior); superior up, the patient's right on the left;
- ``sagittal``: ``ASR``, slices along R (slice 0 most left); superior up, anterior on the viewer's left.

``axial`` is exactly the orientation used before planes existed (``RAS``). The plane option (:data:`PLANES`):

- ``auto`` (default): the acquisition plane. The slice axis is the stored voxel axis with the largest spacing (the
  thick-slice direction); when the largest spacings are equal within :data:`SPACING_TOLERANCE` (isotropic or
  near-isotropic volumes), the stored third axis if it is among them. The plane is the one whose anatomical letter
  (``nibabel.aff2axcodes`` of the stored affine: L/R sagittal, A/P coronal, S/I axial) that axis carries, so an
  oblique stack (rotated up to 45 degrees) is cut along its own slice axis.
- ``stored``: the plane of the stored third voxel axis (the file's own slice order).
- ``axial``, ``coronal``, ``sagittal``: forced.

A volume whose slice axis is not S gets one ``INFO`` log line. Support and query in different planes are not
comparable slice by slice: :func:`to_plane` resamples a volume into another plane (``Orientation`` then
``Spacing`` with square in-plane pixels), and the callers log when they do so.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform, Orientation, Spacing
from monai.utils import TraceKeys

from fewshot_monai.transforms.validation import source_of

__all__ = [
    "match_plane",
    "PLANES",
    "PLANE_AXCODES",
    "SPACING_TOLERANCE",
    "check_plane",
    "slice_axis",
    "choose_plane",
    "plane_of",
    "slice_label",
    "to_plane",
    "SlicePlane",
    "SlicePlaned",
]

logger = logging.getLogger(__name__)

PLANES = ("auto", "stored", "axial", "coronal", "sagittal")
PLANE_AXCODES = {"axial": "RAS", "coronal": "RSA", "sagittal": "ASR"}
SPACING_TOLERANCE = 0.1  # relative: spacings within 10% of the largest count as equal
_PLANE_OF_LETTER = {"S": "axial", "I": "axial", "A": "coronal", "P": "coronal", "L": "sagittal", "R": "sagittal"}


def check_plane(plane: str) -> str:
    """``plane`` lower-cased if it is one of :data:`PLANES`, else ``ValueError`` listing them."""
    value = str(plane).strip().lower()
    if value not in PLANES:
        raise ValueError(f"plane must be one of {', '.join(PLANES)}; got {plane!r}")
    return value


def _affine(volume_or_affine) -> np.ndarray:
    affine = volume_or_affine.affine if isinstance(volume_or_affine, MetaTensor) else volume_or_affine
    affine = affine.detach().cpu().numpy() if isinstance(affine, torch.Tensor) else np.asarray(affine)
    return np.asarray(affine, dtype=np.float64)


def slice_axis(affine, tolerance: float = SPACING_TOLERANCE) -> int:
    """The stored voxel axis (0, 1 or 2) of the acquisition's through-plane direction: the one with the largest
    spacing; among spacings within ``tolerance`` (relative) of the largest, axis 2 if it is one, else the last."""
    spacing = np.linalg.norm(_affine(affine)[:3, :3], axis=0)
    candidates = np.flatnonzero(spacing >= spacing.max() * (1.0 - float(tolerance)))
    return 2 if 2 in candidates else int(candidates[-1])


def _letters(affine) -> tuple[str, str, str]:
    import nibabel as nib

    return tuple(nib.aff2axcodes(_affine(affine)))


def choose_plane(affine, plane: str = "auto") -> str:
    """The plane (``axial``, ``coronal`` or ``sagittal``) a volume with this stored ``affine`` is cut in."""
    plane = check_plane(plane)
    if plane in PLANE_AXCODES:
        return plane
    axis = 2 if plane == "stored" else slice_axis(affine)
    return _PLANE_OF_LETTER[_letters(affine)[axis]]


def plane_of(volume) -> str:
    """The plane a loaded volume is cut in: that of the anatomical letter of its last axis."""
    return _PLANE_OF_LETTER[_letters(volume)[2]]


def slice_label(plane: str) -> str:
    """How figures name one slice: ``"axial slice"`` in the axial plane, ``"slice"`` otherwise."""
    return "axial slice" if plane == "axial" else "slice"


def to_plane(volume: MetaTensor, plane: str, slice_spacing: float | None = None, mode: str = "bilinear") -> MetaTensor:
    """Resample a loaded volume into another plane: reoriented to :data:`PLANE_AXCODES` ``[plane]``, then resampled
    with square in-plane pixels (the finer of its two in-plane spacings) and ``slice_spacing`` mm between slices
    (default: unchanged). ``mode``: ``"bilinear"`` for images, ``"nearest"`` for labels (kept integer)."""
    from monai.data.utils import affine_to_spacing

    oriented = Orientation(axcodes=PLANE_AXCODES[check_plane(plane)], labels=None)(volume)
    spacing = affine_to_spacing(oriented.affine, r=3).tolist()
    pixel = min(spacing[0], spacing[1])
    pixdim = (pixel, pixel, float(slice_spacing) if slice_spacing else spacing[2])
    out = Spacing(pixdim=pixdim, mode=mode, dtype=torch.float32)(oriented)
    return out.to(volume.dtype) if not volume.is_floating_point() else out


class SlicePlane(InvertibleTransform):
    """Reorient a ``(C, X, Y, Z)`` ``MetaTensor`` so that its slice axis (see the module docstring) is the last one.

    Args:
        plane: one of :data:`PLANES` (``"auto"``: the acquisition plane).
        log: log one line when the chosen plane is not axial.

    The transform is a :class:`monai.transforms.Orientation` with the plane's axis codes; :meth:`inverse` undoes it
    exactly (it is recorded in ``applied_operations`` as that ``Orientation``).
    """

    def __init__(self, plane: str = "auto", log: bool = True):
        self.plane = check_plane(plane)
        self.log = log

    def axcodes(self, img) -> str:
        """The axis codes ``img`` (as stored) is reoriented to."""
        return PLANE_AXCODES[choose_plane(img, self.plane)]

    def __call__(self, img: MetaTensor, axcodes: str | None = None) -> MetaTensor:
        """Reorient ``img``; ``axcodes``: use these codes instead of choosing them from ``img`` (the label of an
        image follows the image's plane)."""
        codes = axcodes or self.axcodes(img)
        if self.log and codes != PLANE_AXCODES["axial"]:
            letters = "".join(_letters(img))
            logger.info(
                "%s: cut in the %s plane (stored axes %s, spacing %s mm; plane=%s): slices are not axial",
                source_of(img, "volume"),
                _PLANE_OF_LETTER[codes[2]],
                letters,
                "x".join(f"{s:g}" for s in np.round(np.linalg.norm(_affine(img)[:3, :3], axis=0), 2)),
                self.plane,
            )
        return Orientation(axcodes=codes, labels=None)(img)

    def inverse(self, data: MetaTensor) -> MetaTensor:
        import nibabel as nib

        transform = self.pop_transform(data, check=False)  # recorded by the Orientation instance this call made
        codes = "".join(nib.aff2axcodes(transform[TraceKeys.EXTRA_INFO]["original_affine"]))
        back = Orientation(axcodes=codes, labels=None)
        with back.trace_transform(False):
            return back(data)


class SlicePlaned(MapTransform, InvertibleTransform):
    """Dictionary version of :class:`SlicePlane`: the plane is chosen from the first present key (the image) and
    every key is reoriented to it, so an image and its label stay voxel-aligned."""

    def __init__(self, keys: KeysCollection, plane: str = "auto", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.transform = SlicePlane(plane)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        codes = None
        for key in self.key_iterator(d):
            if codes is None:
                codes = self.transform.axcodes(d[key])
                d[key] = self.transform(d[key], axcodes=codes)
            else:
                d[key] = Orientation(axcodes=codes, labels=None)(d[key])
        return d

    def inverse(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform.inverse(d[key])
        return d


def match_plane(case: dict, reference, role: str = "query") -> dict:
    """``case``'s ``image`` (and ``label``, if any) in the plane of ``reference`` (a loaded support image): unchanged
    when already cut in that plane or without a reference (a self-trained student has no support), else resampled
    into it (:func:`~fewshot_monai.transforms.plane.to_plane`: square in-plane pixels, the reference's slice spacing)
    with one log line."""
    from fewshot_monai.transforms.slicing import slice_spacing

    if reference is None:
        return dict(case)
    own, target = plane_of(case["image"]), plane_of(reference)
    if own == target:
        return dict(case)
    logger.info(
        "%s: %s cut in the %s plane, the support in the %s plane: %s resampled into the %s plane",
        source_of(case["image"], "volume"),
        role,
        own,
        target,
        role,
        target,
    )
    out = dict(case)
    spacing = slice_spacing(reference)
    out["image"] = to_plane(case["image"], target, spacing)
    if case.get("label") is not None:
        out["label"] = to_plane(case["label"], target, spacing, mode="nearest")
    return out
