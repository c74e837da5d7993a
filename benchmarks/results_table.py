"""The README's results table, generated from the committed evaluation summaries in ``docs/results/``.

Each ``docs/results/<name>/summary.json`` is the ``summary.json`` of one ``fewshot-monai evaluate`` run behind a
headline figure; its ``command`` field is the exact command that made it (re-run one fold by changing ``--folds``
and ``--out``). This script prints the table, or rewrites the part of README.md between the markers
``<!-- results:start -->`` and ``<!-- results:end -->``:

    python benchmarks/results_table.py            # print
    python benchmarks/results_table.py --write    # update README.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
START, END = "<!-- results:start -->", "<!-- results:end -->"

#: (row title, results folder, published SSL-ALPNet target for the row or None, the folder of another training
#: draw of the same recipe or None). A row shows the newest draw whose fold models were all trained with the current
#: recipe and evaluated with the current method; the other draw sits beside it, so that the spread is in view.
ROWS = [
    ("CHAOS T2-SPIR MRI, EP1 (organ range known)", "chaos_ep1", 78.84, "session6_models/chaos_ep1"),
    ("CHAOS T2-SPIR MRI, EP2 (no organ range)", "chaos_ep2", None, "session6_models/chaos_ep2"),
    ("SABS CT, EP1", "sabs_ep1", 73.35, "session6_models/sabs_ep1"),
    ("SABS CT, EP2 (no organ range)", "sabs_ep2", None, "session6_models/sabs_ep2"),
    ("CHAOS T2-SPIR MRI, EP1, setting 2 (test organs unseen in training)", "chaos_s2_ep1", 73.02, None),
    ("SABS CT, EP1, setting 2 (test organs unseen in training)", "sabs_s2_ep1", 63.02, None),
]


def _pct(summary: dict | None) -> str:
    return "n/a" if not summary else f"{100 * summary['dice_mean']:.1f}"


def table(results: Path = RESULTS) -> str:
    lines = [
        "| data, protocol | ours | ours, no pseudo-labelling | registration | weakest organ (ours) | s / query | "
        "s / support | another draw | SSL-ALPNet (published) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for title, folder, target, other in ROWS:
        path = results / folder / "summary.json"
        if not path.is_file():
            lines.append(f"| {title} | not measured with this method yet (docs/accuracy.md) | | | | | | | "
                         f"{'' if target is None else f'{target:.2f}'} |")  # fmt: skip
            continue
        s = json.loads(path.read_text())
        reg = s.get("baseline", {}).get("registration")
        organ = min(s["dice"], key=s["dice"].get)
        adapt = (s.get("adaptation") or {}).get("seconds_per_support")
        ours, best_other = 100 * s["dice_mean"], 100 * reg["dice_mean"] if reg else None
        draw = _pct(json.loads((results / other / "summary.json").read_text())) if other else ""
        bold = f"**{ours:.1f}**" if best_other is None or ours >= best_other else f"{ours:.1f}"
        lines.append(
            f"| {title} | {bold} | {_pct(s.get('plain'))} | {_pct(reg)} | {organ.replace('_', ' ')} "
            f"{100 * s['dice'][organ]:.1f} | {s['seconds_per_query']:.1f} | "
            f"{'0' if adapt is None else f'{adapt:.0f}'} | {draw} | {'' if target is None else f'{target:.2f}'} |"
        )
    lines.append("")
    lines.append(
        "Commands and per-fold figures: `docs/results/<row>/summary.json` (field `command`); \"another draw\": fold "
        "models trained in another session (session 6, another CPU), evaluated with the method of that time "
        "(`docs/results/session6_models/`: no range anchor in EP2, none of session 10's additions)."
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite the table in README.md")
    args = parser.parse_args()
    text = table()
    if not args.write:
        print(text)
        return 0
    readme = REPO / "README.md"
    content = readme.read_text()
    if START not in content or END not in content:
        raise SystemExit(f"README.md has no {START} ... {END} markers")
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{text}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
