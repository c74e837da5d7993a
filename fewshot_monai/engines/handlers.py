"""ignite handlers and evaluation helpers of self-supervised episode training.

- :class:`CSVLogger` -- one CSV row per event (iteration losses, validation scores), resume-safe;
- :class:`OneShotValidation` -- periodic 1-shot slice Dice on a held-out labelled scan (an EP1-like check);
- :func:`one_shot_slice_dice` and :func:`evaluate_episodes` -- the evaluations behind them, usable on their own.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from ignite.engine import Engine, Events

from fewshot_monai.evaluation.metrics import dice_score
from fewshot_monai.transforms.slicing import image_slices, volume_to_slices
from fewshot_monai.utils.files import atomic_write

if TYPE_CHECKING:
    from ignite.engine.events import CallableEventWithFilter

__all__ = ["CSVLogger", "OneShotValidation", "one_shot_slice_dice", "evaluate_episodes"]

logger = logging.getLogger(__name__)


def _plain(x) -> torch.Tensor:
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


class CSVLogger:
    """
    Append one CSV row per ``event`` with ``iteration`` and the values returned by ``values(engine)``.

    The file is kept consistent with the training state: when the engine starts (or resumes) at iteration ``t``,
    rows of iterations ``> t`` left by an interrupted run are dropped (the file is rewritten atomically), so a
    resumed run never duplicates rows. Each row is flushed as it is written.

    Args:
        path: the CSV file.
        fieldnames: value columns (after ``iteration``), in order.
        values: ``engine -> {column: value}``; returning ``None`` writes nothing.
        event: when to write (default every iteration).

    Example::

        CSVLogger(out / "metrics.csv", ["loss"], lambda e: {"loss": e.state.output["loss"].item()}).attach(trainer)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fieldnames: Sequence[str],
        values: Callable[[Engine], Mapping | None],
        event: CallableEventWithFilter = Events.ITERATION_COMPLETED,
    ):
        self.path = Path(path)
        self.fieldnames = ["iteration", *fieldnames]
        self.values = values
        self.event = event

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.truncate)
        engine.add_event_handler(self.event, self.write)

    def truncate(self, engine: Engine) -> None:
        """Keep the header and the rows of iterations ``<= engine.state.iteration`` (drops malformed lines)."""
        last = int(engine.state.iteration)
        rows = []
        if self.path.is_file():
            with open(self.path, newline="") as f:
                for row in csv.DictReader(f):
                    try:
                        if int(row["iteration"]) <= last and None not in row.values():
                            rows.append(row)
                    except (KeyError, TypeError, ValueError):
                        continue
        with atomic_write(self.path, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fieldnames, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def write(self, engine: Engine) -> None:
        values = self.values(engine)
        if values is None:
            return
        row = {"iteration": int(engine.state.iteration)}
        for key in self.fieldnames[1:]:
            value = values.get(key, "")
            if isinstance(value, torch.Tensor):
                value = value.item()
            row[key] = f"{value:.8g}" if isinstance(value, float) else value
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fieldnames).writerow(row)
            f.flush()


def _middle_slice(mask_zyx: torch.Tensor) -> int:
    """Index of the organ slice closest to the centre of the organ's z extent (``mask`` is ``(Z, ...)``)."""
    present = torch.nonzero(mask_zyx.reshape(mask_zyx.shape[0], -1).any(dim=1)).flatten()
    centre = (int(present[0]) + int(present[-1])) / 2.0
    return int(present[torch.argmin((present.float() - centre).abs())])


@torch.no_grad()
def one_shot_slice_dice(
    network: torch.nn.Module,
    support_image,
    support_label,
    query_image,
    query_label,
    organs: Mapping[str, int],
    spatial_size: int = 256,
    batch_size: int = 8,
) -> dict[str, float]:
    """1-shot slice check: per organ, the support is the middle organ slice of the support scan and the queries
    are all slices of the query scan containing the organ; returns the Dice of the predicted query masks (over the
    stack of those slices, at ``spatial_size``) per organ. Organs missing from either scan are skipped.

    The network is put in eval mode for the evaluation and restored to its previous mode afterwards.

    Args:
        network: an ``ALPNet`` (``encode``, ``build_bank``, ``score``).
        support_image, query_image: ``(1, X, Y, Z)`` intensity-normalised volumes.
        support_label, query_label: ``(1, X, Y, Z)`` integer label volumes.
        organs: organ name -> label id.
        spatial_size: slice size the network sees.
        batch_size: query slices encoded at once.
    """
    was_training = network.training
    network.eval()
    device = next(network.parameters()).device
    try:
        context = getattr(network, "slice_context", 0)
        s_img = image_slices(support_image, spatial_size, context)
        s_lab = volume_to_slices(_plain(support_label).long(), spatial_size, channels=1, mode="nearest")[:, 0]
        q_img = image_slices(query_image, spatial_size, context)
        q_lab = volume_to_slices(_plain(query_label).long(), spatial_size, channels=1, mode="nearest")[:, 0]
        wanted = {name: int(i) for name, i in organs.items() if bool((q_lab == i).any()) and bool((s_lab == i).any())}
        if not wanted:
            return {}
        q_slices = sorted({int(z) for i in wanted.values() for z in torch.nonzero((q_lab == i).flatten(1).any(1))})
        feats = torch.cat(
            [
                network.encode(q_img[q_slices[k : k + batch_size]].to(device))
                for k in range(0, len(q_slices), batch_size)
            ]
        )
        row = {z: n for n, z in enumerate(q_slices)}
        scores = {}
        for name, label_id in wanted.items():
            z_sup = _middle_slice(s_lab == label_id)
            bank = network.build_bank(
                s_img[z_sup : z_sup + 1].to(device), (s_lab[z_sup : z_sup + 1, None] == label_id).float().to(device)
            )
            zs = [z for z in q_slices if bool((q_lab[z] == label_id).any())]
            logits = network.score(feats[[row[z] for z in zs]], bank, (spatial_size, spatial_size))
            pred = logits.argmax(dim=1).cpu()
            scores[name] = dice_score(pred, q_lab[zs] == label_id)
        return scores
    finally:
        network.train(was_training)


@torch.no_grad()
def evaluate_episodes(
    network: torch.nn.Module,
    dataset,
    indices: Sequence[int],
    loss_function: torch.nn.Module | None = None,
    window: int | None = None,
) -> dict[str, float]:
    """Score the network on fixed episodes ``dataset[i]`` (eval mode, restored afterwards).

    Args:
        network: an ``ALPNet``.
        dataset: episodes (:class:`~fewshot_monai.data.episodes.SuperpixelEpisodeDataset`).
        indices: the episode indices.
        loss_function: query loss (default: SSL-ALPNet's weighted cross-entropy).
        window: local-prototype window for this evaluation (e.g. ``network.train_window`` to score episodes as
            in training); ``None`` keeps the network's eval window (``test_window``).

    Returns:
        ``{"dice": mean Dice of the predicted query masks, "loss": mean query loss}`` (the loss is the
        class-weighted cross-entropy of SSL-ALPNet unless ``loss_function`` is given).
    """
    from fewshot_monai.networks import WeightedCrossEntropyLoss

    loss_function = loss_function if loss_function is not None else WeightedCrossEntropyLoss()
    was_training = network.training
    test_window = getattr(network, "test_window", None)
    network.eval()
    if window is not None:
        network.test_window = int(window)
    device = next(network.parameters()).device
    loss_function = loss_function.to(device)
    try:
        dices, losses = [], []
        for i in indices:
            ep = dataset[int(i)]
            q_mask = ep["query_mask"][None].to(device)
            logits = network(
                ep["query_image"][None].to(device),
                support_images=ep["support_image"][None].to(device),
                support_masks=ep["support_mask"][None].to(device),
            )
            dices.append(dice_score(logits.argmax(dim=1)[0].cpu(), ep["query_mask"][0] > 0.5))
            losses.append(float(loss_function(logits, q_mask)))
        if not dices:
            return {"dice": float("nan"), "loss": float("nan")}
        return {"dice": float(np.mean(dices)), "loss": float(np.mean(losses))}
    finally:
        if window is not None:
            network.test_window = test_window
        network.train(was_training)


class OneShotValidation:
    """
    Periodic 1-shot validation Dice of the trained network on a held-out labelled scan.

    Before the first iteration (the untrained baseline, logged as iteration 0), every ``interval`` iterations and
    when training completes, runs :func:`one_shot_slice_dice` and stores
    ``val_mean_dice`` and ``val_dice_<organ>`` in ``engine.state.metrics``; also appends them to ``csv_path`` and
    to a TensorBoard ``summary_writer`` when given.

    Args:
        network: the network being trained.
        support: ``{"image", "label"}`` of the support scan.
        query: ``{"image", "label"}`` of the validation (query) scan.
        organs: organ name -> label id.
        interval: iterations between evaluations.
        spatial_size: slice size.
        csv_path: optional CSV file (one row per evaluation).
        summary_writer: optional ``SummaryWriter``.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        support: Mapping,
        query: Mapping,
        organs: Mapping[str, int],
        interval: int,
        spatial_size: int = 256,
        csv_path: str | os.PathLike | None = None,
        summary_writer=None,
    ):
        if int(interval) < 1:
            raise ValueError(f"validation interval must be >= 1, got {interval}")
        self.network = network
        self.support = support
        self.query = query
        self.organs = dict(organs)
        self.interval = int(interval)
        self.spatial_size = int(spatial_size)
        self.writer = summary_writer
        self._last_iteration = -1
        self.csv = None
        if csv_path is not None:
            cols = ["val_mean_dice", *[f"val_dice_{name}" for name in self.organs]]
            self.csv = CSVLogger(csv_path, cols, lambda e: dict(e.state.metrics), Events.ITERATION_COMPLETED)

    def attach(self, engine: Engine) -> None:
        if self.csv is not None:
            engine.add_event_handler(Events.STARTED, self.csv.truncate)
        engine.add_event_handler(Events.STARTED, self._baseline)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def _baseline(self, engine: Engine) -> None:
        """Score the untrained network once (row ``iteration 0``) when a run starts from scratch."""
        if int(engine.state.iteration) == 0:
            self(engine)

    def __call__(self, engine: Engine) -> None:
        iteration = int(engine.state.iteration)
        if iteration == self._last_iteration:
            return
        self._last_iteration = iteration
        scores = one_shot_slice_dice(
            self.network,
            self.support["image"],
            self.support["label"],
            self.query["image"],
            self.query["label"],
            self.organs,
            self.spatial_size,
        )
        if not scores:
            logger.warning("validation: no organ is present in both the support and the query scan")
            return
        mean = float(np.mean(list(scores.values())))
        engine.state.metrics["val_mean_dice"] = mean
        for name, value in scores.items():
            engine.state.metrics[f"val_dice_{name}"] = float(value)
        logger.info(
            "iteration %d: validation mean Dice %.4f (%s)",
            iteration,
            mean,
            ", ".join(f"{k} {v:.3f}" for k, v in scores.items()),
        )
        if self.csv is not None:
            self.csv.write(engine)
        if self.writer is not None:
            self.writer.add_scalar("val_mean_dice", mean, iteration)
            for name, value in scores.items():
                self.writer.add_scalar(f"val_dice/{name}", value, iteration)
