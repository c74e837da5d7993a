"""Markdown ablation table from the runs of ``benchmarks/ablation.sh``: one row per variant, Dice per organ.

    python benchmarks/ablation_table.py runs/ablation_chaos_f0_ep1 [more folders]
    python benchmarks/ablation_table.py docs/results/ablation/chaos_f0_ep1     # the committed copies

A folder holds either one run folder per variant (``<variant>/summary.json``, as the script writes them) or the
committed copies (``<variant>.json``).

Columns: the variant, Dice per organ with `window` pseudo-labelling, its mean, the plain mean of the same run, the
joint (organs merged) mean, seconds per query and the one-off seconds per support (adaptation).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(folder: Path) -> str:
    files = {p.parent.name: p for p in folder.glob("*/summary.json")} or {p.stem: p for p in folder.glob("*.json")}
    if not files:
        return f"(no runs in {folder})"
    first = json.loads(next(iter(files.values())).read_text())
    organs = first["protocol"]["organs"]
    head = ["variant", *[o.replace("_", " ") for o in organs], "mean", "plain", "joint", "s / query", "s / support"]
    lines = [f"<!-- {folder} -->", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name in sorted(files, key=lambda n: (n != "base", n)):
        s = json.loads(files[name].read_text())
        plain = s.get("plain", {}).get("dice_mean")
        joint = s.get("joint", {}).get("dice_mean")
        adapt = (s.get("adaptation") or {}).get("seconds_per_support")
        cells = [name, *[f"{100 * s['dice'][o]:.1f}" for o in organs], f"**{100 * s['dice_mean']:.1f}**",
                 "n/a" if plain is None else f"{100 * plain:.1f}", "n/a" if joint is None else f"{100 * joint:.1f}",
                 f"{s['seconds_per_query']:.1f}", "0" if adapt is None else f"{adapt:.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(table(Path(arg)), "\n")
