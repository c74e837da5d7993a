"""Adapt a trained few-shot network to its support, once per support (test-time fine-tuning).

The support volume of a 1-shot task is labelled on every slice of the organ, but the 3D protocol uses only a few
of those slices as prototypes. :func:`adapt_to_support` fine-tunes a copy of the network on labelled episodes cut
from the support itself (:class:`~fewshot_monai.data.episodes.SupportEpisodeDataset`: a support slice and a
nearby query slice of the same organ, each augmented), with the same ignite trainer, loss and optimiser as the
self-supervised training. The query scans are never touched, so the adapted network is reused for every query
segmented with that support; it is cached on disk under a key that hashes the weights, the support volumes, the
organs and the options.

Typical use (the evaluation runner does this once per fold)::

    adapted = adapt_to_support(network, [support["image"]], [support["label"]], organ_ids=[1, 2, 3, 4],
                               options={"iterations": 600}, cache_dir="runs/adapted")
    net = adapted.network            # eval mode; adapted.seconds is the one-off cost
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

__all__ = ["SupportAdaptation", "AdaptedNetwork", "adapt_to_support", "adaptation_key"]

logger = logging.getLogger(__name__)

#: parameter-name prefixes kept fixed by each ``freeze`` choice (the Lite0 stem and blocks 0-2 are stride <= 4)
FREEZE: dict[str, tuple[str, ...]] = {
    "none": (),
    "early": tuple(f"encoder.backbone.{n}" for n in ("_conv_stem.", "_bn0.", "_blocks.0.", "_blocks.1.", "_blocks.2.")),
    "backbone": ("encoder.backbone.",),
}


def _freeze(network: torch.nn.Module, choice: str) -> int:
    """Set ``requires_grad=False`` on the parameters ``choice`` keeps fixed; returns how many tensors."""
    prefixes = FREEZE[choice]
    frozen = 0
    for name, param in network.named_parameters():
        if prefixes and name.startswith(prefixes):
            param.requires_grad_(False)
            frozen += 1
    if prefixes and not frozen:
        raise ValueError(f"adaptation freeze={choice!r} matches no parameter of {type(network).__name__}")
    return frozen


@dataclass(frozen=True)
class SupportAdaptation:
    """Options of the support adaptation (the evaluation's ``adapt`` option and ``--adapt-option``).

    Args:
        iterations: fine-tuning iterations (0 switches the adaptation off).
        lr, momentum, weight_decay: SGD, as in the self-supervised training.
        bg_weight: weight of the background class in the cross-entropy and alignment losses (SSL-ALPNet's 0.05).
        align_weight: weight of the prototype alignment loss.
        max_offset: support-to-query slice distance of an episode, as a fraction of the organ's z-extent.
        episodes_per_iteration: episodes per SGD step.
        augment: :class:`~fewshot_monai.data.episodes.EpisodeAugmentation` fields (defaults: those of training).
        seed: episode and initialisation seed.
        spatial_size: slice size; None: 256 (the evaluation passes its inferer's size).
        freeze: which parameters stay fixed: ``"none"`` (fine-tune everything), ``"early"`` (the backbone's
            high-resolution layers, stride 4 and finer: about half the backward cost for a Lite0), or
            ``"backbone"`` (only the feature fusion head learns, a light adapter).
    """

    iterations: int = 600
    lr: float = 1.0e-3
    momentum: float = 0.9
    weight_decay: float = 5.0e-4
    bg_weight: float = 0.05
    align_weight: float = 1.0
    max_offset: float = 0.2
    episodes_per_iteration: int = 1
    augment: dict = field(default_factory=dict)
    seed: int = 0
    spatial_size: int | None = None
    freeze: str = "none"

    @classmethod
    def from_dict(cls, options: Mapping | SupportAdaptation | None) -> SupportAdaptation:
        if isinstance(options, SupportAdaptation):
            return options
        options = dict(options or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown adaptation option(s) {unknown}; valid: {sorted(known)}")
        out = cls(**options)
        if out.freeze not in FREEZE:
            raise ValueError(f"unknown adaptation freeze {out.freeze!r}; valid: {', '.join(FREEZE)}")
        if int(out.iterations) < 0 or float(out.lr) <= 0 or int(out.episodes_per_iteration) < 1:
            raise ValueError(f"bad adaptation options {out.to_dict()}: need iterations >= 0, lr > 0, episodes >= 1")
        return out

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AdaptedNetwork:
    """The result of :func:`adapt_to_support`.

    Attributes:
        network: the adapted copy of the network, in eval mode (the input network is left unchanged).
        seconds: wall-clock seconds of the fine-tuning (from the cache: the seconds it took when it was made;
            0 with ``iterations == 0``).
        from_cache: the weights were read from ``cache_dir``.
        key: the cache key (hash of weights, supports, organs and options).
        losses: mean loss over the first and the last 10% of the iterations.
    """

    network: torch.nn.Module
    seconds: float
    from_cache: bool
    key: str
    losses: dict = field(default_factory=dict)


def _hash_tensor(h, tensor) -> None:
    t = tensor.as_tensor() if hasattr(tensor, "as_tensor") else torch.as_tensor(tensor)
    t = t.detach().cpu().contiguous()
    h.update(str((tuple(t.shape), str(t.dtype))).encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def adaptation_key(network: torch.nn.Module, images: Sequence, labels: Sequence, organ_ids, options) -> str:
    """A hex digest that changes with the network weights, the support volumes, the organs and the options."""
    h = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        if not isinstance(tensor, torch.Tensor):  # the recorded architecture
            h.update(json.dumps([name, tensor], sort_keys=True).encode())
            continue
        h.update(name.encode())
        _hash_tensor(h, tensor)
    for img, lab in zip(images, labels):
        _hash_tensor(h, img)
        _hash_tensor(h, lab)
    h.update(json.dumps([sorted(int(o) for o in organ_ids), options.to_dict()], sort_keys=True).encode())
    return h.hexdigest()[:24]


def adapt_to_support(
    network: torch.nn.Module,
    support_images: Sequence,
    support_labels: Sequence,
    organ_ids: Sequence[int],
    options: Mapping | SupportAdaptation | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
    on_iteration: Callable[[int, torch.nn.Module], None] | None = None,
) -> AdaptedNetwork:
    """Fine-tune a copy of ``network`` on labelled episodes from the support volume(s).

    Args:
        network: a trained encoder-and-bank network (:class:`~fewshot_monai.networks.ALPNet`); not modified.
        support_images: the support volumes ``(1, X, Y, Z)``, z-scored as for inference.
        support_labels: their integer label maps ``(1, X, Y, Z)`` (or binary masks with ``organ_ids=[1]``).
        organ_ids: label ids of the organs to adapt to (all together, one network for all of them).
        options: :class:`SupportAdaptation` or a dict of its fields.
        cache_dir: folder of adapted weights ``<key>.pt`` (with ``<key>.json``: seconds, losses, options); a hit
            skips the fine-tuning.
        progress: show a progress bar.
        on_iteration: called as ``on_iteration(iteration, network)`` after every iteration (e.g. snapshots for a
            learning curve); the network is in training mode during the call.

    Raises:
        EmptyMaskError: no support slice shows any of the organs.
    """
    from fewshot_monai.data.episodes import EpisodeLoader, SupportEpisodeDataset
    from fewshot_monai.engines.selfsupervised import SelfSupervisedTrainer
    from fewshot_monai.networks import PrototypeAlignmentLoss, WeightedCrossEntropyLoss
    from fewshot_monai.utils.files import atomic_write

    opts = SupportAdaptation.from_dict(options)
    images, labels = list(support_images), list(support_labels)
    if len(images) != len(labels) or not images:
        raise ValueError(f"need one label per support image and at least one, got {len(images)} and {len(labels)}")
    key = adaptation_key(network, images, labels, organ_ids, opts)
    adapted = copy.deepcopy(network)
    if opts.iterations == 0:
        return AdaptedNetwork(adapted.eval(), 0.0, False, key)
    cached = Path(cache_dir) / f"{key}.pt" if cache_dir is not None else None
    record = cached.with_suffix(".json") if cached is not None else None
    if cached is not None and cached.is_file() and record.is_file():
        adapted.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
        stored = json.loads(record.read_text())
        logger.info("support adaptation %s read from %s", key, cached)
        return AdaptedNetwork(adapted.eval(), float(stored["seconds"]), True, key, stored.get("losses", {}))

    volumes = [{"id": k, "image": img, "label": lab} for k, (img, lab) in enumerate(zip(images, labels))]
    dataset = SupportEpisodeDataset(
        volumes,
        organ_ids,
        spatial_size=opts.spatial_size or 256,
        seed=opts.seed,
        max_offset=opts.max_offset,
        augmentation=opts.augment,
        context=getattr(network, "slice_context", 0),
    )
    device = next(network.parameters()).device
    _freeze(adapted, opts.freeze)
    optimizer = torch.optim.SGD(
        [p for p in adapted.parameters() if p.requires_grad],
        lr=float(opts.lr),
        momentum=float(opts.momentum),
        weight_decay=float(opts.weight_decay),
    )
    trainer = SelfSupervisedTrainer(
        device=device,
        iterations=int(opts.iterations),
        epoch_length=int(opts.iterations),
        train_data_loader=EpisodeLoader(dataset, int(opts.episodes_per_iteration)),
        network=adapted,
        optimizer=optimizer,
        loss_function=WeightedCrossEntropyLoss(float(opts.bg_weight), 1.0),
        align_loss=PrototypeAlignmentLoss(float(opts.bg_weight), 1.0),
        align_weight=float(opts.align_weight),
        seed=int(opts.seed),
    )
    losses: list[float] = []

    def _record(engine) -> None:
        losses.append(float(engine.state.output["loss"].detach()))
        if on_iteration is not None:
            on_iteration(engine.state.iteration, adapted)

    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED, _record)
    if progress:
        from ignite.handlers import ProgressBar

        ProgressBar(persist=False, desc="adapting to the support").attach(trainer, output_transform=lambda o: o["loss"])
    logger.info("support adaptation %s: %d iterations on %s", key, opts.iterations, dataset.describe())
    start = time.perf_counter()
    with torch.random.fork_rng():
        trainer.run()
    seconds = time.perf_counter() - start
    adapted.eval().requires_grad_(True)
    tenth = max(1, len(losses) // 10)
    summary = {"first": float(np.mean(losses[:tenth])), "last": float(np.mean(losses[-tenth:]))}
    logger.info(
        "support adaptation %s done in %.0f s (loss %.3f -> %.3f)", key, seconds, summary["first"], summary["last"]
    )
    if cached is not None:
        with atomic_write(cached, "wb") as fh:
            torch.save(adapted.state_dict(), fh)
        with atomic_write(record) as fh:
            json.dump({"seconds": seconds, "losses": summary, "options": opts.to_dict()}, fh, indent=1)
    return AdaptedNetwork(adapted, seconds, False, key, summary)
