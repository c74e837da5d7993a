"""Self-training: the masked loss ignores what it must, the filters keep what their rules say, a round on phantoms
gives a student that segments with no support, through ``segment --model`` and the student segmenter."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from fewshot_monai.evaluation.metrics import dice_score
from fewshot_monai.networks import MaskedDiceCELoss
from fewshot_monai.pseudolabel.filters import apply_filter, classwise_threshold, fixed_threshold, stpp_ranking

PHANTOM = {"shape": (64, 64, 16), "spacing": (5.4, 5.4, 17.5)}


def _loss_and_grad(logits: torch.Tensor, target: torch.Tensor, ignore: int = 3):
    logits = logits.clone().requires_grad_(True)
    loss = MaskedDiceCELoss(ignore_index=ignore)(logits, target)
    loss.backward()
    return loss.detach(), logits.grad


def test_a_poisoned_ignore_region_changes_neither_the_loss_nor_the_gradient():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, generator=generator)
    target = torch.randint(0, 3, (2, 1, 16, 16), generator=generator)
    target[:, :, 4:12, 2:9] = 3  # ignored
    poisoned = logits.clone()
    poisoned[:, :, 4:12, 2:9] = torch.tensor([1e4, -1e4, float("nan")])[None, :, None, None]
    loss, grad = _loss_and_grad(logits, target)
    loss_p, grad_p = _loss_and_grad(poisoned, target)
    assert torch.isfinite(loss) and torch.equal(loss, loss_p)
    assert torch.equal(grad, grad_p)
    assert not bool(grad[:, :, 4:12, 2:9].any()) and bool(grad[:, :, :4].abs().sum() > 0)


def test_a_wholly_ignored_image_is_as_if_it_were_not_in_the_batch():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 8, 8, generator=generator)
    target = torch.randint(0, 3, (2, 1, 8, 8), generator=generator)
    target[1] = 3
    loss, _ = _loss_and_grad(logits, target)
    alone, _ = _loss_and_grad(logits[:1], target[:1])
    torch.testing.assert_close(loss, alone)
    nothing, grad = _loss_and_grad(logits, torch.full_like(target, 3))
    assert float(nothing) == 0.0 and not bool(grad.any())
    with pytest.raises(ValueError, match="target values"):
        MaskedDiceCELoss(ignore_index=3)(logits, torch.full_like(target, 4))


def test_the_cli_offers_exactly_the_registered_filters():
    import argparse

    from fewshot_monai.cli.selftrain import add_parser
    from fewshot_monai.pseudolabel.filters import FILTERS

    sub = argparse.ArgumentParser().add_subparsers()
    add_parser(sub)
    (action,) = [a for a in sub.choices["selftrain"]._actions if "--filter" in a.option_strings]
    assert set(action.choices) == set(FILTERS)  # the CLI keeps a literal copy so that --help needs no torch


def test_fixed_threshold_keeps_the_confident_voxels_exactly():
    confidence = np.array([[0.5, 0.95], [0.9, 0.2]])
    keeps, details = fixed_threshold([np.zeros((2, 2), int)], [confidence], threshold=0.9)
    assert keeps[0].tolist() == [[False, True], [True, False]] and details == {"threshold": 0.9}


def test_classwise_thresholds_cap_easy_classes_and_keep_a_share_of_hard_ones():
    labels = np.array([0] * 10 + [1] * 10)
    confidence = np.r_[np.full(9, 0.95), 0.5, np.arange(10) / 10 + 0.05]  # class 1: 0.05 .. 0.95
    keeps, details = classwise_threshold([labels[:12], labels[12:]], [confidence[:12], confidence[12:]], keep=0.8)
    kept = np.concatenate(keeps)
    assert details["class_thresholds"] == {0: 0.9, 1: pytest.approx(0.25)}
    assert kept[:10].mean() == 0.9  # background: its 80% threshold is 0.95, capped at 0.9: 9 of 10 kept
    assert kept[10:].mean() == 0.8 and not kept[10:12].any()  # class 1 keeps exactly 8 of its 10 voxels


def test_stpp_keeps_the_most_reliable_volumes_whole_and_one_more_share_per_round():
    labels = [np.array([0, 1, 1]) for _ in range(4)]
    confidences = [np.array([0.1, c, c]) for c in (0.9, 0.5, 0.7, 0.3)]
    keeps, details = stpp_ranking(labels, confidences, round=0, fraction=0.5)
    assert [bool(k.all()) for k in keeps] == [True, False, True, False] and not keeps[1].any()
    assert details["reliability"] == pytest.approx([0.9, 0.5, 0.7, 0.3])
    later, _ = stpp_ranking(labels, confidences, round=1, fraction=0.5)
    assert all(k.all() for k in later)
    with pytest.raises(ValueError, match="unknown filter 'best'"):
        apply_filter("best", labels, confidences)
    with pytest.raises(TypeError):
        apply_filter("stpp", labels, confidences, threshold=0.9)  # not an option of stpp


@pytest.fixture(scope="module")
def selftrained(tmp_path_factory):
    """One self-training round on phantoms: support seed 0, two unlabelled phantoms, the liver."""
    from fewshot_monai.batch import SegmentOptions
    from fewshot_monai.data.phantoms import write_phantom
    from fewshot_monai.engines.student import StudentTraining
    from fewshot_monai.selftrain import SelfTrainOptions, self_train

    root = tmp_path_factory.mktemp("selftrain")
    support = write_phantom(root, "support", seed=0, **PHANTOM)
    (root / "in").mkdir()
    labels = {}
    for seed in (1, 2):
        image, label = write_phantom(root / "in", f"case{seed}", seed=seed, **PHANTOM)
        labels[image.name.replace(".nii.gz", "")] = label.rename(root / label.name)
    segment = SegmentOptions(organs={"liver": 1}, adapt_iterations=0, pseudo_label="none", progress=False)
    options = SelfTrainOptions(
        rounds=1, filter="fixed", slice_size=64, channels=(8, 16, 32), progress=False,
        training=StudentTraining(iterations=150, batch_size=4, lr=3e-3),
    )  # fmt: skip
    result = self_train(root / "in", root / "out", [support[0]], [support[1]], segment, options)
    return {"root": root, "result": result, "labels": labels}


def test_a_students_label_map_is_its_softmax_argmax_even_where_no_class_holds_half():
    from fewshot_monai.inferers import label_map, organ_probabilities

    # one voxel per case: a kidney ahead with 0.40 of five classes; a clear liver; background ahead; a tie-free mix
    softmax = torch.tensor(
        [[0.30, 0.05, 0.50, 0.20], [0.15, 0.90, 0.20, 0.35], [0.40, 0.02, 0.10, 0.05], [0.10, 0.02, 0.10, 0.38],
         [0.05, 0.01, 0.10, 0.02]]  # fmt: skip
    ).reshape(5, 4, 1, 1)
    organs = organ_probabilities(softmax)
    assert organs.shape == (4, 4, 1, 1)
    assert label_map({k + 1: organs[k] for k in range(4)}).flatten().tolist() == [2, 1, 0, 3]
    assert softmax[2, 0].item() < 0.5 and organs[1, 0].item() == pytest.approx(0.40 / (0.40 + 0.30))
    masks = organs > 0.5  # each organ's own mask is exactly its argmax region
    assert torch.equal(masks, softmax.argmax(0)[None] == torch.arange(1, 5).reshape(4, 1, 1, 1))


def test_a_selftrain_round_gives_a_student_that_segments_the_phantoms(selftrained):
    root, result = selftrained["root"], selftrained["result"]
    assert [r["round"] for r in result["rounds"]] == [0, 1] and result["rounds"][1]["final"]
    record = json.loads((root / "out" / "round_0" / "round.json").read_text())
    assert record["filter"] == "fixed" and 0.5 < record["kept_fraction"] < 1.0
    assert (
        record["training"]["iterations"] == 150
        and record["training"]["loss"]["last"] < record["training"]["loss"]["first"]
    )
    for case, label in selftrained["labels"].items():
        pred = np.asarray(nib.load(root / "out" / "round_1" / "pseudo" / "labelsTr" / f"{case}.nii.gz").dataobj)
        assert dice_score(pred == 1, np.asarray(nib.load(label).dataobj) == 1) > 0.8  # the student's labels


def test_segment_with_a_student_needs_no_support_and_writes_the_input_geometry(selftrained, tmp_path):
    from fewshot_monai.cli.main import main

    root = selftrained["root"]
    out = tmp_path / "seg"
    code = main(["segment", "--model", str(root / "out" / "student.pt"), "--input", str(root / "in"),
                 "--output", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    for case, label in selftrained["labels"].items():
        written, truth = nib.load(out / f"{case}_seg.nii.gz"), nib.load(label)
        assert written.shape == truth.shape
        np.testing.assert_allclose(written.affine, truth.affine, atol=1e-5)
        assert dice_score(np.asarray(written.dataobj) == 1, np.asarray(truth.dataobj) == 1) > 0.8
        report = json.loads((out / f"{case}.json").read_text())
        assert list(report["organs"]) == ["liver"] and (out / f"{case}_qa.png").is_file()
    assert main(["segment", "--model", str(root / "out" / "student.pt"), "--input", str(root / "in"),
                 "--output", str(out), "--no-progress"]) == 0  # fmt: skip
    assert (out / "summary.csv").read_text().count(",skipped,") == 2  # a re-run with the same student skips


def test_segment_refuses_a_missing_support_and_a_non_student_model_with_one_line(selftrained, tmp_path, caplog):
    from fewshot_monai.cli.main import main

    root = selftrained["root"]
    assert main(["segment", "--input", str(root / "in"), "--output", str(tmp_path / "a"), "--no-progress"]) == 2
    assert "give --support-image and --support-label (or a self-trained --model)" in caplog.text
    not_student = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1)}, not_student)
    code = main(["segment", "--model", str(not_student), "--input", str(root / "in"), "--output", str(tmp_path / "b")])
    assert code == 2 and "weights.pt: not a fewshot-monai student checkpoint" in caplog.text


def test_selftrain_refuses_bad_options_and_a_missing_input_with_one_line(tmp_path, caplog):
    from fewshot_monai.cli.main import main

    support = ["--support-image", str(tmp_path / "s.nii.gz"), "--support-label", str(tmp_path / "l.nii.gz")]
    common = [*support, "--input", str(tmp_path / "nothing"), "--output", str(tmp_path / "out"), "--no-progress"]
    assert main(["selftrain", *common, "--rounds", "0"]) == 2
    assert "self-training stopped: rounds must be >= 1, got 0" in caplog.text
    assert main(["selftrain", *common]) == 2
    assert "nothing: input does not exist" in caplog.text and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_reference_labeller_can_be_round_0_teacher(selftrained, tmp_path):
    """``selftrain --labeller reference``: round 0's labels are those of ``pseudolabel --labeller reference``."""
    from fewshot_monai.cli.main import main

    root = selftrained["root"]
    support = ["--support-image", str(root / "support_image.nii.gz")]
    support += ["--support-label", str(root / "support_label.nii.gz")]
    common = [*support, "--organs", "liver=1", "--intensity", "mri", "--adapt-iterations", "0", "--no-progress"]
    reference = [*common, "--input", str(root / "in"), "--labeller", "reference"]
    assert main(["pseudolabel", *reference, "--output", str(tmp_path / "labels"), "--min-confidence", "0"]) == 0
    student = ["--rounds", "1", "--iterations", "2", "--batch-size", "2", "--slice-size", "32", "--channels", "4,8"]
    assert main(["selftrain", *reference, "--output", str(tmp_path / "st"), *student]) == 0
    record = json.loads((tmp_path / "st" / "selftrain.json").read_text())
    assert record["rounds"][0]["labelling"]["teacher"] == "reference"
    assert record["rounds"][1]["labelling"]["teacher"] == "student of round 0"
    for case in selftrained["labels"]:
        ours = nib.load(tmp_path / "st" / "round_0" / "pseudo" / "labelsTr" / f"{case}.nii.gz").get_fdata()
        theirs = nib.load(tmp_path / "labels" / "labelsTr" / f"{case}.nii.gz").get_fdata()
        assert ours.any() and np.array_equal(ours, theirs)
