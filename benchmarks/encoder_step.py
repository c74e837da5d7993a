"""Seconds per forward + backward of one training step for each Lite encoder (no data, no optimiser, no training).

A step is what :class:`~fewshot_monai.engines.selfsupervised.SelfSupervisedTrainer` does for a batch of
``--episodes`` 1-shot episodes: encode queries and supports in one pass, one prototype bank per episode, scoring,
weighted cross-entropy plus the prototype alignment loss, backward. Inputs are random z-scores with a square
foreground mask, 256 x 256; ALPNet defaults (ImageNet weights, frozen batch norms, train mode).

    OMP_NUM_THREADS=1 python benchmarks/encoder_step.py --threads 1

Prints one JSON line per encoder: parameters (ALPNet and backbone), median / min seconds per step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from fewshot_monai.engines.selfsupervised import episode_alignment, episode_logits
from fewshot_monai.networks import ALPNet, PrototypeAlignmentLoss, WeightedCrossEntropyLoss


def step(net: ALPNet, query, q_mask, support, s_mask, ce_loss, align_loss) -> None:
    """One training step's forward and backward, as the trainer does it (no optimiser step)."""
    logits, q_feats, s_feats = episode_logits(net, query, support, s_mask)
    align = episode_alignment(align_loss, net, q_feats, logits, s_feats, s_mask)
    (ce_loss(logits, q_mask).mean() + align).backward()


def measure(encoder: str, episodes: int, size: int, warmup: int, repeats: int) -> dict:
    torch.manual_seed(0)
    net = ALPNet(encoder=encoder).train()
    query = torch.randn(episodes, 3, size, size)
    support = torch.randn(episodes, 3, size, size)
    mask = torch.zeros(episodes, 1, size, size)
    mask[..., size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    ce_loss, align_loss = WeightedCrossEntropyLoss(), PrototypeAlignmentLoss()
    times = []
    for i in range(warmup + repeats):
        net.zero_grad(set_to_none=True)
        start = time.perf_counter()
        step(net, query, mask, support, mask, ce_loss, align_loss)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {
        "encoder": encoder,
        "alpnet_parameters": sum(p.numel() for p in net.parameters()),
        "backbone_parameters": sum(p.numel() for p in net.encoder.backbone.parameters()),
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "repeats": repeats,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="+", default=["lite0", "lite1", "lite2"])
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in args.encoders:
        load = os.getloadavg()[0]
        result = measure(name, args.episodes, args.size, args.warmup, args.repeats)
        result.update(
            threads=torch.get_num_threads(), load_before=round(load, 2), load_after=round(os.getloadavg()[0], 2)
        )
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
