"""Fill a registration cache for the evaluation's folds ahead of ``fewshot-monai evaluate --registration-cache``.

The registration baseline does not depend on the few-shot model, so its (support -> query) registrations can run
while models are still training; the evaluation runs then read the warped labels (and the seconds each
registration took) from the cache::

    python benchmarks/precompute_registrations.py --data ../shared/data/sabs_ct --dataset sabs \\
        --cache runs/regcache_sabs --threads 1
    fewshot-monai evaluate ... --baseline registration --registration-cache runs/regcache_sabs
"""

from __future__ import annotations

import argparse

from tqdm.auto import tqdm

from fewshot_monai.data.datasets import datalist, get_descriptor
from fewshot_monai.data.io import load_case
from fewshot_monai.errors import InputError
from fewshot_monai.evaluation.folds import folds
from fewshot_monai.evaluation.registration import RegistrationWorker, register_atlases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--dataset", default="sabs")
    parser.add_argument("--folds", default="0,1,2,3,4")
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    descriptor = get_descriptor(args.dataset)
    items = datalist(args.data, descriptor)
    by_id = {str(item["id"]): item for item in items}
    chosen = [folds(items, shots=args.shots)[int(k)] for k in args.folds.split(",")]
    pairs = [(fold, scan) for fold in chosen for scan in fold.query_ids]
    failed = 0
    with RegistrationWorker(threads=args.threads) as worker:
        for fold, scan in tqdm(pairs, desc="registrations", unit="query"):
            query = load_case(by_id[scan]["image"], intensity=descriptor.intensity, case_id=scan)
            try:
                atlas = register_atlases(
                    by_id[scan]["image"],
                    [by_id[s]["image"] for s in fold.support_ids],
                    [by_id[s]["label"] for s in fold.support_ids],
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
