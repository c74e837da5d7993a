"""Evaluation harness: metrics with known answers, protocols (EP2 never reads the query label), strategies,
and an end-to-end run on tiny phantoms that writes the documented outputs."""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest
import torch

from fewshot_monai.evaluation.metrics import (
    average_surface_distance_mm,
    dice_score,
    hausdorff95_mm,
    segmentation_metrics,
    spacing_from_affine,
)
from fewshot_monai.evaluation.protocols import get_protocol, segment_query
from fewshot_monai.inferers import FewShotSegmenter
from fewshot_monai.pseudolabel import available_pseudo_labels, get_pseudo_label, register_pseudo_label

from .synthetic import blob_volume

# ------------------------------------------------------------------------------------------------ metrics


def _box(shape=(40, 48, 48), start=(5, 6, 6), size=(12, 36, 36)):
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + n) for s, n in zip(start, size))] = True
    return mask


def test_perfect_prediction_gives_dice_one_and_zero_distance():
    box = _box()
    assert segmentation_metrics(box, box, (1.25, 1.25, 7.7)) == {"dice": 1.0, "hd95_mm": 0.0, "asd_mm": 0.0}


@pytest.mark.parametrize("axis, spacing", [(0, (2.0, 1.0, 1.0)), (2, (0.8, 0.8, 3.0))])
@pytest.mark.parametrize("shift", [1, 3, 6])
def test_shifted_box_has_the_analytic_dice_and_hd95(axis, spacing, shift):
    size = (12, 30, 30) if axis == 0 else (30, 30, 12)
    truth = _box(shape=(48, 48, 48), start=(6, 6, 6), size=size)
    pred = np.roll(truth, shift, axis=axis)
    length = size[axis]
    m = segmentation_metrics(pred, truth, spacing)
    assert m["dice"] == pytest.approx((length - shift) / length)
    # the end faces (most boundary voxels of this flat box) are exactly shift voxels away; nothing is further
    assert m["hd95_mm"] == pytest.approx(shift * spacing[axis], rel=1e-5)
    assert 0.0 < m["asd_mm"] <= m["hd95_mm"] + 1e-6
    # symmetric: swapping prediction and truth changes nothing
    assert hausdorff95_mm(truth, pred, spacing) == pytest.approx(m["hd95_mm"])
    assert average_surface_distance_mm(truth, pred, spacing) == pytest.approx(m["asd_mm"], rel=1e-5)


def test_empty_masks_are_defined():
    box, empty = _box(), np.zeros((40, 48, 48), dtype=bool)
    assert segmentation_metrics(empty, empty) == {"dice": 1.0, "hd95_mm": 0.0, "asd_mm": 0.0}
    one_empty = segmentation_metrics(empty, box)
    assert one_empty["dice"] == 0.0 and math.isnan(one_empty["hd95_mm"]) and math.isnan(one_empty["asd_mm"])
    assert math.isnan(segmentation_metrics(box, empty)["hd95_mm"])


def test_z_range_restricts_scoring_and_spacing_comes_from_the_affine():
    truth = _box(shape=(20, 20, 30), start=(5, 5, 10), size=(8, 8, 10))
    pred = truth.copy()
    pred[..., 0:3] = True  # false positives outside the organ range
    assert segmentation_metrics(pred, truth)["dice"] < 1.0
    assert segmentation_metrics(pred, truth, z_range=(10, 19)) == {"dice": 1.0, "hd95_mm": 0.0, "asd_mm": 0.0}
    affine = np.array([[-1.25, 0, 0, 10], [0, 1.25, 0, 0], [0, 0, 7.7, 3], [0, 0, 0, 1]])
    assert spacing_from_affine(affine) == pytest.approx((1.25, 1.25, 7.7))
    rotated = np.eye(4)
    rotated[:2, :2] = [[0, -2.0], [2.0, 0]]
    assert spacing_from_affine(torch.as_tensor(rotated)) == pytest.approx((2.0, 2.0, 1.0))
    assert dice_score(pred, pred) == 1.0


# ------------------------------------------------------------------------------------------------ protocols


@pytest.fixture(scope="module")
def net():
    from fewshot_monai.networks import ALPNet

    torch.manual_seed(0)
    return ALPNet(pretrained=True).eval()


def _raising_label():
    raise AssertionError("EP2 read the query label")


def test_ep2_never_reads_the_query_label(net):
    support_img, support_lbl = blob_volume(seed=0)
    query_img, query_lbl = blob_volume(centre=(46, 48), radii=(20, 17), z=(7, 16), seed=1)
    ep2 = get_protocol("ep2")
    segmenter = FewShotSegmenter(net, [support_img], [support_lbl], {"blob": 1}, spatial_size=96)
    raising = segment_query(ep2, segmenter, query_img, {"blob": _raising_label}).organs["blob"]
    zeros = segment_query(ep2, segmenter, query_img, {"blob": lambda: torch.zeros_like(query_lbl)}).organs["blob"]
    assert np.array_equal(raising.mask, zeros.mask) and raising.z_range == zeros.z_range is not None
    assert dice_score(raising.mask, query_lbl[0] > 0) > 0.7  # it did find the organ on its own
    assert ep2.scored_range(query_lbl) is None  # whole volume scored
    hinted = segment_query(ep2, segmenter, query_img, {"blob": _raising_label}, z_range_hints={"blob": (8, 15)})
    assert hinted.organs["blob"].z_range == (8, 15)  # a range found by other means (registration) is used


def test_ep1_uses_the_query_range_and_scores_only_it(net):
    support_img, support_lbl = blob_volume(seed=0)
    query_img, query_lbl = blob_volume(centre=(46, 48), radii=(20, 17), z=(7, 16), seed=1)
    ep1 = get_protocol("EP1")
    calls = []

    def label():
        calls.append(1)
        return query_lbl

    segmenter = FewShotSegmenter(net, [support_img], [support_lbl], {"blob": 1}, spatial_size=96)
    result = segment_query(ep1, segmenter, query_img, {"blob": label})
    organ = result.organs["blob"]
    assert np.array_equal(organ.mask, (organ.probability > 0.5).numpy())
    assert calls and organ.z_range == (7, 16) and ep1.scored_range(query_lbl) == (7, 16)
    assert not organ.mask[..., :7].any() and not organ.mask[..., 17:].any()
    # the support is prepared once: a second query costs no support encoding and gives the same answer
    again = segment_query(ep1, segmenter, query_img, {"blob": label}).organs["blob"]
    assert np.array_equal(organ.mask, again.mask)
    with pytest.raises(ValueError, match="ep1, ep2"):
        get_protocol("ep3")


def test_pseudo_label_registry():
    assert "none" in available_pseudo_labels() and get_pseudo_label("none") is None and get_pseudo_label(None) is None
    with pytest.raises(ValueError, match="valid names: .*none"):
        get_pseudo_label("magic")
    stage = object()
    register_pseudo_label("test_identity_stage", lambda **kw: stage)
    assert get_pseudo_label("test_identity_stage") is stage
    with pytest.raises(ValueError, match="already registered"):
        register_pseudo_label("test_identity_stage", lambda **kw: None)


# ------------------------------------------------------------------------------------------------ end to end

PHANTOM_SIZE = {"shape": (64, 64, 16), "spacing": (5.4, 5.4, 17.5)}


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    import nibabel as nib

    from fewshot_monai.data.phantoms import make_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms")
    cases = make_phantom_dataset(root, n=3, modality="mri", **PHANTOM_SIZE)
    # a bad case: case2 has no spleen (it is the support of fold 1 and the query of fold 2)
    label = nib.load(cases[2]["label"])
    data = np.asarray(label.dataobj).copy()
    data[data == 4] = 0
    nib.save(nib.Nifti1Image(data, label.affine), cases[2]["label"])
    return root


def _config(phantom_dir, out, **kw):
    return {"data": str(phantom_dir), "dataset": "phantom", "out": str(out), "n_folds": 3, "spatial_size": 64,
            "progress": False, **kw}  # fmt: skip


def test_run_evaluation_writes_the_documented_outputs(phantom_dir, tmp_path, caplog):
    import logging

    from fewshot_monai.evaluation.runner import run_evaluation

    out = tmp_path / "ep1"
    with caplog.at_level(logging.INFO, logger="fewshot_monai.evaluation.runner"):
        summary = run_evaluation(_config(phantom_dir, out, protocol="ep1", save_predictions=True))
    # a log a person can follow without a progress bar: one line per query (Dice per organ, seconds) and per fold
    query_lines = [m for m in caplog.messages if m.startswith("fold 0 scan ")]
    assert query_lines and all("liver" in m and m.endswith(" s)") for m in query_lines)
    assert any(m.startswith("fold 0: ") and "mean Dice" in m for m in caplog.messages)
    organs = ["liver", "right_kidney", "left_kidney", "spleen"]
    for name in ("per_scan.csv", "summary.json", "report.md", "boxplots.png", "overlay_best.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "summary.json").read_text())
    for key in ("dice", "dice_std", "dice_mean", "hd95_mm", "asd_mm", "seconds_per_query", "protocol", "folds"):
        assert key in saved, key
    assert set(saved["dice"]) == set(organs) and all(0.0 <= saved["dice"][o] <= 1.0 for o in organs)
    assert saved["dice_mean"] == pytest.approx(np.mean([saved["dice"][o] for o in organs]))
    assert saved["protocol"]["protocol"] == "ep1" and saved["protocol"]["setting"] == 1
    from fewshot_monai.zoo import load_model

    assert saved["protocol"]["data"] == str(phantom_dir.resolve())
    assert saved["protocol"]["model"] == load_model(modality="mri").description  # the zoo's default model
    assert saved["protocol"]["date"] and saved["seconds_per_query"] > 0
    assert [f["support_ids"] for f in saved["folds"]] == [["case1"], ["case2"], ["case0"]]
    # the missing spleen is reported twice (as support of fold 1, in the query of fold 2) and the run went on
    skipped = sorted((s["fold"], s["organ"], s["reason"]) for s in saved["skipped"])
    assert [(fold, organ) for fold, organ, _ in skipped] == [(1, "spleen"), (2, "spleen")]
    assert "missing in support scan(s) ['case2']" in skipped[0][2] and "missing in the query label" in skipped[1][2]
    with open(out / "per_scan.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * 4 - 2
    assert {r["method"] for r in rows} == {"fewshot"} and saved["n_scans"]["spleen"] == 1
    for r in rows:  # EP1: the method used, and scored, exactly the organ's true range
        assert (r["z_first"], r["z_last"]) == (r["true_first"], r["true_last"]) == (r["scored_first"], r["scored_last"])
        assert 0.0 <= float(r["dice"]) <= 1.0 and float(r["seconds"]) > 0
    assert summary["dice"]["liver"] > 0.5  # the big bright organ of a phantom is found
    # per fold: the liver mean of each fold is that fold's scan's Dice (one query per fold here)
    liver = {r["fold"]: float(r["dice"]) for r in rows if r["organ"] == "liver"}
    assert {f: v["liver"] for f, v in saved["dice_per_fold"].items()} == pytest.approx(liver, abs=1e-5)
    report = (out / "report.md").read_text()
    assert "## Dice (%) per fold" in report
    assert "| **fewshot** (this run) |" in report and "Skipped cases (2)" in report and "(published, EP1)" not in report
    assert (out / "predictions" / "fewshot" / "fold0_case0.nii.gz").is_file()
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_ep2_run_never_reads_query_labels(phantom_dir, tmp_path):
    import nibabel as nib

    from fewshot_monai.evaluation.runner import run_evaluation

    first = run_evaluation(
        _config(
            phantom_dir, tmp_path / "a", protocol="ep2", folds=[0], organs=["liver", "spleen"], save_predictions=True
        )
    )
    # change the query's label (case0, fold 0): shift every organ; the support (case1) is untouched
    altered = tmp_path / "altered"
    altered.mkdir()
    for path in phantom_dir.iterdir():
        data_img = nib.load(path)
        arr = np.asarray(data_img.dataobj)
        if path.name == "case0_label.nii.gz":
            arr = np.roll(arr, 6, axis=0)
        nib.save(nib.Nifti1Image(arr, data_img.affine), altered / path.name)
    second = run_evaluation(
        _config(altered, tmp_path / "b", protocol="ep2", folds=[0], organs=["liver", "spleen"], save_predictions=True)
    )
    pred_a = nib.load(tmp_path / "a" / "predictions" / "fewshot" / "fold0_case0.nii.gz").get_fdata()
    pred_b = nib.load(tmp_path / "b" / "predictions" / "fewshot" / "fold0_case0.nii.gz").get_fdata()
    assert np.array_equal(pred_a, pred_b) and pred_a.any()  # identical predictions ...
    assert first["dice"]["liver"] != second["dice"]["liver"]  # ... scored against a different truth
    assert first["protocol"]["protocol"] == "ep2"
    with open(tmp_path / "a" / "per_scan.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert all(r["scored_first"] == "" for r in rows)  # EP2 scores the whole volume


def test_cli_evaluate_and_bad_options(phantom_dir, tmp_path, capsys, caplog):
    from fewshot_monai.cli.main import main

    out = tmp_path / "cli"
    code = main(["evaluate", "--data", str(phantom_dir), "--dataset", "phantom", "--protocol", "ep1", "--folds", "0",
                 "--n-folds", "3", "--organs", "liver,spleen", "--spatial-size", "64", "--out", str(out),
                 "--no-progress"])  # fmt: skip
    assert code == 0 and (out / "summary.json").is_file()
    assert "fewshot" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"]["organs"] == ["liver", "spleen"] and summary["protocol"]["folds"] == [0]
    bad = main(["evaluate", "--data", str(phantom_dir), "--dataset", "phantom", "--pseudo-label", "magic",
                "--out", str(tmp_path / "bad"), "--no-progress"])  # fmt: skip
    assert bad == 2 and not (tmp_path / "bad" / "summary.json").exists()
    missing = main(["evaluate", "--data", str(phantom_dir), "--dataset", "phantom", "--model", str(tmp_path),
                    "--out", str(tmp_path / "bad"), "--no-progress"])  # fmt: skip
    assert missing == 2  # no fold<k>_setting<s>.pt in that folder
    assert summary["command"].startswith("fewshot-monai ") or summary["command"].endswith("--no-progress")
    for args, message in (
        (["--adapt-option", "lr=0.01"], "--adapt-option needs --adapt-iterations"),
        (["--adapt-iterations", "5", "--adapt-option", "speed=9"], "unknown adaptation option(s) ['speed']"),
        (["--adapt-iterations", "-1"], "--adapt-iterations must be >= 0"),
    ):
        caplog.clear()
        code = main(["evaluate", "--data", str(phantom_dir), "--dataset", "phantom", *args,
                     "--out", str(tmp_path / "bad_adapt"), "--no-progress"])  # fmt: skip
        assert code == 2 and message in caplog.text, args
    assert not (tmp_path / "bad_adapt" / "summary.json").exists()


def test_generic_layout_needs_and_uses_a_label_map(phantom_dir, tmp_path):
    import shutil

    from fewshot_monai.evaluation.runner import run_evaluation

    root = tmp_path / "generic"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for k in range(3):
        shutil.copy(phantom_dir / f"case{k}_image.nii.gz", root / "images" / f"ct_{k}.nii.gz")
        shutil.copy(phantom_dir / f"case{k}_label.nii.gz", root / "labels" / f"ct_{k}.nii.gz")
    with pytest.raises(ValueError, match="label map"):
        run_evaluation({"data": str(root), "dataset": "generic", "out": str(tmp_path / "x"), "progress": False})
    summary = run_evaluation(
        _config(root, tmp_path / "g", dataset="generic", label_map={"liver": 1}, folds=[0], limit_queries=1)
    )
    assert summary["protocol"]["label_map"] == {"liver": 1} and summary["n_scans"] == {"liver": 1}
    assert summary["folds"][0]["query_ids"] == ["ct_0"] and summary["protocol"]["intensity"] == "preprocessed"


def test_cli_evaluate_on_a_users_folder_gives_the_full_report(phantom_dir, tmp_path, caplog):
    # a user's data set: a series folder, float labels with arbitrary ids in a separate folder, no descriptor
    import logging

    import nibabel as nib

    from fewshot_monai.cli.main import main

    root = tmp_path / "mine"
    (root / "series").mkdir(parents=True)
    (root / "segmentations").mkdir()
    for k in range(3):
        (root / "series" / f"mr{k}.nii.gz").symlink_to(phantom_dir / f"case{k}_image.nii.gz")
        label = nib.load(phantom_dir / f"case{k}_label.nii.gz")
        values = np.asarray(label.dataobj).astype(np.float32) * 10  # liver 10, spleen 40
        nib.save(nib.Nifti1Image(values, label.affine), root / "segmentations" / f"mr{k}_seg.nii.gz")
    out = tmp_path / "report"
    args = ["evaluate", "--data", str(root), "--dataset", "generic", "--images", "series", "--labels",
            "segmentations", "--label-map", "liver=10,spleen=40", "--n-folds", "3", "--folds", "0,1",
            "--spatial-size", "64", "--intensity", "mri", "--no-progress", "--out", str(out)]  # fmt: skip
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    # --no-progress: one line per query with Dice and seconds, one per fold
    assert len([m for m in caplog.messages if re.fullmatch(r"fold \d scan mr\d: liver [\d.]+.* \([\d.]+ s\)", m)]) == 2
    assert len([m for m in caplog.messages if re.fullmatch(r"fold \d: \d+ scan-organ pairs, mean Dice [\d.]+", m)]) == 2
    report = (out / "report.md").read_text()
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert headings[:3] == [
        "## Dice (%) per organ, mean ± std over scans",
        "## Dice (%) per fold (mean over the fold's scans)",
        "## Distances (mm), mean ± std over scans where defined",
    ]
    assert "| **fewshot** (this run) |" in report and "published" not in report
    assert (out / "boxplots.png").is_file() and (out / "per_scan.csv").is_file()
    saved = json.loads((out / "summary.json").read_text())
    assert saved["dice"]["liver"] > 0.5 and saved["protocol"]["label_map"] == {"liver": 10, "spleen": 40}
    assert (saved["protocol"]["images"], saved["protocol"]["labels"]) == ("series", "segmentations")


def test_pseudo_label_run_scores_plain_and_refined_with_diagnostics(phantom_dir, tmp_path):
    from fewshot_monai.evaluation.runner import run_evaluation

    out = tmp_path / "pl"
    options = {"threshold": 0.3, "k_per_chunk": None, "neighbourhood": None, "min_area": 4}
    summary = run_evaluation(
        _config(phantom_dir, out, protocol="ep1", folds=[0], organs=["liver"], pseudo_label="slice",
                pseudo_label_options=options, overlays=False)
    )  # fmt: skip
    with open(out / "per_scan.csv", newline="") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"fewshot", "fewshot_plain"}
    refined, plain = rows["fewshot"], rows["fewshot_plain"]
    assert int(refined["pl_slices"]) > 0 and 0.0 <= float(refined["pl_dice"]) <= 1.0
    assert float(refined["pl_confidence"]) > 0.3 and plain["pl_slices"] == ""
    assert float(plain["seconds"]) == pytest.approx(float(refined["seconds"]) - float(refined["pl_seconds"]), abs=1e-3)
    pl = summary["pseudo_label"]
    assert pl["strategy"]["strategy"] == "slice" and pl["strategy"]["threshold"] == 0.3
    gain = summary["dice"]["liver"] - summary["plain"]["dice"]["liver"]
    assert pl["dice_gain"]["liver"] == pytest.approx(gain) and pl["overhead_fraction"] > 0
    report = (out / "report.md").read_text()
    assert "| **fewshot+slice** (this run) |" in report and "| **fewshot_plain** (this run) |" in report
    assert "## Inference-time pseudo-labelling" in report


@pytest.mark.slow
def test_ep2_range_from_registration(phantom_dir, tmp_path):
    from fewshot_monai.evaluation.registration import elastix_available
    from fewshot_monai.evaluation.runner import run_evaluation

    with pytest.raises(ValueError, match="EP2 only"):
        run_evaluation(_config(phantom_dir, tmp_path / "x", protocol="ep1", z_range_from="registration"))
    if not elastix_available():
        pytest.skip("itk-elastix not installed")
    out = tmp_path / "reg"
    summary = run_evaluation(
        _config(phantom_dir, out, protocol="ep2", folds=[0], organs=["liver"], baseline="registration",
                z_range_from="registration", registration_threads=1,
                extra={"registration": {"affine_iterations": 60, "bspline_iterations": 30}})
    )  # fmt: skip
    with open(out / "per_scan.csv", newline="") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    # our method segmented exactly the slices the registered support label covers, and paid for the registration
    assert (rows["fewshot"]["z_first"], rows["fewshot"]["z_last"]) == (
        rows["registration"]["z_first"], rows["registration"]["z_last"]
    )  # fmt: skip
    assert summary["seconds_per_query"] > float(rows["registration"]["seconds"]) > 0
    assert summary["protocol"]["z_range_from"] == "registration" and summary["dice"]["liver"] > 0.3  # found it


@pytest.mark.slow
def test_the_atlas_prior_registers_the_support_affinely_and_pays_for_it(phantom_dir, tmp_path):
    from fewshot_monai.evaluation.registration import elastix_available
    from fewshot_monai.evaluation.runner import run_evaluation

    if not elastix_available():
        pytest.skip("itk-elastix not installed")
    out, cache = tmp_path / "atlas", tmp_path / "cache"
    summary = run_evaluation(
        _config(phantom_dir, out, protocol="ep1", folds=[0], organs=["liver"], baseline="registration",
                inferer_options={"atlas_prior": 1.0}, registration_threads=1, registration_cache=str(cache),
                extra={"registration": {"affine_iterations": 60, "bspline_iterations": 30}})
    )  # fmt: skip
    assert summary["protocol"]["atlas_registration"] == "affine"
    assert summary["protocol"]["inferer_options"] == {"atlas_prior": 1.0}
    # two registrations per query: the baseline's (affine + B-spline) and the prior's (affine only), both cached
    assert len(list(cache.glob("*.json"))) == 2 * summary["n_queries"]
    records = [json.loads(f.read_text())["seconds"] for f in cache.glob("*.json")]
    assert summary["seconds_per_query"] > min(records) > 0  # our method paid for its registration
    assert summary["dice"]["liver"] > 0.3


def test_inferer_options_reach_the_inferer_and_bad_ones_fail_early(phantom_dir, tmp_path):
    from fewshot_monai.evaluation.runner import run_evaluation

    with pytest.raises(ValueError, match="bad inferer option"):
        run_evaluation(_config(phantom_dir, tmp_path / "bad", inferer_options={"no_such_option": 1}))
    assert not (tmp_path / "bad").exists()  # failed before any output was written
    with pytest.raises(ValueError, match="component_anchor needs range_anchor"):
        run_evaluation(_config(phantom_dir, tmp_path / "bad", inferer_options={"component_anchor": True}))
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="unknown atlas_registration 'rigid'"):
        run_evaluation(_config(phantom_dir, tmp_path / "bad", atlas_registration="rigid"))
    summary = run_evaluation(
        _config(phantom_dir, tmp_path / "ok", protocol="ep2", folds=[0], organs=["liver"],
                inferer_options={"peak_fraction": None, "prior_weight": 0.0, "largest_component": False})
    )  # fmt: skip
    assert summary["protocol"]["inferer_options"] == {"peak_fraction": None, "prior_weight": 0.0,
                                                      "largest_component": False}  # fmt: skip


def test_joint_scoring_merges_organs_into_one_label_map(phantom_dir, tmp_path):
    from fewshot_monai.evaluation.runner import run_evaluation

    out = tmp_path / "joint"
    kidneys = ["right_kidney", "left_kidney"]
    summary = run_evaluation(_config(phantom_dir, out, protocol="ep1", folds=[0], organs=kidneys, joint=True,
                                     overlays=False, save_predictions=True))  # fmt: skip
    joint = summary["joint"]
    assert joint["method"] == "fewshot_joint" and set(joint["dice"]) == set(kidneys)
    with open(out / "per_scan.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ours = {(r["scan"], r["organ"]): float(r["dice"]) for r in rows if r["method"] == "fewshot"}
    merged = {(r["scan"], r["organ"]): float(r["dice"]) for r in rows if r["method"] == "fewshot_joint"}
    assert set(ours) == set(merged)
    assert (out / "predictions" / "fewshot_joint").is_dir()
