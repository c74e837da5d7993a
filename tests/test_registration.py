"""Registration baseline: torch-free worker, clear error without itk-elastix, and it beats an identity warp."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fewshot_monai.evaluation import registration
from fewshot_monai.evaluation.metrics import dice_score

from .synthetic import write_blob_case

REPO = Path(__file__).resolve().parents[1]


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
    with pytest.raises(registration.RegistrationUnavailableError, match=r"pip install 'fewshot-monai\[registration\]'"):
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


def _broken_elastix(monkeypatch) -> None:
    """Simulate an itk-elastix that is installed but does not load (the worker's start-up check fails)."""
    from fewshot_monai.evaluation.registration_worker import MARKER

    reply = MARKER + '{"ready": false, "error": "AttributeError: module \'itk\' has no attribute \'ParameterObject\'"}'
    monkeypatch.setattr(registration, "elastix_available", lambda: True)
    monkeypatch.setattr(registration.RegistrationWorker, "command", (sys.executable, "-c", f"print({reply!r})"))


def test_broken_elastix_stops_evaluate_and_precompute_before_any_work(monkeypatch, tmp_path, caplog, capsys):
    from fewshot_monai.cli.main import main
    from fewshot_monai.data.phantoms import make_phantom_dataset

    _broken_elastix(monkeypatch)
    with pytest.raises(registration.RegistrationUnavailableError) as err:
        registration.RegistrationWorker(threads=1).start()
    message = str(err.value)
    assert "\n" not in message and "no attribute 'ParameterObject'" in message
    assert "pip install 'fewshot-monai[registration]'" in message and "itk-elastix 0.25.4 with the itk 5.4.7" in message

    data = tmp_path / "phantoms"
    make_phantom_dataset(data, n=3, shape=(32, 32, 8))
    common = ["--data", str(data), "--dataset", "phantom", "--model", "untrained", "--n-folds", "2"]
    for option in (["--baseline", "registration"], ["--protocol", "ep2", "--z-range-from", "registration"]):
        caplog.clear()
        out = tmp_path / f"out_{option[-1]}"
        assert main(["evaluate", *common, *option, "--out", str(out), "--no-progress"]) == 2
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert errors == [message] and not out.exists()  # nothing was written

    import importlib.util

    spec = importlib.util.spec_from_file_location("precompute", REPO / "benchmarks" / "precompute_registrations.py")
    precompute = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(precompute)
    capsys.readouterr()
    cache = tmp_path / "cache"
    assert precompute.main(["--data", str(data), "--dataset", "phantom", "--n-folds", "2", "--folds", "0",
                            "--cache", str(cache), "--no-progress"]) == 2  # fmt: skip
    assert capsys.readouterr().err == f"error: {message}\n" and not cache.exists()


def test_worker_exiting_at_start_up_is_unavailable_not_a_failed_query(monkeypatch):
    monkeypatch.setattr(registration, "elastix_available", lambda: True)
    crash = "raise AttributeError(\"module 'itk' has no attribute 'ParameterObject'\")"
    monkeypatch.setattr(registration.RegistrationWorker, "command", (sys.executable, "-c", crash))
    with pytest.raises(registration.RegistrationUnavailableError, match=r"did not start \(.*exited \(code 1\).*"
                       r"no attribute 'ParameterObject'.*pip install"):  # fmt: skip
        registration.RegistrationWorker(threads=1).start()


@pytest.mark.skipif(not registration.elastix_available(), reason="itk-elastix not installed")
def test_registration_beats_identity_warp(tmp_path):
    # (the worker server refuses to start if loading itk-elastix pulled torch in: this also checks it stays out)
    from fewshot_monai.data.io import load_case

    # One real elastix run on small phantoms (CI installs the registration extra). Its time is the worker's
    # itk-elastix start-up (~20 s on a quiet core, ~30 s at load 8); the registration itself takes ~3 s.
    support = write_blob_case(tmp_path, "support", shape=(48, 48, 12), centre=(20, 20), radii=(10, 7), z=(2, 8))
    query = write_blob_case(tmp_path, "query", shape=(48, 48, 12), centre=(27, 25), radii=(11, 8), z=(3, 9), seed=1)
    query_case = load_case(*query)
    truth = query_case["label"][0].numpy() == 1
    identity = load_case(*support)["label"][0].numpy() == 1
    atlas = registration.register_atlases(
        query[0],
        [support[0]],
        [support[1]],
        reference=query_case["image"],
        threads=1,
        affine_iterations=100,
        bspline_iterations=30,
        cache_dir=tmp_path / "cache",
    )
    warped = registration.fuse_organ(atlas, 1)
    assert atlas.labels.shape == (1, 48, 48, 12) and atlas.seconds > 0
    before, after = dice_score(identity, truth), dice_score(warped, truth)
    assert after > before + 0.3, (before, after)  # measured: 0.35 -> 0.94
    assert after > 0.85

    # the same pair again comes from the cache: no elastix job, the same labels and the original seconds
    class NoJobs:
        def register(self, *args, **kwargs):
            raise AssertionError("registered again despite the cache")

    again = registration.register_atlases(
        query[0], [support[0]], [support[1]], reference=query_case["image"], worker=NoJobs(),
        affine_iterations=100, bspline_iterations=30, cache_dir=tmp_path / "cache",
    )  # fmt: skip
    assert np.array_equal(again.labels, atlas.labels) and again.seconds == pytest.approx(atlas.seconds)
    # other options are another registration
    key = registration.registration_cache_key(query[0], support[0], support[1], affine_iterations=100)
    assert key != registration.registration_cache_key(query[0], support[0], support[1], affine_iterations=101)


def test_majority_vote_fusion():
    labels = np.zeros((3, 4, 4, 2), dtype=np.int16)
    labels[0, :2] = 5
    labels[1, :3] = 5
    labels[2, 3:] = 5
    fused = registration.fuse_organ(registration.WarpedAtlas(labels, 0.0), 5)
    assert fused[:2].all() and not fused[2:].any()  # rows 0-1 have 2/3 votes, row 2 has 1/3, row 3 has 1/3
