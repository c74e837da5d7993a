"""``fewshot-monai demo``: the README's main command writes a correct mask, overlay and report."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from fewshot_monai.cli.main import main
from fewshot_monai.evaluation.metrics import dice_score


def test_demo_segments_the_query_liver(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--organs", "liver,right_kidney"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert "mean Dice" in capsys.readouterr().out
    assert {p.name for p in tmp_path.iterdir()} == {
        "data",
        "query_prediction.nii.gz",
        "overlay.png",
        "report.json",
        "report.md",
    }

    pred = nib.load(tmp_path / "query_prediction.nii.gz")
    truth = nib.load(tmp_path / "data" / "query_label.nii.gz")
    assert pred.shape == truth.shape
    np.testing.assert_allclose(pred.affine, truth.affine, atol=1e-5)
    liver = dice_score(np.asarray(pred.dataobj) == 1, np.asarray(truth.dataobj) == 1)
    rows = {r["organ"]: r for r in report["organs"]}
    assert rows["liver"]["dice"] == pytest.approx(liver, abs=1e-3)
    assert liver > 0.7  # ImageNet features alone already find the phantom liver
    # the default run pseudo-labels the query and also reports the plain prediction's Dice
    assert report["pseudo_label"] == "window" and rows["liver"]["pseudo_labelled_slices"] > 0
    assert 0.0 < rows["liver"]["dice_without_pseudo_label"] <= 1.0
    assert "Dice without pseudo-labelling" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_rejects_unknown_organ(tmp_path):
    with pytest.raises(ValueError, match="pancreas"):
        main(["demo", "--out", str(tmp_path), "--organs", "pancreas"])
