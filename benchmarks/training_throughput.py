"""Iterations per second of the self-supervised trainer (``fewshot-monai train``), measured as a user runs it.

Builds a training run from a config (default ``configs/train_chaos_fold.yaml``: CHAOS T2-SPIR, 256 x 256, one
episode per iteration, real ALPNet Lite0) and times a short run: ``--warmup`` iterations (not counted), then
``--iterations`` timed ones. Each timed iteration is split into

- ``episode_s``: getting the batch (ignite ``GET_BATCH_STARTED`` -> ``GET_BATCH_COMPLETED``: slice choice,
  superpixel sampling, augmentation of the two views, collation), and
- ``step_s``: the trainer's iteration (``ITERATION_STARTED`` -> ``ITERATION_COMPLETED``), itself split into
  ``forward_s`` (encoder, prototypes, scoring), ``loss_s`` and ``backward_s`` (backward pass and optimiser step)
  with MONAI's ``IterationEvents``, plus the handlers (schedule, CSV log).

It records the load average before and after, the torch threads used during the run (``torch.get_num_threads``),
``OMP_NUM_THREADS``, whether the superpixel cache already held every training scan (warm) and how long loading the
scans (and computing missing superpixels) took before the first iteration. Without the CHAOS folder it falls back
on phantoms (``configs/train_phantom.yaml``).

    OMP_NUM_THREADS=1 python benchmarks/training_throughput.py --threads 1 \\
        --out docs/results/training_throughput/chaos_1thread.json

Writes one JSON summary (no per-voxel data) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_alpnet import cpu_model  # benchmarks/ is the script's folder, first on sys.path

REPO = Path(__file__).resolve().parents[1]


def _stats(values: list[float]) -> dict:
    ordered = sorted(values)
    return {
        "mean": round(statistics.fmean(values), 4),
        "median": round(statistics.median(values), 4),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 4),
    }


def measure(config_path: Path, overrides: list[str], warmup: int, iterations: int, threads: int) -> dict:
    import torch
    from ignite.engine import Events
    from monai.engines.utils import IterationEvents

    from fewshot_monai.data.episodes import SuperpixelCache
    from fewshot_monai.engines.selfsupervised import _select_cases, build_training, load_config, superpixel_params

    total = warmup + iterations
    config = load_config(
        config_path,
        [
            *overrides,
            f"training.iterations={total}",
            f"training.epoch_length={total}",
            f"training.checkpoint_interval={total}",
            f"training.threads={threads}",
            "training.tensorboard=false",
            "training.snapshot_interval=null",
            "validation.support=null",
            "validation.query=null",
        ],
    )
    with tempfile.TemporaryDirectory(prefix="fewshot_throughput_") as tmp:
        out = Path(tmp)
        scfg = config["superpixels"]
        cases, labelled = _select_cases(config, out)
        intensity = labelled.intensity
        params = superpixel_params(config)
        cache_dir = scfg.get("cache_dir")
        warm = None
        if cache_dir:
            cache = SuperpixelCache(cache_dir)
            warm = sum(cache.is_done(c["image"], params, intensity) for c in cases)
        load_before = os.getloadavg()
        start = time.perf_counter()
        run = build_training(config, out, progress=False)
        build_seconds = time.perf_counter() - start

        marks: dict[str, float] = {}
        rows: list[dict] = []
        trainer = run.trainer

        def mark(name):
            return lambda _engine: marks.__setitem__(name, time.perf_counter())

        for event, name in (
            (Events.GET_BATCH_STARTED, "batch0"),
            (Events.GET_BATCH_COMPLETED, "batch1"),
            (Events.ITERATION_STARTED, "it0"),
            (IterationEvents.FORWARD_COMPLETED, "forward"),
            (IterationEvents.LOSS_COMPLETED, "loss"),
            (IterationEvents.MODEL_COMPLETED, "model"),
        ):
            trainer.add_event_handler(event, mark(name))

        def record(engine):
            now = time.perf_counter()
            rows.append(
                {
                    "iteration": engine.state.iteration,
                    "episode_s": marks["batch1"] - marks["batch0"],
                    "step_s": now - marks["it0"],
                    "forward_s": marks["forward"] - marks["it0"],
                    "loss_s": marks["loss"] - marks["forward"],
                    "backward_s": marks["model"] - marks["loss"],
                    "total_s": now - marks["batch0"],
                }
            )

        trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
        seen_threads = {}
        trainer.add_event_handler(Events.STARTED, lambda e: seen_threads.update(n=torch.get_num_threads()))
        start = time.perf_counter()
        run.run()
        wall = time.perf_counter() - start
        load_after = os.getloadavg()
        described = run.dataset.describe()

    timed = [r for r in rows if r["iteration"] > warmup]
    per_iteration = [r["total_s"] for r in timed]
    timed_wall = sum(per_iteration)
    parts = {k: _stats([r[k] for r in timed]) for k in ("episode_s", "step_s", "forward_s", "loss_s", "backward_s")}
    episode_share = sum(r["episode_s"] for r in timed) / timed_wall
    return {
        "config": str(config_path.relative_to(REPO) if config_path.is_relative_to(REPO) else config_path),
        "data": str(config["data"]["root"] or "phantoms"),
        "dataset": described,
        "spatial_size": int(config["episodes"]["spatial_size"]),
        "episodes_per_iteration": int(config["episodes"]["episodes_per_iteration"]),
        "warmup_iterations": warmup,
        "timed_iterations": len(timed),
        "iterations_per_second": round(len(timed) / timed_wall, 3),
        "seconds_per_iteration": _stats(per_iteration),
        "split_seconds": parts,
        "episode_preparation_share": round(episode_share, 3),
        "run_wall_seconds_incl_warmup": round(wall, 2),
        "build_seconds": round(build_seconds, 2),
        "superpixel_cache": {
            "dir": cache_dir,
            "scans": len(cases),
            "warm_scans_before": warm,
            "warm": None if warm is None else warm == len(cases),
        },
        "threads": {
            "torch_num_threads_during_run": seen_threads.get("n"),
            "training.threads": threads,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        },
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="training config (default: CHAOS fold config, or phantoms)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "chaos_t2spir"))
    parser.add_argument("--phantoms", action="store_true", help="measure on phantoms (configs/train_phantom.yaml)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (training.threads)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=None, help="JSON file to write")
    args = parser.parse_args(argv)

    overrides = list(args.overrides)
    if args.config:
        config = Path(args.config)
    elif args.phantoms:
        config = REPO / "configs" / "train_phantom.yaml"
    elif Path(args.data).is_dir():
        config = REPO / "configs" / "train_chaos_fold.yaml"
        overrides.insert(0, f"data.root={Path(args.data).resolve()}")
    else:
        print(f"{args.data} not found: measuring on phantoms", file=sys.stderr)
        config = REPO / "configs" / "train_phantom.yaml"
    result = measure(config.resolve(), overrides, args.warmup, args.iterations, args.threads)
    result["command"] = shlex.join(["python", "benchmarks/training_throughput.py", *(argv or sys.argv[1:])])
    if os.environ.get("OMP_NUM_THREADS"):
        result["command"] = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " + result["command"]
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
