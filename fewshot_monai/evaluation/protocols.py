"""The two 3D few-shot evaluation protocols: what the method may know about the query, and what is scored.

- **EP1** (SSL-ALPNet, Ouyang et al., ECCV 2020): the query organ's axial range is known (taken from the query
  label) and split into the same ``C`` chunks as the support; only the slices in that range are predicted and
  scored, so Dice is computed over the organ's range.
- **EP2** (no prior): nothing from the query label is used; the method estimates the organ range itself
  (``FewShotVolumeInferer(z_range="estimate")``) and the whole query volume is scored.

:func:`predict_organ` is the only place where a method sees the query: it receives the query label as a
*callable* and EP2 never calls it (``tests/test_evaluation.py`` checks this with a callable that raises).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from fewshot_monai.transforms.labels import organ_z_extent

__all__ = ["EvaluationProtocol", "PROTOCOLS", "OrganPrediction", "get_protocol", "make_inferer", "predict_organ"]


class OrganPrediction(NamedTuple):
    """One organ of one query: the binary ``(X, Y, Z)`` mask, the z-range the method used (None: no organ found)
    and the foreground probability ``(X, Y, Z)`` behind the mask (for merging organs into one label map)."""

    mask: np.ndarray
    z_range: tuple[int, int] | None
    probability: torch.Tensor


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

    @property
    def inferer_z_range(self) -> str:
        """The ``z_range`` mode of :class:`~fewshot_monai.inferers.FewShotVolumeInferer` for this protocol."""
        return "given" if self.uses_query_range else "estimate"

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


def make_inferer(protocol: EvaluationProtocol, n_chunks=3, spatial_size=256, batch_size=8, refinement=None, **options):
    """A :class:`~fewshot_monai.inferers.FewShotVolumeInferer` configured for ``protocol`` (``options``: its other
    keyword arguments, e.g. ``largest_component=False``)."""
    from fewshot_monai.inferers import FewShotVolumeInferer

    return FewShotVolumeInferer(
        n_chunks=n_chunks,
        z_range=protocol.inferer_z_range,
        spatial_size=spatial_size,
        batch_size=batch_size,
        refinement=refinement,
        **options,
    )


@torch.no_grad()
def predict_organ(
    protocol: EvaluationProtocol,
    inferer,
    network,
    query_image: torch.Tensor,
    support_images: Sequence[torch.Tensor],
    support_masks: Sequence[torch.Tensor],
    query_mask: Callable[[], torch.Tensor] | None = None,
    query_features: torch.Tensor | None = None,
    z_range_hint: tuple[int, int] | None = None,
) -> OrganPrediction:
    """Segment one organ of one query volume under ``protocol``.

    Args:
        protocol: EP1 or EP2.
        inferer: a :class:`~fewshot_monai.inferers.FewShotVolumeInferer` made by :func:`make_inferer`.
        network: the few-shot network.
        query_image: (1, X, Y, Z) query, intensity-normalised like the supports.
        support_images: (1, X', Y', Z') support volumes (k-shot: several).
        support_masks: their binary organ masks.
        query_mask: a callable returning the query's binary organ mask, called only by EP1 (for the organ's
            z-range); EP2 never calls it.
        query_features: the query's cached encoder features from an earlier organ of the same query, network and
            inferer (``inferer.last_contexts[0].query_features``): the query is then not encoded again.
        z_range_hint: EP2 only: the organ range found by other means that do not read the query label (e.g. the
            extent of a registered support label), used instead of the network's own estimate.

    Returns:
        an :class:`OrganPrediction`: the binary (X, Y, Z) prediction, the z-range the method used (given for EP1,
        estimated for EP2, None if EP2 found no organ) and the foreground probability.
    """
    z_range = None
    if protocol.uses_query_range:
        if query_mask is None:
            raise ValueError(f"protocol {protocol.name} needs the query organ mask for its z-range")
        z_range = organ_z_extent(query_mask())
    elif z_range_hint is not None:
        z_range = (int(z_range_hint[0]), int(z_range_hint[1]))
    probabilities = inferer(
        query_image[None],
        network,
        support_images=list(support_images),
        support_masks=list(support_masks),
        query_z_range=z_range,
        query_features=None if query_features is None else [query_features],
    )
    foreground = torch.as_tensor(probabilities)[0, 1].float()
    used = inferer.last_contexts[0].z_range
    return OrganPrediction(
        (foreground > 0.5).cpu().numpy(), None if used is None else (int(used[0]), int(used[1])), foreground
    )


def plain_prediction(inferer, query_image: torch.Tensor) -> np.ndarray:
    """The binary (X, Y, Z) prediction *before* the inferer's refinement stage, for the last query it segmented.

    The plain probabilities are kept in ``inferer.last_contexts[0].probabilities`` (slice stack); they are mapped
    back to the query's geometry exactly as the refined ones are.
    """
    from fewshot_monai.transforms.slicing import slices_to_volume

    probabilities = inferer.last_contexts[0].probabilities
    volume = slices_to_volume(probabilities, query_image, mode="bilinear")
    return (torch.as_tensor(volume)[1] > 0.5).cpu().numpy()
