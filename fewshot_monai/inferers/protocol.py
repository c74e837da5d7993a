"""The 3D few-shot protocol on slice stacks: which support slice segments which query slice.

SSL-ALPNet's evaluation protocol (Ouyang et al., ECCV 2020; "EP1" in later work): the support volume's organ
slices are split into ``C`` contiguous chunks and the middle slice of each chunk is a support slice; the query
organ's z-range is split the same way and every query slice in chunk ``c`` is segmented from support slice ``c``.
With ``K`` support volumes (k-shot) chunk ``c`` is segmented from the ``K`` chunk-``c`` slices together.

When the query range is unknown ("EP2", the situation of a real user), it is estimated from a first pass in which
every query slice is scored against all support slices together (:func:`estimate_z_range`): the organ is the
largest connected 3D component of that first prediction; its range is the run of slices around the component's
largest cross-section whose area stays above a fraction of it, re-centred and resized towards the support organ's
physical length (organs differ in length between patients far less than a noisy first pass suggests).

Everything here works on stacks of axial slices, ``(Z, 3, H, W)`` images and ``(Z, 1, H, W)`` masks, and on
an encoder-and-bank network (:class:`fewshot_monai.networks.ALPNet`): each query slice is encoded exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from fewshot_monai.errors import EmptyMaskError
from fewshot_monai.transforms.labels import chunk_centres, chunk_slices, organ_z_extent

__all__ = [
    "SupportSet",
    "PreparedSupport",
    "FewShotContext",
    "support_set_from_stacks",
    "estimate_z_range",
    "FewShotSliceProtocol",
]


@dataclass
class SupportSet:
    """Support slices for each chunk: ``images[c]`` (K, 3, H, W) and ``masks[c]`` (K, 1, H, W).

    ``organ_lengths`` holds each support volume's organ length along z (slices times the slice spacing given to
    :func:`support_set_from_stacks`: mm for volumes with an affine), the prior of the range estimate.
    ``position`` holds, when asked for, the organ's body-relative in-plane occupancy map ``(G, G)``
    (:func:`fewshot_monai.inferers.prior.position_map`).
    """

    images: list[torch.Tensor]
    masks: list[torch.Tensor]
    organ_lengths: list[float] = field(default_factory=list)
    position: torch.Tensor | None = None

    @property
    def n_chunks(self) -> int:
        return len(self.images)


@dataclass
class PreparedSupport:
    """A support set encoded once (:meth:`FewShotSliceProtocol.prepare`), reusable for any number of queries.

    Attributes:
        banks: one prototype bank per chunk.
        all_slices_bank: the bank of every support slice together (the first pass of a range estimate).
        organ_lengths: as :attr:`SupportSet.organ_lengths`.
        position: as :attr:`SupportSet.position`.
        features: per chunk the ``(K, C, h, w)`` encoder features of its support slices (for stages that look at
            support pixels, e.g. reference-guided pseudo-labels).
        masks: per chunk the ``(K, 1, H, W)`` masks of those slices.
    """

    banks: list
    all_slices_bank: object
    organ_lengths: list[float]
    position: torch.Tensor | None = None
    features: list = field(default_factory=list)
    masks: list = field(default_factory=list)

    @property
    def n_chunks(self) -> int:
        return len(self.banks)


@dataclass
class FewShotContext:
    """What the protocol knows about one query after its first (plain) prediction.

    Pseudo-labelling stages receive it, may add prototypes to ``banks`` and return new probabilities.

    Attributes:
        query_features: (Z, C, h, w) encoder features of every query slice, computed once.
        chunk_of_slice: (Z,) chunk index of each query slice, -1 outside the organ range.
        banks: one prototype bank per chunk.
        probabilities: (Z, 2, H, W) softmax probabilities of the plain prediction (0 foreground outside the range).
        z_range: inclusive (first, last) query slices that were scored, or None if no organ was found.
        output_size: (H, W) of the slices.
        diagnostics: free-form information for reports (filled by stages).
        statistics: the per-class ``(log_mass, logits)`` of every scored slice against its chunk's bank,
            ``(Z, 2, h, w)`` each (unscored slices: zeros), so that a stage adding prototypes scores only those and
            merges (``FewShotSliceProtocol.score_added``).
        prior: the factor ``q^w`` that tempers the foreground (:func:`fewshot_monai.inferers.prior.apply_prior` with
            weight 1): ``(H, W)`` for the in-plane position prior alone, ``(Z, H, W)`` with an atlas prior (the
            product of both); already applied to ``probabilities`` and to whatever ``score_added`` returns; None
            without a prior.
        support: the prepared support the query was scored against (its slices' features and masks).
    """

    query_features: torch.Tensor
    chunk_of_slice: torch.Tensor
    banks: list
    probabilities: torch.Tensor
    z_range: tuple[int, int] | None
    output_size: tuple[int, int]
    diagnostics: dict = field(default_factory=dict)
    statistics: tuple[torch.Tensor, torch.Tensor] | None = None
    prior: torch.Tensor | None = None
    support: PreparedSupport | None = None


def support_set_from_stacks(
    images: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    n_chunks: int,
    sources: Sequence[str] | None = None,
    spacings: Sequence[float] | None = None,
    position: bool = False,
) -> SupportSet:
    """Pick the chunk-centre slices of each support volume (k-shot = several volumes).

    Args:
        images: per support volume a (Z, 3, H, W) slice stack.
        masks: per support volume a (Z, 1, H, W) binary organ mask stack.
        n_chunks: number of chunks C.
        sources: names of the support volumes, for error messages.
        spacings: slice spacing of each support volume (mm), for the organ lengths (default 1: in slices).
        position: also compute the organ's position map (for the protocol's ``spatial_prior``).
    """
    if len(images) != len(masks) or not images:
        raise ValueError(f"need as many support masks as images and at least one, got {len(images)} and {len(masks)}")
    chunk_images: list[list[torch.Tensor]] = [[] for _ in range(n_chunks)]
    chunk_masks: list[list[torch.Tensor]] = [[] for _ in range(n_chunks)]
    lengths = []
    for k, (img, msk) in enumerate(zip(images, masks)):
        z_mask = msk.reshape(msk.shape[0], -1).any(dim=1).cpu().numpy()
        if not z_mask.any():
            raise EmptyMaskError(sources[k] if sources else f"support volume {k}", "support mask is empty")
        first, last = organ_z_extent(z_mask)
        lengths.append((last - first + 1) * (float(spacings[k]) if spacings else 1.0))
        for c, z in enumerate(chunk_centres(first, last, n_chunks)):
            chunk_images[c].append(img[z])
            chunk_masks[c].append(msk[z])
    prior_map = None
    if position:
        from fewshot_monai.inferers.prior import position_map

        prior_map = position_map(images, masks)
    return SupportSet([torch.stack(x) for x in chunk_images], [torch.stack(x) for x in chunk_masks], lengths, prior_map)


def estimate_z_range(
    foreground: np.ndarray,
    min_voxels: int = 20,
    peak_fraction: float | None = 0.5,
    prior_length: float | None = None,
    prior_weight: float = 0.5,
) -> tuple[int, int] | None:
    """Inclusive z-range of the organ in a (Z, H, W) binary first-pass prediction.

    The organ is the largest face-connected 3D component. With ``peak_fraction=None`` its z-extent is returned.
    Otherwise the range is the contiguous run of slices around the component's largest cross-section (areas
    smoothed over 3 slices) whose area is at least ``peak_fraction`` of that maximum; with ``prior_length`` (the
    expected organ length in query slices, e.g. the support organ's length in mm over the query's slice spacing)
    the run is re-centred on its area-weighted centroid and its length replaced by the geometric mean of its own
    length and the prior, weighted ``prior_weight`` (0: the run as it is, 1: the prior length).

    Returns None when no component has at least ``min_voxels`` voxels.
    """
    labels, n = ndimage.label(foreground)  # face-connected components
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    best = int(np.argmax(sizes))
    if sizes[best] < min_voxels:
        return None
    area = (labels == best + 1).reshape(labels.shape[0], -1).sum(axis=1).astype(float)
    if peak_fraction is None:
        z = np.flatnonzero(area)
        return int(z[0]), int(z[-1])
    smooth = np.convolve(area, np.ones(3) / 3.0, mode="same")
    peak = int(np.argmax(smooth))
    keep = smooth >= float(peak_fraction) * smooth[peak]
    first = last = peak
    while first > 0 and keep[first - 1]:
        first -= 1
    while last < len(area) - 1 and keep[last + 1]:
        last += 1
    if not prior_length or prior_weight <= 0:
        return first, last
    z = np.arange(first, last + 1)
    weights = area[first : last + 1]
    centre = float((weights * z).sum() / weights.sum()) if weights.sum() > 0 else 0.5 * (first + last)
    w = float(prior_weight)
    length = float(np.exp(w * np.log(float(prior_length)) + (1.0 - w) * np.log(last - first + 1)))
    n = max(1, int(round(length)))
    lo = int(round(centre - (n - 1) / 2.0))
    lo, hi = max(lo, 0), min(lo + n - 1, len(area) - 1)
    return (lo, hi) if lo <= hi else (first, last)


class FewShotSliceProtocol:
    """Segment a query slice stack from a support set, chunk by chunk.

    Args:
        n_chunks: number of chunks C (3 in SSL-ALPNet).
        batch_size: query slices encoded/scored at once.
        estimate_min_voxels: smallest first-pass component (in slice pixels) accepted as the organ when the
            query range is estimated.
        peak_fraction, prior_weight: options of :func:`estimate_z_range` (``peak_fraction=None``: the extent of
            the first pass's largest component; ``prior_weight=0``: no support-length prior).
        spatial_prior: weight ``w`` of the support's in-plane position prior (:mod:`fewshot_monai.inferers.prior`)
            on every foreground probability, first pass included; 0 (default) switches it off. Needs a support set
            made with ``position=True``.
        atlas_prior: weight of the per-query atlas prior passed to :meth:`__call__` (``atlas``: the registered
            support organ, :func:`fewshot_monai.inferers.prior.atlas_prior`), applied the same way; 0 (default):
            an ``atlas`` is ignored.
    """

    def __init__(
        self,
        n_chunks: int = 3,
        batch_size: int = 8,
        estimate_min_voxels: int = 20,
        peak_fraction: float | None = 0.5,
        prior_weight: float = 0.5,
        spatial_prior: float = 0.0,
        atlas_prior: float = 0.0,
    ) -> None:
        if n_chunks < 1:
            raise ValueError(f"n_chunks must be >= 1, got {n_chunks}")
        if peak_fraction is not None and not 0.0 < float(peak_fraction) <= 1.0:
            raise ValueError(f"peak_fraction must be in (0, 1] or None, got {peak_fraction}")
        if not 0.0 <= float(prior_weight) <= 1.0:
            raise ValueError(f"prior_weight must be in [0, 1], got {prior_weight}")
        self.n_chunks = n_chunks
        self.batch_size = batch_size
        self.estimate_min_voxels = estimate_min_voxels
        self.peak_fraction = None if peak_fraction is None else float(peak_fraction)
        self.prior_weight = float(prior_weight)
        if float(spatial_prior) < 0:
            raise ValueError(f"spatial_prior must be >= 0, got {spatial_prior}")
        self.spatial_prior = float(spatial_prior)
        if float(atlas_prior) < 0:
            raise ValueError(f"atlas_prior must be >= 0, got {atlas_prior}")
        self.atlas_prior = float(atlas_prior)

    @staticmethod
    def _with_prior(
        probabilities: torch.Tensor, prior: torch.Tensor | None, index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``probabilities`` of the slices ``index`` (all when None) tempered by the prior factor ``q^w``."""
        from fewshot_monai.inferers.prior import apply_prior

        if prior is None:
            return probabilities
        if prior.ndim == 3 and index is not None:
            prior = prior[index]
        return apply_prior(probabilities, prior, 1.0)

    @torch.no_grad()
    def encode(self, network, stack: torch.Tensor) -> torch.Tensor:
        """Encode a (Z, 3, H, W) stack in batches: (Z, C, h, w) features."""
        return torch.cat(
            [network.encode(stack[i : i + self.batch_size]) for i in range(0, len(stack), self.batch_size)]
        )

    @torch.no_grad()
    def score(self, network, features: torch.Tensor, bank, output_size: tuple[int, int]) -> torch.Tensor:
        """Softmax probabilities (N, 2, H, W) of cached features against one bank."""
        out = [
            torch.softmax(network.score(features[i : i + self.batch_size], bank, output_size), dim=1)
            for i in range(0, len(features), self.batch_size)
        ]
        return torch.cat(out) if out else features.new_zeros((0, 2, *output_size))

    @torch.no_grad()
    def statistics(self, network, features: torch.Tensor, bank) -> tuple[torch.Tensor, torch.Tensor]:
        """Mergeable score statistics ``(log_mass, logits)`` of cached features against a bank, in batches."""
        step = self.batch_size
        parts = [network.score_statistics(features[i : i + step], bank) for i in range(0, len(features), step)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    @torch.no_grad()
    def score_added(self, network, context: FewShotContext, index: torch.Tensor, added_bank) -> torch.Tensor:
        """Probabilities ``(len(index), 2, H, W)`` of slices ``index`` against their chunk's bank *plus* the
        prototypes of ``added_bank``, scoring only the latter (merged with ``context.statistics``)."""
        from fewshot_monai.networks.prototypes import merge_statistics

        base = (context.statistics[0][index], context.statistics[1][index])
        added = self.statistics(network, context.query_features[index], added_bank)
        _, logits = merge_statistics(base, added)
        probabilities = torch.softmax(network.upsample(logits, context.output_size), dim=1)
        return self._with_prior(probabilities, context.prior, index)

    @torch.no_grad()
    def prepare(self, network, support: SupportSet) -> PreparedSupport:
        """Encode the support slices once: the chunk banks and the all-slices bank (same features, no re-encoding)."""
        if support.n_chunks != self.n_chunks:
            raise ValueError(f"support set has {support.n_chunks} chunks, protocol expects {self.n_chunks}")
        features = [self.encode(network, img) for img in support.images]
        banks = [network.build_bank(support_features=f, support_masks=m) for f, m in zip(features, support.masks)]
        all_bank = network.build_bank(support_features=torch.cat(features), support_masks=torch.cat(support.masks))
        return PreparedSupport(
            banks, all_bank, list(support.organ_lengths), support.position, features, list(support.masks)
        )

    def chunk_assignment(self, n_slices: int, z_range: tuple[int, int] | None) -> torch.Tensor:
        """(Z,) chunk index per query slice, -1 outside ``z_range``."""
        chunk = torch.full((n_slices,), -1, dtype=torch.long)
        if z_range is not None:
            for c, idx in enumerate(chunk_slices(z_range[0], z_range[1], self.n_chunks)):
                chunk[torch.as_tensor(idx, dtype=torch.long)] = c
        return chunk

    @torch.no_grad()
    def predict_chunks(self, network, context: FewShotContext) -> torch.Tensor:
        """(Z, 2, H, W) probabilities: each in-range slice scored against its chunk's bank, background elsewhere."""
        n = context.query_features.shape[0]
        probs = torch.zeros((n, 2, *context.output_size), dtype=torch.float32)
        probs[:, 0] = 1.0
        shape = (n, 2, *context.query_features.shape[-2:])
        context.statistics = (torch.zeros(shape), torch.zeros(shape))
        for c, bank in enumerate(context.banks):
            idx = torch.nonzero(context.chunk_of_slice == c).flatten()
            if not idx.numel():
                continue
            mass, logits = self.statistics(network, context.query_features[idx], bank)
            context.statistics[0][idx], context.statistics[1][idx] = mass, logits
            probs[idx] = self._with_prior(
                torch.softmax(network.upsample(logits, context.output_size), dim=1), context.prior, idx
            )
        return probs

    @torch.no_grad()
    def __call__(
        self,
        network,
        query: torch.Tensor,
        support: SupportSet | PreparedSupport,
        z_range: tuple[int, int] | None | str = "estimate",
        query_features: torch.Tensor | None = None,
        slice_spacing: float = 1.0,
        search_window: tuple[int, int] | None = None,
        atlas: torch.Tensor | None = None,
    ) -> FewShotContext:
        """Run the plain protocol.

        Args:
            network: an encoder-and-bank network (``encode``, ``build_bank``, ``score``, ``score_statistics``,
                ``upsample``): ALPNet.
            query: (Z, 3, H, W) query slices.
            support: the support set (``support.n_chunks`` must equal ``n_chunks``), or the same already prepared
                by :meth:`prepare` (then no support slice is encoded).
            z_range: inclusive query organ range (EP1, known from the label), or ``"estimate"`` (EP2).
            query_features: cached features of ``query`` (skips encoding).
            slice_spacing: the query's slice spacing, in the unit of ``support.organ_lengths`` (mm).
            search_window: with ``"estimate"``: inclusive query slices the first pass may find the organ in
                (:mod:`fewshot_monai.inferers.anchor`); None: anywhere.
            atlas: ``(Z, H, W)`` prior in [0, 1] of the query slices (e.g. the registered support organ,
                :func:`fewshot_monai.inferers.prior.atlas_prior`), weighted by ``atlas_prior``; None: none.

        Returns:
            the context, whose ``probabilities`` is the plain prediction.
        """
        if not isinstance(support, PreparedSupport):
            support = self.prepare(network, support)
        if support.n_chunks != self.n_chunks:
            raise ValueError(f"support set has {support.n_chunks} chunks, protocol expects {self.n_chunks}")
        output_size = tuple(query.shape[-2:])
        use_prior = self.spatial_prior > 0
        if use_prior and support.position is None:
            raise ValueError("spatial_prior > 0 needs a support set with a position map (position=True)")
        features = self.encode(network, query) if query_features is None else query_features
        factor = None  # q^w of every prior in use: the tempering factor of the foreground
        if use_prior:
            from fewshot_monai.inferers.prior import query_prior

            factor = query_prior(support.position, query).clamp(min=1e-6) ** self.spatial_prior
        if atlas is not None and self.atlas_prior > 0:
            if tuple(atlas.shape) != (query.shape[0], *output_size):
                raise ValueError(f"atlas must be {(query.shape[0], *output_size)}, got {tuple(atlas.shape)}")
            atlas_factor = atlas.float().clamp(min=1e-6) ** self.atlas_prior
            factor = atlas_factor if factor is None else atlas_factor * factor
        diagnostics: dict = {}
        if isinstance(z_range, str):
            if z_range != "estimate":
                raise ValueError(f"z_range must be (first, last), None or 'estimate', got {z_range!r}")
            first = self.score(network, features, support.all_slices_bank, output_size)
            first = self._with_prior(first, factor)
            prior = float(np.mean(support.organ_lengths)) / float(slice_spacing) if support.organ_lengths else None
            foreground = (first[:, 1] > 0.5).cpu().numpy()
            if search_window is not None:
                foreground[: max(0, int(search_window[0]))] = False
                foreground[int(search_window[1]) + 1 :] = False
                diagnostics["search_window"] = (int(search_window[0]), int(search_window[1]))
            z_range = estimate_z_range(
                foreground,
                self.estimate_min_voxels,
                peak_fraction=self.peak_fraction,
                prior_length=prior,
                prior_weight=self.prior_weight,
            )
            diagnostics["estimated_z_range"] = z_range
            diagnostics["prior_length_slices"] = prior
        context = FewShotContext(
            query_features=features,
            chunk_of_slice=self.chunk_assignment(features.shape[0], z_range),
            banks=support.banks,
            probabilities=torch.empty(0),
            z_range=None if z_range is None else (int(z_range[0]), int(z_range[1])),
            output_size=output_size,
            diagnostics=diagnostics,
        )
        context.prior = factor
        context.support = support
        context.probabilities = self.predict_chunks(network, context)
        return context
