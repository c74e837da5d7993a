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
