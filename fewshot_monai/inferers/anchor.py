"""Organ ranges found next to an anchor organ: the support's layout along the slice axis guides the query's search.

Without a given range (EP2, batch segmentation), each organ's range comes from a first pass over the whole query
(:func:`~fewshot_monai.inferers.protocol.estimate_z_range`). In a long CT volume (thorax to pelvis) that pass can
find kidney- or spleen-like texture far from the organ and pick the wrong slices. When the support labels several
organs, their layout is known: the kidneys' centre lies so many mm below the liver's. The anchor (by default the
organ with the most support voxels, the easiest to find) is searched first, everywhere; every other organ is then
searched only in a window around where the support's layout puts it, relative to the anchor's range found in the
query: the predicted centre plus or minus the organ's support length (a window twice the organ's length).

Positions are world millimetres along the slice axis (:func:`~fewshot_monai.transforms.slicing.slice_step`), so
supports and queries with different slice spacings or slice orders agree. With k supports the offsets and lengths
are averaged.

The same layout places an organ in the plane too (``component_anchor``): its centroid lies so many mm from the
anchor's, right-left, front-back and along the slice axis. Where the prediction of an organ falls apart into
several 3D pieces, :func:`nearest_component` keeps the piece nearest to that predicted centroid instead of the
largest one (the other kidney, or a bright neighbour, can be the largest piece).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "OrganPosition",
    "nearest_component",
    "organ_positions",
    "pick_anchor",
    "predicted_centroid",
    "search_window",
    "stack_centroid",
]


@dataclass(frozen=True)
class OrganPosition:
    """Where an organ lies in one support along the slice axis: ``centre`` and ``length`` in world mm, ``voxels``
    its size in slice pixels, ``centroid`` its centre of mass in mm (slice axis, slice rows, slice columns;
    :func:`stack_centroid`)."""

    centre: float
    length: float
    voxels: int
    centroid: tuple[float, float, float] | None = None


def stack_centroid(
    foreground, step: float, pixel_mm: tuple[float, float] = (1.0, 1.0)
) -> tuple[float, float, float] | None:
    """Centre of mass of a ``(Z, H, W)`` boolean stack in mm: slice index times the signed ``step``, rows and
    columns times ``pixel_mm``; None when it is empty."""
    idx = np.argwhere(np.asarray(torch.as_tensor(foreground).cpu().numpy(), dtype=bool))
    if not len(idx):
        return None
    z, r, c = idx.mean(axis=0)
    return float(z) * float(step), float(r) * float(pixel_mm[0]), float(c) * float(pixel_mm[1])


def organ_positions(
    label_stack: torch.Tensor, organs: Mapping[str, int], step: float, pixel_mm: tuple[float, float] = (1.0, 1.0)
) -> dict[str, OrganPosition]:
    """Each organ's :class:`OrganPosition` in a ``(Z, 1, H, W)`` label stack whose slices are ``step`` mm apart
    (signed, :func:`~fewshot_monai.transforms.slicing.slice_step`) and whose pixels are ``pixel_mm`` mm (rows,
    columns). Organs absent from the stack are left out."""
    out = {}
    for organ, label_id in organs.items():
        mask = label_stack[:, 0] == int(label_id)
        area = mask.reshape(label_stack.shape[0], -1).sum(dim=1).cpu().numpy()
        z = np.flatnonzero(area)
        if not z.size:
            continue
        out[organ] = OrganPosition(
            centre=0.5 * (z[0] + z[-1]) * float(step),
            length=(z[-1] - z[0] + 1) * abs(float(step)),
            voxels=int(area.sum()),
            centroid=stack_centroid(mask, step, pixel_mm),
        )
    return out


def predicted_centroid(
    positions: Sequence[Mapping[str, OrganPosition]], organ: str, anchor: str, anchor_centroid
) -> np.ndarray | None:
    """Where the supports' layout puts ``organ`` in a query whose anchor organ has its centroid at
    ``anchor_centroid`` (mm, :func:`stack_centroid`): that centroid plus the mean support offset; None when no
    support holds both organs or the anchor was not found."""
    pairs = [(p[organ], p[anchor]) for p in positions if organ in p and anchor in p]
    if not pairs or anchor_centroid is None:
        return None
    offset = np.mean([np.subtract(o.centroid, a.centroid) for o, a in pairs], axis=0)
    return np.asarray(anchor_centroid, dtype=float) + offset


def nearest_component(
    foreground, target, step: float, pixel_mm: tuple[float, float] = (1.0, 1.0), min_fraction: float = 0.1
):
    """The 3D connected component (26-neighbourhood) of a ``(Z, H, W)`` boolean stack whose centroid is nearest to
    ``target`` (mm, as :func:`stack_centroid`), among the components holding at least ``min_fraction`` of the
    largest one's voxels (specks never win); a mask of the input's type. An empty input is returned as it is."""
    from skimage.measure import label, regionprops

    is_tensor = isinstance(foreground, torch.Tensor)
    array = np.asarray(foreground.cpu().numpy() if is_tensor else foreground, dtype=bool)
    if not array.any():
        return foreground
    components = label(array, connectivity=3)
    regions = regionprops(components)
    largest = max(r.area for r in regions)
    scale = np.array([float(step), float(pixel_mm[0]), float(pixel_mm[1])])
    candidates = [r for r in regions if r.area >= min_fraction * largest]
    best = min(candidates, key=lambda r: float(np.linalg.norm(np.asarray(r.centroid) * scale - target)))
    mask = components == best.label
    return torch.from_numpy(mask).to(foreground.device) if is_tensor else mask


def pick_anchor(positions: Sequence[Mapping[str, OrganPosition]], anchor: str, organs: Sequence[str]) -> str:
    """The anchor organ: ``anchor`` itself (an organ name), or for ``"auto"`` the organ of ``organs`` with the most
    support voxels (summed over the supports)."""
    if anchor != "auto":
        return anchor
    return max(organs, key=lambda o: sum(p[o].voxels for p in positions if o in p))


def search_window(
    positions: Sequence[Mapping[str, OrganPosition]],
    organ: str,
    anchor: str,
    anchor_range: tuple[int, int],
    step: float,
    n_slices: int,
) -> tuple[int, int] | None:
    """Inclusive query slices where ``organ`` is searched, given the anchor's query range ``anchor_range``.

    Args:
        positions: per support, :func:`organ_positions`.
        organ, anchor: organ names; each support must hold both.
        anchor_range: the anchor's inclusive (first, last) slices in the query.
        step: the query's signed mm per slice.
        n_slices: the query's slice count.

    Returns:
        the window (predicted centre ± the organ's support length), or None when the supports do not hold both
        organs or the window misses the query entirely (the organ is then searched everywhere).
    """
    pairs = [(p[organ], p[anchor]) for p in positions if organ in p and anchor in p]
    if not pairs or step == 0:
        return None
    offset = float(np.mean([o.centre - a.centre for o, a in pairs])) / float(step)  # query slices
    half = float(np.mean([o.length for o, _ in pairs])) / abs(float(step))
    centre = 0.5 * (anchor_range[0] + anchor_range[1]) + offset
    lo, hi = max(0, math.floor(centre - half)), min(n_slices - 1, math.ceil(centre + half))
    return (lo, hi) if lo <= hi else None
