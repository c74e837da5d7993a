"""Fill a registration cache for the evaluation's folds ahead of ``fewshot-monai evaluate --registration-cache``.

The registration baseline does not depend on the few-shot model, so its (support -> query) registrations can run
while models are still training; the evaluation runs then read the warped labels (and the seconds each
registration took) from the cache::

    python benchmarks/precompute_registrations.py --data ../shared/data/sabs_ct --dataset sabs \\
        --cache runs/regcache_sabs --threads 1
    python benchmarks/precompute_registrations.py --data my_data --dataset generic --label-map liver=1,spleen=6 \\
        --cache runs/regcache_mine
    fewshot-monai evaluate ... --baseline registration --registration-cache runs/regcache_sabs

It stops before any work, with one line saying what to install, when itk-elastix is missing or does not load.
"""

from __future__ import annotations

import argparse
import logging
import sys

from tqdm.auto import tqdm

from fewshot_monai.cli.arguments import add_dataset_arguments, dataset_from_args, int_list
from fewshot_monai.data.io import load_case
from fewshot_monai.errors import FewShotError, InputError
from fewshot_monai.evaluation.folds import folds
from fewshot_monai.evaluation.registration import RegistrationUnavailableError, RegistrationWorker, register_atlases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataset_arguments(parser, default="sabs")
    parser.add_argument("--folds", type=int_list, default=[0, 1, 2, 3, 4])
    parser.add_argument("--n-folds", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (one line per query is printed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        data = dataset_from_args(args)
        all_folds = folds(data.order, n_folds=args.n_folds, shots=args.shots)
        chosen = [all_folds[k] for k in args.folds]
    except (FewShotError, ValueError, IndexError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    pairs = [(fold, scan) for fold in chosen for scan in fold.query_ids]
    failed = 0
    with RegistrationWorker(threads=args.threads) as worker:
        try:
            worker.start()  # elastix must load before any work
        except RegistrationUnavailableError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        for fold, scan in tqdm(pairs, desc="registrations", unit="query", disable=args.no_progress):
            item = data.items[scan]
            try:
                query = load_case(item["image"], intensity=data.intensity, case_id=scan)
                atlas = register_atlases(
                    item["image"],
                    [data.items[s]["image"] for s in fold.support_ids],
                    [data.items[s]["label"] for s in fold.support_ids],
                    reference=query["image"],
                    worker=worker,
                    cache_dir=args.cache,
                )
            except InputError as err:  # a failed registration or unreadable file: report, go on
                failed += 1
                tqdm.write(f"fold {fold.index} query {scan}: {err}")
                continue
            tqdm.write(f"fold {fold.index} query {scan}: {atlas.seconds:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
