"""Several segmenters prepared on the same support, one answer: their organ probabilities averaged.

The support adaptation (:mod:`fewshot_monai.engines.adaptation`) is a short fine-tuning on random episodes, and
which episodes it draws moves an organ's Dice by several points (``docs/accuracy.md``). Averaging the predictions
of networks adapted with different seeds removes part of that chance::

    members = [FewShotSegmenter(network, support, label, organs, adaptation={"iterations": 300, "seed": k})
               for k in range(2)]
    result = SegmenterEnsemble(members)(query)          # a Segmentation, like one segmenter's

Each member segments the query in full (its own range estimate in EP2, pseudo-labelling, largest component); the
ensemble averages the final and the plain probabilities, and keeps each organ's largest 3D component of the
average when the members do.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor

from fewshot_monai.inferers.segmenter import OrganSegmentation, Segmentation, keep_largest_component

__all__ = ["SegmenterEnsemble", "adaptation_ensemble", "check_adaptation_ensemble"]


def check_adaptation_ensemble(size: int, adapting: bool) -> None:
    """Refuse an ensemble size below 1, or above 1 without a support adaptation (its members would be identical)."""
    if int(size) < 1:
        raise ValueError(f"adapt_ensemble must be >= 1, got {size}")
    if int(size) > 1 and not adapting:
        raise ValueError("adapt_ensemble needs the support adaptation (adapt iterations > 0)")


def adaptation_ensemble(build: Callable, adaptation, size: int = 1):
    """``build(adaptation)`` (a segmenter), or with ``size`` > 1 a :class:`SegmenterEnsemble` of ``size`` segmenters
    whose adaptations differ only by their seed (``seed .. seed + size - 1``; ``adaptation``: a
    :class:`~fewshot_monai.engines.adaptation.SupportAdaptation` or a dict of its fields)."""
    check_adaptation_ensemble(size, adaptation is not None)
    if int(size) == 1:
        return build(adaptation)
    from fewshot_monai.engines.adaptation import SupportAdaptation

    options = SupportAdaptation.from_dict(adaptation)
    return SegmenterEnsemble([build(dataclasses.replace(options, seed=options.seed + k)) for k in range(int(size))])


def _mean_largest(probabilities: Sequence[torch.Tensor], keep_largest: bool) -> torch.Tensor:
    """The mean of ``(X, Y, Z)`` probabilities, with the foreground outside its largest component set to 0."""
    plain = [p.as_tensor() if isinstance(p, MetaTensor) else torch.as_tensor(p) for p in probabilities]
    mean = torch.stack([p.float() for p in plain]).mean(dim=0)
    if keep_largest:  # the segmenter's rule, on the volume seen as a (X, 2, Y, Z) stack
        mean = keep_largest_component(torch.stack([1.0 - mean, mean], dim=1))[:, 1]
    if isinstance(probabilities[0], MetaTensor):
        mean = MetaTensor(mean, meta=probabilities[0].meta)
    return mean


def _union(ranges: Sequence[tuple[int, int] | None]) -> tuple[int, int] | None:
    found = [r for r in ranges if r is not None]
    return (min(r[0] for r in found), max(r[1] for r in found)) if found else None


class SegmenterEnsemble:
    """Average the organ probabilities of several :class:`~fewshot_monai.inferers.FewShotSegmenter` prepared for
    the same organs (e.g. adapted with different seeds).

    Args:
        members: the segmenters (at least one; all for the same organs).

    The preparation's cost is in :attr:`preparation` (the members' seconds summed; ``adaptation``: seconds summed,
    ``from_cache`` when every member's adaptation came from the cache, their keys, and each member's report).
    """

    def __init__(self, members: Sequence) -> None:
        members = list(members)
        if not members:
            raise ValueError("an ensemble needs at least one segmenter")
        organs = members[0].organs
        if any(m.organs != organs for m in members[1:]):
            raise ValueError("every member of an ensemble must segment the same organs (name -> label id)")
        self.members = members
        self.organs = dict(organs)
        self.largest_component = all(m.largest_component for m in members)
        reports = [m.preparation.get("adaptation") for m in members]
        adaptation = None
        if all(r is not None for r in reports):
            adaptation = {
                "seconds": float(sum(r["seconds"] for r in reports)),
                "from_cache": all(r["from_cache"] for r in reports),
                "key": ",".join(r["key"] for r in reports),
                "losses": reports[0].get("losses", {}),
                "members": reports,
            }
        self.preparation = {"seconds": float(sum(m.preparation["seconds"] for m in members)), "adaptation": adaptation}

    def __call__(
        self,
        query: torch.Tensor,
        z_ranges: Mapping[str, tuple[int, int] | None] | None = None,
        organs: Sequence[str] | None = None,
        atlas: Mapping[str, torch.Tensor | np.ndarray | None] | None = None,
    ) -> Segmentation:
        """Segment one query with every member and average (arguments as
        :meth:`~fewshot_monai.inferers.FewShotSegmenter.__call__`). The pseudo-labelling report, the transferred
        slices and the diagnostics are the first member's; the z-range is the union of the members'."""
        start = time.perf_counter()
        results = [member(query, z_ranges, organs=organs, atlas=atlas) for member in self.members]
        first = results[0]
        merged = {}
        for name, organ in first.organs.items():
            parts = [r.organs[name] for r in results]
            merged[name] = OrganSegmentation(
                probability=_mean_largest([p.probability for p in parts], self.largest_component),
                plain_probability=_mean_largest([p.plain_probability for p in parts], self.largest_component),
                z_range=_union([p.z_range for p in parts]),
                seconds=float(sum(p.seconds for p in parts)),
                pseudo_label=organ.pseudo_label,
                pseudo_slices=organ.pseudo_slices,
                diagnostics={**organ.diagnostics, "member_z_ranges": [p.z_range for p in parts]},
            )
        return Segmentation(
            merged,
            dict(first.label_ids),
            time.perf_counter() - start,
            float(sum(r.encode_seconds for r in results)),
        )
