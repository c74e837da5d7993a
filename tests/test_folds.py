"""SSL-ALPNet cross-validation folds: the documented CHAOS and SABS folds are reproduced exactly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fewshot_monai.evaluation.folds import Fold, folds

CHAOS_IDS = [1, 2, 3, 5, 8, 10, 13, 15, 19, 20, 21, 22, 31, 32, 33, 34, 36, 37, 38, 39]
SABS_IDS = list(range(30))

# the folds of docs/evaluation.md, written out by hand: (queries, 1-shot support)
CHAOS_FOLDS = [
    ("1 2 3 5", "8"),
    ("8 10 13 15", "19"),
    ("19 20 21 22", "31"),
    ("31 32 33 34", "36"),
    ("36 37 38 39", "1"),
]
SABS_FOLDS = [
    ("0 1 2 3 4 5", "6"),
    ("6 7 8 9 10 11", "12"),
    ("12 13 14 15 16 17", "18"),
    ("18 19 20 21 22 23", "24"),
    ("24 25 26 27 28 29", "0"),
]


@pytest.mark.parametrize("ids, expected", [(CHAOS_IDS, CHAOS_FOLDS), (SABS_IDS, SABS_FOLDS)], ids=["chaos", "sabs"])
def test_documented_folds_are_reproduced(ids, expected):
    result = folds([{"id": str(i), "image": f"image_{i}.nii.gz"} for i in ids])
    assert [f.index for f in result] == [0, 1, 2, 3, 4]
    for fold, (query, support) in zip(result, expected):
        assert fold.query_ids == tuple(query.split())
        assert fold.support_ids == tuple(support.split())
        # training may use everything except this fold's queries and support
        assert set(fold.train_ids) == {str(i) for i in ids} - set(fold.query_ids) - set(fold.support_ids)
        assert list(fold.train_ids) == [str(i) for i in ids if str(i) in fold.train_ids]  # order kept
    # every scan is a query exactly once
    assert sorted(i for f in result for i in f.query_ids) == sorted(str(i) for i in ids)


def test_k_shot_takes_the_next_scans_wrapping_around():
    result = folds(CHAOS_IDS, shots=3)
    assert result[0].support_ids == ("8", "10", "13")
    assert result[4].support_ids == ("1", "2", "3")
    assert not set(result[4].support_ids) & set(result[4].train_ids)
    assert len(result[2].train_ids) == 20 - 4 - 3


def test_uneven_and_invalid_splits():
    result = folds(list(range(7)), n_folds=3)
    assert [f.query_ids for f in result] == [("0", "1", "2"), ("3", "4"), ("5", "6")]
    assert result[2].support_ids == ("0",)
    with pytest.raises(ValueError, match="cannot make"):
        folds([1, 2, 3], n_folds=5)
    with pytest.raises(ValueError, match="duplicated"):
        folds([1, 1, 2, 3, 4, 5])
    assert isinstance(result[0], Fold)


def test_docs_list_the_same_folds():
    text = (Path(__file__).resolve().parents[1] / "docs" / "evaluation.md").read_text()
    for name, expected in (("CHAOS", CHAOS_FOLDS), ("SABS", SABS_FOLDS)):
        for k, (query, support) in enumerate(expected):
            row = rf"\|\s*{name}\s*\|\s*{k}\s*\|\s*{re.escape(query.replace(' ', ', '))}\s*\|\s*{support}\s*\|"
            assert re.search(row, text), f"docs/evaluation.md lacks the row for {name} fold {k}"
