"""Choose the pseudo-labelling options on one fold: a fast sweep over cached plain predictions.

Every query of the fold is encoded and scored once (plain EP1/EP2 protocol); each candidate strategy then only
re-scores the cached features, and is judged by the Dice of the slice stacks (256 x 256, the protocol's
resolution) against the truth, averaged over scans per organ as in the evaluation. The final figures come from
``fewshot-monai evaluate`` (volume geometry, all folds); this script only ranks options, on the fold it is given.

    python benchmarks/pseudo_label_sweep.py --data ../shared/data/chaos_t2spir --dataset chaos --folds 0 \\
        --model runs/models_chaos/fold0_setting1.pt --protocol ep1 --out runs/sweep_chaos_f0.json

Also prints, per organ, how the slice confidence relates to the slice's true Dice (is the confidence informative?).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from fewshot_monai.cli.arguments import add_dataset_arguments, dataset_from_args
from fewshot_monai.data.io import load_case
from fewshot_monai.evaluation.folds import folds
from fewshot_monai.evaluation.protocols import get_protocol
from fewshot_monai.evaluation.runner import resolve_checkpoint
from fewshot_monai.inferers import FewShotSegmenter, keep_largest_component
from fewshot_monai.pseudolabel import SliceSelection, SupportExpansion, WindowSelection, pixel_confidence
from fewshot_monai.pseudolabel.confidence import region_confidence
from fewshot_monai.transforms.labels import organ_z_extent
from fewshot_monai.transforms.slicing import image_slices, volume_to_slices
from fewshot_monai.zoo import load_model


def dice(pred: torch.Tensor, true: torch.Tensor) -> float:
    total = float(pred.sum() + true.sum())
    return 1.0 if total == 0 else 2.0 * float((pred & true).sum()) / total


def collect(args, fold_index: int):
    """Plain contexts and truth stacks of every (scan, organ) of one fold."""
    data = dataset_from_args(args)
    fold = folds(data.order, shots=args.shots)[fold_index]
    by_id = data.items
    weights = resolve_checkpoint(args.model, fold_index, 1)
    model = load_model(None if weights is None else str(weights), data.modality).network
    protocol = get_protocol(args.protocol)

    def case(i):
        return load_case(by_id[i]["image"], by_id[i]["label"], intensity=data.intensity, case_id=i)

    supports = [case(s) for s in fold.support_ids]
    organs = {o: lid for o, lid in data.label_map.items() if all((s["label"] == lid).any() for s in supports)}
    # the segmenter prepares the support; its protocol gives the plain contexts the stages are swept on
    segmenter = FewShotSegmenter(model, [s["image"] for s in supports], [s["label"] for s in supports], organs)
    cached = []
    for scan in fold.query_ids:
        query = case(scan)
        stack = image_slices(query["image"], 256, model.slice_context)
        features = segmenter.protocol.encode(model, stack)
        for organ, lid in organs.items():
            truth = (query["label"] == lid).float()
            if not truth.any():
                continue
            start = time.perf_counter()
            z_range = organ_z_extent(truth) if protocol.uses_query_range else "estimate"
            context = segmenter.protocol(model, stack, segmenter.supports[organ], z_range, query_features=features)
            context.probabilities = keep_largest_component(context.probabilities)
            stack_truth = volume_to_slices(truth, 256, 1, "nearest")[:, 0] > 0.5
            scored = organ_z_extent(truth) if protocol.uses_query_range else (0, stack_truth.shape[0] - 1)
            cached.append({"fold": fold_index, "scan": scan, "organ": organ, "model": model, "context": context,
                           "truth": stack_truth, "scored": scored, "seconds": time.perf_counter() - start})
            print(f"cached scan {scan} {organ}", flush=True)
    return segmenter.protocol, cached


def evaluate(protocol, cached, stage) -> dict:
    per_organ: dict[str, list[float]] = {}
    seconds = 0.0
    for c in cached:
        ctx = c["context"]
        probs = ctx.probabilities if stage is None else stage(c["model"], protocol, ctx)
        if stage is not None:
            seconds += ctx.diagnostics["pseudo_label"]["seconds"]
        a, b = c["scored"]
        pred = probs[a : b + 1, 1] > 0.5
        per_organ.setdefault(c["organ"], []).append(dice(pred, c["truth"][a : b + 1]))
    means = {o: float(np.mean(v)) for o, v in per_organ.items()}
    return {"dice": means, "dice_mean": float(np.mean(list(means.values()))), "stage_seconds": seconds}


def confidence_report(cached, measure="max_prob"):
    """Spearman-like check: per organ, correlation of slice confidence with the slice's true Dice."""
    out = {}
    for organ in sorted({c["organ"] for c in cached}):
        conf, true_dice = [], []
        for c in (x for x in cached if x["organ"] == organ):
            ctx = c["context"]
            probs = ctx.probabilities
            fg = probs[:, 1] > 0.5
            sc = region_confidence(pixel_confidence(probs, measure), fg)
            for z in torch.nonzero(ctx.chunk_of_slice >= 0).flatten().tolist():
                if fg[z].sum() >= 64:
                    conf.append(float(sc[z]))
                    true_dice.append(dice(fg[z], c["truth"][z]))
        conf, true_dice = np.array(conf), np.array(true_dice)
        r = float(np.corrcoef(conf, true_dice)[0, 1]) if len(conf) > 2 else float("nan")
        q = np.quantile(conf, [0.1, 0.5, 0.9]).round(3).tolist() if len(conf) else []
        top = true_dice[conf >= np.quantile(conf, 0.8)].mean() if len(conf) else float("nan")
        out[organ] = {"n": len(conf), "corr": round(r, 3), "conf_q10_50_90": q,
                      "dice_all": round(float(true_dice.mean()), 3), "dice_top20pct_conf": round(float(top), 3)}
    return out


def grid(spec: dict):
    keys = list(spec)
    for values in itertools.product(*(spec[k] for k in keys)):
        yield dict(zip(keys, values))


#: option grids: "coarse" (first pass: thresholds, k, neighbourhood, weight) and "fine" (around its best)
GRIDS = {
    "coarse": [
        ("slice", {"threshold": [0.5, 0.7, 0.8, 0.9], "k_per_chunk": [1, 3, None], "neighbourhood": [0, None],
                   "weight": [0.5, 1.0]}),
        ("window", {"window_threshold": [0.7, 0.9], "fg_fraction": [0.5, 0.95], "k_per_chunk": [3, None],
                    "neighbourhood": [0, None], "weight": [0.5, 1.0]}),
    ],
    # robustness: the default window strategy with miscalibrated confidences (one perturbation at a time)
    "robustness": [
        ("window", {"temperature": [0.25, 0.5, 1.0, 2.0, 4.0]}),
        ("window", {"noise_std": [0.5, 1.0, 2.0, 4.0]}),
    ],
    "fine": [
        ("slice", {"threshold": [0.3, 0.5], "k_per_chunk": [None], "neighbourhood": [None],
                   "largest_component": [True, False], "weight": [1.0], "rounds": [1, 2]}),
        ("window", {"window_threshold": [0.5, 0.7], "fg_fraction": [0.95], "k_per_chunk": [None],
                    "neighbourhood": [None], "largest_component": [True, False], "window": [1, 2, 4],
                    "weight": [1.0], "rounds": [1]}),
    ],
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(p, default="chaos")
    p.add_argument("--folds", default="0", help="comma-separated fold indices (choose options on one fold only)")
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--model", default=None, help="weights, or a folder of fold<k>_setting1.pt (default: the zoo's)")
    p.add_argument("--protocol", default="ep1")
    p.add_argument("--grid", choices=sorted(GRIDS), default="coarse")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    cached = []
    for k in (int(f) for f in args.folds.split(",")):
        protocol, part = collect(args, k)
        cached += part
    results = {"args": vars(args), "confidence": {m: confidence_report(cached, m) for m in ("max_prob", "entropy")}}
    print(json.dumps(results["confidence"], indent=1))
    runs = [{"name": "plain", **evaluate(protocol, cached, None)}]
    print("plain", round(runs[0]["dice_mean"], 4), {o: round(v, 3) for o, v in runs[0]["dice"].items()}, flush=True)
    grids = GRIDS[args.grid]
    for kind, spec in grids:
        cls = {"slice": SliceSelection, "window": WindowSelection}[kind]
        for opts in grid(spec):
            stage_opts = {k: opts.pop(k) for k in ("weight", "rounds", "temperature", "noise_std") if k in opts}
            stage = SupportExpansion(cls(**opts), **stage_opts)
            r = evaluate(protocol, cached, stage)
            runs.append({"name": kind, **opts, **stage_opts, **r})
            print(kind, opts, stage_opts, round(r["dice_mean"], 4), {o: round(v, 3) for o, v in r["dice"].items()},
                  flush=True)
    results["runs"] = runs
    results["plain_seconds"] = sum(c["seconds"] for c in cached)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    best = sorted(runs, key=lambda r: -r["dice_mean"])[:10]
    for r in best:
        print(round(r["dice_mean"], 4), {k: v for k, v in r.items() if k not in ("dice", "dice_mean")})


if __name__ == "__main__":
    main()
