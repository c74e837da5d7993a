"""The MONAI bundle: metadata validates offline, and the inference config segments a folder of queries."""

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

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "fewshot_alpnet"
SCHEMA = Path(__file__).resolve().parents[1].parent / "shared" / "monai" / "meta_schema_20240725.json"


def test_metadata_verifies_offline():
    if not SCHEMA.is_file():
        pytest.skip(f"offline MONAI schema not found at {SCHEMA}")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "verify_metadata",
            "--meta_file",
            str(BUNDLE / "configs" / "metadata.json"),
            "--filepath",
            str(SCHEMA),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "metadata is verified with no error" in result.stdout + result.stderr


def test_inference_config_segments_query_folder(tmp_path):
    support_image, support_label = write_blob_case(tmp_path, "support", seed=0)
    queries = tmp_path / "queries"
    queries.mkdir()
    query_image, query_label = write_blob_case(queries, "query", centre=(46, 48), radii=(20, 17), z=(7, 16), seed=1)
    query_label.rename(tmp_path / query_label.name)  # keep only images in the query folder
    out = tmp_path / "out"

    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "inference.yaml")
    parser.update(
        {
            "bundle_root": str(BUNDLE),
            "support_image": str(support_image),
            "support_label": str(support_label),
            "organ_id": 1,
            "query_images": str(queries),
            "output_dir": str(out),
            "intensity": "none",
            "spatial_size": 128,
        }
    )
    parser.get_parsed_content("initialize")  # evaluates the expressions (set_determinism)
    parser.get_parsed_content("evaluator").run()

    written = out / "query_seg.nii.gz"
    assert sorted(p.name for p in out.iterdir()) == ["query_seg.nii.gz"]
    pred, truth = nib.load(written), nib.load(tmp_path / "query_label.nii.gz")
    assert pred.shape == truth.shape
    np.testing.assert_allclose(pred.affine, truth.affine, atol=1e-5)
    assert dice_score(pred.get_fdata() > 0, truth.get_fdata() > 0) > 0.85


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
    parser.update({"dataset_dir": str(phantom_dir), "dataset": "phantom", "output_dir": str(out), "folds": [0]})
    parser["evaluation_config"].update({"n_folds": 3, "spatial_size": 64, "organs": ["liver"], "progress": False})
    parser.get_parsed_content("run")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"]["protocol"] == "ep1" and summary["protocol"]["pseudo_label"] == "window"
    assert 0.5 < summary["dice"]["liver"] <= 1.0 and "plain" in summary  # pseudo-labelled and plain, one run
    assert (out / "per_scan.csv").is_file() and (out / "report.md").is_file()
