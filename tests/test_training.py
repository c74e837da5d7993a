"""Self-supervised episode training: episodes, the resumable loader, the trainer, exact resume, the CLI."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events

from fewshot_monai.cli.main import main
from fewshot_monai.data.datasets import datalist
from fewshot_monai.data.episodes import EpisodeLoader, SuperpixelEpisodeDataset, load_training_volumes
from fewshot_monai.engines import (
    build_training,
    evaluate_episodes,
    iteration_seed,
    latest_checkpoint,
    load_config,
    one_shot_slice_dice,
    train_from_config,
)
from fewshot_monai.errors import InputError
from fewshot_monai.networks import ALPNet

REPO = Path(__file__).resolve().parents[1]
PHANTOM_CONFIG = REPO / "configs" / "train_phantom.yaml"
SMALL = {"shape": [96, 96, 12], "spacing": [3.6, 3.6, 14.0]}


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory) -> Path:
    from fewshot_monai.data.phantoms import make_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms")
    make_phantom_dataset(root, n=4, modality="mri", **{k: tuple(v) for k, v in SMALL.items()})
    return root


@pytest.fixture(scope="module")
def volumes(phantom_root):
    cases = [c for c in datalist(phantom_root, "phantom") if c["id"] in ("case0", "case1")]
    return load_training_volumes(cases, "mri", with_labels=True, progress=False)


@pytest.fixture()
def one_thread():
    """Short runs are much faster on one thread on a shared CPU; the thread count is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _config(root: Path, *overrides: str) -> dict:
    base = [
        f"data.root={root}",
        "data.phantoms=null",
        "data.exclude_scans=[case3]",
        "validation.support=null",
        "validation.query=null",
        "training.tensorboard=false",
        "training.threads=1",
        "episodes.spatial_size=64",
    ]
    return load_config(PHANTOM_CONFIG, [*base, *overrides])


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------------- episodes


def test_episodes_are_pure_functions_of_seed_and_index(volumes):
    a = SuperpixelEpisodeDataset(volumes, spatial_size=64, seed=5)
    b = SuperpixelEpisodeDataset(volumes, spatial_size=64, seed=5)
    for i in (0, 7, 123456):
        ea, eb = a[i], b[i]
        for key in ("support_image", "support_mask", "query_image", "query_mask"):
            assert torch.equal(ea[key], eb[key]), key
        assert (ea["volume"], ea["slice"], ea["superpixel"]) == (eb["volume"], eb["slice"], eb["superpixel"])
    ep = a[3]
    assert ep["support_image"].shape == (3, 64, 64) and ep["query_image"].shape == (3, 64, 64)
    assert ep["support_mask"].shape == (1, 64, 64) and ep["query_mask"].shape == (1, 64, 64)
    assert torch.equal(ep["query_image"][0], ep["query_image"][2])  # grey slice tiled
    for key in ("support_mask", "query_mask"):
        assert set(torch.unique(ep[key]).tolist()) == {0.0, 1.0}
    # the two views are different augmentations of the same slice
    assert not torch.equal(ep["support_image"], ep["query_image"])
    assert not torch.equal(a[3]["query_image"], a[4]["query_image"])
    c = SuperpixelEpisodeDataset(volumes, spatial_size=64, seed=6)
    assert not torch.equal(a[3]["query_image"], c[3]["query_image"])
    assert a.describe()["volumes"] == 2 and a.describe()["eligible_slices"] > 10


def test_exclusion_drops_every_slice_with_a_test_organ(volumes):
    full = SuperpixelEpisodeDataset(volumes, spatial_size=64, seed=0)
    ex = SuperpixelEpisodeDataset(volumes, spatial_size=64, seed=0, exclude_labels=[1, 4])  # liver, spleen
    assert ex.describe()["excluded_slices"] > 0
    assert len(ex.slices) < len(full.slices)
    labels = {v["id"]: v["label"][0].numpy() for v in volumes}
    for i in range(40):
        ep = ex[i]
        organs = set(np.unique(labels[ep["volume"]][..., ep["slice"]]).tolist())
        assert not organs & {1, 4}
    unlabelled = [{**v, "label": None} for v in volumes]
    with pytest.raises(InputError, match="exclude_labels"):
        SuperpixelEpisodeDataset(unlabelled, spatial_size=64, exclude_labels=[1])
    with pytest.raises(ValueError, match="no eligible training slice"):
        SuperpixelEpisodeDataset(volumes, spatial_size=64, exclude_labels=[0, 1, 2, 3, 4])


def test_episode_loader_restarts_at_any_iteration(volumes):
    ds = SuperpixelEpisodeDataset(volumes, spatial_size=32, seed=1)
    loader = EpisodeLoader(ds, episodes_per_iteration=2)
    loader.start_iteration = 3
    it = iter(loader)
    first, second = next(it), next(it)
    assert first["index"].tolist() == [6, 7] and second["index"].tolist() == [8, 9]
    assert first["query_image"].shape == (2, 3, 32, 32)
    assert torch.equal(first["query_image"][1], ds[7]["query_image"])
    assert iteration_seed(0, 5) == iteration_seed(0, 5) != iteration_seed(0, 6)


# ------------------------------------------------------------------------------------------------- training


@pytest.mark.slow
def test_short_training_lowers_loss_and_raises_heldout_dice(phantom_root, one_thread):
    # Held-out episodes: superpixel episodes of a phantom that is not trained on (case3), fixed seed, scored with
    # the training pooling window (early training gains show there first; see docs/training.md).
    mild = "episodes.augment={rotate_deg: 5, scale: 0.05, translate: 0.05, elastic_prob: 0}"
    config = _config(
        phantom_root,
        "training.iterations=40",
        "training.checkpoint_interval=1000",
        "episodes.episodes_per_iteration=4",
        "optimizer.lr=3e-3",
        mild,
    )
    run = build_training(config, phantom_root.parent / "learn_run", progress=False)
    held = [c for c in datalist(phantom_root, "phantom") if c["id"] == "case3"]
    held_ds = SuperpixelEpisodeDataset(
        load_training_volumes(held, "mri", progress=False), 64, seed=12345, augmentation=config["episodes"]["augment"]
    )
    window = run.network.train_window
    before = evaluate_episodes(run.network, held_ds, range(48), window=window)
    summary = run.run()
    after = evaluate_episodes(run.network, held_ds, range(48), window=window)
    assert summary["iterations"] == 40
    losses = [float(r["loss"]) for r in _rows(run.out_dir / "metrics.csv")]
    assert len(losses) == 40
    assert np.mean(losses[-15:]) < np.mean(losses[:15])
    assert after["loss"] < before["loss"]
    assert after["dice"] > before["dice"] + 0.01, (before, after)


def test_resume_after_interruption_reproduces_the_uninterrupted_run(phantom_root, tmp_path, one_thread):
    config = _config(phantom_root, "training.iterations=8", "training.checkpoint_interval=2", "training.epoch_length=3")
    full = build_training(config, tmp_path / "full", progress=False)
    full.run()

    # interrupted after iteration 5 (last checkpoint: 4), then resumed
    broken = build_training(config, tmp_path / "resumed", progress=False)

    @broken.trainer.on(Events.ITERATION_COMPLETED(once=5))
    def _crash(_engine):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        broken.run()
    assert latest_checkpoint(tmp_path / "resumed" / "checkpoints").name == "checkpoint_4.pt"
    resumed = build_training(config, tmp_path / "resumed", resume=True, progress=False)
    assert resumed.trainer.state.iteration == 4
    resumed.run()

    # stopped at 4 by the iteration budget, then extended to 8 with --iterations
    short = build_training(
        {**config, "training": {**config["training"], "iterations": 4}}, tmp_path / "ext", progress=False
    )
    short.run()
    extended = build_training(config, tmp_path / "ext", resume=True, progress=False)
    extended.run()

    ref = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    ref_rows = _rows(tmp_path / "full" / "metrics.csv")
    for name in ("resumed", "ext"):
        state = torch.load(tmp_path / name / "model.pt", weights_only=True)
        assert state.keys() == ref.keys()
        for key in ref:
            same = torch.equal(state[key], ref[key]) if torch.is_tensor(ref[key]) else state[key] == ref[key]
            assert same, (name, key)
        rows = _rows(tmp_path / name / "metrics.csv")
        assert [r["iteration"] for r in rows] == [str(i) for i in range(1, 9)]  # no duplicated rows
        for key in ("loss", "ce_loss", "align_loss", "lr"):
            assert [r[key] for r in rows] == [r[key] for r in ref_rows], (name, key)
    # the resumed optimiser/scheduler state is the uninterrupted one too
    a = torch.load(latest_checkpoint(tmp_path / "full" / "checkpoints"), weights_only=True)
    b = torch.load(latest_checkpoint(tmp_path / "resumed" / "checkpoints"), weights_only=True)
    assert a["lr_scheduler"] == b["lr_scheduler"] and a["trainer"] == b["trainer"]


def test_resume_refuses_changed_settings_and_missing_checkpoint(phantom_root, tmp_path, one_thread):
    config = _config(phantom_root, "training.iterations=1")
    with pytest.raises(ValueError, match="no checkpoint"):
        build_training(config, tmp_path / "none", resume=True)
    train_from_config(config, tmp_path / "run", progress=False)
    changed = _config(phantom_root, "training.iterations=2", "seed=1")
    with pytest.raises(ValueError, match="seed"):
        build_training(changed, tmp_path / "run", resume=True)
    with pytest.raises(ValueError, match="unknown config key"):
        _config(phantom_root, "optimizer.learning_rate=1")


def test_lr_schedule_and_exported_model(phantom_root, tmp_path, one_thread):
    config = _config(
        phantom_root,
        "training.iterations=5",
        "lr_schedule.step_size=2",
        "lr_schedule.gamma=0.5",
        "loss.align_weight=0",
    )
    summary = train_from_config(config, tmp_path / "run", progress=False)
    rows = _rows(tmp_path / "run" / "metrics.csv")
    # the logged lr is the one after the iteration's scheduler step: x0.5 every 2 iterations
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4])
    assert all(float(r["align_loss"]) == 0.0 for r in rows)
    state = torch.load(summary["model"], weights_only=True)
    net = ALPNet(pretrained=False)
    net.load_state_dict(state, strict=True)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["iterations"] == 5


def test_one_shot_validation_on_phantoms(phantom_root, tmp_path, one_thread):
    cases = {c["id"]: c for c in datalist(phantom_root, "phantom")}
    from fewshot_monai.data.io import load_case

    sup = load_case(cases["case2"]["image"], cases["case2"]["label"], intensity="mri")
    qry = load_case(cases["case3"]["image"], cases["case3"]["label"], intensity="mri")
    net = ALPNet()
    organs = {"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}
    scores = one_shot_slice_dice(net, sup["image"], sup["label"], qry["image"], qry["label"], organs, 64)
    assert set(scores) == set(organs)
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert scores["liver"] > 0.5  # the untrained pretrained encoder already finds the big organ
    assert net.training  # mode restored

    config = _config(
        phantom_root,
        "training.iterations=3",
        "validation.support=case2",
        "validation.query=case3",
        "validation.interval=2",
    )
    train_from_config(config, tmp_path / "val", progress=False)
    rows = _rows(tmp_path / "val" / "validation.csv")
    assert [r["iteration"] for r in rows] == ["0", "2", "3"]  # untrained baseline, every 2, at the end
    assert 0.0 <= float(rows[-1]["val_mean_dice"]) <= 1.0 and "val_dice_spleen" in rows[-1]


def test_train_command(phantom_root, tmp_path, capsys, one_thread):
    out = tmp_path / "cli"
    args = [
        "train",
        "--config",
        str(PHANTOM_CONFIG),
        "--out",
        str(out),
        "--iterations",
        "2",
        "--no-progress",
        *[
            f"--set={item}"
            for item in (
                f"data.root={phantom_root}",
                "data.phantoms=null",
                "validation.support=null",
                "validation.query=null",
                "episodes.spatial_size=64",
                "training.threads=1",
                "training.checkpoint_interval=1",
            )
        ],
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["iterations"] == 2 and Path(summary["model"]).is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint_1.pt", "checkpoint_2.pt"]
    assert (out / "config.yaml").is_file() and len(_rows(out / "metrics.csv")) == 2
    original = (out / "config.yaml").read_text()
    assert main([*args[:-7], "--resume", "--iterations", "3", *args[-7:]]) == 0
    assert json.loads(capsys.readouterr().out)["iterations"] == 3
    # the original config stays; the resumed options are recorded beside it
    import yaml

    assert (out / "config.yaml").read_text() == original
    record = yaml.safe_load((out / "resumed_1.yaml").read_text())
    assert record["changes"] == {"training.iterations": {"from": 2, "to": 3}}
    assert record["checkpoint"].endswith("checkpoint_2.pt") and record["resumed_at"].endswith("Z")
    assert main(["train", "--config", str(PHANTOM_CONFIG), "--out", str(out), "--set", "bogus.key=1"]) == 2


@pytest.mark.real_data
def test_real_chaos_episodes_and_exclusion():
    root = REPO.parent / "shared" / "data" / "chaos_t2spir"
    if not root.is_dir():
        pytest.skip("../shared/data not present")
    cases = [c for c in datalist(root, "chaos") if c["id"] in ("1", "2")]
    vols = load_training_volumes(cases, "mri", with_labels=True, progress=False)
    ds = SuperpixelEpisodeDataset(vols, spatial_size=256, seed=0)
    ex = SuperpixelEpisodeDataset(vols, spatial_size=256, seed=0, exclude_labels=[1, 2, 3, 4])
    assert ds.describe()["eligible_slices"] > 50
    assert 0 < ex.describe()["eligible_slices"] < ds.describe()["eligible_slices"] / 2
    ep = ds[0]
    assert ep["query_image"].shape == (3, 256, 256) and 0 < ep["query_mask"].sum() < 256 * 256


def test_fold_option_excludes_the_folds_queries_and_support(tmp_path):
    from fewshot_monai.cli.train import exclude_fold

    root = REPO.parent / "shared" / "data" / "chaos_t2spir"
    if not root.is_dir():
        pytest.skip("../shared/data not present")
    config = {"data": {"root": str(root), "descriptor": "chaos", "exclude_scans": ["39"]}}
    assert exclude_fold(config, 0)["data"]["exclude_scans"] == ["39", "1", "2", "3", "5", "8"]  # docs/evaluation.md
    assert exclude_fold(config, 4)["data"]["exclude_scans"] == ["39", "36", "37", "38", "1"]
    assert exclude_fold(config, 0, shots=3)["data"]["exclude_scans"][-3:] == ["8", "10", "13"]
    assert config["data"]["exclude_scans"] == ["39"]  # the input is not modified
    with pytest.raises(ValueError, match="--fold 5 out of range 0..4"):
        exclude_fold(config, 5)


# ------------------------------------------------------------------------------------------- generic folders


def _generic_folder(phantom_root: Path, root: Path, with_labels: bool) -> Path:
    """The phantoms as a user's data set: a folder of images (other names), labels in a separate float32 folder."""
    import nibabel as nib

    for k in range(4):
        (root / "series").mkdir(parents=True, exist_ok=True)
        (root / "series" / f"mr_{k}.nii.gz").symlink_to(phantom_root / f"case{k}_image.nii.gz")
        if with_labels:
            label = nib.load(phantom_root / f"case{k}_label.nii.gz")
            values = np.asarray(label.dataobj).astype(np.float32) * 3.0  # arbitrary ids 3, 6, 9, 12, float dtype
            (root / "masks").mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(values, label.affine), root / "masks" / f"mr_{k}.nii.gz")
    return root


def _generic_args(root: Path, out: Path, *overrides: str) -> list[str]:
    sets = [
        f"data.root={root}",
        "data.descriptor=generic",
        "data.images=series",
        "data.intensity=mri",
        "data.phantoms=null",
        "data.exclude_scans=[mr_3]",
        "validation.support=null",
        "validation.query=null",
        "episodes.spatial_size=64",
        "training.threads=1",
        "training.tensorboard=false",
        "training.log_interval=1",
        *overrides,
    ]
    args = ["train", "--config", str(PHANTOM_CONFIG), "--out", str(out), "--iterations", "2", "--no-progress"]
    return args + [f"--set={item}" for item in sets]


def test_train_on_a_generic_folder_of_images_without_labels(phantom_root, tmp_path, capsys, caplog, one_thread):
    import logging

    caplog.set_level(logging.INFO)
    root = _generic_folder(phantom_root, tmp_path / "images_only", with_labels=False)
    assert main(_generic_args(root, tmp_path / "run")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["iterations"] == 2 and summary["dataset"]["volumes"] == 3  # mr_3 excluded
    # --no-progress: one line per log_interval with the loss and the rate
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("iteration ")]
    assert [line.split(":")[0] for line in lines] == ["iteration 1/2", "iteration 2/2"]
    assert all(re.fullmatch(r"iteration \d/2: loss \d+\.\d{4}, \d+\.\d\d it/s, lr 1\.00e-03", x) for x in lines)

    # setting 2 and validation need labels: one line naming the scans and where labels were looked for
    caplog.clear()
    assert main(_generic_args(root, tmp_path / "s2", "data.exclude_labels=[3]")) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        f"setting 2 (data.exclude_labels) needs the label file of scan(s) mr_0, mr_1, mr_2 (labels looked for in "
        f"{root / 'labelsTr'}, {root / 'labels'}; set the label folder or glob)"
    ]
    caplog.clear()
    assert main(_generic_args(root, tmp_path / "val", "validation.support=mr_2", "validation.query=mr_3")) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("validation (validation.support, validation.query) needs the ")
    assert "scan(s) mr_2, mr_3 (" in errors[0]

    # the generic template config and --fold: folds on the natural order of the file names, no labels needed
    from fewshot_monai.cli.train import exclude_fold

    config = load_config(REPO / "configs" / "train_generic_fold.yaml", [f"data.root={root}", "data.images=series"])
    assert config["data"]["descriptor"] == "generic" and config["data"]["labels"] is None
    assert exclude_fold(config, 0, n_folds=2)["data"]["exclude_scans"] == ["mr_0", "mr_1", "mr_2"]


def test_train_on_a_generic_folder_with_float_labels_and_a_label_map(phantom_root, tmp_path, capsys, one_thread):
    root = _generic_folder(phantom_root, tmp_path / "labelled", with_labels=True)
    out = tmp_path / "run"
    overrides = (
        "data.labels=masks",
        "data.label_map={liver: 3, spleen: 12}",
        "data.exclude_labels=[12]",  # setting 2 without the spleen
        "validation.support=mr_2",
        "validation.query=mr_3",
        "validation.interval=2",
    )
    assert main(_generic_args(root, out, *overrides)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["iterations"] == 2
    rows = _rows(out / "validation.csv")
    assert [r["iteration"] for r in rows] == ["0", "2"] and set(rows[0]) >= {"val_dice_liver", "val_dice_spleen"}
    assert float(rows[0]["val_dice_liver"]) > 0.3  # the float labels were read as ids 3 and 12 (0 if not)
    assert summary["dataset"]["excluded_slices"] > 0  # slices showing label 12 dropped
