"""Reference-guided pseudo-labels: each query pixel takes the class of its most similar labelled reference pixel.

After Seibold et al., "Reference-guided Pseudo-Label Generation for Medical Semantic Segmentation" (AAAI 2022):
the labelled support pixels form a reference bank in feature space, and a query pixel is labelled by its cosine
nearest neighbour in that bank. Here the features are the few-shot network's encoder features (stride 8), so the
labeller costs no extra encoding: the query features are the ones the protocol already computed.

- :func:`reference_bank` keeps the support's *pure* feature pixels (foreground fraction >= ``purity`` or
  <= ``1 - purity`` after area down-sampling), L2-normalised, and sub-samples each class to ``max_per_class``
  (seeded), so the bank fits in memory and one query slice is a single matrix product.
- :func:`label_by_reference` returns, per query pixel, the nearest-neighbour class and its **margin**: the cosine
  similarity of the best foreground reference minus that of the best background reference. The margin is the
  confidence. It is zero where both classes are matched equally well and grows with the separation. It comes from
  the same two maxima the label needs, so it costs nothing. Mutual nearest neighbours (the other choice in the
  paper) need the reverse search, support pixels to query pixels, for every query slice. That is a second
  product of the same size, and it gives a yes/no answer where the stage's selection wants a graded confidence.
- :func:`reference_probabilities` maps margins to foreground probabilities, ``sigmoid(scale * margin)``, at the
  slice size, so the pseudo-labelling stage's selection strategies can pick from them
  (``SupportExpansion(..., source="reference")``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fewshot_monai.errors import EmptyMaskError
from fewshot_monai.networks.prototypes import downsample_masks

__all__ = [
    "ReferenceBank",
    "reference_bank",
    "label_by_reference",
    "reference_probabilities",
    "context_reference_labels",
    "ReferenceLabels",
]


@dataclass
class ReferenceBank:
    """L2-normalised reference feature vectors of each class: ``fg`` ``(P, C)`` and ``bg`` ``(Q, C)``."""

    fg: torch.Tensor
    bg: torch.Tensor


def _subsample(vectors: torch.Tensor, limit: int, generator: torch.Generator) -> torch.Tensor:
    if vectors.shape[0] <= limit:
        return vectors
    keep = torch.randperm(vectors.shape[0], generator=generator)[:limit]
    return vectors[keep.sort().values]


def reference_bank(
    features: torch.Tensor, masks: torch.Tensor, max_per_class: int = 4096, purity: float = 0.9, seed: int = 0
) -> ReferenceBank:
    """The reference bank of labelled support slices.

    Args:
        features: ``(K, C, h, w)`` encoder features of the support slices.
        masks: ``(K, 1, H, W)`` binary masks of those slices (any resolution; area-averaged to ``(h, w)``).
        max_per_class: most reference vectors kept per class (random, seeded, order preserved).
        purity: a feature pixel is a reference when its foreground fraction is at least this (foreground) or at
            most ``1 - purity`` (background).
        seed: seed of the sub-sampling.

    Raises:
        EmptyMaskError: no pure foreground or no pure background pixel.
    """
    if features.ndim != 4 or masks.ndim != 4 or masks.shape[0] != features.shape[0]:
        raise ValueError(f"need (K, C, h, w) features and (K, 1, H, W) masks, got {tuple(features.shape)} and "
                         f"{tuple(masks.shape)}")  # fmt: skip
    fraction = downsample_masks(masks.to(features.dtype), features.shape[-2:])[:, 0]  # (K, h, w)
    vectors = F.normalize(features.permute(0, 2, 3, 1), dim=-1)  # (K, h, w, C)
    fg, bg = vectors[fraction >= purity], vectors[fraction <= 1.0 - purity]
    if not len(fg) or not len(bg):
        raise EmptyMaskError(None, "the reference slices have no pure foreground or no pure background pixel")
    generator = torch.Generator().manual_seed(int(seed))
    return ReferenceBank(_subsample(fg, max_per_class, generator), _subsample(bg, max_per_class, generator))


@torch.no_grad()
def label_by_reference(
    query_features: torch.Tensor, bank: ReferenceBank, batch_size: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-reference labels of ``(N, C, h, w)`` query features: ``(foreground (N, h, w) bool, margin (N, h, w))``
    with ``margin = max cos(fg refs) - max cos(bg refs)``; a pixel is foreground where the margin is positive."""
    margins = []
    for start in range(0, query_features.shape[0], batch_size):
        q = F.normalize(query_features[start : start + batch_size].permute(0, 2, 3, 1), dim=-1)  # (B, h, w, C)
        best_fg = (q @ bank.fg.T).amax(dim=-1)
        best_bg = (q @ bank.bg.T).amax(dim=-1)
        margins.append(best_fg - best_bg)
    margin = torch.cat(margins) if margins else query_features.new_zeros((0, *query_features.shape[-2:]))
    return margin > 0, margin


def reference_probabilities(margin: torch.Tensor, output_size, scale: float = 20.0) -> torch.Tensor:
    """``(N, 2, H, W)`` background/foreground probabilities from ``(N, h, w)`` margins: ``sigmoid(scale * margin)``
    upsampled bilinearly (the margin, a cosine difference, lives on the same scale as ALPNet's scores)."""
    logits = F.interpolate((scale * margin)[:, None], size=tuple(output_size), mode="bilinear", align_corners=False)
    foreground = torch.sigmoid(logits[:, 0])
    return torch.stack([1.0 - foreground, foreground], dim=1)


def context_reference_labels(context) -> torch.Tensor:
    """``(Z, 2, H, W)`` probabilities of reference-guided labels for one query of the few-shot protocol: every scored
    slice labelled by its nearest support pixels (all chunks' support slices together), background outside the
    scored range. ``context`` is the protocol's :class:`~fewshot_monai.inferers.protocol.FewShotContext`."""
    support = context.support
    if support is None or not support.features:
        raise ValueError("reference labels need the prepared support's features (FewShotSegmenter provides them)")
    bank = reference_bank(torch.cat(support.features), torch.cat(support.masks))
    scored = context.chunk_of_slice >= 0
    out = torch.zeros_like(context.probabilities)
    out[:, 0] = 1.0
    if bool(scored.any()):
        _, margin = label_by_reference(context.query_features[scored], bank)
        out[scored] = reference_probabilities(margin, context.output_size)
    return out


class ReferenceLabels:
    """The stage ``reference_labels``: the prediction *is* the reference-guided labels (Seibold et al.), on the
    slices the protocol scored (the organ range, given or estimated by the network's first pass). This is the
    ``--labeller reference`` of ``fewshot-monai pseudolabel``; the confidence of a voxel is its probability,
    ``sigmoid(20 * margin)``."""

    name = "reference_labels"

    def options(self) -> dict:
        return {"strategy": self.name}

    @torch.no_grad()
    def __call__(self, network, protocol, context) -> torch.Tensor:
        import time

        start = time.perf_counter()
        out = context_reference_labels(context)
        context.diagnostics["pseudo_label"] = {**self.options(), "seconds": time.perf_counter() - start}
        context.diagnostics["pseudo_slices"] = []
        return out
