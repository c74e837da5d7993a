"""Which pseudo-labelled voxels a self-training round learns from: the filters of ``fewshot-monai selftrain``.

A teacher labels every voxel of every unlabelled volume and gives it a confidence (the probability of the class it
chose, :func:`fewshot_monai.pseudolabel.dataset.confidence_map`). A filter turns the round's labels and
confidences into one boolean *keep* mask per volume; the voxels not kept become the ``ignore`` label and contribute
nothing to the student's loss (:class:`~fewshot_monai.networks.MaskedDiceCELoss`). The rules:

- ``fixed`` -- keep a voxel when its confidence is at least ``threshold`` (default 0.9), whatever its class.
- ``classwise`` -- one threshold per class (background and each organ): ``t_c = min(threshold, q_c)`` where
  ``q_c`` is the highest confidence that keeps ``ceil(keep * n_c)`` of the ``n_c`` voxels labelled ``c``, pooled
  over all volumes of the round (their ``1 - keep`` quantile). An easy class is filtered at ``threshold``; a hard
  class (one the teacher is rarely sure of) keeps at least the fraction ``keep`` (default 0.8) of its voxels, so
  no organ is starved of training voxels.
- ``stpp`` -- image-level reliability ranking after ST++ (Yang et al., CVPR 2022): the volumes are ranked by their
  reliability, here the mean confidence of the voxels the teacher labelled as an organ, and the most reliable
  ``ceil(fraction * (round + 1) * n)`` volumes are kept whole (every voxel, as in ST++), the others not at all.
  Round 0 keeps the reliable share (default half); each later round, whose teacher is the previous student, keeps
  one more share, as ST++'s second stage re-labels and trains on the remaining images. ST++ measures reliability
  as the stability of a volume's prediction across training checkpoints; the few-shot teacher of round 0 has no
  checkpoints, so the teacher's own confidence stands in for it.

Each filter is ``filter(labels, confidences, round, **options) -> (keep masks, details)``; :data:`FILTERS` maps the
names to them and :func:`apply_filter` runs one by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["FILTERS", "apply_filter", "fixed_threshold", "classwise_threshold", "stpp_ranking", "reliability"]


def _check(labels: Sequence[np.ndarray], confidences: Sequence[np.ndarray]) -> None:
    if len(labels) != len(confidences) or not len(labels):
        raise ValueError(f"need one confidence map per label map and at least one, got {len(labels)} and "
                         f"{len(confidences)}")  # fmt: skip
    for lab, conf in zip(labels, confidences):
        if np.shape(lab) != np.shape(conf):
            raise ValueError(f"label map {np.shape(lab)} and confidence map {np.shape(conf)} differ in shape")


def fixed_threshold(labels, confidences, round: int = 0, threshold: float = 0.9) -> tuple[list[np.ndarray], dict]:
    """Keep the voxels whose confidence is at least ``threshold``."""
    _check(labels, confidences)
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return [np.asarray(c) >= float(threshold) for c in confidences], {"threshold": float(threshold)}


def classwise_threshold(
    labels, confidences, round: int = 0, threshold: float = 0.9, keep: float = 0.8
) -> tuple[list[np.ndarray], dict]:
    """Keep a voxel of class ``c`` when its confidence is at least ``min(threshold, q_c)``, ``q_c`` the highest
    confidence that keeps ``ceil(keep * n_c)`` of the class's ``n_c`` voxels over all volumes (so each class keeps at
    least the fraction ``keep`` of its voxels; exactly that many when their confidences differ)."""
    _check(labels, confidences)
    if not 0.0 <= float(threshold) <= 1.0 or not 0.0 < float(keep) <= 1.0:
        raise ValueError(f"need threshold in [0, 1] and keep in (0, 1], got {threshold} and {keep}")
    classes = sorted({int(v) for lab in labels for v in np.unique(lab)})
    thresholds = {}
    for c in classes:
        pooled = np.concatenate([np.asarray(f)[np.asarray(lab) == c].ravel() for lab, f in zip(labels, confidences)])
        kept = math.ceil(float(keep) * pooled.size - 1e-9)  # the highest threshold that keeps this many voxels
        thresholds[c] = min(float(threshold), float(np.partition(pooled, pooled.size - kept)[pooled.size - kept]))
    keeps = []
    for lab, conf in zip(labels, confidences):
        lab, conf = np.asarray(lab), np.asarray(conf)
        per_voxel = np.zeros(conf.shape, dtype=np.float32)
        for c, t in thresholds.items():
            per_voxel[lab == c] = t
        keeps.append(conf >= per_voxel)
    return keeps, {"threshold": float(threshold), "keep": float(keep), "class_thresholds": thresholds}


def reliability(label: np.ndarray, confidence: np.ndarray) -> float:
    """A volume's reliability for :func:`stpp_ranking`: the mean confidence of its organ voxels (0 without any)."""
    organ = np.asarray(label) > 0
    return float(np.asarray(confidence)[organ].mean()) if organ.any() else 0.0


def stpp_ranking(labels, confidences, round: int = 0, fraction: float = 0.5) -> tuple[list[np.ndarray], dict]:
    """Keep whole the ``ceil(min(1, fraction * (round + 1)) * n)`` most reliable volumes (:func:`reliability`)."""
    _check(labels, confidences)
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    scores = [reliability(lab, conf) for lab, conf in zip(labels, confidences)]
    share = min(1.0, float(fraction) * (int(round) + 1))
    count = max(1, math.ceil(share * len(scores) - 1e-9))
    chosen = set(np.argsort(-np.asarray(scores), kind="stable")[:count].tolist())
    keeps = [np.full(np.shape(conf), k in chosen, dtype=bool) for k, conf in enumerate(confidences)]
    return keeps, {"fraction": float(fraction), "share": share, "reliability": scores, "kept_volumes": sorted(chosen)}


#: filter name -> ``filter(labels, confidences, round, **options) -> (keep masks, details)``
FILTERS: dict[str, Callable] = {"fixed": fixed_threshold, "classwise": classwise_threshold, "stpp": stpp_ranking}


def apply_filter(name: str, labels, confidences, round: int = 0, **options) -> tuple[list[np.ndarray], dict]:
    """Run the filter called ``name`` (:data:`FILTERS`); ``options`` it does not take are refused."""
    if name not in FILTERS:
        raise ValueError(f"unknown filter {name!r}; valid: {', '.join(FILTERS)}")
    return FILTERS[name](labels, confidences, round, **options)
