"""``fewshot-monai train``: self-supervised training of ALPNet on superpixel episodes (SSL-ALPNet), no labels needed.

The YAML config names the data (root, dataset descriptor, intensity preset, scans to use or exclude), the
superpixels, the episodes, the network, the loss, the optimiser and its step-decay schedule, the training length,
checkpointing and an optional validation scan; ``docs/training.md`` lists every key. The output folder gets
``config.yaml``, ``checkpoints/``, ``metrics.csv``, ``validation.csv``, ``tensorboard/``, ``summary.json`` and the
final ``model.pt`` (an ALPNet state dict, ``torch.load(weights_only=True)``).

Examples::

    fewshot-monai train --config configs/train_phantom.yaml --out runs/phantom
    fewshot-monai train --config configs/train_chaos.yaml --out runs/chaos --set data.exclude_scans=[2,3]
    fewshot-monai train --config configs/train_chaos.yaml --out runs/chaos --resume --iterations 20000
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from fewshot_monai.errors import FewShotError

__all__ = ["add_parser", "run"]

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="self-supervised training of ALPNet on superpixel episodes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="training config (YAML), e.g. configs/train_chaos.yaml")
    parser.add_argument("--out", default=None, help="output folder (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    parser.add_argument("--iterations", type=int, default=None, help="total iterations (overrides the config)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optimizer.lr=5e-4 --set data.exclude_scans=[2,3] (repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fewshot_monai.engines.selfsupervised import load_config, train_from_config

    overrides = list(args.overrides)
    if args.iterations is not None:
        overrides.append(f"training.iterations={int(args.iterations)}")
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    try:
        config = load_config(args.config, overrides)
        summary = train_from_config(config, out, resume=args.resume, progress=False if args.no_progress else None)
    except (FewShotError, ValueError, OSError) as err:
        logger.error("%s", err)
        return 2
    print(json.dumps(summary, indent=2))
    return 0
