"""Learning curve of the support adaptation on one fold: Dice against fine-tuning iterations.

One adaptation run of the fold's network on the fold's support (``fewshot_monai.engines.adaptation``) saves
snapshots at the requested iterations; each snapshot is then evaluated with ``fewshot-monai evaluate``'s runner
(the fold's queries, the chosen protocol, plain and pseudo-labelled) exactly as ``--adapt-iterations N`` would,
and the untrained-for-the-support network (0 iterations) is evaluated beside them. Writes ``curve.json`` (every
summary's figures and the seconds each snapshot cost) and ``curve.png`` to ``--out``.

    python benchmarks/adaptation_curve.py --data ../shared/data/chaos_t2spir --dataset chaos \\
        --model runs/models_chaos --fold 0 --snapshots 150,300,600,1200 --out runs/adapt_curve_chaos_f0
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from fewshot_monai.cli.arguments import add_dataset_arguments, dataset_from_args


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser, default="chaos")
    parser.add_argument("--model", required=True, help="folder of fold<k>_setting<s>.pt or a .pt file")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--protocol", default="ep1")
    parser.add_argument("--pseudo-label", default="window")
    parser.add_argument("--snapshots", default="150,300,600,1200", help="comma-separated iteration counts")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="adaptation option")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import yaml

    from fewshot_monai.data.io import load_case
    from fewshot_monai.engines.adaptation import SupportAdaptation, adapt_to_support
    from fewshot_monai.evaluation.folds import folds
    from fewshot_monai.evaluation.runner import resolve_checkpoint, run_evaluation
    from fewshot_monai.zoo import load_model

    out = Path(args.out)
    (out / "snapshots").mkdir(parents=True, exist_ok=True)
    snapshots = sorted(int(v) for v in args.snapshots.split(","))
    options = {k: yaml.safe_load(v) for k, _, v in (o.partition("=") for o in args.option)}
    opts = SupportAdaptation.from_dict({**options, "iterations": snapshots[-1]})

    data = dataset_from_args(args)
    fold = folds(data.order)[args.fold]
    supports = [
        load_case(data.items[s]["image"], data.items[s]["label"], intensity=data.intensity, case_id=s)
        for s in fold.support_ids
    ]
    checkpoint = resolve_checkpoint(args.model, args.fold, 1)
    network = load_model(checkpoint, modality=data.modality).network
    organ_ids = list(data.label_map.values())

    started = time.perf_counter()
    seconds_at: dict[int, float] = {}

    def snapshot(iteration: int, net) -> None:
        if iteration in snapshots:
            seconds_at[iteration] = time.perf_counter() - started
            torch.save(net.state_dict(), out / "snapshots" / f"it{iteration}.pt")

    adapt_to_support(network, [s["image"] for s in supports], [s["label"] for s in supports], organ_ids, opts,
                     progress=True, on_iteration=snapshot)  # fmt: skip

    rows = []
    for iteration in [0, *snapshots]:
        weights = checkpoint if iteration == 0 else out / "snapshots" / f"it{iteration}.pt"
        summary = run_evaluation({
            "data": args.data, "dataset": args.dataset, "model": str(weights), "protocol": args.protocol,
            "label_map": args.label_map, "images": args.images, "labels": args.labels, "intensity": args.intensity,
            "folds": [args.fold], "pseudo_label": args.pseudo_label, "out": str(out / f"eval_it{iteration}"),
            "progress": False, "overlays": False,
        })  # fmt: skip
        plain = summary.get("plain", summary)
        rows.append({
            "iterations": iteration, "adapt_seconds": round(seconds_at.get(iteration, 0.0), 1),
            "dice_mean": summary["dice_mean"], "dice": summary["dice"],
            "plain_dice_mean": plain["dice_mean"], "plain_dice": plain["dice"],
        })  # fmt: skip
        print(f"{iteration:5d} it  {seconds_at.get(iteration, 0.0):6.0f} s  plain {100 * plain['dice_mean']:.1f}  "
              f"{args.pseudo_label} {100 * summary['dice_mean']:.1f}", flush=True)  # fmt: skip
    record = {
        "command": shlex.join(["python", *sys.argv]),
        "fold": args.fold,
        "protocol": args.protocol,
        "options": opts.to_dict(),
        "rows": rows,
    }
    (out / "curve.json").write_text(json.dumps(record, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    its = [r["iterations"] for r in rows]
    ax.plot(its, [100 * r["plain_dice_mean"] for r in rows], "o-", label="plain")
    ax.plot(its, [100 * r["dice_mean"] for r in rows], "s-", label=args.pseudo_label)
    ax.set_xlabel("adaptation iterations")
    ax.set_ylabel("mean Dice (%)")
    ax.set_title(f"{args.dataset} fold {args.fold} {args.protocol.upper()}: support adaptation")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curve.png", dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
