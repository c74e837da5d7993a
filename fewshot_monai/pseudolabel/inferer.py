"""A MONAI inferer that adds inference-time pseudo-labelling to a few-shot volume inferer."""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer

from fewshot_monai.inferers import FewShotVolumeInferer

__all__ = ["PseudoLabelInferer"]


class PseudoLabelInferer(Inferer):
    """Wrap a :class:`~fewshot_monai.inferers.FewShotVolumeInferer` (the base) with a pseudo-labelling stage.

    The base inferer runs the plain few-shot protocol; the stage (e.g.
    :class:`~fewshot_monai.pseudolabel.SupportExpansion`) then expands each chunk's support with confident query
    slices and re-scores the cached query features. ``enabled=False`` switches the stage off: the output is then
    exactly the base inferer's. Use it wherever a MONAI inferer goes, e.g. a ``SupervisedEvaluator`` with
    :class:`~fewshot_monai.inferers.PrepareFewShotBatch`::

        inferer:
          _target_: fewshot_monai.pseudolabel.PseudoLabelInferer
          base: {_target_: fewshot_monai.inferers.FewShotVolumeInferer, n_chunks: 3}
          stage:
            _target_: fewshot_monai.pseudolabel.SupportExpansion
            selection: {_target_: fewshot_monai.pseudolabel.SliceSelection, threshold: 0.9, k_per_chunk: 2}
          enabled: "@pseudo_label"

    Args:
        base: the few-shot volume inferer (default: ``FewShotVolumeInferer()``); its own ``refinement`` is replaced
            by ``stage`` during calls.
        stage: the refinement stage ``(network, protocol, context) -> (Z, 2, H, W)`` probabilities.
        enabled: run the stage (True) or return the base inferer's plain prediction (False).

    Call: exactly as the base inferer (``support_images=``, ``support_masks=``, ``query_z_range=``, ...).
    ``last_contexts`` gives the per-query contexts, whose ``diagnostics["pseudo_label"]`` says what was
    transferred.
    """

    def __init__(self, base: FewShotVolumeInferer | None = None, stage: Any = None, enabled: bool = True) -> None:
        super().__init__()
        if stage is None and enabled:
            from fewshot_monai.pseudolabel.stage import SupportExpansion

            stage = SupportExpansion()
        self.base = FewShotVolumeInferer() if base is None else base
        self.stage = stage
        self.enabled = bool(enabled)

    @property
    def last_contexts(self):
        return self.base.last_contexts

    def __call__(self, inputs: torch.Tensor, network, *args: Any, **kwargs: Any) -> torch.Tensor:
        previous = self.base.refinement
        self.base.refinement = self.stage if self.enabled else None
        try:
            return self.base(inputs, network, *args, **kwargs)
        finally:
            self.base.refinement = previous
