"""Segmentation metrics on binary volumes (Dice; HD95 and ASD in mm via MONAI metrics, voxel spacing respected)."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import torch

__all__ = [
    "dice_score",
    "spacing_from_affine",
    "hausdorff95_mm",
    "average_surface_distance_mm",
    "segmentation_metrics",
]


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


def spacing_from_affine(affine) -> tuple[float, float, float]:
    """Voxel size in mm along the three array axes: the lengths of the affine's first three columns."""
    a = affine.detach().cpu().numpy() if isinstance(affine, torch.Tensor) else np.asarray(affine)
    a = np.asarray(a, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"expected a 4x4 affine, got shape {a.shape}")
    return tuple(float(v) for v in np.sqrt((a[:3, :3] ** 2).sum(axis=0)))


def _distance_inputs(prediction, truth, name: str):
    pred, ref = _as_bool_array(prediction), _as_bool_array(truth)
    if pred.shape != ref.shape:
        raise ValueError(f"{name}: shapes differ, prediction {pred.shape} vs truth {ref.shape}")
    if pred.ndim != 3:
        raise ValueError(f"{name}: expected (X, Y, Z) binary volumes, got {pred.ndim} dimensions")
    empty = (not pred.any(), not ref.any())
    # MONAI's metrics take one-hot (B, C, X, Y, Z); channel 0 (background) is dropped by include_background=False.
    stack = [torch.from_numpy(np.stack([~m, m])[None].astype(np.float32)) for m in (pred, ref)]
    return stack[0], stack[1], empty


@contextlib.contextmanager
def _quiet_monai():
    """Silence MONAI's internal deprecation notice about ``always_return_as_numpy`` (raised inside its metrics)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        yield


def _empty_case(empty: tuple[bool, bool]) -> float | None:
    if all(empty):
        return 0.0
    if any(empty):
        return float("nan")
    return None


def hausdorff95_mm(prediction, truth, spacing=(1.0, 1.0, 1.0)) -> float:
    """Symmetric 95th-percentile Hausdorff distance between two binary (X, Y, Z) volumes, in mm.

    Uses :func:`monai.metrics.compute_hausdorff_distance` (``percentile=95``, euclidean, edge voxels) with the
    voxel ``spacing`` (mm per array axis, e.g. :func:`spacing_from_affine`). Empty volumes: both empty gives
    0.0 (the organ is correctly absent); exactly one empty gives NaN (the distance is undefined; reports count
    and exclude these cases, and Dice is 0 for them).
    """
    from monai.metrics import compute_hausdorff_distance

    pred, ref, empty = _distance_inputs(prediction, truth, "hausdorff95_mm")
    special = _empty_case(empty)
    if special is not None:
        return special
    with _quiet_monai():
        value = compute_hausdorff_distance(
            pred, ref, include_background=False, percentile=95, spacing=[float(s) for s in spacing]
        )
    return float(value.reshape(-1)[0])


def average_surface_distance_mm(prediction, truth, spacing=(1.0, 1.0, 1.0)) -> float:
    """Average symmetric surface distance between two binary (X, Y, Z) volumes, in mm.

    Uses :func:`monai.metrics.compute_average_surface_distance` (``symmetric=True``, euclidean) with the voxel
    ``spacing``. Empty volumes are handled as in :func:`hausdorff95_mm` (both empty 0.0, one empty NaN).
    """
    from monai.metrics import compute_average_surface_distance

    pred, ref, empty = _distance_inputs(prediction, truth, "average_surface_distance_mm")
    special = _empty_case(empty)
    if special is not None:
        return special
    with _quiet_monai():
        value = compute_average_surface_distance(
            pred, ref, include_background=False, symmetric=True, spacing=[float(s) for s in spacing]
        )
    return float(value.reshape(-1)[0])


def segmentation_metrics(prediction, truth, spacing=(1.0, 1.0, 1.0), z_range: tuple[int, int] | None = None) -> dict:
    """Dice, HD95 (mm) and ASD (mm) of a binary (X, Y, Z) prediction, optionally on the slices ``z_range`` only.

    Args:
        prediction: binary (X, Y, Z) prediction.
        truth: binary (X, Y, Z) reference.
        spacing: voxel size in mm per array axis.
        z_range: inclusive (first, last) axial slices to score (EP1 scores the query organ's range); None scores
            the whole volume (EP2).

    Returns:
        ``{"dice": float, "hd95_mm": float, "asd_mm": float}`` (distances NaN when exactly one mask is empty).
    """
    pred, ref = _as_bool_array(prediction), _as_bool_array(truth)
    if z_range is not None:
        first, last = int(z_range[0]), int(z_range[1])
        pred, ref = pred[..., first : last + 1], ref[..., first : last + 1]
    return {
        "dice": dice_score(pred, ref),
        "hd95_mm": hausdorff95_mm(pred, ref, spacing),
        "asd_mm": average_surface_distance_mm(pred, ref, spacing),
    }
