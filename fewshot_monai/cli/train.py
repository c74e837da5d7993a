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
    fewshot-monai train --config configs/train_chaos.yaml --fold 0 --out runs/chaos_fold0

``--fold K`` trains the model of cross-validation fold K (``fewshot_monai.evaluation.folds``): the fold's query
and support scans (``--fold-shots`` supports) are added to ``data.exclude_scans``, so the model never sees them.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from fewshot_monai.cli.main import SUBCOMMANDS
from fewshot_monai.errors import FewShotError

__all__ = ["add_parser", "run"]

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help=SUBCOMMANDS["train"][1],
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
    parser.add_argument("--fold", type=int, default=None, help="train fold K's model: exclude its queries and support")
    parser.add_argument("--fold-shots", type=int, default=1, help="support scans per fold for --fold (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def exclude_fold(config: dict, fold: int, shots: int = 1, n_folds: int = 5) -> dict:
    """``config`` with fold ``fold``'s query and support scans added to ``data.exclude_scans``."""
    from fewshot_monai.data.datasets import load_labelled_dataset
    from fewshot_monai.evaluation.folds import folds

    data = config["data"]
    if not data.get("root"):
        raise ValueError("--fold needs data.root (a dataset folder)")
    order = load_labelled_dataset(
        data["root"], data["descriptor"], images=data.get("images"), labels=data.get("labels"), require_labels=False
    ).order
    all_folds = folds(order, n_folds=n_folds, shots=shots)
    if not 0 <= fold < len(all_folds):
        raise ValueError(f"--fold {fold} out of range 0..{len(all_folds) - 1}")
    chosen = all_folds[fold]
    excluded = [str(s) for s in data.get("exclude_scans") or []]
    for scan in (*chosen.query_ids, *chosen.support_ids):
        if scan not in excluded:
            excluded.append(scan)
    logger.info("fold %d: training without scans %s", fold, ", ".join(excluded))
    return {**config, "data": {**data, "exclude_scans": excluded}}


def run(args: argparse.Namespace) -> int:
    from fewshot_monai.engines.selfsupervised import load_config, train_from_config

    overrides = list(args.overrides)
    if args.iterations is not None:
        overrides.append(f"training.iterations={int(args.iterations)}")
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    try:
        config = load_config(args.config, overrides)
        if args.fold is not None:
            config = exclude_fold(config, args.fold, args.fold_shots)
        summary = train_from_config(config, out, resume=args.resume, progress=False if args.no_progress else None)
    except (FewShotError, ValueError, OSError) as err:
        logger.error("%s", err)
        return 2
    print(json.dumps(summary, indent=2))
    return 0
