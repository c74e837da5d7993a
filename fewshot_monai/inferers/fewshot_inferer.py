"""A MONAI inferer that segments a 3D query volume from labelled support volumes with a 2D few-shot network."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

from fewshot_monai.inferers.protocol import FewShotContext, FewShotSliceProtocol, support_set_from_stacks
from fewshot_monai.transforms.labels import largest_component
from fewshot_monai.transforms.slicing import slice_spacing, slices_to_volume, volume_to_slices
from fewshot_monai.transforms.validation import source_of

__all__ = ["FewShotVolumeInferer", "keep_largest_component"]

RefinementStage = Callable[[Any, FewShotSliceProtocol, FewShotContext], torch.Tensor]


def _as_volume_list(volumes, name: str) -> list[torch.Tensor]:
    """Accept one (C, X, Y, Z) volume, a (K, C, X, Y, Z) batch or a sequence of volumes."""
    if isinstance(volumes, torch.Tensor):
        if volumes.ndim == 4:
            return [volumes]
        if volumes.ndim == 5:
            return list(volumes)
        raise ValueError(f"{name} must be (C, X, Y, Z) or (K, C, X, Y, Z), got shape {tuple(volumes.shape)}")
    volumes = list(volumes)
    if not volumes:
        raise ValueError(f"{name} is empty")
    return volumes


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


def keep_largest_component(probabilities: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``(Z, 2, H, W)`` probabilities whose foreground outside the largest 3D connected component of
    ``p_fg > threshold`` is set to background (p_fg = 0); the input itself when there is nothing to remove."""
    foreground = probabilities[:, 1] > threshold
    drop = foreground & ~largest_component(foreground)
    if not bool(drop.any()):
        return probabilities
    kept = probabilities.clone()
    kept[:, 1][drop] = 0.0
    kept[:, 0][drop] = 1.0
    return kept


class FewShotVolumeInferer(Inferer):
    """Segment 3D query volumes slice by slice from one or more labelled support volumes.

    The query and every support volume are cut into axial slices (resized in plane to ``spatial_size``); the
    support organ's extent is split into ``n_chunks`` chunks whose centre slices are the support slices, and each
    query chunk is segmented from the same-index support slice(s) (SSL-ALPNet's protocol, see
    :mod:`fewshot_monai.inferers.protocol`). The query organ range is either given (``query_z_range``, e.g. from a
    label in an evaluation: EP1) or estimated from a first pass (``z_range="estimate"``: EP2, nothing from the
    query's label is used). An optional ``refinement`` stage (inference-time pseudo-labelling) receives the plain
    result with the cached query features and returns new probabilities. An organ is one connected object: with
    ``largest_component`` the foreground outside the largest 3D component is removed, from the plain prediction
    (before any refinement sees it) and from the final one.

    Args:
        n_chunks: chunks per organ extent (3 in SSL-ALPNet).
        z_range: ``"estimate"`` (default: the range is estimated unless a call passes ``query_z_range``, e.g. from
            a registration) or ``"given"`` (then every call must pass ``query_z_range``).
        spatial_size: in-plane size of the slices the network sees.
        batch_size: slices per network call.
        refinement: optional stage ``(network, protocol, context) -> (Z, 2, H, W)`` probabilities.
        largest_component: keep only the largest 3D connected component of the predicted organ.
        peak_fraction, prior_weight: how the organ range is estimated (``z_range="estimate"``), see
            :func:`~fewshot_monai.inferers.protocol.estimate_z_range`; the prior length is the support organ's
            length in mm over the query's slice spacing.
        min_agreement: the refinement stage steps aside when its prediction overlaps the plain one with a Dice
            below this (the plain prediction is kept, and ``context.diagnostics["refinement"]`` says so): a stage
            that moves the organ somewhere else has followed wrong pseudo-labels. 0 (default) disables the check.
        spatial_prior: weight of the support organ's in-plane position prior (body-relative, pooled over its slices;
            :mod:`fewshot_monai.inferers.prior`) on the foreground probabilities; 0 (default): none.

    Call:
        ``inferer(inputs, network, support_images=..., support_masks=..., query_z_range=None)`` where
        ``inputs`` is the query, ``(B, 1, X, Y, Z)`` or ``(1, X, Y, Z)``, z-scored like the supports;
        ``support_images``/``support_masks`` are one ``(1, X', Y', Z')`` volume or a sequence of them (k-shot),
        masks binary; ``query_features`` optionally gives, per query, the cached features of an earlier call
        (``last_contexts[i].query_features``: segmenting several organs of one query encodes it once). Returns
        foreground/background probabilities ``(B, 2, X, Y, Z)`` in the query's geometry
        (a ``MetaTensor`` with the query's meta when the query is one). After a call, ``last_contexts`` holds the
        per-query :class:`~fewshot_monai.inferers.protocol.FewShotContext` (diagnostics, estimated range).
    """

    def __init__(
        self,
        n_chunks: int = 3,
        z_range: str = "estimate",
        spatial_size: int = 256,
        batch_size: int = 8,
        refinement: RefinementStage | None = None,
        largest_component: bool = True,
        peak_fraction: float | None = 0.5,
        prior_weight: float = 0.5,
        spatial_prior: float = 0.0,
        min_agreement: float = 0.0,
    ) -> None:
        if z_range not in ("estimate", "given"):
            raise ValueError(f"z_range must be 'estimate' or 'given', got {z_range!r}")
        self.protocol = FewShotSliceProtocol(
            n_chunks=n_chunks,
            batch_size=batch_size,
            peak_fraction=peak_fraction,
            prior_weight=prior_weight,
            spatial_prior=spatial_prior,
        )
        self.z_range = z_range
        self.spatial_size = spatial_size
        self.refinement = refinement
        self.largest_component = bool(largest_component)
        if not 0.0 <= float(min_agreement) <= 1.0:
            raise ValueError(f"min_agreement must be in [0, 1], got {min_agreement}")
        self.min_agreement = float(min_agreement)
        self.last_contexts: list[FewShotContext] = []

    def support_set(self, support_images, support_masks):
        """The chunk-centre support slices of the given support volumes."""
        images = _as_volume_list(support_images, "support_images")
        masks = _as_volume_list(support_masks, "support_masks")
        if len(images) != len(masks):
            raise ValueError(f"got {len(images)} support images but {len(masks)} support masks")
        image_stacks = [volume_to_slices(img, self.spatial_size, 3, "bilinear").float() for img in images]
        mask_stacks = [(volume_to_slices(m, self.spatial_size, 1, "nearest") > 0).float() for m in masks]
        sources = [
            source_of(m) or source_of(img) or f"support volume {k}" for k, (img, m) in enumerate(zip(images, masks))
        ]
        spacings = [slice_spacing(img) for img in images]
        return support_set_from_stacks(
            image_stacks,
            mask_stacks,
            self.protocol.n_chunks,
            sources,
            spacings,
            position=self.protocol.spatial_prior > 0,
        )

    @torch.no_grad()
    def segment_one(
        self, query: torch.Tensor, network, support, query_z_range=None, query_features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, FewShotContext]:
        """Probabilities (2, X, Y, Z) for one query volume (1, X, Y, Z) and its context.

        ``query_features`` (from an earlier context of the same query and network) skips encoding the query.
        """
        if query.ndim != 4:
            raise ValueError(f"query must be (C, X, Y, Z), got shape {tuple(query.shape)}")
        if self.z_range == "given" and query_z_range is None:
            raise ValueError("z_range='given' needs query_z_range=(first, last) for every query")
        stack = volume_to_slices(query, self.spatial_size, 3, "bilinear").float()
        z_range = "estimate" if query_z_range is None else query_z_range
        context = self.protocol(
            network, stack, support, z_range=z_range, query_features=query_features, slice_spacing=slice_spacing(query)
        )
        if self.largest_component:
            context.probabilities = keep_largest_component(context.probabilities)
        probabilities = context.probabilities
        if self.refinement is not None:
            refined = self.refinement(network, self.protocol, context)
            if self.largest_component:
                refined = keep_largest_component(refined)
            probabilities = self._accept_refinement(refined, context)
        volume = slices_to_volume(probabilities, query, mode="bilinear")
        return volume, context

    def _accept_refinement(self, refined: torch.Tensor, context: FewShotContext) -> torch.Tensor:
        """The refined probabilities, or the plain ones when the two foregrounds agree less than ``min_agreement``."""
        plain_fg, refined_fg = context.probabilities[:, 1] > 0.5, refined[:, 1] > 0.5
        total = int(plain_fg.sum()) + int(refined_fg.sum())
        agreement = 1.0 if total == 0 else 2.0 * int((plain_fg & refined_fg).sum()) / total
        kept = agreement >= self.min_agreement
        context.diagnostics["refinement"] = {"agreement": agreement, "accepted": kept}
        return refined if kept else context.probabilities

    def __call__(
        self,
        inputs: torch.Tensor,
        network,
        *args: Any,
        support_images=None,
        support_masks=None,
        query_z_range: tuple[int, int] | Sequence[tuple[int, int]] | None = None,
        query_features: Sequence[torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if support_images is None or support_masks is None:
            raise ValueError("FewShotVolumeInferer needs support_images=... and support_masks=...")
        support = self.support_set(support_images, support_masks)
        batched = inputs.ndim == 5
        queries = list(inputs) if batched else [inputs]
        ranges = _per_query_ranges(query_z_range, len(queries))
        features = [None] * len(queries) if query_features is None else list(query_features)
        if len(features) != len(queries):
            raise ValueError(f"got {len(features)} cached query features for {len(queries)} query volumes")
        outputs, self.last_contexts = [], []
        for query, z, feats in zip(queries, ranges, features):
            volume, context = self.segment_one(query, network, support, z, feats)
            outputs.append(volume)
            self.last_contexts.append(context)
        out = torch.stack([torch.as_tensor(o) for o in outputs])
        if isinstance(inputs, MetaTensor):
            # keep the query's (batched) meta: affine, file name and transform history, for saving and inverting
            out = MetaTensor(out).copy_meta_from(inputs if batched else inputs[None])
            out.is_batch = True
        return out
