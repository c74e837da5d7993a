"""Markdown rows for the docs from evaluation summaries: Dice per organ (mean ± std), mean, seconds per query.

    python benchmarks/doc_tables.py runs/eval_chaos_ep1_s1_models_chaos_window [more run folders...]

Each run folder gives one row per method it scored (pseudo-labelled, plain, registration), then its per-fold
means and the pseudo-labelling gain and overhead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fewshot_monai.evaluation.report import method_summaries


def rows(run: Path) -> list[str]:
    summary = json.loads((run / "summary.json").read_text())
    organs = summary["protocol"]["organs"]
    out = [f"<!-- {run} : {summary['protocol']['protocol']} {summary['protocol']['dataset']} -->"]
    for name, s in method_summaries(summary).items():
        cells = [f"{100 * s['dice'][o]:.1f} ± {100 * s['dice_std'][o]:.1f}" for o in organs]
        secs = s.get("seconds_per_query")
        out.append(
            f"| {name} | " + " | ".join(cells) + f" | **{100 * s['dice_mean']:.1f}** | "
            + ("n/a" if secs is None else f"{secs:.1f}") + " |"
        )
    for name, s in method_summaries(summary).items():
        out.append(f"HD95 mm {name}: " + " / ".join(f"{s['hd95_mm'][o]:.0f}" for o in organs))
    for name, s in method_summaries(summary).items():
        folds = s.get("dice_per_fold", {})
        out.append(f"per fold {name}: " + ", ".join(f"{k}: {100 * v['mean']:.1f}" for k, v in folds.items()))
    pl = summary.get("pseudo_label")
    if pl:
        gains = ", ".join(f"{o} {100 * g:+.1f}" for o, g in pl["dice_gain"].items())
        out.append(f"gain {100 * pl['dice_mean_gain']:+.1f} ({gains}); overhead {100 * pl['overhead_fraction']:.1f}%")
    return out


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        print("\n".join(rows(Path(folder))), "\n")
