"""Slicing in the acquisition plane on real data: CHAOS volumes stored as if acquired sagittally.

    python benchmarks/plane_check.py --out /tmp/plane_check     # outside the repository: the copies are data

Each copy keeps the voxels of a CHAOS T2-SPIR volume (support ``image_2``, query ``image_8``) but stores the thick
axis first and writes an affine saying it runs left-right (the former x axis running anterior, or posterior for the
``mirrored`` copy, the former y axis superior): a sagittal acquisition as far as any reader can tell. Both support and
query are copied the same way and segmented with ``fewshot-monai segment`` (shipped MRI model, no adaptation, no
pseudo-labelling); the Dice of the written mask is computed on the copy's own voxel grid (which the mask must lie on).
Runs: the originals; the copies with ``--plane auto`` (the default) and ``--plane axial`` (the behaviour before
planes existed: every volume reoriented to RAS and cut along S); an original support with a mirrored sagittal query
(planes differ: the query is resampled into the support's plane, one log line). Writes ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

SRC = Path("/work/shared/data/chaos_t2spir")
ORGANS = {"liver": 1, "rkidney": 2, "lkidney": 3, "spleen": 4}
SUPPORT, QUERY = "2", "8"


def sagittal_copy(src: Path, dst: Path, mirror: bool) -> None:
    ras = nib.as_closest_canonical(nib.load(src))
    data = np.asarray(ras.dataobj)
    sx, sy, sz = np.linalg.norm(ras.affine[:3, :3], axis=0)
    stored = np.ascontiguousarray(np.transpose(data, (2, 0, 1)))  # (thick, x, y)
    sign = -1.0 if mirror else 1.0
    affine = np.diag([sz, sign * sx, sy, 1.0])  # thick axis -> R, x -> A (or P), y -> S
    affine[:3, 3] = [-sz * stored.shape[0] / 2, -sign * sx * stored.shape[1] / 2, -sy * stored.shape[2] / 2]
    out = nib.Nifti1Image(stored, affine)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    nib.save(out, dst)


def prepare(root: Path) -> None:
    for kind in ("orig", "sagittal", "mirrored"):
        for case, sub in ((SUPPORT, "support"), (QUERY, "input")):
            for part in ("image", "label"):
                where = root / kind / (sub if (part == "image" or sub == "support") else "truth")
                where.mkdir(parents=True, exist_ok=True)
                src = SRC / f"{part}_{case}.nii.gz"
                if kind == "orig":
                    (where / src.name).write_bytes(src.read_bytes())
                else:
                    sagittal_copy(src, where / src.name, mirror=kind == "mirrored")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def run(root: Path, name: str, support_kind: str, query_kind: str, *extra: str) -> dict:
    out = root / "out" / name
    support = root / support_kind / "support"
    cmd = [
        sys.executable, "-m", "fewshot_monai.cli.main", "segment",
        "--support-image", str(support / f"image_{SUPPORT}.nii.gz"),
        "--support-label", str(support / f"label_{SUPPORT}.nii.gz"),
        "--organs", ",".join(f"{k}={v}" for k, v in ORGANS.items()),
        "--input", str(root / query_kind / "input"), "--output", str(out),
        "--pseudo-label", "none", "--adapt-iterations", "0", "--no-progress", "--no-overlay", *extra,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seg = nib.load(out / f"image_{QUERY}_seg.nii.gz")
    truth = nib.load(root / query_kind / "truth" / f"label_{QUERY}.nii.gz")
    same_grid = seg.shape == truth.shape and bool(np.allclose(seg.affine, truth.affine, atol=1e-4))
    s, t = np.asarray(seg.dataobj), np.asarray(truth.dataobj)
    dice = {k: round(_dice(s == v, t == v), 4) for k, v in ORGANS.items()} if same_grid else None
    report = json.loads((out / f"image_{QUERY}.json").read_text())
    result = {
        "name": name,
        "support": support_kind,
        "query": query_kind,
        "options": list(extra),
        "exit_code": proc.returncode,
        "case_seconds": report["seconds"],
        "mask_on_the_query_file_grid": same_grid,
        "dice": dice,
        "mean_dice": None if dice is None else round(float(np.mean(list(dice.values()))), 4),
        "z_range_note": report["z_range_note"],
        "plane_log_lines": [line.split(": ", 1)[-1] for line in proc.stderr.splitlines() if "plane" in line],
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="work folder for the copies and outputs (not the repository)")
    root = Path(parser.parse_args().out)
    prepare(root)
    results = [
        run(root, "original", "orig", "orig"),
        run(root, "sagittal_auto", "sagittal", "sagittal"),
        run(root, "sagittal_forced_axial", "sagittal", "sagittal", "--plane", "axial"),
        run(root, "mirrored_auto", "mirrored", "mirrored"),
        run(root, "mirrored_forced_axial", "mirrored", "mirrored", "--plane", "axial"),
        run(root, "axial_support_mirrored_query", "orig", "mirrored"),
    ]
    (root / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
