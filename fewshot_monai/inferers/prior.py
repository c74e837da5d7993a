"""A position prior from the support: where, inside the body, the organ lies in plane.

Prototype scores are local: a bright kidney looks like the other kidney, and a spleen like a loop of bowel. The
support's label says where its organ sits relative to the body outline (left or right, front or back), and that
relative position varies little between patients. This module turns it into a soft in-plane prior (rows and
columns of the slice stacks, whatever their slicing plane: support and query must be cut in the same plane, as
``fewshot_monai.transforms.plane.match_plane`` ensures; nothing here assumes which axis is left-right):

1. :func:`body_box` -- the in-plane bounding box of the body in a slice stack (Otsu threshold of the intensities,
   pixels that are body in at least a fifth of the slices);
2. :func:`position_map` -- the support's organ masks cropped to the support's body box, resampled to a
   ``grid x grid`` square, averaged over the organ's slices and blurred: the organ's occupancy in body-relative
   coordinates, saturated to 1 from a fraction of its peak (pooling all slices was more tolerant of anatomical
   variation than per-chunk maps on CHAOS fold 0: ``docs/accuracy.md``);
3. :func:`query_prior` -- the map placed into the query's body box: ``(H, W)`` values in [0, 1];
4. :func:`apply_prior` -- the foreground probability tempered by the prior, ``p q^w / (p q^w + 1 - p)``: it only
   ever lowers the foreground where the support organ never was, and leaves it unchanged where ``q = 1``.

:func:`atlas_prior` makes the same kind of prior in 3D from the support label registered onto the query (the
registration baseline's warped atlas, :mod:`fewshot_monai.evaluation.registration`): 1 within a tolerance of the
warped organ, falling off as a Gaussian of the distance beyond it. It answers the errors the in-plane map cannot:
a prediction that lands on a look-alike structure several centimetres away from where the registered organ lies.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = ["body_box", "position_map", "query_prior", "apply_prior", "atlas_prior"]


def body_box(stack: torch.Tensor, fraction: float = 0.2) -> tuple[int, int, int, int]:
    """In-plane ``(row0, row1, col0, col1)`` (inclusive) of the body in a ``(Z, C, H, W)`` slice stack."""
    from skimage.filters import threshold_otsu

    grey = stack[:, 0].float()
    values = grey.reshape(-1)
    if values.numel() > 200_000:
        values = values[torch.linspace(0, values.numel() - 1, 200_000).long()]
    values = values.numpy()
    if float(values.max()) <= float(values.min()):
        return 0, grey.shape[1] - 1, 0, grey.shape[2] - 1
    threshold = threshold_otsu(values)
    occupancy = (grey > threshold).float().mean(dim=0).numpy() >= fraction
    if not occupancy.any():
        return 0, grey.shape[1] - 1, 0, grey.shape[2] - 1
    rows, cols = np.flatnonzero(occupancy.any(axis=1)), np.flatnonzero(occupancy.any(axis=0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def _crop_resize(x: torch.Tensor, box: tuple[int, int, int, int], size: Sequence[int]) -> torch.Tensor:
    """``(N, H, W)`` -> the ``box`` crop resized to ``size`` (bilinear)."""
    r0, r1, c0, c1 = box
    crop = x[:, r0 : r1 + 1, c0 : c1 + 1].float()[:, None]
    return F.interpolate(crop, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)[:, 0]


def position_map(
    image_stacks: Sequence[torch.Tensor],
    mask_stacks: Sequence[torch.Tensor],
    grid: int = 64,
    sigma: float = 0.15,
    saturation: float = 0.2,
) -> torch.Tensor:
    """Body-relative occupancy map of the support organ, ``(grid, grid)`` in [0, 1].

    Args:
        image_stacks: per support volume, its ``(Z, 3, H, W)`` slices.
        mask_stacks: per support volume, its ``(Z, 1, H, W)`` binary organ masks.
        grid: resolution of the map.
        sigma: Gaussian blur, as a fraction of the body box (the tolerance for anatomical variation).
        saturation: occupancy (fraction of the map's peak) from which the prior is 1: the prior only speaks
            where the support organ clearly never was, it does not shape the organ.
    """
    total = torch.zeros((grid, grid))
    count = 0
    for image, mask in zip(image_stacks, mask_stacks):
        organ = torch.nonzero(mask.reshape(mask.shape[0], -1).any(dim=1)).flatten()
        if organ.numel():
            total += _crop_resize(mask[organ, 0], body_box(image), (grid, grid)).sum(dim=0)
            count += int(organ.numel())
    blurred = ndimage.gaussian_filter((total / max(count, 1)).numpy(), sigma * grid, mode="constant")
    level = float(saturation) * (float(blurred.max()) or 1.0)
    return torch.from_numpy(np.minimum(blurred / level, 1.0)).float()


def query_prior(position: torch.Tensor, query_stack: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` prior of a query stack: the position map placed into the query's body box (0 outside it)."""
    _, _, h, w = query_stack.shape
    r0, r1, c0, c1 = body_box(query_stack)
    placed = F.interpolate(position[None, None], size=(r1 - r0 + 1, c1 - c0 + 1), mode="bilinear", align_corners=False)
    full = torch.zeros((h, w))
    full[r0 : r1 + 1, c0 : c1 + 1] = placed[0, 0].clamp(0.0, 1.0)
    return full


def apply_prior(probabilities: torch.Tensor, prior: torch.Tensor, weight: float) -> torch.Tensor:
    """``(N, 2, H, W)`` probabilities with the foreground tempered by an ``(H, W)`` (or ``(N, H, W)``) prior:
    ``p q^w / (p q^w + 1 - p)``; weight 0 returns the input."""
    if weight <= 0:
        return probabilities
    fg = probabilities[:, 1]
    tempered = fg * prior.clamp(min=1e-6) ** float(weight)
    fg_new = tempered / (tempered + (1.0 - fg)).clamp(min=1e-12)
    return torch.stack([1.0 - fg_new, fg_new], dim=1)


def atlas_prior(
    mask: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 15.0, sigma_mm: float = 15.0
) -> np.ndarray | None:
    """Prior in [0, 1] of the same shape as a 3D registered organ mask (e.g. a ``(Z, H, W)`` slice stack): 1 within
    ``tolerance_mm`` of the mask, then ``exp(-(d - tolerance)^2 / (2 sigma^2))`` at distance ``d`` (mm; ``spacing``
    per axis of ``mask``); None for an empty mask (the registration lost the organ: no prior rather than a prior
    that forbids it everywhere)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"atlas mask must be 3D, got shape {mask.shape}")
    if not mask.any():
        return None
    distance = ndimage.distance_transform_edt(~mask, sampling=[float(s) for s in spacing])
    beyond = np.maximum(distance - float(tolerance_mm), 0.0)
    return np.exp(-0.5 * (beyond / max(float(sigma_mm), 1e-6)) ** 2).astype(np.float32)
