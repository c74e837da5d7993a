"""How gracefully does inference-time pseudo-labelling degrade when its confidence is miscalibrated?

The selection sees perturbed probabilities (``softmax(log p / T + noise)``, the stage's ``temperature`` and
``noise_std`` options); the final prediction still comes from the unperturbed scores of the expanded support.
Each setting is one ``run_evaluation`` (plain and refined scored in the same run), and the table prints the
refined Dice, its gain over the plain prediction and the number of transferred slices per organ::

    python benchmarks/pseudo_label_robustness.py --data ../shared/data/chaos_t2spir --dataset chaos \\
        --model runs/models_chaos --protocol ep1 --out runs/robustness_chaos_ep1

Writes ``<out>/<setting>/`` (the evaluation outputs) and ``<out>/robustness.md`` / ``robustness.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fewshot_monai.cli.arguments import add_dataset_arguments
from fewshot_monai.evaluation.runner import run_evaluation
from fewshot_monai.utils.files import atomic_write

#: (name, stage options): the unperturbed reference first
SETTINGS = [
    ("reference", {}),
    ("T=0.5 (over-confident)", {"temperature": 0.5}),
    ("T=2 (under-confident)", {"temperature": 2.0}),
    ("T=4", {"temperature": 4.0}),
    ("logit noise 0.5", {"noise_std": 0.5}),
    ("logit noise 1.0", {"noise_std": 1.0}),
    ("logit noise 2.0", {"noise_std": 2.0}),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataset_arguments(parser, default="chaos")
    parser.add_argument("--model", default=None)
    parser.add_argument("--protocol", default="ep1")
    parser.add_argument("--folds", default="0,1,2,3,4")
    parser.add_argument("--strategy", default="window")
    parser.add_argument("--settings", default=None, help="comma-separated indices into SETTINGS (default all)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = Path(args.out)
    chosen = SETTINGS if args.settings is None else [SETTINGS[int(i)] for i in args.settings.split(",")]
    results = []
    for k, (name, options) in enumerate(chosen):
        summary = run_evaluation(
            {
                "data": args.data,
                "dataset": args.dataset,
                "label_map": args.label_map,
                "images": args.images,
                "labels": args.labels,
                "intensity": args.intensity,
                "model": args.model,
                "protocol": args.protocol,
                "folds": [int(f) for f in args.folds.split(",")],
                "pseudo_label": args.strategy,
                "pseudo_label_options": options,
                "out": str(out / f"setting{k}"),
                "overlays": False,
                "progress": False,
            }
        )
        pl = summary["pseudo_label"]
        results.append(
            {
                "setting": name,
                "options": options,
                "plain_dice_mean": summary["plain"]["dice_mean"],
                "dice_mean": summary["dice_mean"],
                "dice_mean_gain": pl["dice_mean_gain"],
                "dice_gain": pl["dice_gain"],
                "slices_mean": {o: v["slices_mean"] for o, v in pl["per_organ"].items()},
                "pseudo_label_dice": {o: v["pseudo_label_dice_mean"] for o, v in pl["per_organ"].items()},
            }
        )
        print(f"{name}: {100 * summary['dice_mean']:.1f} (gain {100 * pl['dice_mean_gain']:+.1f})", flush=True)
    organs = list(results[0]["dice_gain"])
    lines = [
        f"Robustness of `{args.strategy}` pseudo-labelling, {args.dataset} {args.protocol.upper()}, folds {args.folds}"
        f", model {args.model or 'default'}",
        "",
        "| confidence seen by the selection | mean Dice | gain | " + " | ".join(f"gain {o}" for o in organs)
        + " | slices / organ | pseudo-label Dice |",
        "| --- " * (5 + len(organs)) + "|",
    ]
    for r in results:
        slices = [v for v in r["slices_mean"].values() if v is not None]
        pl_dice = [v for v in r["pseudo_label_dice"].values() if v is not None]
        lines.append(
            f"| {r['setting']} | {100 * r['dice_mean']:.1f} | {100 * r['dice_mean_gain']:+.1f} | "
            + " | ".join(f"{100 * r['dice_gain'][o]:+.1f}" for o in organs)
            + f" | {sum(slices) / max(len(slices), 1):.1f} | {100 * sum(pl_dice) / max(len(pl_dice), 1):.1f} |"
        )
    lines.append(f"\nPlain prediction (same model, same runs): {100 * results[0]['plain_dice_mean']:.1f}.")
    with atomic_write(out / "robustness.md") as fh:
        fh.write("\n".join(lines) + "\n")
    with atomic_write(out / "robustness.json") as fh:
        json.dump(results, fh, indent=2)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
