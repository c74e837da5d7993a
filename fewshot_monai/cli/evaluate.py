"""``fewshot-monai evaluate``: cross-validated few-shot evaluation (SSL-ALPNet folds, EP1/EP2) with reports.

Writes, under ``--out``: ``per_scan.csv`` (one row per method, fold, scan and organ: Dice, HD95 and ASD in mm,
seconds, slice ranges), ``summary.json`` (per-organ means, options, model, date), ``report.md`` (our table beside
the published numbers), ``boxplots.png`` and overlays of the best, median and worst scan.
See ``docs/evaluation.md``.
"""

from __future__ import annotations

import argparse
import logging

from fewshot_monai.cli.arguments import PLANE_CHOICES, PLANE_HELP, int_list, name_ids, name_list
from fewshot_monai.cli.main import SUBCOMMANDS
from fewshot_monai.errors import FewShotError

__all__ = ["add_parser", "run", "config_from_args"]

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help=SUBCOMMANDS["evaluate"][1],
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, help="data folder (image_<id>/label_<id> volumes)")
    parser.add_argument("--dataset", choices=("chaos", "sabs", "generic", "phantom"), default="chaos")
    parser.add_argument(
        "--model",
        default=None,
        help="weights .pt, bundle folder (models/model.pt), folder of fold<k>_setting<s>.pt, or 'untrained' "
        "(ImageNet encoder, no few-shot training); default: the shipped model of the data set's modality",
    )
    parser.add_argument("--protocol", choices=("ep1", "ep2"), default="ep1")
    parser.add_argument("--setting", type=int, choices=(1, 2), default=1)
    parser.add_argument("--folds", type=int_list, default=None, help="fold indices, e.g. 0,1,2,3,4 (default all)")
    parser.add_argument("--n-folds", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1, help="support volumes per fold (k-shot)")
    parser.add_argument(
        "--pseudo-label",
        default="none",
        help="inference-time pseudo-labelling strategy: none (default), slice or window; the plain prediction of the "
        "same model is scored in the same run",
    )
    parser.add_argument(
        "--pseudo-label-option",
        dest="pseudo_label_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="strategy option, e.g. threshold=0.95, k_per_chunk=3, weight=0.5, rounds=2 (repeatable; YAML values)",
    )
    parser.add_argument(
        "--inferer-option",
        dest="inferer_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="FewShotVolumeInferer option, e.g. largest_component=false, peak_fraction=null, prior_weight=0 "
        "(repeatable; YAML values)",
    )
    parser.add_argument(
        "--adapt-iterations",
        type=int,
        default=0,
        help="fine-tune each fold's network on its support scan for N iterations before segmenting its queries "
        "(support adaptation; 0: off, the default)",
    )
    parser.add_argument(
        "--adapt-option",
        dest="adapt_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="support adaptation option, e.g. lr=5e-4, max_offset=0.2, bg_weight=0.05 (repeatable; YAML values)",
    )
    parser.add_argument("--adapt-cache", default=None, help="folder to keep adapted networks in and reuse them")
    parser.add_argument(
        "--adapt-ensemble",
        type=int,
        default=1,
        metavar="K",
        help="adapt K copies of each fold's network (adaptation seeds seed..seed+K-1) and average their predictions",
    )
    parser.add_argument("--baseline", choices=("none", "registration"), default="none")
    parser.add_argument(
        "--z-range-from",
        choices=("network", "registration"),
        default="network",
        help="EP2: organ range from the network's first pass (default) or from the registered support label",
    )
    parser.add_argument("--organs", type=name_list, default=None, help="comma-separated organ names (default all)")
    parser.add_argument("--label-map", type=name_ids, default=None, help="name=id,... (required for generic)")
    parser.add_argument("--images", default=None, help="generic: image folder or glob, relative to --data")
    parser.add_argument("--labels", default=None, help="generic: label folder or glob, relative to --data")
    parser.add_argument("--intensity", default=None, help="intensity preset override (ct, mri, preprocessed, none)")
    parser.add_argument("--plane", choices=PLANE_CHOICES, default="auto", help=PLANE_HELP)
    parser.add_argument("--limit-queries", type=int, default=None, help="only the first N queries of each fold")
    parser.add_argument("--spatial-size", type=int, default=256)
    parser.add_argument("--n-chunks", type=int, default=3, help="chunks per organ extent (3 in SSL-ALPNet)")
    parser.add_argument("--registration-threads", type=int, default=2)
    parser.add_argument(
        "--atlas-registration",
        choices=("affine", "bspline"),
        default="affine",
        help="with --inferer-option atlas_prior=W (the support label registered onto each query as a prior): affine "
        "only (default, fast) or the baseline's affine + B-spline",
    )
    parser.add_argument(
        "--registration-cache",
        default=None,
        help="folder to keep warped support labels in and reuse them (e.g. the EP2 run after EP1)",
    )
    parser.add_argument(
        "--joint",
        action="store_true",
        help="also score the organs merged into one label map (each voxel to its most probable organ)",
    )
    parser.add_argument("--save-predictions", action="store_true", help="also write predicted label maps")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--out", required=True, help="output folder")
    parser.set_defaults(run=run)


def config_from_args(args: argparse.Namespace):
    from fewshot_monai.evaluation.runner import EvaluationConfig

    return EvaluationConfig(
        data=args.data,
        out=args.out,
        dataset=args.dataset,
        model=args.model,
        protocol=args.protocol,
        setting=args.setting,
        folds=args.folds,
        n_folds=args.n_folds,
        shots=args.shots,
        pseudo_label=args.pseudo_label,
        pseudo_label_options=_options(args.pseudo_label_options, "--pseudo-label-option"),
        baseline=args.baseline,
        z_range_from=args.z_range_from,
        organs=args.organs,
        label_map=args.label_map,
        images=args.images,
        labels=args.labels,
        intensity=args.intensity,
        plane=args.plane,
        limit_queries=args.limit_queries,
        spatial_size=args.spatial_size,
        n_chunks=args.n_chunks,
        inferer_options=_options(args.inferer_options, "--inferer-option"),
        adapt=_adaptation(args),
        adapt_cache=args.adapt_cache,
        adapt_ensemble=args.adapt_ensemble,
        registration_threads=args.registration_threads,
        atlas_registration=args.atlas_registration,
        registration_cache=args.registration_cache,
        joint=args.joint,
        save_predictions=args.save_predictions,
        progress=not args.no_progress,
        command=command_line(),
    )


def command_line() -> str:
    """The command as typed (``fewshot-monai ...``), shell-quoted, for the run's records."""
    import shlex
    import sys

    return shlex.join(["fewshot-monai", *sys.argv[1:]])


def _adaptation(args: argparse.Namespace) -> dict | None:
    options = _options(args.adapt_options, "--adapt-option")
    if args.adapt_iterations < 0:
        raise ValueError(f"--adapt-iterations must be >= 0, got {args.adapt_iterations}")
    if not args.adapt_iterations:
        if options:
            raise ValueError("--adapt-option needs --adapt-iterations N (N > 0)")
        return None
    return {**options, "iterations": args.adapt_iterations}


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _table(summary: dict) -> str:
    """A plain-text Dice table for the terminal."""
    organs = summary["protocol"]["organs"]
    from fewshot_monai.evaluation.report import method_summaries

    methods = method_summaries(summary)
    width = max(13, *(len(n) + 1 for n in methods))
    lines = ["method".ljust(width) + "".join(f"{o:>14}" for o in organs) + "      mean   s/query"]
    for name, s in methods.items():
        cells = "".join(f"{_fmt(s['dice'][o], '.3f'):>14}" for o in organs)
        mean, secs = _fmt(s["dice_mean"], ".3f"), _fmt(s["seconds_per_query"], ".1f")
        lines.append(f"{name:<{width}}{cells}{mean:>10}{secs:>10}")
    pl = summary.get("pseudo_label")
    if pl:
        overhead = pl.get("overhead_fraction")
        lines.append(
            f"pseudo-labelling: mean Dice gain {_fmt(pl['dice_mean_gain'], '+.3f')}, stage time "
            f"{'n/a' if overhead is None else f'{100 * overhead:.1f}%'} of the plain prediction"
        )
    return "\n".join(lines)


def _options(items, flag: str) -> dict:
    """``["k=v", ...]`` -> ``{k: yaml(v)}`` (``flag`` names the option in errors)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag}: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def run(args: argparse.Namespace) -> int:
    from fewshot_monai.evaluation.registration import RegistrationUnavailableError
    from fewshot_monai.evaluation.runner import run_evaluation

    try:
        summary = run_evaluation(config_from_args(args))
    except RegistrationUnavailableError as err:
        logger.error("%s", err)
        return 2
    except (FewShotError, ValueError) as err:
        logger.error("evaluation not started: %s", err)
        return 2
    print(_table(summary))
    skipped = len(summary.get("skipped", []))
    print(
        f"wrote {args.out}/per_scan.csv, summary.json, report.md" + (f" ({skipped} case(s) skipped)" if skipped else "")
    )
    return 0
