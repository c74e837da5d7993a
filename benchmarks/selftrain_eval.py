"""Self-training on one cross-validation fold: pseudo-label quality per round, student Dice per round, seconds.

    python benchmarks/selftrain_eval.py --dataset chaos --fold 0 --protocol transductive --filter classwise \\
        --model runs/models_chaos --adapt-cache runs/adapt_cache \\
        --teacher-labels runs/selftrain_chaos/teacher0/dataset --out runs/selftrain_chaos/transductive_classwise

Protocols (the fold's support scan is the one labelled example; no other label is ever shown to the method):

- ``transductive``: ``fewshot-monai selftrain`` on every other scan of the data set; each round's student is scored
  on the very scans it pseudo-labelled (its labels of them are the next round's teacher labels), "label my data set";
- ``heldout``: ``selftrain`` on the scans that are neither the fold's queries nor its support; each round's student
  segments the fold's queries (``fewshot-monai segment --model``) and is scored there, next to the few-shot model's
  per-scan Dice on the same queries (``--fewshot-ep1`` / ``--fewshot-ep2`` per_scan.csv of ``evaluate``).

Pseudo-label quality of round ``r``: the teacher's labels before filtering and the kept voxels after the round's
filter (re-applied here at the labels' full resolution; the student trains on the same rule applied on its slice
grid), Dice on the kept voxels only (as benchmarks/pseudolabel_quality.py), and the fraction kept. Writes
``<out>/summary.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

FOLDERS = {"chaos": ("chaos_t2spir", "mri", "mri"), "sabs": ("sabs_ct", "ct", "preprocessed")}


def _dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * int((a & b).sum()) / total


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _read(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


def _fewshot_dice(per_scan: Path, fold: int, scans) -> dict:
    """Per organ, the mean Dice of the few-shot method (``fewshot`` rows) on ``scans`` of ``fold``."""
    rows = [r for r in csv.DictReader(open(per_scan)) if r["method"] == "fewshot" and int(r["fold"]) == fold
            and r["scan"] in scans]  # fmt: skip
    organs = sorted({r["organ"] for r in rows}, key=[r["organ"] for r in rows].index)
    return {o: _mean(float(r["dice"]) for r in rows if r["organ"] == o) for o in organs}


def _pseudo_quality(pseudo: Path, scans, items, organs, filter_name, round_, options) -> dict:
    """Dice of the teacher's labels before and after the round's filter, and the fractions kept."""
    from fewshot_monai.data.io import load_volume
    from fewshot_monai.pseudolabel.filters import apply_filter

    labels = [_read(pseudo / "labelsTr" / f"scan_{s}.nii.gz") for s in scans]
    confidences = [_read(pseudo / "confidence" / f"scan_{s}.nii.gz").astype(np.float32) for s in scans]
    truths = [load_volume(items[s]["label"], is_label=True, orientation=None)[0].numpy() for s in scans]
    keeps, details = apply_filter(filter_name, labels, confidences, round_, **options)
    before, after = {}, {}
    for k, (organ, lid) in enumerate(organs.items(), start=1):
        before[organ] = _mean(_dice(lab == k, t == lid) for lab, t in zip(labels, truths))
        after[organ] = _mean(_dice((lab == k) & kp, (t == lid) & kp) for lab, t, kp in zip(labels, truths, keeps))
    organ_kept = [float(kp[t > 0].mean()) for kp, t in zip(keeps, truths)]
    return {
        "dice_before_filter": before,
        "dice_kept": after,
        "kept_fraction": float(np.mean([kp.mean() for kp in keeps])),
        "kept_fraction_of_true_organ_voxels": float(np.mean(organ_kept)),
        "kept_volumes": int(sum(bool(kp.any()) for kp in keeps)),
        "class_thresholds": details.get("class_thresholds"),
    }


def _label_dice(folder: Path, pattern: str, scans, items, organs, ids) -> dict:
    """Per organ mean Dice of label maps ``folder/pattern.format(scan)`` whose organ ids are ``ids``."""
    from fewshot_monai.data.io import load_volume

    per_organ = {o: [] for o in organs}
    for s in scans:
        pred = _read(folder / pattern.format(s))
        truth = load_volume(items[s]["label"], is_label=True, orientation=None)[0].numpy()
        for organ, lid in organs.items():
            per_organ[organ].append(_dice(pred == ids[organ], truth == lid))
    return {o: _mean(v) for o, v in per_organ.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--dataset", default="chaos", choices=sorted(FOLDERS))
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--protocol", choices=("transductive", "heldout"), required=True)
    parser.add_argument("--filter", default="classwise")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--slice-size", type=int, default=128)
    parser.add_argument("--channels", default="16,32,64,128", help="the student U-Net's channels per level")
    parser.add_argument("--model", required=True, help="a .pt or a folder of fold<k>_setting1.pt")
    parser.add_argument("--adapt-cache", default="runs/adapt_cache")
    parser.add_argument("--teacher-labels", default=None, help="a pseudolabel --min-confidence 0 output to reuse")
    parser.add_argument("--labeller", choices=("fewshot", "reference"), default="fewshot", help="round 0's teacher")
    parser.add_argument("--fewshot-ep1", default="runs/final_chaos_ep1/per_scan.csv")
    parser.add_argument("--fewshot-ep2", default="runs/final_chaos_ep2/per_scan.csv")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from fewshot_monai.data.datasets import datalist, get_descriptor
    from fewshot_monai.evaluation.folds import folds
    from fewshot_monai.pseudolabel.filters import FILTERS
    from fewshot_monai.selftrain import SelfTrainOptions
    from fewshot_monai.zoo import resolve_checkpoint

    folder, modality, intensity = FOLDERS[args.dataset]
    descriptor = get_descriptor(args.dataset)
    items = {str(i["id"]): i for i in datalist(Path(args.data) / folder, descriptor)}
    fold = folds(list(items), shots=1)[args.fold]
    support = items[fold.support_ids[0]]
    organs = descriptor.label_map
    excluded = set(fold.support_ids) | (set(fold.query_ids) if args.protocol == "heldout" else set())
    train_scans = [s for s in items if s not in excluded]
    out = Path(args.out)
    studies = out / "studies"
    studies.mkdir(parents=True, exist_ok=True)
    for scan in train_scans:
        link = studies / f"scan_{scan}.nii.gz"
        if not link.exists():
            link.symlink_to(Path(items[scan]["image"]).resolve())
    command = [sys.executable, "-m", "fewshot_monai.cli.main", "selftrain", "--support-image", support["image"],
               "--support-label", support["label"], "--organs", ",".join(f"{o}={i}" for o, i in organs.items()),
               "--input", str(studies), "--output", str(out / "selftrain"), "--modality", modality, "--intensity",
               intensity, "--weights", str(resolve_checkpoint(args.model, args.fold, 1)), "--adapt-iterations", "300",
               "--adapt-cache", args.adapt_cache, "--rounds", str(args.rounds), "--filter", args.filter,
               "--iterations", str(args.iterations), "--slice-size", str(args.slice_size),
               "--channels", args.channels]  # fmt: skip
    if args.teacher_labels:
        command += ["--teacher-labels", args.teacher_labels]
    if args.labeller != "fewshot":
        command += ["--labeller", args.labeller]
    subprocess.run(command, check=True)
    result = json.loads((out / "selftrain" / "selftrain.json").read_text())
    options = SelfTrainOptions(filter=args.filter)
    taken = options.filter_options()
    assert args.filter in FILTERS
    ids = {o: k for k, o in enumerate(organs, start=1)}  # labels written by the teacher and the students
    rounds = []
    for record in result["rounds"]:
        r = record["round"]
        pseudo = out / "selftrain" / f"round_{r}" / "pseudo"
        entry = {"round": r, "teacher": record["labelling"]["teacher"]}
        entry["teacher_dice_on_training_scans"] = _label_dice(
            pseudo / "labelsTr", "scan_{}.nii.gz", train_scans, items, organs, ids
        )
        if not record.get("final"):
            entry["pseudo_labels"] = _pseudo_quality(pseudo, train_scans, items, organs, args.filter, r, taken)
            entry["seconds"] = {"labelling": record["labelling"]["seconds"], "training": record["training"]["seconds"]}
            entry["training"] = record["training"]
        rounds.append(entry)
    for r, entry in enumerate(rounds[:-1]):  # student r's labels of the training scans are round r+1's teacher labels
        entry["student_dice_transductive"] = rounds[r + 1]["teacher_dice_on_training_scans"]
    summary = {
        "command": " ".join(command),
        "benchmark": "python benchmarks/selftrain_eval.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "dataset": args.dataset,
        "fold": args.fold,
        "protocol": args.protocol,
        "filter": args.filter,
        "filter_options": taken,
        "labeller": args.labeller,
        "support": list(fold.support_ids),
        "training_scans": train_scans,
        "iterations_per_round": args.iterations,
        "slice_size": args.slice_size,
        "channels": args.channels,
        "rounds": rounds,
    }
    if args.protocol == "heldout":
        queries = list(fold.query_ids)
        qdir = out / "queries"
        qdir.mkdir(exist_ok=True)
        for scan in queries:
            link = qdir / f"scan_{scan}.nii.gz"
            if not link.exists():
                link.symlink_to(Path(items[scan]["image"]).resolve())
        summary["queries"] = queries
        for entry in rounds[:-1]:
            r = entry["round"]
            seg_out = out / f"segment_round_{r}"
            seg = [sys.executable, "-m", "fewshot_monai.cli.main", "segment", "--model",
                   str(out / "selftrain" / f"round_{r}" / "student.pt"), "--input", str(qdir), "--output",
                   str(seg_out), "--no-overlay", "--no-progress"]  # fmt: skip
            start = time.perf_counter()
            subprocess.run(seg, check=True)
            entry["segment_command"] = " ".join(seg)
            entry["student_dice_heldout"] = _label_dice(seg_out, "scan_{}_seg.nii.gz", queries, items, organs, organs)
            entry["seconds"]["segment_queries"] = round(time.perf_counter() - start, 1)
        summary["fewshot_on_queries"] = {
            name: _fewshot_dice(Path(path), args.fold, queries)
            for name, path in (("ep1", args.fewshot_ep1), ("ep2", args.fewshot_ep2))
            if Path(path).is_file()
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    key = "student_dice_heldout" if args.protocol == "heldout" else "student_dice_transductive"
    print(f"| round | pseudo-label Dice (kept) | kept | student Dice ({args.protocol}) | seconds |")
    print("| --- | --- | --- | --- | --- |")
    for entry in rounds[:-1]:
        pl = entry["pseudo_labels"]
        print(f"| {entry['round']} | {100 * _mean(pl['dice_kept'].values()):.1f} | {100 * pl['kept_fraction']:.1f}% "
              f"| {100 * _mean(entry[key].values()):.1f} | {sum(entry['seconds'].values()):.0f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
