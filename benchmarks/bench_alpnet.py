"""Speed of ALPNet on this machine (and, optionally, its training-free Dice on the shared real data).

Usage::

    python benchmarks/bench_alpnet.py                 # timing table, written into docs/networks.md
    python benchmarks/bench_alpnet.py --dice          # + training-free 1-shot Dice on ../shared/data
    python benchmarks/bench_alpnet.py --no-write      # print only

Timings are medians over ``--repeats`` runs with ``torch.set_num_threads(--threads)``, after a warm-up run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fewshot_monai.networks import ALPNet

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "networks.md"
DATA = ROOT.parent / "shared" / "data"
SECTION = "## Speed on this machine"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def synthetic_slices(n: int, size: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """z-scored smooth random slices tiled to 3 channels and an elliptic mask per slice."""
    g = torch.Generator().manual_seed(seed)
    img = F.interpolate(torch.randn(n, 1, size // 16, size // 16, generator=g), size=(size, size), mode="bicubic")
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(n, 1, size, size)
    for i in range(n):
        cy, cx = size * (0.4 + 0.02 * i), size * (0.5 - 0.02 * i)
        masks[i, 0] = (((yy - cy) / (0.2 * size)) ** 2 + ((xx - cx) / (0.25 * size)) ** 2 <= 1).float()
    img = img + 2.0 * masks
    img = (img - img.mean()) / img.std()
    return img.repeat(1, 3, 1, 1), masks


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN builds its kernels for new shapes on the first call)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_speed(repeats: int, batch: int) -> tuple[list[tuple[str, float]], dict]:
    """(operation, milliseconds per slice) rows for the current torch thread count."""
    net = ALPNet().eval()
    queries, _ = synthetic_slices(batch, seed=1)
    support, masks = synthetic_slices(3, seed=2)
    rows = []
    with torch.no_grad():
        t = median_time(lambda: net.encode(queries), repeats)
        rows.append((f"encode (batch of {batch} slices, 256x256), per slice", 1000 * t / batch))
        feats = net.encode(queries)
        s_feats = net.encode(support)
        for k in (1, 3):
            bank = net.build_bank(support_masks=masks[:k], support_features=s_feats[:k])
            t = median_time(lambda bank=bank: net.score(feats, bank, (256, 256)), repeats)
            rows.append(
                (
                    f"score cached features with a {k}-shot bank ({bank.num_fg} fg + {bank.num_bg} bg prototypes), "
                    "per slice",
                    1000 * t / batch,
                )
            )
        t = median_time(lambda: net.build_bank(support_masks=masks[:1], support_features=s_feats[:1]), repeats)
        rows.append(("build a 1-shot bank from cached support features", 1000 * t))
        t = median_time(lambda: net(queries[:1], support_images=support[:1], support_masks=masks[:1]), repeats)
        rows.append(("full forward, 1 query + 1 support (encode both, bank, score)", 1000 * t))
    info = {"params": sum(p.numel() for p in net.parameters())}
    return rows, info


# ------------------------------------------------------------------------------------------- training-free Dice
ORGANS = {
    "chaos_t2spir": {"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4},
    "sabs_ct": {"liver": 6, "right_kidney": 2, "left_kidney": 3, "spleen": 1},
}
CASES = {"chaos_t2spir": [1, 2, 3, 5, 8, 10], "sabs_ct": [0, 1, 2, 3, 4, 5]}


def _load(dataset: str, case: int) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = np.asarray(nib.load(DATA / dataset / f"image_{case}.nii.gz").dataobj, dtype=np.float32)
    lab = np.asarray(nib.load(DATA / dataset / f"label_{case}.nii.gz").dataobj).astype(np.int64)
    if dataset == "chaos_t2spir":  # "mri" preset: clip the top 0.5 %, z-score
        img = np.minimum(img, np.percentile(img, 99.5))
    return (img - img.mean()) / img.std(), lab  # sabs_ct is 8-bit already windowed: z-score only


def _slice(img: np.ndarray, lab: np.ndarray, organ: int, frac: float) -> tuple[torch.Tensor, torch.Tensor]:
    zs = np.where((lab == organ).any(axis=(0, 1)))[0]
    z = zs[0] + int(round(frac * (len(zs) - 1)))
    x = torch.from_numpy(np.ascontiguousarray(img[..., z]))[None, None]
    m = torch.from_numpy((lab[..., z] == organ).astype(np.float32))[None, None]
    if x.shape[-2:] != (256, 256):
        x = F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False)
        m = (F.interpolate(m, size=(256, 256), mode="bilinear", align_corners=False) > 0.5).float()
    return x.repeat(1, 3, 1, 1), m


def run_dice(pretrained: bool) -> dict[str, float]:
    """1-shot 2D episodes: support = middle organ slice of case i, queries = slices at 30/50/70 % of the organ
    extent of case i+1 (cyclic); mean Dice per dataset over 6 pairs x 4 organs x 3 positions."""
    torch.manual_seed(0)
    net = ALPNet(pretrained=pretrained).eval()
    out = {}
    for dataset, cases in CASES.items():
        vols = {c: _load(dataset, c) for c in cases}
        scores = []
        for i, a in enumerate(cases):
            b = cases[(i + 1) % len(cases)]
            for organ in ORGANS[dataset].values():
                sx, sm = _slice(*vols[a], organ, 0.5)
                qs = [_slice(*vols[b], organ, f) for f in (0.3, 0.5, 0.7)]
                with torch.no_grad():
                    pred = net(torch.cat([q[0] for q in qs]), support_images=sx, support_masks=sm).argmax(1)
                for p, (_, qm) in zip(pred, qs):
                    g = qm[0, 0].bool()
                    scores.append(float(2 * (p.bool() & g).sum() / (p.bool().sum() + g.sum())))
        out[dataset] = float(np.mean(scores))
    return out


def write_section(text: str) -> None:
    doc = DOC.read_text() if DOC.exists() else "# Networks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(doc):
        doc = pattern.sub(lambda _: text, doc)
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    DOC.write_text(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", default="2,1", help="comma-separated torch thread counts to compare")
    parser.add_argument("--dice", action="store_true", help="also measure training-free Dice on ../shared/data")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/networks.md")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]

    load_before = os.getloadavg()[0]
    results = {}
    for n in threads:
        torch.set_num_threads(n)
        results[n], info = run_speed(args.repeats, args.batch)
    load_after = os.getloadavg()[0]
    table = ["| operation (ms) | " + " | ".join(f"{n} thread{'s' * (n > 1)}" for n in threads) + " |"]
    table.append("| --- |" + " ---: |" * len(threads))
    for i, (name, _) in enumerate(results[threads[0]]):
        table.append(f"| {name} | " + " | ".join(f"{results[n][i][1]:.1f}" for n in threads) + " |")
    lines = [
        SECTION,
        "",
        f"Measured by `python benchmarks/bench_alpnet.py` on {datetime.date.today().isoformat()}: {cpu_model()}, "
        f"{os.cpu_count()} logical CPUs, torch {torch.__version__}, ALPNet defaults (Lite0 encoder, 256 "
        f"feature channels, eval mode: 2x2 windows), {info['params'] / 1e6:.2f} M parameters, no gradient. "
        f"Median of {args.repeats} runs after one warm-up run, for each `torch.set_num_threads` value.",
        f"The machine was shared with other jobs while measuring (1-min load average {load_before:.1f} before and "
        f"{load_after:.1f} after, on {os.cpu_count()} CPUs), so the figures are pessimistic and noisy."
        + (
            " Under this contention one thread encoded faster than two (OpenMP threads wait for the busy core)."
            if 1 in results and 2 in results and results[1][0][1] < results[2][0][1]
            else ""
        ),
        "",
        *table,
        "",
    ]
    if args.dice:
        if not DATA.exists():
            print(f"{DATA} not found: skipping the Dice measurement")
        else:
            pre, rnd = run_dice(True), run_dice(False)
            lines += [
                "Training-free 1-shot Dice (2D slices; support = middle organ slice of case i, queries at 30/50/70 % "
                "of the organ extent of case i+1; 6 case pairs x 4 organs x 3 positions = 72 episodes per dataset):",
                "",
                "| encoder | CHAOS T2-SPIR (MRI) | SABS (CT) |",
                "| --- | ---: | ---: |",
                f"| Lite0, ImageNet weights, untrained projection | {pre['chaos_t2spir']:.3f} | {pre['sabs_ct']:.3f} |",
                f"| Lite0, random init (seed 0) | {rnd['chaos_t2spir']:.3f} | {rnd['sabs_ct']:.3f} |",
                "",
            ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"updated {DOC}")


if __name__ == "__main__":
    main()
