"""``fewshot-monai segment``: a folder of studies segmented from one labelled support, as a user runs it."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from fewshot_monai.cli.main import main
from fewshot_monai.data.io import load_volume, save_volume
from fewshot_monai.evaluation.metrics import dice_score

from .synthetic import blob_volume, write_blob_case

FAST = ["--organs", "blob=1", "--intensity", "preprocessed", "--adapt-iterations", "0", "--no-progress"]


def _flipped(volume: MetaTensor) -> MetaTensor:
    """The same voxels stored in another orientation (x and y reversed): an LPS-like file."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = volume.shape[1] - 1, volume.shape[2] - 1
    affine = np.asarray(volume.affine) @ flip
    return MetaTensor(torch.flip(volume.as_tensor(), dims=(1, 2)), affine=torch.as_tensor(affine))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A support, and an input folder with a NIfTI query, an NRRD query stored in another orientation, a note and a
    corrupt file; the queries' labels are kept elsewhere for scoring."""
    root = tmp_path_factory.mktemp("study")
    support_image, support_label = write_blob_case(root, "support", seed=0)
    inputs, truths = root / "inputs", root / "truths"
    inputs.mkdir()
    truths.mkdir()
    image, label = write_blob_case(truths, "nifti_case", centre=(46, 48), radii=(20, 17), z=(7, 16), seed=1)
    shutil.move(image, inputs / "nifti_case.nii.gz")
    q_img, q_lbl = blob_volume(centre=(52, 40), radii=(21, 15), z=(4, 13), seed=2)
    save_volume(_flipped(q_img), inputs / "nrrd_case.nrrd")
    save_volume(_flipped(q_lbl), truths / "nrrd_case_label.nrrd", is_label=True)
    (inputs / "SOURCE.txt").write_text("where these came from\n")
    (inputs / "broken.nii.gz").write_bytes(os.urandom(600))
    return {"support": ["--support-image", str(support_image), "--support-label", str(support_label)], **locals()}


def _rows(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv") as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


def test_a_folder_is_segmented_in_each_input_geometry_and_a_bad_case_does_not_stop_it(study, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["segment", *study["support"], "--input", str(study["inputs"]), "--output", str(out), *FAST])
    assert code == 1  # one case failed
    rows = _rows(out)
    assert {k: r["status"] for k, r in rows.items()} == {"broken": "failed", "nifti_case": "done", "nrrd_case": "done"}
    assert "broken.nii.gz: cannot be read as NIfTI" in rows["broken"]["reason"]
    printed = capsys.readouterr().out
    assert "FAILED broken:" in printed and "2 done, 0 skipped, 1 failed, 1 non-volume file(s) ignored" in printed
    assert not list(out.glob("broken*")) and not list(out.glob(".*"))  # no partial output, no temporary file
    for case, truth_path in (("nifti_case", "nifti_case_label.nii.gz"), ("nrrd_case", "nrrd_case_label.nrrd")):
        seg = nib.load(out / f"{case}_seg.nii.gz")
        stored = load_volume(study["truths"] / truth_path, is_label=True, orientation=None)  # the file's own order
        assert seg.shape == tuple(stored.shape[1:])
        np.testing.assert_allclose(seg.affine, np.asarray(stored.affine), atol=1e-4)
        assert dice_score(np.asarray(seg.dataobj) == 1, stored[0].numpy() == 1) > 0.8
        report = json.loads((out / f"{case}.json").read_text())
        blob = report["organs"]["blob"]
        assert blob["volume_ml"] == pytest.approx(blob["voxels"] * 1.5 * 1.5 * 5.0 / 1000, rel=1e-3)
        assert 0.5 < blob["mean_confidence"] <= 1.0 and len(blob["z_range"]) == 2
        assert (out / f"{case}_qa.png").stat().st_size > 10_000
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "nifti_case_seg.nii.gz").stat().st_mode & 0o777 == 0o666 & ~umask  # not a private 0600 file


def test_a_rerun_skips_finished_cases_and_redoes_those_made_with_other_options(study, tmp_path):
    out = tmp_path / "out"
    args = ["segment", *study["support"], "--input", str(study["inputs"] / "*.nii.gz"), "--output", str(out), *FAST]
    assert main(args) == 1  # the corrupt file matches the glob too
    first = (out / "nifti_case.json").read_text()
    assert main(args) == 1
    rows = _rows(out)
    assert rows["nifti_case"]["status"] == "skipped" and rows["broken"]["status"] == "failed"
    assert (out / "nifti_case.json").read_text() == first  # untouched
    assert main([*args, "--pseudo-label", "none"]) == 1
    assert _rows(out)["nifti_case"]["status"] == "done"
    assert json.loads((out / "nifti_case.json").read_text())["fingerprint"] != json.loads(first)["fingerprint"]


def test_bad_inputs_stop_before_any_work_with_one_line(study, tmp_path, caplog):
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    label_only_note = tmp_path / "notes"
    label_only_note.mkdir()
    (label_only_note / "README.txt").write_text("nothing here")
    cases = {
        str(tmp_path / "typo"): "input does not exist",
        str(empty): "no volume to segment",
        str(label_only_note): "holds only 1 other file(s), e.g. README.txt",
    }
    for input_path, message in cases.items():
        caplog.clear()
        assert main(["segment", *study["support"], "--input", input_path, "--output", str(out), *FAST]) == 2
        assert message in caplog.text and "Traceback" not in caplog.text
    caplog.clear()
    bad_support = ["--support-image", study["support"][1], "--support-label", study["support"][3]]
    wrong = ["--organs", "liver=6", "--intensity", "preprocessed", "--adapt-iterations", "0", "--no-progress"]
    assert main(["segment", *bad_support, "--input", str(study["inputs"]), "--output", str(out), *wrong]) == 2
    assert "organ 'liver' (label 6) is missing from the support label" in caplog.text
    caplog.clear()
    anchor = ["--range-anchor", "spleen", "--intensity", "preprocessed", "--adapt-iterations", "0", "--no-progress"]
    assert main(["segment", *study["support"], "--input", str(study["inputs"]), "--output", str(out), *anchor]) == 2
    assert "range_anchor 'spleen' is not one of the organs" in caplog.text and "Traceback" not in caplog.text
    caplog.clear()
    assert main(["segment", *study["support"], "--input", str(study["inputs"]), "--output", str(out), *FAST,
                 "--adapt-ensemble", "2"]) == 2  # fmt: skip
    assert "adapt_ensemble needs the support adaptation" in caplog.text and "Traceback" not in caplog.text
    assert not out.exists() or not list(out.glob("*_seg.nii.gz"))


def test_an_adaptation_ensemble_segments_a_batch_and_is_part_of_the_fingerprint(study, tmp_path):
    out = tmp_path / "out"
    fast = [*FAST[:-3], "--adapt-iterations", "2", "--no-progress", "--no-overlay"]
    args = ["segment", *study["support"], "--input", str(study["inputs"]), "--output", str(out), *fast]
    assert main([*args, "--adapt-ensemble", "2"]) == 1  # the corrupt file fails, the rest is done
    rows = _rows(out)
    assert rows["nifti_case"]["status"] == "done" and rows["broken"]["status"] == "failed"
    truth = load_volume(study["truths"] / "nifti_case_label.nii.gz", is_label=True)[0].numpy() > 0
    seg = load_volume(out / "nifti_case_seg.nii.gz", is_label=True)[0].numpy() > 0
    assert dice_score(seg, truth) > 0.5
    assert len(list((out / ".cache").glob("*.pt"))) == 2  # two adaptations, seeds 0 and 1
    from fewshot_monai.batch import SegmentOptions

    # the ensemble is part of a case's fingerprint (a re-run with another K redoes the case); K = 1 leaves the
    # fingerprints of earlier batches as they were
    assert SegmentOptions(adapt_ensemble=2).recorded()["adapt_ensemble"] == 2
    assert "adapt_ensemble" not in SegmentOptions().recorded()


def test_a_dicom_folder_with_two_series_is_refused_unless_one_is_chosen(study, tmp_path):
    pytest.importorskip("pydicom")
    from fewshot_monai.data.io import dicom_series

    from .test_io import _write_dicom_series

    image, _ = blob_volume(centre=(46, 48), radii=(20, 17), z=(7, 16), seed=1)
    values = np.round(image[0].numpy() * 100).astype(np.int16)
    folder = tmp_path / "inputs" / "patient_7"
    for k in range(2):  # two series (different UIDs) in one folder
        _write_dicom_series(values, np.asarray(image.affine), tmp_path / f"s{k}")
        folder.mkdir(parents=True, exist_ok=True)
        for f in (tmp_path / f"s{k}").iterdir():
            shutil.move(f, folder / f"s{k}_{f.name}")
    series = dicom_series(folder)
    assert len(series) == 2 and set(series.values()) == {20}
    out = tmp_path / "out"
    args = ["segment", *study["support"], "--input", str(tmp_path / "inputs"), "--output", str(out), *FAST]
    assert main(args) == 1
    reason = _rows(out)["patient_7"]["reason"]
    assert "holds 2 DICOM series, choose one (--series)" in reason and all(uid in reason for uid in series)
    assert main([*args, "--series", next(iter(series))]) == 0
    assert nib.load(out / "patient_7_seg.nii.gz").shape == (96, 96, 20)


@pytest.mark.slow
def test_two_ranks_write_each_case_once_with_masks_identical_to_one_process(study, tmp_path):
    pytest.importorskip("torch.distributed")
    single, multi = tmp_path / "single", tmp_path / "multi"
    args = ["segment", *study["support"], "--input", str(study["inputs"]), *FAST]
    assert main([*args, "--output", str(single)]) == 1
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--master_port=29533"]
    done = subprocess.run(
        [*launch, "-m", "fewshot_monai.cli.main", *args, "--output", str(multi)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode != 0 and "1 failed" in done.stdout, done.stderr[-2000:]  # rank 0 reports the batch
    assert _rows(multi).keys() == _rows(single).keys()
    assert len((multi / "summary.csv").read_text().splitlines()) == 1 + 3  # each case once
    assert {r["status"] for r in _rows(multi).values()} == {"done", "failed"}
    for case in ("nifti_case", "nrrd_case"):
        a = np.asarray(nib.load(single / f"{case}_seg.nii.gz").dataobj)
        b = np.asarray(nib.load(multi / f"{case}_seg.nii.gz").dataobj)
        assert np.array_equal(a, b)
    written = sorted(p.name for p in multi.iterdir() if p.name.endswith("_seg.nii.gz"))
    assert written == ["nifti_case_seg.nii.gz", "nrrd_case_seg.nii.gz"]


def test_pseudolabel_writes_an_nnunet_dataset_with_ignore_below_the_confidence(study, tmp_path):
    out = tmp_path / "Dataset501_Blob"
    args = ["pseudolabel", *study["support"], "--input", str(study["inputs"]), "--output", str(out), *FAST]
    assert main([*args, "--min-confidence", "0.9"]) == 1  # the corrupt file fails, the others are labelled
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "blob": 1, "ignore": 2}
    assert dataset["file_ending"] == ".nii.gz" and dataset["channel_names"] == {"0": "MRI"}
    images = sorted(p.name for p in (out / "imagesTr").iterdir())
    labels = sorted(p.name for p in (out / "labelsTr").iterdir())
    assert images == ["nifti_case_0000.nii.gz", "nrrd_case_0000.nii.gz"] and dataset["numTraining"] == 2
    assert labels == ["nifti_case.nii.gz", "nrrd_case.nii.gz"]
    raw = load_volume(study["inputs"] / "nrrd_case.nrrd", orientation=None)  # the file's own intensities and grid
    copied = load_volume(out / "imagesTr" / "nrrd_case_0000.nii.gz", orientation=None)
    assert torch.equal(copied.as_tensor(), raw.as_tensor())
    label = np.asarray(nib.load(out / "labelsTr" / "nrrd_case.nii.gz").dataobj)
    confidence = np.asarray(nib.load(out / "confidence" / "nrrd_case.nii.gz").dataobj)
    truth = load_volume(study["truths"] / "nrrd_case_label.nrrd", is_label=True, orientation=None)[0].numpy()
    assert set(np.unique(label)) <= {0, 1, 2} and (label == 2).any()
    assert (confidence[label == 2] < 0.9).all() and (confidence[label != 2] >= 0.9).all()
    kept = label != 2
    assert dice_score((label == 1) & kept, (truth == 1) & kept) > 0.85  # the kept pseudo-labels are accurate
    report = json.loads((out / "reports" / "nrrd_case.json").read_text())
    assert 0.5 < report["kept_fraction"] < 1.0 and report["labels"]["ignore"] == 2
    assert main([*args, "--min-confidence", "0"]) == 1  # another filter: redone, nothing ignored
    assert not (np.asarray(nib.load(out / "labelsTr" / "nrrd_case.nii.gz").dataobj) == 2).any()


def _nnunet_python() -> str | None:
    """An interpreter that imports nnunetv2: this one, or ``FEWSHOT_NNUNET_PYTHON`` (nnunetv2 pulls its own torch,
    so it usually lives in a separate environment; docs/pseudo_labelling.md)."""
    import importlib.util

    if importlib.util.find_spec("nnunetv2") is not None:
        return sys.executable
    return os.environ.get("FEWSHOT_NNUNET_PYTHON") or None


NNUNET_CHECK = (
    "import sys\n"
    "from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity\n"
    "verify_dataset_integrity(sys.argv[1], num_processes=1)\n"
)


def test_pseudolabel_output_passes_nnunets_own_dataset_check(study, tmp_path):
    python = _nnunet_python()
    if python is None:
        pytest.skip("nnunetv2 is not importable (set FEWSHOT_NNUNET_PYTHON to an interpreter that has it)")
    out = tmp_path / "Dataset503_Blob"
    args = ["pseudolabel", *study["support"], "--input", str(study["inputs"]), "--output", str(out), *FAST]
    assert main([*args, "--min-confidence", "0.9"]) == 1  # the corrupt file fails, the others are labelled
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        **{k: str(tmp_path / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")},
    }
    check = subprocess.run([python, "-c", NNUNET_CHECK, str(out)], capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
    dataset = json.loads((out / "dataset.json").read_text())
    del dataset["labels"]["ignore"]  # the label files now hold a value dataset.json does not declare
    (out / "dataset.json").write_text(json.dumps(dataset))
    broken = subprocess.run([python, "-c", NNUNET_CHECK, str(out)], capture_output=True, text=True, env=env)
    assert broken.returncode != 0  # so the check above did look at the labels


@pytest.mark.slow
def test_pseudolabel_with_the_reference_labeller_writes_nearest_neighbour_labels(study, tmp_path):
    out = tmp_path / "Dataset502_Blob"
    args = ["pseudolabel", *study["support"], "--input", str(study["inputs"]), "--output", str(out), *FAST]
    assert main([*args, "--min-confidence", "0", "--labeller", "reference"]) == 1  # the corrupt file fails
    label = np.asarray(nib.load(out / "labelsTr" / "nrrd_case.nii.gz").dataobj)
    confidence = np.asarray(nib.load(out / "confidence" / "nrrd_case.nii.gz").dataobj)
    truth = load_volume(study["truths"] / "nrrd_case_label.nrrd", is_label=True, orientation=None)[0].numpy()
    assert dice_score(label == 1, truth == 1) > 0.7  # the blob's nearest support pixels are the blob's
    assert confidence.min() >= 0.0 and confidence.max() <= 1.0
    few = tmp_path / "fewshot"  # the default labeller is another one: other labels, another fingerprint
    assert main(["pseudolabel", *study["support"], "--input", str(study["inputs"]), "--output", str(few), *FAST]) == 1
    assert not np.array_equal(np.asarray(nib.load(few / "labelsTr" / "nrrd_case.nii.gz").dataobj), label)
    fingerprints = [json.loads((o / "reports" / "nrrd_case.json").read_text())["fingerprint"] for o in (out, few)]
    assert fingerprints[0] != fingerprints[1]
