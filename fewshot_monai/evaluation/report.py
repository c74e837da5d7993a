"""Evaluation outputs: per-scan CSV, summary statistics, box plots and the Markdown report with published numbers.

Every file is written atomically (:mod:`fewshot_monai.utils.files`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fewshot_monai.utils.files import atomic_path, atomic_write  # noqa: E402

__all__ = [
    "CSV_COLUMNS",
    "PUBLISHED",
    "published_results",
    "summarise_rows",
    "write_per_scan_csv",
    "write_summary_json",
    "save_boxplots",
    "render_report",
    "method_summaries",
    "pick_cases",
    "write_outputs",
]

#: columns of ``per_scan.csv``, one row per (method, fold, scan, organ)
CSV_COLUMNS = [
    "method",
    "protocol",
    "setting",
    "fold",
    "scan",
    "organ",
    "label_id",
    "support_ids",
    "dice",
    "hd95_mm",
    "asd_mm",
    "seconds",
    "z_first",
    "z_last",
    "scored_first",
    "scored_last",
    "true_first",
    "true_last",
    "pl_slices",
    "pl_windows",
    "pl_confidence",
    "pl_dice",
    "pl_seconds",
    "pl_agreement",
    "pl_accepted",
]

_ORGANS4 = ("liver", "spleen", "left_kidney", "right_kidney")
_UNVERIFIED = (
    "unverified: quoted from memory of the values widely reproduced in later papers' comparison tables; not checked "
    "against the primary source while writing this table"
)


def _row(method, citation, dataset, setting, values, note=_UNVERIFIED):
    return {
        "method": method,
        "citation": citation,
        "dataset": dataset,
        "setting": setting,
        "protocol": "ep1",
        "dice": dict(zip(_ORGANS4, values)),
        "mean": round(sum(values) / 4, 2),
        "verified": False,
        "source": note,
    }


_SSL_ALPNET = (
    "C. Ouyang, C. Biffi, C. Chen, T. Kart, H. Qiu, D. Rueckert. Self-supervision with Superpixels: Training "
    "Few-shot Medical Image Segmentation without Annotation. ECCV 2020, LNCS 12374, pp. 762-780."
)
_ADNET = (
    "S. Hansen, S. Gautam, R. Jenssen, M. Kampffmeyer. Anomaly detection-inspired few-shot medical image "
    "segmentation through self-supervision with supervoxels. Medical Image Analysis 78, 102385 (2022)."
)
_QNET = (
    "Q. Shen, Y. Li, J. Jin, B. Liu. Q-Net: Query-Informed Few-Shot Medical Image Segmentation. "
    "IEEE Intelligent Systems (2023)."
)
_CATNET = (
    "Y. Lin, Y. Chen, K.-T. Cheng, H. Chen. Few Shot Medical Image Segmentation with Cross Attention Transformer. "
    "MICCAI 2023."
)
_RPT = (
    "Y. Zhu, S. Wang, T. Xin, H. Zhang. Few-Shot Medical Image Segmentation via a Region-enhanced Prototypical "
    "Transformer. MICCAI 2023."
)
_ALPNET_NOTE = (
    _UNVERIFIED + "; the left-kidney values (and spleen in setting 2) match a secondary aggregator's listing of the "
    "paper (wizwand.com), which is not a primary source"
)
_CATNET_NOTE = (
    _UNVERIFIED + "; the setting (1 or 2) these numbers belong to is itself uncertain (listed under setting 2)"
)

#: Published EP1 Dice (%, 1-shot, 5-fold CV) per organ, order liver, spleen, left kidney, right kidney.
#: Every number is marked unverified: see ``source``.
PUBLISHED: list[dict] = [
    _row("SSL-ALPNet", _SSL_ALPNET, "chaos", 1, (76.10, 72.18, 81.92, 85.18), _ALPNET_NOTE),
    _row("SSL-ALPNet", _SSL_ALPNET, "chaos", 2, (73.05, 67.02, 73.63, 78.39), _ALPNET_NOTE),
    _row("SSL-ALPNet", _SSL_ALPNET, "sabs", 1, (78.29, 70.96, 72.36, 71.81), _ALPNET_NOTE),
    _row("SSL-ALPNet", _SSL_ALPNET, "sabs", 2, (73.65, 60.25, 63.34, 54.82), _ALPNET_NOTE),
    _row("ADNet", _ADNET, "chaos", 1, (82.11, 72.29, 73.86, 85.80)),
    _row("ADNet", _ADNET, "chaos", 2, (77.03, 59.44, 59.64, 56.68)),
    _row("ADNet", _ADNET, "sabs", 1, (77.24, 63.48, 72.13, 79.06)),
    _row("ADNet", _ADNET, "sabs", 2, (70.63, 50.97, 48.41, 40.52)),
    _row("Q-Net", _QNET, "chaos", 1, (81.74, 75.99, 78.36, 87.98)),
    _row("Q-Net", _QNET, "chaos", 2, (78.25, 65.37, 64.81, 65.94)),
    _row("CAT-Net", _CATNET, "chaos", 2, (78.98, 68.83, 74.01, 78.90), _CATNET_NOTE),
    _row("CAT-Net", _CATNET, "sabs", 2, (75.31, 67.65, 63.36, 60.05), _CATNET_NOTE),
    _row("RPT", _RPT, "chaos", 1, (82.86, 76.37, 80.72, 89.82)),
    _row("RPT", _RPT, "chaos", 2, (76.37, 75.46, 78.33, 86.01)),
    _row("RPT", _RPT, "sabs", 1, (82.57, 72.58, 77.05, 79.13)),
    _row("RPT", _RPT, "sabs", 2, (75.24, 70.80, 72.99, 67.73)),
]


def published_results(dataset: str, setting: int) -> list[dict]:
    """The :data:`PUBLISHED` rows for a data set (``"chaos"``/``"sabs"``) and setting (1/2)."""
    return [r for r in PUBLISHED if r["dataset"] == dataset and r["setting"] == int(setting)]


def _finite(values: Iterable[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _stats(values: Sequence[float]) -> tuple[float | None, float | None]:
    vals = _finite(values)
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals))


def summarise_rows(rows: Sequence[Mapping], organs: Sequence[str], query_seconds: Mapping | None = None) -> dict:
    """Per-organ statistics of one method's rows.

    Dice per organ is the mean over scans (0..1) and ``dice_mean`` the mean of those organ means (how the papers
    report it); ``dice_per_fold`` holds the same per fold (``{fold: {organ: mean, "mean": mean of organs}}``).
    HD95/ASD means are over scans where they are defined (NaN when exactly one mask is empty; counted in
    ``n_undefined_distance``). ``seconds_per_query`` is the mean, over query volumes, of the time to segment all
    evaluated organs of the query (``query_seconds``: (fold, scan) -> seconds).
    """
    out: dict = {key: {} for key in ("dice", "dice_std", "hd95_mm", "hd95_mm_std", "asd_mm", "asd_mm_std")}
    out["n_scans"], out["n_undefined_distance"] = {}, {}
    for organ in organs:
        sel = [r for r in rows if r["organ"] == organ]
        out["n_scans"][organ] = len(sel)
        out["n_undefined_distance"][organ] = sum(1 for r in sel if not _finite([r["hd95_mm"]]))
        for key in ("dice", "hd95_mm", "asd_mm"):
            mean, std = _stats([r[key] for r in sel])
            out[key][organ], out[f"{key}_std"][organ] = mean, std
    organ_means = [v for v in out["dice"].values() if v is not None]
    out["dice_mean"] = float(np.mean(organ_means)) if organ_means else None
    out["dice_per_fold"] = {}
    for fold in sorted({int(r["fold"]) for r in rows}):
        in_fold = [r for r in rows if int(r["fold"]) == fold]
        per_organ = {o: _stats([r["dice"] for r in in_fold if r["organ"] == o])[0] for o in organs}
        means = [v for v in per_organ.values() if v is not None]
        out["dice_per_fold"][str(fold)] = {**per_organ, "mean": float(np.mean(means)) if means else None}
    secs = list((query_seconds or {}).values())
    out["seconds_per_query"] = float(np.mean(secs)) if secs else None
    out["n_queries"] = len(secs)
    return out


def _csv_value(value):
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return value


def write_per_scan_csv(path: str | os.PathLike, rows: Sequence[Mapping]) -> Path:
    """Write ``per_scan.csv`` (columns :data:`CSV_COLUMNS`) atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in CSV_COLUMNS})
    with atomic_write(path, newline="") as fh:
        fh.write(buffer.getvalue())
    return Path(path)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item())
    return value


def write_summary_json(path: str | os.PathLike, summary: Mapping) -> Path:
    """Write ``summary.json`` atomically (NaN/inf become null)."""
    with atomic_write(path) as fh:
        json.dump(_json_safe(summary), fh, indent=2)
        fh.write("\n")
    return Path(path)


def save_boxplots(path: str | os.PathLike, rows: Sequence[Mapping], organs: Sequence[str]) -> Path | None:
    """Box plots of per-scan Dice and HD95 per organ, one box per method; None if there is nothing to plot."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    if not methods or not organs:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 2.2 * len(organs) * len(methods)), 4.2))
    width = 0.8 / len(methods)
    colours = plt.get_cmap("tab10")
    for ax, key, label in ((axes[0], "dice", "Dice"), (axes[1], "hd95_mm", "HD95 (mm)")):
        for m, method in enumerate(methods):
            data = [_finite(r[key] for r in rows if r["method"] == method and r["organ"] == o) for o in organs]
            positions = [i + (m - (len(methods) - 1) / 2) * width for i in range(len(organs))]
            keep = [(p, d) for p, d in zip(positions, data) if d]
            if not keep:
                continue
            parts = ax.boxplot(
                [d for _, d in keep],
                positions=[p for p, _ in keep],
                widths=width * 0.9,
                patch_artist=True,
                manage_ticks=False,
            )
            for box in parts["boxes"]:
                box.set_facecolor(colours(m % 10))
                box.set_alpha(0.6)
            ax.plot([], [], color=colours(m % 10), lw=6, alpha=0.6, label=method)
        ax.set_xticks(range(len(organs)))
        ax.set_xticklabels([o.replace("_", "\n") for o in organs])
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle("per-scan scores per organ")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return Path(path)


def _pct(mean, std) -> str:
    if mean is None:
        return "n/a"
    return f"{100 * mean:.1f} ± {100 * (std or 0):.1f}"


def _mm(mean, std) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.1f} ± {(std or 0):.1f}"


def _pseudo_label_section(pl: Mapping | None, organs: Sequence[str]) -> list[str]:
    """Report lines on what inference-time pseudo-labelling did (empty without a strategy)."""
    if not pl:
        return []

    def num(v, spec):
        return "n/a" if v is None else format(v, spec)

    options = (
        ", ".join(f"{k}={v}" for k, v in (pl.get("strategy") or {}).items())
        if isinstance(pl.get("strategy"), Mapping)
        else str(pl.get("strategy"))
    )
    overhead = pl.get("overhead_fraction")
    lines = [
        "",
        "## Inference-time pseudo-labelling",
        "",
        f"Strategy: {options}. Mean Dice gain over the plain prediction of the same model and run: "
        f"{num(None if pl.get('dice_mean_gain') is None else 100 * pl['dice_mean_gain'], '+.2f')} points; the "
        f"stage took {num(None if overhead is None else 100 * overhead, '.1f')}% of the plain prediction's time.",
        "",
        "| organ | Dice gain (points) | slices transferred (mean) | their confidence | pseudo-label Dice | "
        "cases without transfer |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for o in organs:
        g = pl["dice_gain"].get(o)
        d = pl["per_organ"].get(o, {})
        pld = d.get("pseudo_label_dice_mean")
        lines.append(
            f"| {o} | {num(None if g is None else 100 * g, '+.2f')} | {num(d.get('slices_mean'), '.2f')} | "
            f"{num(d.get('confidence_mean'), '.3f')} | {num(None if pld is None else 100 * pld, '.1f')} | "
            f"{d.get('cases_without_transfer', 'n/a')} |"
        )
    return lines


def _table_section(title: str, columns: Sequence[str]) -> list[str]:
    """A Markdown section heading followed by a table header with ``columns``."""
    return ["", f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]


def method_summaries(summary: Mapping) -> dict[str, Mapping]:
    """Every method's statistics in a run summary, in display order: ours (named after its pseudo-label strategy
    when it has one), the plain prediction of the same run, then the baselines."""
    proto = summary.get("protocol", {})
    name = summary.get("method") or proto.get("method_name", "fewshot")
    strategy = proto.get("pseudo_label") or "none"
    methods = {name if strategy == "none" else f"{name}+{strategy}": summary}
    if "plain" in summary:
        methods[summary["plain"].get("method", "fewshot_plain")] = summary["plain"]
    if "joint" in summary:
        methods[summary["joint"].get("method", "fewshot_joint")] = summary["joint"]
    methods.update(summary.get("baseline", {}))
    return methods


def render_report(summary: Mapping, figures: Mapping[str, str] | None = None) -> str:
    """The Markdown report: our table per organ (mean ± std) beside the published numbers, figures, skipped cases."""
    proto = summary["protocol"]
    organs = list(proto["organs"])
    methods = method_summaries(summary)
    lines = [
        f"# Few-shot evaluation: {proto['dataset']} {proto['protocol'].upper()}, setting {proto['setting']}, "
        f"{proto['shots']}-shot",
        "",
        f"- data: `{proto['data']}`",
        f"- model: {proto['model']}",
        f"- protocol: {proto['protocol_description']}",
        f"- folds: {', '.join(str(f) for f in proto['folds'])} of {proto['n_folds']}; pseudo-label: "
        f"{proto['pseudo_label']}; baseline: {proto['baseline']}",
        f"- queries per fold limited to: {proto['limit_queries'] or 'no limit'}; date: {proto['date']}",
        "",
        "## Dice (%) per organ, mean ± std over scans",
        "",
        "| method | " + " | ".join(organs) + " | mean | s / query |",
        "| --- | " + " | ".join("---" for _ in organs) + " | --- | --- |",
    ]
    for name, s in methods.items():
        cells = [_pct(s["dice"].get(o), s["dice_std"].get(o)) for o in organs]
        mean = "n/a" if s.get("dice_mean") is None else f"{100 * s['dice_mean']:.1f}"
        secs = "n/a" if s.get("seconds_per_query") is None else f"{s['seconds_per_query']:.1f}"
        lines.append(f"| **{name}** (this run) | " + " | ".join(cells) + f" | {mean} | {secs} |")
    published = published_results(proto["dataset"], proto["setting"]) if proto["dataset"] in ("chaos", "sabs") else []
    for r in published:
        cells = [f"{r['dice'][o]:.2f}*" if o in r["dice"] else "" for o in organs]
        lines.append(f"| {r['method']} (published, EP1) | " + " | ".join(cells) + f" | {r['mean']:.2f}* | |")
    if "no few-shot training" in str(proto.get("model", "")):
        lines += [
            "",
            "The model had no few-shot training (ImageNet encoder features only): this is the training-free baseline, "
            "not a reproduction of the trained published methods.",
        ]
    if published:
        lines += [
            "",
            "\\* published EP1 numbers (1-shot, 5-fold), **unverified** (see `PUBLISHED` in "
            "`fewshot_monai/evaluation/report.py` for the source of each). "
            + (
                "They were measured with EP1: not comparable with this EP2 run. "
                if proto["protocol"] != "ep1"
                else "Our run uses the same protocol (EP1). "
            )
            + "Published means are over the four organs.",
        ]
    folds = sorted({f for s in methods.values() for f in s.get("dice_per_fold", {})}, key=int)
    if len(folds) > 1:
        lines += _table_section("Dice (%) per fold (mean over the fold's scans)", ["method", "fold", *organs, "mean"])
        for name, s in methods.items():
            for fold in folds:
                values = s.get("dice_per_fold", {}).get(fold, {})
                cells = ["n/a" if values.get(o) is None else f"{100 * values[o]:.1f}" for o in [*organs, "mean"]]
                lines.append(f"| {name} | {fold} | " + " | ".join(cells) + " |")
    lines += _pseudo_label_section(summary.get("pseudo_label"), organs)
    lines += _table_section("Distances (mm), mean ± std over scans where defined", ["method", "metric", *organs])
    for name, s in methods.items():
        for key, label in (("hd95_mm", "HD95"), ("asd_mm", "ASD")):
            cells = [_mm(s[key].get(o), s[f"{key}_std"].get(o)) for o in organs]
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    undefined = {o: n for o, n in summary.get("n_undefined_distance", {}).items() if n}
    lines += [
        "",
        f"Scans scored per organ: {summary.get('n_scans', {})}. Distances are undefined (excluded) when exactly "
        f"one of prediction/truth is empty{': ' + str(undefined) if undefined else ''}.",
    ]
    if figures:
        lines += ["", "## Figures", ""]
        for caption, rel in figures.items():
            lines += [f"**{caption}**", "", f"![{caption}]({rel})", ""]
    skipped = summary.get("skipped", [])
    lines += ["", f"## Skipped cases ({len(skipped)})", ""]
    lines += [
        f"- {s['method']} fold {s['fold']} scan {s['scan']} {s.get('organ') or ''}: {s['reason']}" for s in skipped
    ]
    if not skipped:
        lines.append("none")
    lines.append("")
    return "\n".join(lines)


def pick_cases(rows: Sequence[Mapping], method: str) -> dict[str, tuple[int, str, float]]:
    """Best, median and worst (fold, scan) of ``method`` by the scan's mean Dice over organs."""
    per_scan: dict[tuple[int, str], list[float]] = {}
    for r in rows:
        if r["method"] == method:
            per_scan.setdefault((r["fold"], r["scan"]), []).append(r["dice"])
    if not per_scan:
        return {}
    ranked = sorted(((float(np.mean(v)), k) for k, v in per_scan.items()), key=lambda t: (t[0], str(t[1])))
    picks = {"best": ranked[-1], "median": ranked[(len(ranked) - 1) // 2], "worst": ranked[0]}
    out, seen = {}, set()
    for name, (score, key) in picks.items():  # with fewer than three scans, each is shown once
        if key not in seen:
            seen.add(key)
            out[name] = (key[0], key[1], score)
    return out


def write_outputs(
    out: Path,
    summary: dict,
    rows: Sequence[Mapping],
    organs: Sequence[str],
    method: str,
    overlay_case: Callable | None = None,
) -> None:
    """Write an evaluation's ``per_scan.csv``, ``summary.json`` (with its ``outputs``), ``report.md``, box plots
    and, with ``overlay_case(fold, scan) -> (image, predictions, truths[, plane]) or None``, overlays of the best,
    median and worst scan of ``method`` (``plane``: the scan's slicing plane, default axial)."""
    from fewshot_monai.utils.plotting import save_overlay_png

    figures: dict[str, str] = {}
    if save_boxplots(out / "boxplots.png", rows, organs) is not None:
        figures["Per-scan Dice and HD95 per organ"] = "boxplots.png"
    overlays = {}
    for name, (fold, scan, score) in (pick_cases(rows, method) if overlay_case else {}).items():
        case = overlay_case(fold, scan)
        if case is None:
            continue
        image, predictions, truths, *plane = case
        png = f"overlay_{name}.png"
        title = f"{name}: fold {fold} scan {scan}, mean Dice {score:.3f} (solid: prediction)"
        save_overlay_png(out / png, image, predictions, truths, title=title, plane=plane[0] if plane else "axial")
        figures[f"{name.capitalize()} case: fold {fold}, scan {scan} (mean Dice {score:.3f})"] = png
        overlays[name] = {"fold": fold, "scan": scan, "mean_dice": score, "png": png}
    summary["outputs"] = {
        "per_scan_csv": "per_scan.csv",
        "summary_json": "summary.json",
        "report_md": "report.md",
        "boxplots": "boxplots.png" if "boxplots.png" in figures.values() else None,
        "overlays": overlays,
    }
    write_per_scan_csv(out / "per_scan.csv", rows)
    write_summary_json(out / "summary.json", summary)
    with atomic_write(out / "report.md") as fh:
        fh.write(render_report(summary, figures))
