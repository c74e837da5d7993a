"""Batch preparation that attaches a fixed labelled support to every query batch of a MONAI evaluator."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.utils import CommonKeys

from fewshot_monai.transforms.labels import SelectOrgan, organ_z_extent

__all__ = ["PrepareFewShotBatch"]


class PrepareFewShotBatch(PrepareBatch):
    """``prepare_batch`` for :class:`monai.engines.SupervisedEvaluator` running a few-shot inferer.

    The support volumes are loaded (and validated) once, when the object is built; every batch is returned as
    ``(query_images, query_labels, (), {"support_images": ..., "support_masks": ...})``, the keyword arguments
    that :class:`~fewshot_monai.inferers.FewShotVolumeInferer` expects.

    Args:
        support_images: path(s) of the support image volume(s) (k-shot: several).
        support_labels: path(s) of their label volumes, in the same order.
        organ_id: label id of the organ to segment.
        intensity: intensity preset applied to the supports (use the same one for the queries).
        image_key: key of the query image in the batch.
        label_key: key of the query label in the batch (optional in the data).
        query_range_from_label: pass the query organ's z-range from its label (the EP1 evaluation protocol);
            leave False for real use (EP2: nothing from the query label is used).
    """

    def __init__(
        self,
        support_images: str | os.PathLike | Sequence[str | os.PathLike],
        support_labels: str | os.PathLike | Sequence[str | os.PathLike],
        organ_id: int,
        intensity: str | None = None,
        image_key: str = CommonKeys.IMAGE,
        label_key: str = CommonKeys.LABEL,
        query_range_from_label: bool = False,
    ) -> None:
        from fewshot_monai.data.io import load_case

        images = [support_images] if isinstance(support_images, (str, os.PathLike)) else list(support_images)
        labels = [support_labels] if isinstance(support_labels, (str, os.PathLike)) else list(support_labels)
        if len(images) != len(labels):
            raise ValueError(f"got {len(images)} support images but {len(labels)} support labels")
        select = SelectOrgan(int(organ_id))
        cases = [load_case(img, lbl, intensity=intensity) for img, lbl in zip(images, labels)]
        self.support_images = [case["image"] for case in cases]
        self.support_masks = [select(case["label"]) for case in cases]
        self.organ_id = int(organ_id)
        self.image_key = image_key
        self.label_key = label_key
        self.query_range_from_label = query_range_from_label

    def __call__(
        self, batchdata: dict[str, torch.Tensor], device=None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple, dict]:
        images = batchdata[self.image_key].to(device=device, non_blocking=non_blocking, **kwargs)
        labels = batchdata.get(self.label_key)
        if labels is not None:
            labels = labels.to(device=device, non_blocking=non_blocking, **kwargs)
        network_kwargs: dict[str, Any] = {"support_images": self.support_images, "support_masks": self.support_masks}
        if self.query_range_from_label:
            if labels is None:
                raise ValueError(f"query_range_from_label=True needs '{self.label_key}' in every batch")
            network_kwargs["query_z_range"] = [organ_z_extent(lbl == self.organ_id) for lbl in labels]
        return images, labels, (), network_kwargs
