"""Train a self-training student (:mod:`fewshot_monai.networks.student`) on labelled axial slices with ignite.

:func:`train_student` runs MONAI's :class:`~monai.engines.SupervisedTrainer` (an ignite engine) for a fixed number
of iterations on ``(1, S, S)`` slices whose labels are ``0..N`` or the ``ignore`` label ``N + 1``, with the
masked Dice + cross-entropy loss (:class:`~fewshot_monai.networks.MaskedDiceCELoss`: ignored voxels contribute
nothing), Adam and a polynomial learning-rate decay. Slices are drawn with replacement; the labelled support's
slices make up ``support_share`` of the draws whatever the number of pseudo-labelled volumes. Each slice is
augmented with a small random rotation/scaling and an intensity scale/shift (MONAI dictionary transforms).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["StudentTraining", "train_student", "slice_samples"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudentTraining:
    """Options of :func:`train_student`.

    Args:
        iterations: optimiser steps.
        batch_size: slices per step.
        lr: Adam's learning rate (decayed as ``(1 - t / iterations) ** 0.9``).
        weight_decay: Adam's weight decay.
        support_share: fraction of the drawn slices that come from the labelled support (0: uniform over slices).
        augment: apply the random rotation/scaling and intensity augmentation.
        seed: sampling, augmentation and initialisation seed.
    """

    iterations: int = 500
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-5
    support_share: float = 0.2
    augment: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.iterations) < 1 or int(self.batch_size) < 1 or float(self.lr) <= 0:
            raise ValueError(f"need iterations >= 1, batch_size >= 1 and lr > 0, got {self.iterations}, "
                             f"{self.batch_size} and {self.lr}")  # fmt: skip
        if not 0.0 <= float(self.support_share) < 1.0:
            raise ValueError(f"support_share must be in [0, 1), got {self.support_share}")


def slice_samples(images: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> list[dict]:
    """``(Z, 1, S, S)`` image and label stacks -> one ``{"image", "label"}`` sample per slice that has at least one
    voxel not ignored."""
    return [
        {"image": images[z].float(), "label": labels[z].long()}
        for z in range(images.shape[0])
        if bool((labels[z] != ignore_index).any())
    ]


def _augmentation(seed: int):
    from monai.transforms import Compose, RandAffined, RandScaleIntensityd, RandShiftIntensityd

    xforms = Compose(
        [
            RandAffined(
                ("image", "label"),
                prob=0.5,
                rotate_range=0.2,
                scale_range=0.1,
                mode=("bilinear", "nearest"),
                padding_mode="border",
            ),
            RandScaleIntensityd("image", factors=0.1, prob=0.5),
            RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        ]
    )
    xforms.set_random_state(seed=seed)
    return xforms


def train_student(
    network: torch.nn.Module,
    support: Sequence[dict],
    pseudo: Sequence[dict],
    ignore_index: int,
    options: StudentTraining | None = None,
    progress: bool = False,
) -> dict:
    """Train ``network`` in place on slice samples (:func:`slice_samples`) of the support and the pseudo-labels.

    Returns:
        ``{"seconds", "iterations", "slices": {"support", "pseudo"}, "loss": {"first", "last"}}`` (mean loss over
        the first and the last 10% of the iterations).
    """
    from ignite.engine import Events
    from monai.data import Dataset
    from monai.engines import SupervisedTrainer

    from fewshot_monai.networks import MaskedDiceCELoss

    opts = options or StudentTraining()
    samples = list(support) + list(pseudo)
    if not samples:
        raise ValueError("no slice to train on: every voxel of every volume is ignored")
    if support and pseudo and opts.support_share > 0:
        weights = [opts.support_share / len(support)] * len(support)
        weights += [(1.0 - opts.support_share) / len(pseudo)] * len(pseudo)
    else:
        weights = [1.0] * len(samples)
    generator = torch.Generator().manual_seed(int(opts.seed))
    sampler = torch.utils.data.WeightedRandomSampler(
        weights, num_samples=int(opts.iterations) * int(opts.batch_size), replacement=True, generator=generator
    )
    transform = _augmentation(int(opts.seed)) if opts.augment else None
    loader = torch.utils.data.DataLoader(
        Dataset(samples, transform=transform), batch_size=int(opts.batch_size), sampler=sampler, num_workers=0
    )
    optimizer = torch.optim.Adam(network.parameters(), lr=float(opts.lr), weight_decay=float(opts.weight_decay))
    total = int(opts.iterations)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: max(0.0, 1.0 - t / total) ** 0.9)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=MaskedDiceCELoss(ignore_index),
        decollate=False,
    )
    losses: list[float] = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"].detach()))
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: scheduler.step())
    if progress:
        from ignite.handlers import ProgressBar

        ProgressBar(persist=False, desc="training the student").attach(trainer, output_transform=lambda o: o["loss"])
    start = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(int(opts.seed))
        trainer.run()
    network.eval()
    tenth = max(1, len(losses) // 10)
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "iterations": len(losses),
        "slices": {"support": len(support), "pseudo": len(pseudo)},
        "loss": {"first": float(np.mean(losses[:tenth])), "last": float(np.mean(losses[-tenth:]))},
    }
