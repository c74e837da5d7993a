"""Inference-time pseudo-labelling: the stage ``pseudo_label`` of :class:`~fewshot_monai.inferers.FewShotSegmenter`.

Following "Improving 3D Few-Shot Segmentation with Inference-Time Pseudo-Labeling" (arXiv 2410.09967): the query
volume is unlabelled data we already hold, so use it.

1. initial scores: the plain protocol scores every query slice from the support prototypes (done by the segmenter);
2. confidence-aware transfer: a selection strategy (:mod:`fewshot_monai.pseudolabel.selection`) picks the most
   reliable query slices or windows and adds their prototypes, with a weight, to each chunk's prototype bank;
3. final prediction: every query slice is scored again from the expanded banks.

Nothing is retrained and nothing is encoded again: stages 2 and 3 reuse the cached query features of stage 1,
so the extra cost is the re-scoring. ``rounds`` > 1 repeats 2-3 from the previous round's prediction (the banks
are rebuilt from the support each round, so pseudo prototypes never pile up).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from fewshot_monai.networks.prototypes import PrototypeBank
from fewshot_monai.pseudolabel.confidence import perturb_probabilities
from fewshot_monai.pseudolabel.reference import context_reference_labels
from fewshot_monai.pseudolabel.selection import SliceSelection

__all__ = ["SupportExpansion", "PSEUDO_TAG", "keep_foreground_volume"]

#: tag of the pseudo-labelled prototypes in the expanded banks
PSEUDO_TAG = "pseudo"


def keep_foreground_volume(probabilities: torch.Tensor, voxels: int) -> tuple[torch.Tensor, float]:
    """``(Z, 2, H, W)`` probabilities whose foreground logit is lowered by the one constant that leaves at most
    ``voxels`` voxels above 0.5 (the input when it already does), and that constant (0 when unchanged)."""
    fg = probabilities[:, 1].clamp(1e-6, 1 - 1e-6)
    if int((fg > 0.5).sum()) <= voxels:
        return probabilities, 0.0
    values = fg.flatten()
    threshold = float(torch.kthvalue(values, max(values.numel() - max(voxels, 0), 1)).values)  # largest left out
    shift = float(torch.logit(torch.tensor(threshold, dtype=torch.float64)))
    new_fg = torch.sigmoid(torch.logit(fg.double()) - shift).float()  # exactly 0.5 at the threshold: out
    return torch.stack([1.0 - new_fg, new_fg], dim=1), shift


class SupportExpansion:
    """Confidence-aware support expansion: the pseudo-labelling stage ``(network, protocol, context) -> probabilities``.

    Args:
        selection: the selection strategy (default :class:`~fewshot_monai.pseudolabel.SliceSelection()`).
        source: where the pseudo-labels the selection picks from come from: ``"network"`` (the plain prediction)
            or ``"reference"`` (each query pixel labelled by its nearest support pixel in feature space,
            :mod:`fewshot_monai.pseudolabel.reference`; the confidence is the nearest-neighbour margin).
        weight: weight of the pseudo prototypes against the support's (1: equal; 0: off, the plain prediction).
        rounds: T, the number of select-and-rescore rounds.
        temperature: temperature applied to the probabilities the selection sees (robustness studies; 1 = none).
        noise_std: Gaussian logit noise added to the probabilities the selection sees (robustness; 0 = none).
        seed: seed of that noise.
        keep_volume: the stage may move the organ but not grow it: when the final foreground (``p > 0.5``) holds
            more voxels than the plain prediction's, every foreground logit is lowered by one constant so that it
            holds as many (a shift of the threshold, the ranking of the voxels is kept). Why: the pseudo prototypes
            come from the organ's confident interior and raise the foreground score of the mixed features along
            its boundary, which moves the contour outwards all round (``docs/pseudo_labelling.md``).

    After a call, ``context.diagnostics["pseudo_label"]`` describes what was transferred (per round: slices,
    their chunks, confidences and areas, windows, prototypes added, seconds) and
    ``context.diagnostics["pseudo_slices"]`` holds the last round's :class:`~fewshot_monai.pseudolabel.PseudoSlice`
    objects (with their masks, e.g. to score the pseudo-labels against a ground truth).
    """

    def __init__(
        self,
        selection: Any = None,
        source: str = "network",
        weight: float = 1.0,
        rounds: int = 1,
        temperature: float = 1.0,
        noise_std: float = 0.0,
        seed: int = 0,
        keep_volume: bool = False,
    ) -> None:
        if int(rounds) < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        if not float(weight) >= 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        if source not in ("network", "reference"):
            raise ValueError(f"source must be 'network' or 'reference', got {source!r}")
        self.selection = SliceSelection() if selection is None else selection
        self.source = source
        self.weight = float(weight)
        self.rounds = int(rounds)
        self.temperature = float(temperature)
        self.noise_std = float(noise_std)
        self.seed = int(seed)
        self.keep_volume = bool(keep_volume)
        perturb_probabilities(torch.full((1, 2, 1, 1), 0.5), self.temperature, self.noise_std)  # validate

    def __repr__(self) -> str:
        return (
            f"SupportExpansion(selection={self.selection!r}, source={self.source!r}, weight={self.weight}, "
            f"rounds={self.rounds}, "
            f"temperature={self.temperature}, noise_std={self.noise_std}, keep_volume={self.keep_volume})"
        )

    def options(self) -> dict:
        return {
            "strategy": getattr(self.selection, "name", type(self.selection).__name__),
            **self.selection.options(),
            "source": self.source,
            "weight": self.weight,
            "rounds": self.rounds,
            "temperature": self.temperature,
            "noise_std": self.noise_std,
            "keep_volume": self.keep_volume,
        }

    @torch.no_grad()
    def __call__(self, network, protocol, context) -> torch.Tensor:
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(self.seed)
        probabilities = context.probabilities
        labels = probabilities if self.source == "network" else context_reference_labels(context)
        rounds: list[dict] = []
        last = None
        feature_size = tuple(context.query_features.shape[-2:])
        bank_window = context.banks[0].window if context.banks else 2
        for t in range(self.rounds if self.weight > 0 else 0):
            seen = perturb_probabilities(
                labels if t == 0 else probabilities, self.temperature, self.noise_std, generator
            )
            selection = self.selection.select(seen, context.chunk_of_slice, feature_size, bank_window)
            record = {"round": t + 1, **selection.describe(), "prototypes_added": 0}
            rounds.append(record)
            last = selection
            if not selection:
                break
            updated = probabilities.clone()
            transferred: dict[tuple[int, ...], tuple[PrototypeBank, int]] = {}  # chunks sharing slices share them
            for chunk, chosen in sorted(selection.per_chunk.items()):
                idx = torch.nonzero(context.chunk_of_slice == chunk).flatten()
                key = tuple(s.index for s in chosen)  # score only the pseudo prototypes, merge with the support's
                if key not in transferred:
                    added = PrototypeBank(context.banks[chunk].window, context.banks[chunk].threshold)
                    n = self.selection.transfer(added, context.query_features, chosen, self.weight, PSEUDO_TAG)
                    transferred[key] = (added, n)
                added, n = transferred[key]
                if n:
                    updated[idx] = protocol.score_added(network, context, idx, added)
                record["prototypes_added"] += n
            probabilities = updated
        shift = 0.0
        if self.keep_volume and rounds:
            probabilities, shift = keep_foreground_volume(probabilities, int((context.probabilities[:, 1] > 0.5).sum()))
        context.diagnostics["pseudo_label"] = {
            **self.options(),
            "rounds_run": rounds,
            "n_slices": rounds[-1]["n_slices"] if rounds else 0,
            "n_windows": rounds[-1].get("n_windows") if rounds else None,
            "mean_confidence": rounds[-1]["mean_confidence"] if rounds else None,
            "volume_shift": shift,
            "seconds": time.perf_counter() - start,
        }
        context.diagnostics["pseudo_slices"] = last.slices() if last else []
        return probabilities
