"""A MONAI inferer that segments a 3D query volume from labelled support volumes with a 2D few-shot network.

A thin adapter over :class:`~fewshot_monai.inferers.segmenter.FewShotSegmenter` for ``SupervisedEvaluator`` users:
each call prepares the support it is given and segments the query batch; it keeps nothing between calls. Batch
jobs that segment many queries from one support should use the segmenter directly (it prepares the support
once), as ``fewshot-monai segment`` and the bundle's ``inference.yaml`` do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

from fewshot_monai.inferers.segmenter import FewShotSegmenter, as_volumes

__all__ = ["FewShotVolumeInferer"]

_ORGAN = "organ"


def _per_query_ranges(query_z_range, n_queries: int) -> list:
    """One (first, last) range (or None) per query: a single pair applies to every query."""
    if query_z_range is None:
        return [None] * n_queries
    pairs = list(query_z_range)
    if len(pairs) == 2 and all(isinstance(v, (int, np.integer)) for v in pairs):
        return [tuple(int(v) for v in pairs)] * n_queries
    if len(pairs) != n_queries:
        raise ValueError(f"got {len(pairs)} query_z_range entries for {n_queries} query volumes")
    return pairs


class FewShotVolumeInferer(Inferer):
    """Segment 3D query volumes slice by slice from one or more labelled support volumes (one organ).

    The protocol is SSL-ALPNet's (see :mod:`fewshot_monai.inferers.protocol`): the support organ's extent is split
    into ``n_chunks`` chunks whose centre slices are the support slices, and each query chunk is segmented from
    the same-index support slice(s). The query organ range is given (``query_z_range``: EP1) or estimated from a
    first pass (EP2).

    Args:
        n_chunks: chunks per organ extent (3 in SSL-ALPNet).
        z_range: ``"estimate"`` (default: estimated unless a call passes ``query_z_range``) or ``"given"`` (every
            call must pass ``query_z_range``).
        spatial_size: in-plane size of the slices the network sees.
        batch_size: slices per network call.
        pseudo_label: optional inference-time pseudo-labelling stage
            (:func:`fewshot_monai.pseudolabel.get_pseudo_label`).
        largest_component, peak_fraction, prior_weight, spatial_prior, min_agreement: as
            :class:`~fewshot_monai.inferers.segmenter.FewShotSegmenter`.

    Call:
        ``inferer(inputs, network, support_images=..., support_masks=..., query_z_range=None)`` where
        ``inputs`` is the query, ``(B, 1, X, Y, Z)`` or ``(1, X, Y, Z)``, z-scored like the supports;
        ``support_images``/``support_masks`` are one ``(1, X', Y', Z')`` volume or a sequence of them (k-shot),
        masks binary. Returns background/foreground probabilities ``(B, 2, X, Y, Z)`` in the query's geometry (a
        ``MetaTensor`` with the query's meta when the query is one).
    """

    def __init__(
        self,
        n_chunks: int = 3,
        z_range: str = "estimate",
        spatial_size: int = 256,
        batch_size: int = 8,
        pseudo_label=None,
        largest_component: bool = True,
        peak_fraction: float | None = 0.5,
        prior_weight: float = 0.5,
        spatial_prior: float = 0.0,
        min_agreement: float = 0.0,
    ) -> None:
        if z_range not in ("estimate", "given"):
            raise ValueError(f"z_range must be 'estimate' or 'given', got {z_range!r}")
        if not 0.0 <= float(min_agreement) <= 1.0:
            raise ValueError(f"min_agreement must be in [0, 1], got {min_agreement}")
        self.z_range = z_range
        self.options = {
            "n_chunks": n_chunks,
            "spatial_size": spatial_size,
            "batch_size": batch_size,
            "pseudo_label": pseudo_label,
            "largest_component": largest_component,
            "peak_fraction": peak_fraction,
            "prior_weight": prior_weight,
            "spatial_prior": spatial_prior,
            "min_agreement": min_agreement,
        }

    def segmenter(self, network, support_images, support_masks) -> FewShotSegmenter:
        """The segmenter of one support: binary support masks, one organ."""
        volumes = as_volumes(support_masks, "support_masks")
        masks = [
            ((m if isinstance(m, torch.Tensor) else torch.as_tensor(np.asarray(m))) > 0).to(torch.uint8)
            for m in volumes
        ]
        return FewShotSegmenter(network, support_images, masks, {_ORGAN: 1}, **self.options)

    def __call__(
        self,
        inputs: torch.Tensor,
        network,
        *args: Any,
        support_images=None,
        support_masks=None,
        query_z_range: tuple[int, int] | Sequence[tuple[int, int]] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if support_images is None or support_masks is None:
            raise ValueError("FewShotVolumeInferer needs support_images=... and support_masks=...")
        batched = inputs.ndim == 5
        queries = list(inputs) if batched else [inputs]
        ranges = _per_query_ranges(query_z_range, len(queries))
        if self.z_range == "given" and any(r is None for r in ranges):
            raise ValueError("z_range='given' needs query_z_range=(first, last) for every query")
        for query in queries:
            if query.ndim != 4:
                raise ValueError(f"query must be (C, X, Y, Z), got shape {tuple(query.shape)}")
        segmenter = self.segmenter(network, support_images, support_masks)
        outputs = []
        for query, z in zip(queries, ranges):
            fg = segmenter(query, {_ORGAN: z}).organs[_ORGAN].probability.float()
            outputs.append(torch.stack([1.0 - fg, fg]))
        out = torch.stack(outputs)
        if isinstance(inputs, MetaTensor):
            # keep the query's (batched) meta: affine, file name and transform history, for saving and inverting
            out = MetaTensor(out).copy_meta_from(inputs if batched else inputs[None])
            out.is_batch = True
        return out
