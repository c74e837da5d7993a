"""Markdown ablation table from the runs of ``benchmarks/ablation.sh``: one row per variant, Dice per organ.

    python benchmarks/ablation_table.py runs/ablation_chaos_f0_ep1 [more folders]

Columns: the variant, Dice per organ with `window` pseudo-labelling, its mean, the plain mean of the same run, the
joint (organs merged) mean, seconds per query and the one-off seconds per support (adaptation).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(folder: Path) -> str:
    runs = sorted(p.parent for p in folder.glob("*/summary.json"))
    if not runs:
        return f"(no runs in {folder})"
    first = json.loads((runs[0] / "summary.json").read_text())
    organs = first["protocol"]["organs"]
    head = ["variant", *[o.replace("_", " ") for o in organs], "mean", "plain", "joint", "s / query", "s / support"]
    lines = [f"<!-- {folder} -->", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for run in sorted(runs, key=lambda r: (r.name != "base", r.name)):
        s = json.loads((run / "summary.json").read_text())
        plain = s.get("plain", {}).get("dice_mean")
        joint = s.get("joint", {}).get("dice_mean")
        adapt = (s.get("adaptation") or {}).get("seconds_per_support")
        cells = [run.name, *[f"{100 * s['dice'][o]:.1f}" for o in organs], f"**{100 * s['dice_mean']:.1f}**",
                 "n/a" if plain is None else f"{100 * plain:.1f}", "n/a" if joint is None else f"{100 * joint:.1f}",
                 f"{s['seconds_per_query']:.1f}", "0" if adapt is None else f"{adapt:.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(table(Path(arg)), "\n")
