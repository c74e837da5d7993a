"""A position prior from the support: where, inside the body, the organ lies in plane.

Prototype scores are local: a bright kidney looks like the other kidney, and a spleen like a loop of bowel. The
support's label says where its organ sits relative to the body outline (left or right, front or back), and that
relative position varies little between patients. This module turns it into a soft in-plane prior:

1. :func:`body_box` -- the in-plane bounding box of the body in a slice stack (Otsu threshold of the intensities,
   pixels that are body in at least a fifth of the slices);
2. :func:`position_maps` -- per chunk, the support's organ masks cropped to the support's body box, resampled to a
   ``grid x grid`` square, averaged, blurred and scaled to a maximum of 1: the organ's occupancy in
   body-relative coordinates; the last map pools every organ slice (for slices outside any chunk);
3. :func:`query_prior` -- the maps placed into the query's body box: ``(Z, H, W)`` values in [0, 1];
4. :func:`apply_prior` -- the foreground probability tempered by the prior, ``p q^w / (p q^w + 1 - p)``: it only
   ever lowers the foreground where the support organ never was, and leaves it unchanged where ``q = 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = ["body_box", "position_maps", "query_prior", "apply_prior"]


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


def position_maps(
    image_stacks: Sequence[torch.Tensor],
    mask_stacks: Sequence[torch.Tensor],
    chunk_slices: Sequence[Sequence[Sequence[int]]],
    grid: int = 64,
    sigma: float = 0.08,
) -> torch.Tensor:
    """Body-relative occupancy maps of the support organ, ``(C + 1, grid, grid)`` in [0, 1].

    Args:
        image_stacks: per support volume, its ``(Z, 3, H, W)`` slices.
        mask_stacks: per support volume, its ``(Z, 1, H, W)`` binary organ masks.
        chunk_slices: per support volume, per chunk, the slice indices of that chunk of the organ.
        grid: resolution of the maps.
        sigma: Gaussian blur, as a fraction of the body box (the tolerance for anatomical variation).
    """
    n_chunks = len(chunk_slices[0])
    sums = torch.zeros((n_chunks + 1, grid, grid))
    counts = torch.zeros(n_chunks + 1)
    for image, mask, chunks in zip(image_stacks, mask_stacks, chunk_slices):
        box = body_box(image)
        for c, idx in enumerate(chunks):
            if len(idx):
                resized = _crop_resize(mask[list(idx), 0], box, (grid, grid))
                sums[c] += resized.sum(dim=0)
                sums[n_chunks] += resized.sum(dim=0)
                counts[c] += len(idx)
                counts[n_chunks] += len(idx)
    maps = sums / counts.clamp(min=1)[:, None, None]
    blurred = np.stack([ndimage.gaussian_filter(m.numpy(), sigma * grid, mode="constant") for m in maps])
    peak = blurred.reshape(len(blurred), -1).max(axis=1)
    return torch.from_numpy(blurred / np.where(peak > 0, peak, 1.0)[:, None, None]).float()


def query_prior(maps: torch.Tensor, query_stack: torch.Tensor, chunk_of_slice: torch.Tensor) -> torch.Tensor:
    """``(Z, H, W)`` prior of a query stack: chunk ``c``'s map in slices of chunk ``c``, the pooled map elsewhere,
    each placed into the query's body box (0 outside it)."""
    z, _, h, w = query_stack.shape
    r0, r1, c0, c1 = body_box(query_stack)
    placed = F.interpolate(maps[:, None], size=(r1 - r0 + 1, c1 - c0 + 1), mode="bilinear", align_corners=False)
    full = torch.zeros((maps.shape[0], h, w))
    full[:, r0 : r1 + 1, c0 : c1 + 1] = placed[:, 0].clamp(0.0, 1.0)
    index = torch.where(chunk_of_slice >= 0, chunk_of_slice, torch.full_like(chunk_of_slice, maps.shape[0] - 1))
    return full[index]


def apply_prior(probabilities: torch.Tensor, prior: torch.Tensor, weight: float) -> torch.Tensor:
    """``(N, 2, H, W)`` probabilities with the foreground tempered by a ``(N, H, W)`` prior: ``p q^w / (p q^w + 1 -
    p)``; weight 0 returns the input."""
    if weight <= 0:
        return probabilities
    fg = probabilities[:, 1]
    tempered = fg * prior.clamp(min=1e-6) ** float(weight)
    fg_new = tempered / (tempered + (1.0 - fg)).clamp(min=1e-12)
    return torch.stack([1.0 - fg_new, fg_new], dim=1)
