"""The two 3D few-shot evaluation protocols: what the method may know about the query, and what is scored.

- **EP1** (SSL-ALPNet, Ouyang et al., ECCV 2020): the query organ's axial range is known (taken from the query
  label) and split into the same ``C`` chunks as the support; only the slices in that range are predicted and
  scored, so Dice is computed over the organ's range.
- **EP2** (no prior): nothing from the query label is used; the method estimates the organ range itself
  (``FewShotVolumeInferer(z_range="estimate")``) and the whole query volume is scored.

:func:`segment_query` is the only place where a method sees the query: it receives the query labels as
*callables* and EP2 never calls them (``tests/test_evaluation.py`` checks this with a callable that raises).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fewshot_monai.transforms.labels import organ_z_extent

__all__ = ["EvaluationProtocol", "PROTOCOLS", "get_protocol", "segment_query"]


@dataclass(frozen=True)
class EvaluationProtocol:
    """One evaluation protocol.

    Attributes:
        name: ``"ep1"`` or ``"ep2"``.
        uses_query_range: the query organ's z-range (from its label) is given to the method and limits scoring.
        description: one line for reports.
    """

    name: str
    uses_query_range: bool
    description: str

    def scored_range(self, truth_mask) -> tuple[int, int] | None:
        """Inclusive slices that are scored: the organ's range of ``truth_mask`` (EP1) or None = all (EP2)."""
        return organ_z_extent(truth_mask) if self.uses_query_range else None


PROTOCOLS: dict[str, EvaluationProtocol] = {
    "ep1": EvaluationProtocol(
        "ep1",
        True,
        "EP1 (SSL-ALPNet): query organ z-range known from its label, split into C chunks; Dice over that range",
    ),
    "ep2": EvaluationProtocol(
        "ep2",
        False,
        "EP2 (no prior): query label unused, organ range estimated by the method; Dice over the whole volume",
    ),
}


def get_protocol(name: str) -> EvaluationProtocol:
    """The protocol called ``name`` (case-insensitive); ValueError listing the valid names otherwise."""
    key = str(name).strip().lower()
    if key not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; valid: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[key]


def segment_query(
    protocol: EvaluationProtocol,
    segmenter,
    query_image: torch.Tensor,
    query_masks: Mapping[str, Callable[[], torch.Tensor]],
    z_range_hints: Mapping[str, tuple[int, int] | None] | None = None,
    atlas: Mapping[str, np.ndarray | None] | None = None,
):
    """Segment the organs of one query volume under ``protocol``: the only place where a method sees the query.

    Args:
        protocol: EP1 or EP2.
        segmenter: a :class:`~fewshot_monai.inferers.FewShotSegmenter` prepared on the fold's support.
        query_image: ``(1, X, Y, Z)`` query, intensity-normalised like the supports.
        query_masks: organ -> a callable returning the query's binary organ mask, called only by EP1 (for the
            organ's z-range); EP2 never calls them. Its keys are the organs segmented.
        z_range_hints: EP2 only: organ ranges found by other means that do not read the query label (e.g. the
            extent of a registered support label), used instead of the network's own estimate.
        atlas: organ -> the support organ registered onto the query, for the segmenter's atlas prior (any
            protocol: it is made from the support label and the query image, never from the query label).

    Returns:
        the :class:`~fewshot_monai.inferers.Segmentation` (per organ: probabilities, plain and final, the z-range
        used, the pseudo-labelling report).
    """
    if protocol.uses_query_range:
        z_ranges = {organ: organ_z_extent(mask()) for organ, mask in query_masks.items()}
    else:
        z_ranges = {o: r for o, r in (z_range_hints or {}).items() if r is not None and o in query_masks}
    return segmenter(query_image, z_ranges, organs=list(query_masks), atlas=atlas)
