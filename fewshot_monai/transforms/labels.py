"""Label helpers: binary organ masks, the axial extent of an organ, and the chunking of that extent.

The chunk helpers implement the slice grouping of the SSL-ALPNet 3D evaluation protocol: the organ's axial range
``[z_first, z_last]`` (inclusive) in the support and in the query volume is split into the same number ``C`` of
contiguous chunks; the centre slice of support chunk ``i`` is the support for every query slice of chunk ``i``.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from fewshot_monai.errors import EmptyMaskError, MissingOrganError
from fewshot_monai.transforms.validation import source_of

__all__ = [
    "SelectOrgan",
    "SelectOrgand",
    "organ_z_extent",
    "chunk_slices",
    "chunk_centres",
    "merge_organ_probabilities",
    "largest_component",
]


def _plain(x) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


class SelectOrgan(Transform):
    """Turn a label map into the binary mask ``{0, 1}`` of one organ (``label == label_id``).

    Args:
        label_id: the organ's label id.
        name: optional organ name, used in error messages (e.g. ``"liver"``).
        dtype: output dtype; ``None`` keeps the label's dtype.

    Raises:
        MissingOrganError: ``label_id`` does not occur in the label map; the message names the file and lists the
            ids that are present.
    """

    def __init__(self, label_id: int, name: str | None = None, dtype: torch.dtype | None = None):
        self.label_id = int(label_id)
        self.name = name
        self.dtype = dtype

    def __call__(self, label):
        plain = _plain(label)
        hit = plain == self.label_id
        if not bool(hit.any()):
            present = [int(v) for v in torch.unique(plain).tolist()]
            organ = f"organ {self.name!r} (label id {self.label_id})" if self.name else f"label id {self.label_id}"
            raise MissingOrganError(
                source_of(label), f"{organ} does not occur in the label map; ids present: {present}"
            )
        mask = hit.to(plain.dtype if self.dtype is None else self.dtype)
        if isinstance(label, MetaTensor):
            return MetaTensor(mask, meta=copy.deepcopy(label.meta), applied_operations=list(label.applied_operations))
        return mask


class SelectOrgand(MapTransform):
    """Dictionary version of :class:`SelectOrgan`; replaces each key's label map by the organ mask.

    Copy the label first (``monai.transforms.CopyItemsd``) to keep the full label map as well.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_id: int,
        name: str | None = None,
        dtype: torch.dtype | None = None,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.selector = SelectOrgan(label_id, name, dtype)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.selector(d[key])
        return d


def organ_z_extent(mask, *, source: str | None = None) -> tuple[int, int]:
    """First and last (inclusive) indices along the last (axial) axis where ``mask`` is non-zero.

    Args:
        mask: any array ``(..., Z)``, e.g. a ``(1, X, Y, Z)`` organ mask.
        source: file name for the error (default: the ``MetaTensor``'s ``filename_or_obj``).

    Raises:
        EmptyMaskError: the mask has no foreground voxel.
    """
    plain = _plain(mask)
    if plain.ndim < 1:
        raise ValueError("mask must have at least one dimension")
    per_slice = (plain != 0).reshape(-1, plain.shape[-1]).any(dim=0)
    z = torch.nonzero(per_slice).flatten()
    if z.numel() == 0:
        raise EmptyMaskError(source or source_of(mask), f"mask of shape {tuple(plain.shape)} has no foreground voxel")
    return int(z[0]), int(z[-1])


def _check_range(z_first: int, z_last: int, n_chunks: int) -> tuple[int, int, int]:
    z_first, z_last, n_chunks = int(z_first), int(z_last), int(n_chunks)
    if z_last < z_first:
        raise ValueError(f"empty slice range: z_first={z_first} > z_last={z_last}")
    if n_chunks < 1:
        raise ValueError(f"n_chunks must be >= 1, got {n_chunks}")
    return z_first, z_last, n_chunks


def chunk_slices(z_first: int, z_last: int, n_chunks: int) -> list[np.ndarray]:
    """Split the inclusive slice range ``[z_first, z_last]`` into ``n_chunks`` contiguous, near-equal chunks.

    With ``n = z_last - z_first + 1`` slices and ``n >= n_chunks``, every chunk has ``n // n_chunks`` slices and
    the first ``n % n_chunks`` chunks have one more (the remainder goes to the lower chunks), e.g.
    ``chunk_slices(10, 19, 3) -> [10..13], [14..16], [17..19]``.

    With fewer slices than chunks (``n < n_chunks``) there are still exactly ``n_chunks`` chunks, so support and
    query chunks always pair up: chunk ``i`` is the single slice ``z_first + (i * n) // n_chunks``; consecutive
    chunks then share a slice and every slice is used, e.g. ``chunk_slices(0, 1, 3) -> [0], [0], [1]``.

    Returns:
        ``n_chunks`` int64 arrays of slice indices, in increasing order.
    """
    z_first, z_last, n_chunks = _check_range(z_first, z_last, n_chunks)
    n = z_last - z_first + 1
    if n < n_chunks:
        return [np.array([z_first + (i * n) // n_chunks], dtype=np.int64) for i in range(n_chunks)]
    base, extra = divmod(n, n_chunks)
    chunks, start = [], z_first
    for i in range(n_chunks):
        size = base + (1 if i < extra else 0)
        chunks.append(np.arange(start, start + size, dtype=np.int64))
        start += size
    return chunks


def chunk_centres(z_first: int, z_last: int, n_chunks: int) -> list[int]:
    """The centre slice of each chunk of :func:`chunk_slices`: ``chunk[len(chunk) // 2]``.

    For an even-length chunk this is the upper of the two middle slices, e.g. ``chunk_centres(10, 19, 3) ->
    [12, 15, 18]``.
    """
    return [int(chunk[len(chunk) // 2]) for chunk in chunk_slices(z_first, z_last, n_chunks)]


def merge_organ_probabilities(probabilities: Mapping[int, torch.Tensor], threshold: float = 0.5) -> torch.Tensor:
    """One label map from per-organ foreground probabilities segmented separately.

    Each voxel gets the label id of the organ with the highest probability among those above ``threshold``
    (so two organs predicted on the same voxel never overwrite each other in input order), 0 elsewhere.

    Args:
        probabilities: label id -> foreground probability volume, all of the same shape.
        threshold: minimum probability for a voxel to belong to an organ.

    Returns:
        uint8 label map of that shape.
    """
    if not probabilities:
        raise ValueError("no organ probabilities to merge")
    ids = list(probabilities)
    stacked = torch.stack([torch.as_tensor(probabilities[i]).float() for i in ids])
    best_prob, best = stacked.max(dim=0)
    lookup = torch.tensor(ids, dtype=torch.uint8)
    return torch.where(best_prob > threshold, lookup[best], torch.zeros((), dtype=torch.uint8))


def largest_component(foreground):
    """The largest fully connected component (26-neighbourhood in 3D) of a boolean array or tensor.

    An all-False input is returned as it is; otherwise a boolean mask of the same type
    (MONAI's ``get_largest_connected_component_mask``).
    """
    from monai.transforms.utils import get_largest_connected_component_mask

    if not bool(foreground.any()):
        return foreground
    mask = get_largest_connected_component_mask(foreground, connectivity=None)
    return mask.astype(bool) if isinstance(mask, np.ndarray) else mask.bool()
