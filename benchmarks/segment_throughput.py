"""Throughput of ``fewshot-monai segment`` on this machine: seconds per case and cases per minute for CHAOS-sized
(256 x 256 x ~35 MRI) and SABS-sized (257 x 257 x ~140 CT) studies, with and without pseudo-labelling, on 1 and 2
ranks (torchrun, gloo), and the support preparation paid once per batch (``--with-adaptation``: also a run with
300 adaptation iterations; the evaluation summaries record that cost per fold as well).

    python benchmarks/segment_throughput.py --data ../shared/data --cases 4 --out runs/throughput

Writes ``<out>/throughput.json`` (one record per run, with the machine's load average) and prints a Markdown
table. Each run uses a fresh output folder, so nothing is skipped; the adaptation is measured once per data set
in its own run with ``--with-adaptation``; the throughput runs use ``--adapt-iterations 0``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

DATASETS = {
    "chaos": ("chaos_t2spir", "mri", "mri", "liver=1,right_kidney=2,left_kidney=3,spleen=4", 1),
    "sabs": ("sabs_ct", "ct", "preprocessed", "spleen=1,right_kidney=2,left_kidney=3,liver=6", 0),
}


def _inputs(root: Path, folder: str, support: int, n: int, work: Path) -> tuple[list[str], Path]:
    """The support arguments and a folder of ``n`` other studies (links) of the data set."""
    images = sorted(p for p in (root / folder).glob("image_*.nii.gz") if p.name != f"image_{support}.nii.gz")
    studies = work / f"{folder}_studies"
    shutil.rmtree(studies, ignore_errors=True)
    studies.mkdir(parents=True)
    for image in images[:n]:
        (studies / image.name).symlink_to(image.resolve())
    support_args = ["--support-image", str(root / folder / f"image_{support}.nii.gz")]
    support_args += ["--support-label", str(root / folder / f"label_{support}.nii.gz")]
    return support_args, studies


def _run(command: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stdout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--out", default="runs/throughput")
    parser.add_argument("--datasets", default="chaos,sabs")
    parser.add_argument("--with-adaptation", action="store_true", help="also time a run with 300 adaptation iterations")
    args = parser.parse_args(argv)
    work = Path(args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "fewshot_monai.cli.main", "segment"]
    records = []
    for name in args.datasets.split(","):
        folder, modality, intensity, organs, support = DATASETS[name]
        support_args, studies = _inputs(Path(args.data), folder, support, args.cases, work)
        common = [*support_args, "--organs", organs, "--modality", modality, "--intensity", intensity]
        common += ["--input", str(studies), "--no-progress", "--adapt-cache", str(work / "adapt_cache")]
        runs = [("adaptation 300, pseudo-labelling", 1, ["--adapt-iterations", "300"])] if args.with_adaptation else []
        runs += [("pseudo-labelling", 1, ["--adapt-iterations", "0"])]
        runs += [("no pseudo-labelling", 1, ["--adapt-iterations", "0", "--pseudo-label", "none"])]
        runs += [("pseudo-labelling", 2, ["--adapt-iterations", "0"])]
        for label, ranks, extra in runs:
            out = work / f"{name}_{ranks}rank_{label.replace(' ', '_').replace(',', '')}"
            shutil.rmtree(out, ignore_errors=True)
            launch = (
                cli
                if ranks == 1
                else [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--nnodes=1",
                    f"--nproc_per_node={ranks}",
                    "--master_port=29541",
                    "-m",
                    "fewshot_monai.cli.main",
                    "segment",
                ]
            )
            load_before = os.getloadavg()[0]
            wall, stdout = _run([*launch, *common, *extra, "--output", str(out)], env)
            rows = list((out / "summary.csv").read_text().splitlines())[1:]
            reports = [json.loads(p.read_text()) for p in out.glob("*.json")]
            per_case = [r["seconds"] for r in reports]
            line = stdout.strip().splitlines()[-1]
            support_seconds = float(line.split("support prepared in ")[1].split(" s")[0])
            records.append(
                {
                    "data": name,
                    "run": label,
                    "ranks": ranks,
                    "cases": len(rows),
                    "wall_seconds": round(wall, 1),
                    "support_seconds": support_seconds,
                    "seconds_per_case": round(sum(per_case) / len(per_case), 1),
                    "cases_per_minute": round(len(rows) / ((wall - support_seconds) / 60.0), 2),
                    "load_average_before": round(load_before, 2),
                }
            )
            print(json.dumps(records[-1]), flush=True)
    (work / "throughput.json").write_text(json.dumps(records, indent=2) + "\n")
    print("| data | run | ranks | cases | s / case | cases / min (after support) | support s | load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in records:
        print(
            f"| {r['data']} | {r['run']} | {r['ranks']} | {r['cases']} | {r['seconds_per_case']} | "
            f"{r['cases_per_minute']} | {r['support_seconds']} | {r['load_average_before']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
