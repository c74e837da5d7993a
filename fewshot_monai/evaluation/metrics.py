"""Segmentation metrics on binary volumes (thin wrappers over MONAI metrics with voxel spacing respected)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["dice_score"]


def _as_bool_array(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x).astype(bool)


def dice_score(prediction, truth) -> float:
    """Dice coefficient of two binary arrays of the same shape, in [0, 1].

    Both empty gives 1.0 (a correct "organ absent" answer); one empty and the other not gives 0.0.
    """
    pred, ref = _as_bool_array(prediction), _as_bool_array(truth)
    if pred.shape != ref.shape:
        raise ValueError(f"dice_score: shapes differ, prediction {pred.shape} vs truth {ref.shape}")
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total
