"""Registration baseline: torch-free worker, clear error without itk-elastix, and it beats an identity warp."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fewshot_monai.evaluation import registration
from fewshot_monai.evaluation.metrics import dice_score

from .synthetic import write_blob_case


def test_worker_module_does_not_import_torch():
    code = (
        "import sys, fewshot_monai.evaluation.registration_worker as w; "
        "assert 'torch' not in sys.modules, 'torch imported'; print(w.__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_worker_refuses_to_run_next_to_torch(tmp_path):
    import torch  # noqa: F401  (torch is loaded in the test process)

    from fewshot_monai.evaluation.registration_worker import register_and_warp

    with pytest.raises(RuntimeError, match="without torch"):
        register_and_warp("a.nii.gz", "b.nii.gz", "c.nii.gz", str(tmp_path / "out.nii.gz"))


def test_missing_elastix_gives_the_install_command(monkeypatch, tmp_path):
    from fewshot_monai.cli.main import main

    monkeypatch.setattr(registration, "elastix_available", lambda: False)
    with pytest.raises(registration.RegistrationUnavailableError, match=r"pip install fewshot-monai\[registration\]"):
        registration.require_elastix()
    code = main(
        [
            "evaluate",
            "--data",
            str(tmp_path),
            "--dataset",
            "chaos",
            "--baseline",
            "registration",
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ]
    )
    assert code == 2 and not (tmp_path / "out" / "summary.json").exists()


@pytest.mark.skipif(not registration.elastix_available(), reason="itk-elastix not installed")
def test_registration_beats_identity_warp(tmp_path):
    # (the worker server refuses to start if loading itk-elastix pulled torch in: this also checks it stays out)
    from fewshot_monai.data.io import load_case

    support = write_blob_case(tmp_path, "support", shape=(96, 96, 20), centre=(40, 40), radii=(20, 14), z=(4, 13))
    query = write_blob_case(tmp_path, "query", shape=(96, 96, 20), centre=(54, 50), radii=(22, 16), z=(6, 15), seed=1)
    query_case = load_case(*query)
    truth = query_case["label"][0].numpy() == 1
    identity = load_case(*support)["label"][0].numpy() == 1
    atlas = registration.register_atlases(
        query[0],
        [support[0]],
        [support[1]],
        reference=query_case["image"],
        threads=1,
        affine_iterations=150,
        bspline_iterations=60,
        cache_dir=tmp_path / "cache",
    )
    warped = registration.fuse_organ(atlas, 1)
    assert atlas.labels.shape == (1, 96, 96, 20) and atlas.seconds > 0
    before, after = dice_score(identity, truth), dice_score(warped, truth)
    assert after > before + 0.1, (before, after)
    assert after > 0.8

    # the same pair again comes from the cache: no elastix job, the same labels and the original seconds
    class NoJobs:
        def register(self, *args, **kwargs):
            raise AssertionError("registered again despite the cache")

    again = registration.register_atlases(
        query[0], [support[0]], [support[1]], reference=query_case["image"], worker=NoJobs(),
        affine_iterations=150, bspline_iterations=60, cache_dir=tmp_path / "cache",
    )  # fmt: skip
    assert np.array_equal(again.labels, atlas.labels) and again.seconds == pytest.approx(atlas.seconds)
    # other options are another registration
    key = registration.registration_cache_key(query[0], support[0], support[1], affine_iterations=150)
    assert key != registration.registration_cache_key(query[0], support[0], support[1], affine_iterations=151)


def test_majority_vote_fusion():
    labels = np.zeros((3, 4, 4, 2), dtype=np.int16)
    labels[0, :2] = 5
    labels[1, :3] = 5
    labels[2, 3:] = 5
    fused = registration.fuse_organ(registration.WarpedAtlas(labels, 0.0), 5)
    assert fused[:2].all() and not fused[2:].any()  # rows 0-1 have 2/3 votes, row 2 has 1/3, row 3 has 1/3
