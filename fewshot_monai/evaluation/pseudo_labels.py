"""What inference-time pseudo-labelling did in an evaluation: per-organ records and the run's summary.

Each refined prediction gets ``pl_*`` columns in ``per_scan.csv``: slices (and windows) transferred, their mean
confidence, the pseudo-labels' own Dice against the query's truth on those slices (the truth is only *read here*,
after the prediction, never by the method), and the stage's seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = ["pseudo_label_record", "pseudo_label_dice", "pseudo_label_summary"]


def pseudo_label_dice(pseudo_slices, truth: torch.Tensor, spatial_size: int) -> float | None:
    """Dice of the transferred pseudo-masks against the truth on the transferred slices (None if none).

    Args:
        pseudo_slices: :class:`~fewshot_monai.pseudolabel.PseudoSlice` list (slice-stack indices and masks).
        truth: ``(1, X, Y, Z)`` binary organ mask of the query.
        spatial_size: in-plane size of the protocol's slices.
    """
    if not pseudo_slices:
        return None
    from fewshot_monai.transforms.slicing import volume_to_slices

    stack = volume_to_slices(torch.as_tensor(truth).float(), spatial_size, 1, "nearest") > 0.5
    inter = total = 0.0
    for s in pseudo_slices:
        pred = s.mask[0] > 0.5
        true = stack[s.index, 0]
        if s.valid_windows is not None:  # windowed transfer: only the usable windows count
            keep = torch.nn.functional.interpolate(s.valid_windows[None, None].float(), size=pred.shape)[0, 0] > 0
            pred, true = pred & keep, true & keep
        inter += float((pred & true).sum())
        total += float(pred.sum() + true.sum())
    return 1.0 if total == 0 else 2.0 * inter / total


def pseudo_label_record(organ, truth: torch.Tensor, spatial_size: int) -> dict:
    """The ``pl_*`` fields of one (scan, organ) from its :class:`~fewshot_monai.inferers.OrganSegmentation`."""
    diag = organ.pseudo_label or {}
    slices = organ.pseudo_slices
    return {
        "pl_slices": int(diag.get("n_slices") or 0),
        "pl_windows": diag.get("n_windows"),
        "pl_confidence": diag.get("mean_confidence"),
        "pl_dice": pseudo_label_dice(slices, truth, spatial_size),
        "pl_seconds": float(diag.get("seconds") or 0.0),
        "pl_agreement": diag.get("agreement"),
        "pl_accepted": diag.get("accepted"),
    }


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None and np.isfinite(float(v))]
    return float(np.mean(values)) if values else None


def pseudo_label_summary(rows: Sequence[Mapping], refined: Mapping, plain: Mapping, organs: Sequence[str], stage):
    """Gain of the refined over the plain prediction per organ, transfer statistics and the time overhead.

    Args:
        rows: the refined per-scan rows (with their ``pl_*`` fields).
        refined: ``summarise_rows`` of those rows.
        plain: ``summarise_rows`` of the plain rows of the same run.
        organs: organ names.
        stage: the pseudo-labelling stage (its ``options()`` are recorded when it has them).
    """
    gain = {}
    for o in organs:
        a, b = refined["dice"].get(o), plain["dice"].get(o)
        gain[o] = None if a is None or b is None else a - b
    per_organ = {}
    for o in organs:
        sel = [r for r in rows if r["organ"] == o]
        per_organ[o] = {
            "slices_mean": _mean(r.get("pl_slices") for r in sel),
            "confidence_mean": _mean(r.get("pl_confidence") for r in sel),
            "pseudo_label_dice_mean": _mean(r.get("pl_dice") for r in sel),
            "cases_without_transfer": sum(1 for r in sel if not r.get("pl_slices")),
            "cases_stepped_aside": sum(1 for r in sel if r.get("pl_accepted") is False),
        }
    stage_seconds = sum(float(r.get("pl_seconds") or 0.0) for r in rows)
    plain_seconds = sum(float(r["seconds"]) for r in rows) - stage_seconds
    return {
        "strategy": stage.options() if hasattr(stage, "options") else repr(stage),
        "dice_gain": gain,
        "dice_mean_gain": None
        if refined.get("dice_mean") is None or plain.get("dice_mean") is None
        else refined["dice_mean"] - plain["dice_mean"],
        "per_organ": per_organ,
        "stage_seconds_total": stage_seconds,
        "overhead_fraction": stage_seconds / plain_seconds if plain_seconds > 0 else None,
    }
