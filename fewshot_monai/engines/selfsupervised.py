"""Self-supervised episodic training of ALPNet on superpixel pseudo-labels (SSL-ALPNet), driven by MONAI/ignite.

Based on:

    Ouyang et al. "Self-supervision with Superpixels: Training Few-shot Medical Image Segmentation without
    Annotation". ECCV 2020, https://arxiv.org/abs/2007.09886

:class:`SelfSupervisedTrainer` is a :class:`monai.engines.SupervisedTrainer` whose iteration runs one batch of
episodes: the query and support slices are encoded together, the support superpixel mask gives the prototypes,
the query logits are scored against them, and the loss is the class-weighted cross-entropy (background 0.05,
foreground 1.0) plus ``align_weight`` times PANet's prototype alignment loss. MONAI's ``IterationEvents`` are
fired as in ``SupervisedTrainer`` so MONAI/ignite handlers work unchanged.

:func:`build_training` turns a config dict (YAML, see ``docs/training.md``) into a ready :class:`TrainingRun`
(network, optimizer, step-decay schedule, episodes, checkpoints, CSV/TensorBoard logs, progress bar, optional
validation); :func:`train_from_config` builds and runs it. Resuming is exact: episode ``i`` is a pure function of
``(seed, i)``, the torch RNG is re-seeded from ``(seed, iteration)`` at every iteration, and the checkpoint holds the
model, optimizer, scheduler and trainer states.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import LrScheduleHandler, TensorBoardStatsHandler
from monai.utils import CommonKeys as Keys
from monai.utils import optional_import

from fewshot_monai.data.datasets import LabelledDataset
from fewshot_monai.data.episodes import EpisodeLoader, SuperpixelEpisodeDataset, load_training_volumes
from fewshot_monai.engines.handlers import CSVLogger, OneShotValidation
from fewshot_monai.networks.alpnet import cpu_state_dict
from fewshot_monai.transforms.superpixels import SuperpixelParams
from fewshot_monai.utils.files import atomic_path, atomic_write

__all__ = [
    "DEFAULT_CONFIG",
    "RESUME_KEYS",
    "SelfSupervisedTrainer",
    "TrainingRun",
    "episode_logits",
    "episode_alignment",
    "build_training",
    "train_from_config",
    "load_config",
    "merge_config",
    "apply_overrides",
    "iteration_seed",
    "latest_checkpoint",
]

logger = logging.getLogger(__name__)

#: every configuration key with its default (``docs/training.md`` documents them).
DEFAULT_CONFIG: dict[str, Any] = {
    "seed": 0,
    "data": {
        "root": None,  # dataset folder (relative paths are relative to the working directory)
        "descriptor": "chaos",  # chaos | sabs | phantom | phantom_ct | generic (any folder of volumes)
        "images": None,  # generic: image folder or glob relative to root (null: imagesTr/, images/ or root)
        "labels": None,  # generic: label folder or glob relative to root (null: labelsTr/ or labels/ if present)
        "label_map": None,  # generic: {organ: label id} for validation (null: nnU-Net dataset.json)
        "intensity": None,  # intensity preset; null: the descriptor's (generic: preprocessed)
        "plane": "auto",  # slicing plane: auto (acquisition plane) | stored | axial | coronal | sagittal
        "scans": None,  # ids to train on; null: all
        "exclude_scans": [],  # ids never used for training (a fold's support/query scans)
        "exclude_labels": [],  # "setting 2": drop every slice containing these label ids (needs labels)
        "phantoms": None,  # {n, modality, ...make_phantom kwargs}: generate phantoms into <out>/phantoms
    },
    "superpixels": {
        "cache_dir": None,  # folder of `fewshot-monai superpixels`; null: computed in memory
        "min_size": 400,
        "sigma": 1.0,
        "scale": 0.005,
        "body_threshold": 0.05,
    },
    "episodes": {
        "spatial_size": 256,
        "episodes_per_iteration": 1,
        "min_superpixel_size": 100,
        "min_body_fraction": 0.05,
        "num_workers": 0,
        "augment": {},  # EpisodeAugmentation fields
    },
    "network": {"encoder": "lite0", "pretrained": True, "feature_channels": 256},  # ALPNet kwargs
    "loss": {"bg_weight": 0.05, "fg_weight": 1.0, "align_weight": 1.0},
    "optimizer": {"lr": 1.0e-3, "momentum": 0.9, "weight_decay": 5.0e-4, "nesterov": False},
    "lr_schedule": {"step_size": 1000, "gamma": 0.95, "milestones": None},
    "training": {
        "iterations": 100000,
        "epoch_length": 1000,
        "checkpoint_interval": 1000,
        "keep_checkpoints": 2,
        "snapshot_interval": None,
        "progress": True,
        "log_interval": 50,  # without a progress bar: one log line (loss, it/s) every N iterations
        "tensorboard": True,
        "threads": None,
        "device": "cpu",
    },
    "validation": {"support": None, "query": None, "organs": None, "interval": 1000},
}

#: config sections that must be unchanged when resuming (else the run would not continue the same experiment).
RESUME_KEYS = ("seed", "data", "superpixels", "episodes", "network", "loss", "optimizer", "lr_schedule")

_CHECKPOINT_PREFIX = "checkpoint"


# ----------------------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------------------


def merge_config(base: Mapping, update: Mapping, path: str = "") -> dict:
    """Deep-merge ``update`` into a copy of ``base``; unknown keys are an error (catches typos).

    Free-form sections (``network``, ``episodes.augment``, ``data.phantoms``) accept any key.
    """
    out = copy.deepcopy(dict(base))
    for key, value in (update or {}).items():
        where = f"{path}{key}"
        free = path in ("network.", "episodes.augment.", "data.phantoms.") or where in ("data.phantoms",)
        if key not in out and not free:
            raise ValueError(f"unknown config key {where!r}; known here: {sorted(out)}")
        if isinstance(out.get(key), Mapping) and isinstance(value, Mapping):
            out[key] = merge_config(out[key], value, f"{where}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(config: Mapping, overrides: Sequence[str]) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML: ``3``, ``1e-4``, ``[1, 2]``, ``null``)."""
    update: dict = {}
    for item in overrides or ():
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        node = update
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return merge_config(config, update)


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> dict:
    """:data:`DEFAULT_CONFIG` updated with the YAML file at ``path`` and the ``overrides``."""
    config = copy.deepcopy(DEFAULT_CONFIG)
    if path is not None:
        with open(path) as f:
            user = yaml.safe_load(f) or {}
        if not isinstance(user, Mapping):
            raise ValueError(f"{path}: a training config must be a YAML mapping")
        config = merge_config(config, user)
    return apply_overrides(config, overrides)


def iteration_seed(seed: int, iteration: int) -> int:
    """The torch seed of ``iteration`` (a pure function of the run seed and the iteration)."""
    return int(np.random.SeedSequence([int(seed), int(iteration), 7]).generate_state(1, dtype=np.uint64)[0] >> 1)


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint file with the highest iteration in ``directory`` (None if there is none)."""
    directory = Path(directory)
    best, best_it = None, -1
    for path in directory.glob(f"{_CHECKPOINT_PREFIX}_*.pt"):
        try:
            it = int(path.stem.rsplit("_", 1)[1])
        except (IndexError, ValueError):
            continue
        if it > best_it:
            best, best_it = path, it
    return best


# ----------------------------------------------------------------------------------------------------------------
# trainer
# ----------------------------------------------------------------------------------------------------------------


def _prepare_episodes(batch: Mapping, device, non_blocking: bool = False) -> dict:
    keys = ("support_image", "support_mask", "query_image", "query_mask")
    return {k: torch.as_tensor(batch[k]).to(device=device, non_blocking=non_blocking) for k in keys}


def episode_logits(net, query: torch.Tensor, support: torch.Tensor, support_mask: torch.Tensor):
    """The forward pass of a batch of ``B`` 1-shot episodes: queries and supports encoded in one pass, one prototype
    bank per episode from its support, each query scored against its own bank.

    Returns:
        ``(logits (B, 2, H, W), query features, support features)``.
    """
    b = query.shape[0]
    feats = net.encode(torch.cat([query, support]))
    q_feats, s_feats = feats[:b], feats[b:]
    logits = torch.cat(
        [
            net.score(
                q_feats[i : i + 1],
                net.build_bank(support_masks=support_mask[i : i + 1], support_features=s_feats[i : i + 1]),
                query.shape[-2:],
            )
            for i in range(b)
        ]
    )
    return logits, q_feats, s_feats


def episode_alignment(align_loss, net, q_feats, logits, s_feats, support_mask) -> torch.Tensor:
    """The prototype alignment loss (``align_loss``, PANet) of each episode of :func:`episode_logits`, averaged."""
    return torch.stack(
        [
            align_loss(net, q_feats[i : i + 1], logits[i : i + 1], s_feats[i : i + 1], support_mask[i : i + 1])
            for i in range(q_feats.shape[0])
        ]
    ).mean()


class SelfSupervisedTrainer(SupervisedTrainer):
    """
    ``SupervisedTrainer`` for episodic prototype training: each batch is ``B`` episodes (see
    :class:`~fewshot_monai.data.episodes.SuperpixelEpisodeDataset`), each with its own support.

    The iteration encodes all queries and supports in one pass, builds one prototype bank per episode, and
    minimises ``loss_function(query_logits, query_masks) + align_weight * align_loss(...)``. The output dict has
    ``image``/``label``/``pred``/``loss`` (MONAI keys) plus ``ce_loss`` and ``align_loss`` (detached).

    Exact resumption: at every ``ITERATION_STARTED`` the torch RNG is seeded with
    :func:`iteration_seed` ``(seed, iteration)``; if ``train_data_loader`` is an
    :class:`~fewshot_monai.data.episodes.EpisodeLoader`, its start is set to the current iteration whenever the
    engine (re)creates its iterator; and the run stops after exactly ``iterations`` iterations even when that is
    not a multiple of ``epoch_length``.

    Args:
        device: torch device.
        iterations: total number of iterations of the run.
        epoch_length: iterations per (nominal) epoch.
        train_data_loader: iterable of episode batches (an ``EpisodeLoader``).
        network: an ``ALPNet``.
        optimizer: the optimizer.
        loss_function: query loss on ``(B, 2, H, W)`` logits and ``(B, 1, H, W)`` masks
            (default :class:`~fewshot_monai.networks.WeightedCrossEntropyLoss`).
        align_loss: the alignment loss (default :class:`~fewshot_monai.networks.PrototypeAlignmentLoss`).
        align_weight: its weight; 0 skips it.
        seed: run seed (torch RNG per iteration).
        kwargs: other ``SupervisedTrainer`` arguments (``train_handlers``, ``key_train_metric``, ...).
    """

    def __init__(
        self,
        device: torch.device | str,
        iterations: int,
        epoch_length: int,
        train_data_loader,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: torch.nn.Module | None = None,
        align_loss: torch.nn.Module | None = None,
        align_weight: float = 1.0,
        seed: int = 0,
        **kwargs,
    ):
        from fewshot_monai.networks import PrototypeAlignmentLoss, WeightedCrossEntropyLoss

        if int(iterations) < 1 or int(epoch_length) < 1:
            raise ValueError(f"iterations and epoch_length must be >= 1, got {iterations} and {epoch_length}")
        kwargs.setdefault("decollate", False)
        kwargs.setdefault("prepare_batch", _prepare_episodes)
        super().__init__(
            device=torch.device(device),
            max_epochs=math.ceil(int(iterations) / int(epoch_length)),
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function if loss_function is not None else WeightedCrossEntropyLoss(),
            epoch_length=int(epoch_length),
            **kwargs,
        )
        self.align_loss = align_loss if align_loss is not None else PrototypeAlignmentLoss()
        self.align_weight = float(align_weight)
        self.seed = int(seed)
        self.iterations = int(iterations)
        self.add_event_handler(Events.EPOCH_STARTED, self._sync_loader_start)
        self.add_event_handler(Events.ITERATION_STARTED, self._seed_iteration)
        self.add_event_handler(Events.ITERATION_COMPLETED, self._stop_at_target)

    def set_iterations(self, iterations: int) -> None:
        """Change the total number of iterations (e.g. to extend a resumed run)."""
        self.iterations = int(iterations)
        self.state.max_epochs = max(math.ceil(self.iterations / self.state.epoch_length), self.state.epoch or 1)

    def _sync_loader_start(self, engine: Engine) -> None:
        if hasattr(self.data_loader, "start_iteration"):
            self.data_loader.start_iteration = int(engine.state.iteration)

    def _seed_iteration(self, engine: Engine) -> None:
        torch.manual_seed(iteration_seed(self.seed, engine.state.iteration))

    def _stop_at_target(self, engine: Engine) -> None:
        if engine.state.iteration >= self.iterations:
            engine.terminate()

    def _iteration(self, engine: SelfSupervisedTrainer, batchdata: Mapping) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        query, q_mask = batch["query_image"], batch["query_mask"]
        support, s_mask = batch["support_image"], batch["support_mask"]
        engine.state.output = {Keys.IMAGE: query, Keys.LABEL: q_mask}
        net = engine.network
        net.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)

        logits, q_feats, s_feats = episode_logits(net, query, support, s_mask)
        engine.state.output[Keys.PRED] = logits
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        ce = engine.loss_function(logits, q_mask).mean()
        if self.align_weight > 0:
            align = episode_alignment(self.align_loss, net, q_feats, logits, s_feats, s_mask)
        else:
            align = ce.new_zeros(())
        loss = ce + self.align_weight * align
        engine.state.output[Keys.LOSS] = loss
        engine.state.output["ce_loss"] = ce.detach()
        engine.state.output["align_loss"] = align.detach()
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


# ----------------------------------------------------------------------------------------------------------------
# building a run from a config
# ----------------------------------------------------------------------------------------------------------------


def _scalar_outputs(output: Mapping | None) -> dict | None:
    if not output:
        return None
    return {k: float(torch.as_tensor(output[k]).detach()) for k in (Keys.LOSS, "ce_loss", "align_loss") if k in output}


def _select_cases(config: Mapping, out_dir: Path) -> tuple[list[dict], LabelledDataset]:
    """The training scans (``data.scans`` minus ``data.exclude_scans``) and the whole data set they come from."""
    from fewshot_monai.data.datasets import get_descriptor, load_labelled_dataset

    data = config["data"]
    root = data["root"]
    if root is None:
        if not data.get("phantoms"):
            raise ValueError("data.root is not set (give a dataset folder, or data.phantoms to generate phantoms)")
        root = out_dir / "phantoms"
    root = Path(root).expanduser().resolve()
    if data.get("phantoms"):
        from fewshot_monai.data.phantoms import make_phantom_dataset

        descriptor = get_descriptor(data["descriptor"])
        spec = dict(data["phantoms"])
        n = int(spec.pop("n", 4))
        if not all((root / descriptor.image_pattern.format(id=f"case{k}")).is_file() for k in range(n)):
            logger.info("generating %d phantoms in %s", n, root)
            make_phantom_dataset(root, n=n, **{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
    dataset = load_labelled_dataset(
        root,
        str(data["descriptor"]),
        label_map=data.get("label_map"),
        organs=config["validation"].get("organs"),
        intensity=data.get("intensity"),
        images=data.get("images"),
        labels=data.get("labels"),
        require_labels=False,
    )
    known = set(dataset.order)
    wanted = [str(s) for s in data["scans"]] if data.get("scans") is not None else list(dataset.order)
    excluded = {str(s) for s in data.get("exclude_scans") or ()}
    missing = sorted((set(wanted) | excluded) - known)
    if missing:
        raise ValueError(f"scan id(s) {missing} are not in {root} (known: {sorted(known)})")
    chosen = [dataset.items[i] for i in dataset.order if i in set(wanted) and i not in excluded]
    if not chosen:
        raise ValueError("no training scan left after data.scans / data.exclude_scans")
    return chosen, dataset


def _needs_labels(what: str, cases: Sequence[Mapping], config: Mapping, root) -> None:
    """One clear error listing the scans without a label file, when ``what`` needs them."""
    from fewshot_monai.data.datasets import labels_location

    missing = [str(c["id"]) for c in cases if not c.get("label")]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ValueError(
            f"{what} needs the label file of scan(s) {shown} ({labels_location(root, config['data'].get('labels'))})"
        )


def _build_scheduler(optimizer, cfg: Mapping):
    if cfg.get("milestones"):
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, [int(m) for m in cfg["milestones"]], float(cfg["gamma"]))
    return torch.optim.lr_scheduler.StepLR(optimizer, int(cfg["step_size"]), float(cfg["gamma"]))


@dataclass
class TrainingRun:
    """Everything :func:`build_training` assembled; :meth:`run` trains and exports ``model.pt``."""

    config: dict
    out_dir: Path
    trainer: SelfSupervisedTrainer
    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    dataset: SuperpixelEpisodeDataset
    loader: EpisodeLoader
    checkpoint: Checkpoint
    resumed_from: Path | None = None
    summary_writer: Any = None
    extra: dict = field(default_factory=dict)

    @property
    def model_path(self) -> Path:
        return self.out_dir / "model.pt"

    def export(self) -> Path:
        """Write the network's state dict to ``model.pt`` (atomically); loadable with ``weights_only=True``."""
        with atomic_path(self.model_path) as tmp:
            torch.save(cpu_state_dict(self.network), tmp)
        return self.model_path

    def run(self) -> dict:
        """Train up to ``training.iterations`` (from the resumed iteration), export the model, return a summary."""
        start_it = int(self.trainer.state.iteration)
        threads = self.config["training"].get("threads")
        previous_threads = torch.get_num_threads()
        start = time.perf_counter()
        try:
            if threads:
                torch.set_num_threads(int(threads))
            if start_it < self.trainer.iterations:
                self.trainer.run()
            else:
                logger.info("nothing to do: the run already has %d iterations", start_it)
        finally:
            torch.set_num_threads(previous_threads)
            if self.summary_writer is not None:
                self.summary_writer.close()
        elapsed = time.perf_counter() - start
        done = int(self.trainer.state.iteration) - start_it
        episodes = done * self.loader.episodes_per_iteration
        self.export()
        output = _scalar_outputs(self.trainer.state.output) or {}
        summary = {
            "iterations": int(self.trainer.state.iteration),
            "iterations_this_run": done,
            "seconds_this_run": round(elapsed, 3),
            "episodes_per_second": round(episodes / elapsed, 4) if done and elapsed > 0 else None,
            "final_loss": output.get(Keys.LOSS),
            "metrics": {k: float(v) for k, v in self.trainer.state.metrics.items() if np.isscalar(v)},
            "model": str(self.model_path),
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "dataset": self.dataset.describe(),
        }
        with atomic_write(self.out_dir / "summary.json") as f:
            json.dump(summary, f, indent=2)
        logger.info("training done: %s", summary)
        return summary


class _IterationLog:
    """Logs ``iteration i/N: loss ..., x it/s, lr ...`` every ``every`` iterations (the rate since the last line)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.last: tuple[int, float] = (0, time.perf_counter())

    def attach(self, trainer: SelfSupervisedTrainer, every: int) -> None:
        trainer.add_event_handler(Events.STARTED, self.start)
        trainer.add_event_handler(Events.ITERATION_COMPLETED(every=every), self)

    def start(self, engine: Engine) -> None:
        self.last = (int(engine.state.iteration), time.perf_counter())

    def __call__(self, engine: SelfSupervisedTrainer) -> None:
        now, iteration = time.perf_counter(), int(engine.state.iteration)
        rate = (iteration - self.last[0]) / max(now - self.last[1], 1e-9)
        self.last = (iteration, now)
        loss = (_scalar_outputs(engine.state.output) or {}).get(Keys.LOSS, float("nan"))
        lr = self.optimizer.param_groups[0]["lr"]
        logger.info("iteration %d/%d: loss %.4f, %.2f it/s, lr %.2e", iteration, engine.iterations, loss, rate, lr)


def _save_snapshot(network: torch.nn.Module, out_dir: Path, engine: Engine) -> None:
    """Write ``out_dir/snapshots/model_<iteration>.pt`` (the network's state dict, atomically)."""
    path = out_dir / "snapshots" / f"model_{engine.state.iteration}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(cpu_state_dict(network), tmp)


def _changes(old: Any, new: Any, path: str = "") -> dict:
    """``{"dotted.key": {"from": old, "to": new}}`` for every leaf that differs between two configs."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = {}
        for key in list(old) + [k for k in new if k not in old]:
            out.update(_changes(old.get(key), new.get(key), f"{path}{key}."))
        return out
    return {} if old == new else {path.rstrip("."): {"from": old, "to": new}}


def _record_resume(out_dir: Path, config: Mapping, checkpoint: Path) -> Path:
    """Write ``resumed_<n>.yaml`` beside the original ``config.yaml``: when, from which checkpoint, what changed."""
    with open(out_dir / "config.yaml") as f:
        original = yaml.safe_load(f) or {}
    n = 1 + sum(1 for _ in out_dir.glob("resumed_*.yaml"))
    record = {
        "resumed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "checkpoint": str(checkpoint),
        "changes": _changes(original, dict(config)),
    }
    path = out_dir / f"resumed_{n}.yaml"
    with atomic_write(path) as f:
        yaml.safe_dump(record, f, sort_keys=False)
    logger.info("resuming: %s changed from config.yaml (%s)", ", ".join(record["changes"]) or "nothing", path.name)
    return path


def _check_resume_config(stored_path: Path, config: Mapping) -> None:
    if not stored_path.is_file():
        return
    with open(stored_path) as f:
        stored = yaml.safe_load(f) or {}
    try:  # keys added since the run started take their defaults (e.g. data.plane)
        stored = merge_config(DEFAULT_CONFIG, stored)
    except ValueError:
        pass
    changed = [k for k in RESUME_KEYS if stored.get(k) != config.get(k)]
    if changed:
        raise ValueError(
            f"cannot resume: config section(s) {changed} differ from {stored_path}; an exact resume needs the same "
            "data, episodes, network, loss, optimizer and schedule (start a new output folder instead)"
        )


def superpixel_params(config: dict) -> SuperpixelParams:
    """The superpixel parameters of a training config's ``superpixels`` section."""
    scfg = config["superpixels"]
    return SuperpixelParams(
        min_size=int(scfg["min_size"]),
        sigma=float(scfg["sigma"]),
        scale=float(scfg["scale"]),
        body_threshold=float(scfg["body_threshold"]),
    )


def build_training(
    config: Mapping, out_dir: str | os.PathLike, resume: bool = False, progress: bool | None = None
) -> TrainingRun:
    """Assemble a training run from a config dict (missing keys take :data:`DEFAULT_CONFIG` values).

    Args:
        config: the training config (as loaded by :func:`load_config`, or a plain dict for bundles).
        out_dir: output folder: ``config.yaml``, ``checkpoints/``, ``metrics.csv``, ``validation.csv``,
            ``tensorboard/``, ``model.pt``, ``summary.json``.
        resume: continue from the latest checkpoint in ``out_dir/checkpoints`` (an error if there is none).
        progress: override ``training.progress`` (the tqdm bars).

    Raises:
        ValueError: bad config, or resuming with changed data/optimisation settings.
        InputError: unreadable scans, or missing labels for ``exclude_labels``/validation.
    """
    from fewshot_monai.data.io import load_case
    from fewshot_monai.networks import ALPNet, PrototypeAlignmentLoss, WeightedCrossEntropyLoss

    config = merge_config(DEFAULT_CONFIG, config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tcfg, ecfg, scfg = config["training"], config["episodes"], config["superpixels"]
    show = bool(tcfg["progress"]) if progress is None else bool(progress)
    seed = int(config["seed"])

    ckpt_dir = out_dir / "checkpoints"
    resume_path = None
    if resume:
        resume_path = latest_checkpoint(ckpt_dir)
        if resume_path is None:
            raise ValueError(f"--resume: no checkpoint in {ckpt_dir}")
        _check_resume_config(out_dir / "config.yaml", config)
    if resume and (out_dir / "config.yaml").is_file():
        _record_resume(out_dir, config, resume_path)  # config.yaml stays the original run's
    else:
        with atomic_write(out_dir / "config.yaml") as f:
            yaml.safe_dump(config, f, sort_keys=False)

    # data
    cases, labelled = _select_cases(config, out_dir)
    intensity = labelled.intensity
    params = superpixel_params(config)
    exclude_labels = [int(v) for v in config["data"]["exclude_labels"] or ()]
    plane = config["data"]["plane"]
    if exclude_labels:
        _needs_labels("setting 2 (data.exclude_labels)", cases, config, config["data"]["root"])
    vcfg = config["validation"]
    validation_ids = [vcfg.get(role) for role in ("support", "query")]
    if any(v is not None for v in validation_ids):
        if None in validation_ids:
            raise ValueError("validation needs both validation.support and validation.query scan ids")
        unknown = [str(v) for v in validation_ids if str(v) not in labelled.items]
        if unknown:
            raise ValueError(f"validation scan(s) {unknown} are not in the data set (known: {labelled.order})")
        picked_cases = [labelled.items[str(v)] for v in validation_ids]
        _needs_labels("validation (validation.support, validation.query)", picked_cases, config, config["data"]["root"])
        if not labelled.label_map:
            raise ValueError("validation needs the organs' label ids: set data.label_map, e.g. {liver: 1, spleen: 6}")
    volumes = load_training_volumes(
        cases,
        intensity,
        params,
        cache_dir=scfg["cache_dir"],
        with_labels=bool(exclude_labels),
        progress=show,
        plane=plane,
    )
    size = int(ecfg["spatial_size"])
    dataset = SuperpixelEpisodeDataset(
        volumes,
        spatial_size=size,
        seed=seed,
        min_superpixel_size=int(ecfg["min_superpixel_size"]),
        min_body_fraction=float(ecfg["min_body_fraction"]),
        exclude_labels=exclude_labels,
        augmentation=ecfg["augment"],
        context=int(config["network"].get("slice_context", 0)),
    )
    logger.info("episodes from %s", dataset.describe())
    loader = EpisodeLoader(dataset, int(ecfg["episodes_per_iteration"]), int(ecfg["num_workers"]))

    # model and optimisation
    torch.manual_seed(seed)
    device = torch.device(tcfg["device"])
    network = ALPNet(**config["network"]).to(device)
    ocfg, lcfg = config["optimizer"], config["loss"]
    optimizer = torch.optim.SGD(
        network.parameters(),
        lr=float(ocfg["lr"]),
        momentum=float(ocfg["momentum"]),
        weight_decay=float(ocfg["weight_decay"]),
        nesterov=bool(ocfg["nesterov"]),
    )
    scheduler = _build_scheduler(optimizer, config["lr_schedule"])
    trainer = SelfSupervisedTrainer(
        device=device,
        iterations=int(tcfg["iterations"]),
        epoch_length=int(tcfg["epoch_length"]),
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=WeightedCrossEntropyLoss(float(lcfg["bg_weight"]), float(lcfg["fg_weight"])).to(device),
        align_loss=PrototypeAlignmentLoss(float(lcfg["bg_weight"]), float(lcfg["fg_weight"])).to(device),
        align_weight=float(lcfg["align_weight"]),
        seed=seed,
    )

    # handlers (order matters at ITERATION_COMPLETED: schedule, logs, validation, then checkpoint)
    LrScheduleHandler(scheduler, print_lr=False, epoch_level=False).attach(trainer)
    last_time = {"t": None}

    def _row(engine: Engine) -> dict | None:
        now = time.perf_counter()
        previous, last_time["t"] = last_time["t"], now
        values = _scalar_outputs(engine.state.output)
        if values is None:
            return None
        values["lr"] = optimizer.param_groups[0]["lr"]
        values["seconds"] = now - previous if previous is not None else ""
        return values

    trainer.add_event_handler(Events.STARTED, lambda e: last_time.update(t=time.perf_counter()))
    CSVLogger(out_dir / "metrics.csv", ["loss", "ce_loss", "align_loss", "lr", "seconds"], _row).attach(trainer)
    writer = None
    if tcfg["tensorboard"]:
        summary_writer_cls, has_tb = optional_import("torch.utils.tensorboard", name="SummaryWriter")
        if has_tb:
            writer = summary_writer_cls(log_dir=str(out_dir / "tensorboard"))
            TensorBoardStatsHandler(summary_writer=writer, output_transform=_scalar_outputs, epoch_log=False).attach(
                trainer
            )
        else:
            logger.info("tensorboard is not installed: logging to metrics.csv only")

    if any(v is not None for v in validation_ids):
        picked = {
            role: load_case(
                case["image"], case["label"], intensity=intensity, case_id=case["id"], plane=config["data"]["plane"]
            )
            for role, case in zip(("support", "query"), picked_cases)
        }
        if str(vcfg["query"]) in {c["id"] for c in cases}:
            logger.warning("validation query scan %s is also a training scan (add it to exclude_scans)", vcfg["query"])
        organs = vcfg.get("organs")
        unknown = [o for o in organs or () if o not in labelled.label_map]
        if unknown:
            raise ValueError(f"validation.organs {unknown} are not in the label map {labelled.label_map}")
        OneShotValidation(
            network,
            picked["support"],
            picked["query"],
            {o: labelled.label_map[o] for o in organs or labelled.label_map},
            interval=int(vcfg["interval"]),
            spatial_size=size,
            csv_path=out_dir / "validation.csv",
            summary_writer=writer,
        ).attach(trainer)

    log_every = int(tcfg.get("log_interval") or 0)
    if not show and log_every > 0:  # logs and batch schedulers: a line a person can follow
        _IterationLog(optimizer).attach(trainer, log_every)
    if show:
        from ignite.handlers import ProgressBar

        ProgressBar(persist=True, desc="training").attach(
            trainer, output_transform=lambda o: {"loss": float(o[Keys.LOSS].detach())}
        )

    to_save = {"model": network, "optimizer": optimizer, "lr_scheduler": scheduler, "trainer": trainer}
    checkpoint = Checkpoint(
        to_save,
        DiskSaver(ckpt_dir, require_empty=False, create_dir=True),
        filename_prefix=_CHECKPOINT_PREFIX,
        n_saved=int(tcfg["keep_checkpoints"]) or None,
        global_step_transform=lambda engine, _event: engine.state.iteration,
        filename_pattern="{filename_prefix}_{global_step}.{ext}",
    )
    interval = int(tcfg["checkpoint_interval"])
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=interval), checkpoint)
    trainer.add_event_handler(Events.COMPLETED, lambda e: checkpoint(e) if e.state.iteration % interval else None)

    snapshot_every = int(tcfg.get("snapshot_interval") or 0)
    if snapshot_every > 0:  # model-only state dicts kept for learning curves: snapshots/model_<iteration>.pt
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED(every=snapshot_every), lambda e: _save_snapshot(network, out_dir, e)
        )

    if resume_path is not None:
        state = torch.load(resume_path, map_location=device, weights_only=True)
        Checkpoint.load_objects(to_load=to_save, checkpoint=state)
        if trainer.state.epoch_length != int(tcfg["epoch_length"]):
            logger.warning("keeping the checkpoint's epoch_length %d", trainer.state.epoch_length)
        trainer.set_iterations(int(tcfg["iterations"]))
        logger.info("resuming from %s (iteration %d)", resume_path, trainer.state.iteration)

    return TrainingRun(
        config=config,
        out_dir=out_dir,
        trainer=trainer,
        network=network,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        dataset=dataset,
        loader=loader,
        checkpoint=checkpoint,
        resumed_from=resume_path,
        summary_writer=writer,
    )


def train_from_config(
    config: Mapping, out_dir: str | os.PathLike, resume: bool = False, progress: bool | None = None
) -> dict:
    """Build (:func:`build_training`) and run a self-supervised training; returns the run summary.

    Bundle use::

        "training": {"_target_": "fewshot_monai.engines.train_from_config", "config": "@train_config",
                     "out_dir": "runs/chaos", "_requires_": ...}
    """
    return build_training(config, out_dir, resume=resume, progress=progress).run()
