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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["OrganPosition", "organ_positions", "pick_anchor", "search_window"]


@dataclass(frozen=True)
class OrganPosition:
    """Where an organ lies in one support along the slice axis: ``centre`` and ``length`` in world mm, ``voxels``
    its size in slice pixels."""

    centre: float
    length: float
    voxels: int


def organ_positions(label_stack: torch.Tensor, organs: Mapping[str, int], step: float) -> dict[str, OrganPosition]:
    """Each organ's :class:`OrganPosition` in a ``(Z, 1, H, W)`` label stack whose slices are ``step`` mm apart
    (signed, :func:`~fewshot_monai.transforms.slicing.slice_step`). Organs absent from the stack are left out."""
    out = {}
    for organ, label_id in organs.items():
        area = (label_stack == int(label_id)).reshape(label_stack.shape[0], -1).sum(dim=1).cpu().numpy()
        z = np.flatnonzero(area)
        if not z.size:
            continue
        out[organ] = OrganPosition(
            centre=0.5 * (z[0] + z[-1]) * float(step),
            length=(z[-1] - z[0] + 1) * abs(float(step)),
            voxels=int(area.sum()),
        )
    return out


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
