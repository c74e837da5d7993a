"""The MONAI bundles (one per modality): metadata validates offline, inference segments a folder of studies as
``fewshot-monai segment`` does, training and evaluation run, and the encoder exports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser

from fewshot_monai.evaluation.metrics import dice_score

from .synthetic import write_blob_case

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
BUNDLE = BUNDLES / "fewshot_alpnet_mri"
SCHEMA = Path(__file__).resolve().parents[1].parent / "shared" / "monai" / "meta_schema_20240725.json"


@pytest.mark.parametrize("modality", ["mri", "ct"])
def test_metadata_verifies_offline(modality):
    bundle = BUNDLES / f"fewshot_alpnet_{modality}"
    assert sorted(p.name for p in (bundle / "configs").iterdir()) == [
        "evaluate.yaml",
        "export.yaml",
        "inference.yaml",
        *(["inference_student.yaml"] if modality == "mri" else []),
        "logging.conf",
        "metadata.json",
        "train.yaml",
    ]
    assert (bundle / "models" / "model.pt").is_file() and (bundle / "docs" / "README.md").is_file()
    if not SCHEMA.is_file():
        pytest.skip(f"offline MONAI schema not found at {SCHEMA}")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "verify_metadata",
            "--meta_file",
            str(bundle / "configs" / "metadata.json"),
            "--filepath",
            str(SCHEMA),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "metadata is verified with no error" in result.stdout + result.stderr


def _bundle_run(config: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / config)]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=600, cwd=BUNDLE)


def test_inference_config_segments_a_folder_and_stops_on_a_bad_support_with_one_line(tmp_path):
    support_image, support_label = write_blob_case(tmp_path, "support", seed=0)
    queries = tmp_path / "queries"
    queries.mkdir()
    query_image, query_label = write_blob_case(queries, "query", centre=(46, 48), radii=(20, 17), z=(7, 16), seed=1)
    query_label.rename(tmp_path / query_label.name)  # keep only images in the query folder
    (queries / "notes.txt").write_text("not a volume")
    out = tmp_path / "out"
    common = ["--support_image", str(support_image), "--query_images", str(queries), "--output_dir", str(out)]
    options = ["--organs", "{'blob': 1}", "--intensity", "preprocessed", "--adapt_iterations", "0"]
    options += ["--progress", "false"]
    done = _bundle_run("inference.yaml", *common, "--support_label", str(support_label), *options)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 done, 0 skipped, 0 failed, 1 non-volume file(s) ignored" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["query.json", "query_qa.png", "query_seg.nii.gz", "summary.csv"]
    pred, truth = nib.load(out / "query_seg.nii.gz"), nib.load(tmp_path / "query_label.nii.gz")
    np.testing.assert_allclose(pred.affine, truth.affine, atol=1e-5)
    assert dice_score(pred.get_fdata() == 1, truth.get_fdata() > 0) > 0.85
    again = _bundle_run("inference.yaml", *common, "--support_label", str(support_label), *options)
    assert again.returncode == 0 and "0 done, 1 skipped" in again.stdout  # finished cases are not redone
    empty = tmp_path / "empty_label.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((96, 96, 20), np.uint8), nib.load(support_label).affine), empty)
    bad = _bundle_run("inference.yaml", *common, "--support_label", str(empty), *options)
    assert bad.returncode == 2
    said = bad.stdout + bad.stderr
    assert "empty_label.nii.gz: organ 'blob' (label 1) is missing from the support label" in said
    assert "Traceback" not in said


def test_inference_student_config_segments_with_no_support(tmp_path):
    import torch

    from fewshot_monai.networks.student import StudentInfo, build_student, default_student_args, save_student

    queries = tmp_path / "queries"
    queries.mkdir()
    query_image, query_label = write_blob_case(queries, "query", seed=1)
    query_label.rename(tmp_path / query_label.name)
    args = default_student_args(1, (4, 8))
    torch.manual_seed(0)
    network = build_student("UNet", args)
    with torch.no_grad():  # an untrained all-zero student: an empty map, in the input geometry
        for p in network.parameters():
            p.zero_()
    save_student(tmp_path / "student.pt", network, StudentInfo("UNet", args, {"blob": 1}, "preprocessed", 32))
    out = tmp_path / "out"
    common = ["--query_images", str(queries), "--output_dir", str(out), "--progress", "false"]
    done = _bundle_run("inference_student.yaml", "--model", str(tmp_path / "student.pt"), *common)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 done, 0 skipped, 0 failed" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["query.json", "query_qa.png", "query_seg.nii.gz", "summary.csv"]
    pred, truth = nib.load(out / "query_seg.nii.gz"), nib.load(tmp_path / "query_label.nii.gz")
    assert pred.shape == truth.shape
    np.testing.assert_allclose(pred.affine, truth.affine, atol=1e-5)
    bad = _bundle_run("inference_student.yaml", "--model", str(tmp_path / "missing.pt"), *common)
    assert bad.returncode == 2 and "missing.pt: file does not exist" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr


def test_export_config_writes_the_encoder_as_a_program_with_the_same_features(tmp_path):
    import torch

    from fewshot_monai.zoo import load_model

    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "export.yaml")
    parser.update({"bundle_root": str(BUNDLE), "export_path": str(tmp_path / "encoder.pt2"), "spatial_size": 64})
    parser.get_parsed_content("run")
    program = torch.export.load(str(tmp_path / "encoder.pt2")).module()
    slices = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = load_model(str(BUNDLE / "models" / "model.pt")).network.encode(slices)
        assert torch.allclose(program(slices), expected, atol=1e-5)


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    from fewshot_monai.data.phantoms import make_phantom_dataset

    root = tmp_path_factory.mktemp("bundle_phantoms")
    make_phantom_dataset(root, n=3, modality="mri", shape=(64, 64, 16), spacing=(5.4, 5.4, 17.5))
    return root


def test_train_config_runs_the_self_supervised_trainer(phantom_dir, tmp_path):
    import torch
    from ignite.engine import Engine

    from fewshot_monai.networks import ALPNet

    out = tmp_path / "train"
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "train.yaml")
    parser.update({"dataset_dir": str(phantom_dir), "descriptor": "phantom", "output_dir": str(out), "iterations": 3})
    parser["training_config"]["episodes"] = {"spatial_size": 64}
    parser["training_config"]["training"]["progress"] = False
    assert isinstance(parser.get_parsed_content("trainer"), Engine)
    parser.get_parsed_content("run")
    assert (out / "config.yaml").is_file() and (out / "superpixels" / "manifest.json").is_file()
    with open(out / "metrics.csv") as fh:
        assert len(fh.read().strip().splitlines()) == 1 + 3  # header + one row per iteration
    state = torch.load(out / "model.pt", weights_only=True)
    ALPNet(pretrained=False).load_state_dict(state, strict=True)


def test_evaluate_config_writes_the_summary(phantom_dir, tmp_path):
    import json

    out = tmp_path / "eval"
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "evaluate.yaml")
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(phantom_dir), "dataset": "phantom"})
    parser.update({"output_dir": str(out), "folds": [0]})
    parser["evaluation_config"].update({"n_folds": 3, "spatial_size": 64, "organs": ["liver"], "progress": False})
    parser.get_parsed_content("run")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"]["protocol"] == "ep1" and summary["protocol"]["pseudo_label"] == "window"
    assert 0.5 < summary["dice"]["liver"] <= 1.0 and "plain" in summary  # pseudo-labelled and plain, one run
    assert (out / "per_scan.csv").is_file() and (out / "report.md").is_file()
