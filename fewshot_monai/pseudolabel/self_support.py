"""Query-guided refinement: every query slice is scored again with prototypes pooled from its own confident regions.

The plain prediction matches query pixels against prototypes pooled from *another* scan (the support). Where the
query's intensities or texture differ from the support's, the organ's own confident core in the query slice
describes the rest of that organ better than any support prototype can. This stage (named ``self``) takes each
scored query slice, pools local prototypes from its confident foreground windows (mean foreground probability
above ``threshold``) and confident background windows (mean background probability above ``threshold``), and
scores that slice again against its chunk's support bank *plus* these prototypes
(:meth:`~fewshot_monai.inferers.protocol.FewShotSliceProtocol.score_added`). Nothing is encoded again.

It is the "self-support" idea of query-guided few-shot segmentation (prototypes taken from the query's own
prediction, Fan et al., ECCV 2022; the query-guided refinement of the Q-Net, RPT and GMRD line), applied per slice
on top of this project's local-prototype scoring. Unlike ``window``
(:class:`~fewshot_monai.pseudolabel.SupportExpansion`), which moves confident slices of the query into the support
of *every* slice of their chunk, a slice here only ever sees its own prototypes.
"""

from __future__ import annotations

import time

import torch

from fewshot_monai.networks.prototypes import (
    PrototypeBank,
    diverse_subset,
    downsample_masks,
    local_prototypes,
    masked_average_prototype,
)

__all__ = ["SelfSupport", "SELF_TAG"]

#: tag of the query's own prototypes in the per-slice banks
SELF_TAG = "self"


class SelfSupport:
    """The pseudo-labelling stage ``self``: ``(network, protocol, context) -> (Z, 2, H, W)`` probabilities.

    Args:
        threshold: a feature window becomes a foreground (background) prototype when its mean foreground
            (background) probability exceeds this.
        weight: weight of the slice's own prototypes against the support's (enters the per-class softmax as
            ``log(weight)``, like every prototype weight of :class:`~fewshot_monai.networks.PrototypeBank`).
        max_prototypes: at most this many own prototypes per class and slice (a diverse subset).
        min_foreground: slices whose confident foreground covers fewer feature pixels are left as they are (a
            slice without a confident organ core has nothing to describe the organ with; adding only background
            prototypes would just erase what is there).

    After a call, ``context.diagnostics["pseudo_label"]`` holds the options, the number of slices refined, the
    prototypes added and the seconds.
    """

    name = "self"

    def __init__(
        self, threshold: float = 0.9, weight: float = 1.0, max_prototypes: int = 64, min_foreground: int = 4
    ) -> None:
        if not 0.5 <= float(threshold) < 1.0:
            raise ValueError(f"threshold must be in [0.5, 1), got {threshold}")
        if not float(weight) > 0:
            raise ValueError(f"weight must be > 0, got {weight}")
        self.threshold = float(threshold)
        self.weight = float(weight)
        self.max_prototypes = int(max_prototypes)
        self.min_foreground = int(min_foreground)

    def __repr__(self) -> str:
        return f"SelfSupport(threshold={self.threshold}, weight={self.weight}, max_prototypes={self.max_prototypes})"

    def options(self) -> dict:
        return {
            "strategy": self.name,
            "threshold": self.threshold,
            "weight": self.weight,
            "max_prototypes": self.max_prototypes,
            "min_foreground": self.min_foreground,
        }

    def own_prototypes(self, features: torch.Tensor, probability: torch.Tensor, window: int):
        """Foreground and background ``(P, C)`` prototypes of one slice from its ``(C, h, w)`` features and its
        ``(H, W)`` foreground probability; ``(None, None)`` when its confident foreground is too small."""
        soft = downsample_masks(probability[None, None].float(), features.shape[-2:])
        confident = (soft > self.threshold).float()
        if int(confident.sum()) < self.min_foreground:
            return None, None
        fg, bg = local_prototypes(features[None], soft, window, self.threshold, self.threshold)
        core = masked_average_prototype(features[None], confident)
        fg = core if fg.shape[0] == 0 else torch.cat([fg, core])
        return diverse_subset(fg, self.max_prototypes), diverse_subset(bg, self.max_prototypes)

    @torch.no_grad()
    def __call__(self, network, protocol, context) -> torch.Tensor:
        start = time.perf_counter()
        probabilities = context.probabilities.clone()
        refined, added = 0, 0
        for index in torch.nonzero(context.chunk_of_slice >= 0).flatten().tolist():
            bank = context.banks[int(context.chunk_of_slice[index])]
            fg, bg = self.own_prototypes(context.query_features[index], context.probabilities[index, 1], bank.window)
            if fg is None:
                continue
            own = PrototypeBank(bank.window, bank.threshold)
            n = own.add_prototypes(fg, bg, weight=self.weight, tag=SELF_TAG)
            probabilities[index] = protocol.score_added(network, context, torch.tensor([index]), own)[0]
            refined, added = refined + 1, added + n
        context.diagnostics["pseudo_label"] = {
            **self.options(),
            "n_slices": refined,
            "prototypes_added": added,
            "seconds": time.perf_counter() - start,
        }
        context.diagnostics["pseudo_slices"] = []
        return probabilities
