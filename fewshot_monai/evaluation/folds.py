"""Cross-validation folds of the SSL-ALPNet few-shot evaluation (Ouyang et al., ECCV 2020).

The scan list, sorted by numeric id (as :func:`fewshot_monai.data.datasets.datalist` returns it), is cut into
``n_folds`` blocks of consecutive scans: the query scans of each fold. The support of a fold is the ``shots``
scan(s) right after its block, wrapping around the end of the list (the last fold's support is the first scan).
A per-fold self-supervised model may train on every other scan (``train_ids``): neither the fold's queries nor its
support. For CHAOS-T2 (20 scans) this gives 4 queries per fold, for SABS (30 scans) 6; ``docs/evaluation.md``
lists the resulting ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Fold", "folds", "scan_id"]


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold: ids of its queries, its support scan(s) and the scans a model may train on."""

    index: int
    query_ids: tuple[str, ...]
    support_ids: tuple[str, ...]
    train_ids: tuple[str, ...]


def scan_id(item) -> str:
    """The id of a datalist item: the item itself (str/int) or ``item["id"]`` for a dictionary."""
    if isinstance(item, Mapping):
        if "id" not in item:
            raise ValueError(f"datalist item has no 'id': {dict(item)}")
        return str(item["id"])
    return str(item)


def folds(datalist: Sequence, n_folds: int = 5, shots: int = 1) -> list[Fold]:
    """Split a sorted scan list into SSL-ALPNet folds.

    Args:
        datalist: scans in evaluation order (sorted by numeric id): ids or dictionaries with an ``"id"``.
        n_folds: number of folds. When the scan count is not a multiple of it, the first folds get one more scan.
        shots: support scans per fold (k-shot): the ``shots`` scans following the fold, wrapping around.

    Returns:
        ``n_folds`` :class:`Fold` objects, in order.

    Raises:
        ValueError: duplicated ids, ``n_folds``/``shots`` below 1, or too few scans for a fold to have queries and
            a support disjoint from them.
    """
    ids = [scan_id(item) for item in datalist]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicated scan ids in the datalist: {sorted({i for i in ids if ids.count(i) > 1})}")
    n_folds, shots = int(n_folds), int(shots)
    if n_folds < 1 or shots < 1:
        raise ValueError(f"n_folds and shots must be >= 1, got {n_folds} and {shots}")
    n = len(ids)
    base, extra = divmod(n, n_folds)
    if base < 1 or base + (1 if extra else 0) + shots > n:
        raise ValueError(f"{n} scans cannot make {n_folds} folds with {shots} support scan(s) outside each fold")
    result, start = [], 0
    for index in range(n_folds):
        size = base + (1 if index < extra else 0)
        query = ids[start : start + size]
        support = [ids[(start + size + k) % n] for k in range(shots)]
        excluded = set(query) | set(support)
        result.append(
            Fold(index, tuple(query), tuple(support), tuple(i for i in ids if i not in excluded)),
        )
        start += size
    return result
