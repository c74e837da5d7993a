"""How good are the pseudo-labels of ``fewshot-monai pseudolabel``? Dice against the hidden labels, before and after
the confidence filter, and the fraction of voxels kept, on one cross-validation fold.

    python benchmarks/pseudolabel_quality.py --dataset chaos --fold 0 --model runs/models_chaos \\
        --adapt-cache runs/adapt_cache --out runs/pseudolabel_chaos_f0

The fold's query scans are labelled from its support scan (their labels are never shown to the labeller; the
organ ranges are estimated) with ``--min-confidence 0``, so every voxel keeps its class; the filter is then applied
offline at each threshold: a voxel is kept when its confidence reaches the threshold, and the Dice is computed on
the kept voxels only. Writes ``<out>/quality.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from fewshot_monai.cli.arguments import add_dataset_arguments

FOLDERS = {"chaos": "../shared/data/chaos_t2spir", "sabs": "../shared/data/sabs_ct"}


def _dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * int((a & b).sum()) / total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataset_arguments(parser, default="chaos", data_required=False)  # --data: default FOLDERS[--dataset]
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--model", required=True, help="a .pt or a folder of fold<k>_setting1.pt")
    parser.add_argument("--adapt-iterations", type=int, default=300)
    parser.add_argument("--adapt-cache", default="runs/adapt_cache")
    parser.add_argument("--thresholds", default="0.5,0.8,0.9,0.95,0.99")
    parser.add_argument("--labeller", choices=("fewshot", "reference"), default="fewshot")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from fewshot_monai.cli.arguments import dataset_from_args
    from fewshot_monai.data.io import load_volume
    from fewshot_monai.evaluation.folds import folds
    from fewshot_monai.zoo import resolve_checkpoint

    if args.data is None:
        if args.dataset not in FOLDERS:
            parser.error(f"--dataset {args.dataset} needs --data (the data folder)")
        args.data = FOLDERS[args.dataset]
    data = dataset_from_args(args)
    items, modality, intensity = data.items, data.modality, data.intensity
    fold = folds(data.order, shots=1)[args.fold]
    support = items[fold.support_ids[0]]
    out = Path(args.out)
    studies = out / "studies"
    studies.mkdir(parents=True, exist_ok=True)
    for scan in fold.query_ids:
        link = studies / f"scan_{scan}.nii.gz"
        if not link.exists():
            link.symlink_to(Path(items[scan]["image"]).resolve())
    organs = data.label_map
    command = [sys.executable, "-m", "fewshot_monai.cli.main", "pseudolabel", "--support-image", support["image"],
               "--support-label", support["label"], "--organs", ",".join(f"{o}={i}" for o, i in organs.items()),
               "--input", str(studies), "--output", str(out / "dataset"), "--modality", modality, "--intensity",
               intensity, "--weights", str(resolve_checkpoint(args.model, args.fold, 1)), "--adapt-iterations",
               str(args.adapt_iterations), "--adapt-cache", args.adapt_cache, "--min-confidence", "0",
               "--labeller", args.labeller, "--no-progress"]  # fmt: skip
    subprocess.run(command, check=True)
    dataset = json.loads((out / "dataset" / "dataset.json").read_text())
    index = {o: dataset["labels"][o] for o in organs}
    thresholds = [float(t) for t in args.thresholds.split(",")]
    per_organ: dict[str, dict] = {o: {"before": [], **{str(t): [] for t in thresholds}} for o in organs}
    kept_all: dict[str, list] = {str(t): [] for t in thresholds}
    kept_organ: dict[str, list] = {str(t): [] for t in thresholds}
    for scan in fold.query_ids:
        label = np.asarray(nib.load(out / "dataset" / "labelsTr" / f"scan_{scan}.nii.gz").dataobj)
        confidence = np.asarray(nib.load(out / "dataset" / "confidence" / f"scan_{scan}.nii.gz").dataobj)
        truth = load_volume(items[scan]["label"], is_label=True, orientation=None)[0].numpy()
        for t in thresholds:
            kept_all[str(t)].append(float((confidence >= t).mean()))
            kept_organ[str(t)].append(float((confidence >= t)[truth > 0].mean()))
        for organ, lid in organs.items():
            pred, true = label == index[organ], truth == lid
            per_organ[organ]["before"].append(_dice(pred, true))
            for t in thresholds:
                kept = confidence >= t
                per_organ[organ][str(t)].append(_dice(pred & kept, true & kept))
    summary = {
        "command": " ".join(command),
        "dataset": args.dataset,
        "labeller": args.labeller,
        "fold": args.fold,
        "support": fold.support_ids,
        "queries": fold.query_ids,
        "dice": {
            o: {k: float(np.mean([v for v in vals if v is not None])) for k, vals in d.items()}
            for o, d in per_organ.items()
        },  # fmt: skip
        "kept_fraction": {k: float(np.mean(v)) for k, v in kept_all.items()},
        "kept_fraction_of_organ_voxels": {k: float(np.mean(v)) for k, v in kept_organ.items()},
    }
    (out / "quality.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("| organ | before filtering | " + " | ".join(f"kept at {t}" for t in thresholds) + " |")
    print("| --- " * (2 + len(thresholds)) + "|")
    for organ, d in summary["dice"].items():
        print(
            f"| {organ} | {100 * d['before']:.1f} | " + " | ".join(f"{100 * d[str(t)]:.1f}" for t in thresholds) + " |"
        )
    for key, name in (("kept_fraction", "voxels kept"), ("kept_fraction_of_organ_voxels", "organ voxels kept")):
        print(f"| {name} | 100% | " + " | ".join(f"{100 * summary[key][str(t)]:.1f}%" for t in thresholds) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
