"""Segment a folder of studies from one (or a few) labelled supports: ``fewshot-monai segment`` and the bundle.

:func:`segment_folder` finds the volumes (NIfTI, NRRD/MHA, DICOM series folders, mixed; other files are listed
and ignored), prepares the support once (:class:`~fewshot_monai.inferers.FewShotSegmenter`: loading, optional
adaptation, encoding) and segments every case, writing per case, atomically and with normal permissions:

- ``<case>_seg.nii.gz``: one label map of all organs, in the input's own voxel grid and orientation;
- ``<case>_prob.nii.gz`` (optional): the foreground probability of each organ, one channel per organ;
- ``<case>.json``: per organ the volume in ml, mean confidence, slice range and seconds, plus the case's fingerprint;
- ``<case>_qa.png``: axial, coronal and sagittal planes with the organ contours;

and ``summary.csv`` for the batch. Every volume is cut in its slicing plane (``plane``, default its acquisition
plane: :mod:`fewshot_monai.transforms.plane`); a query in another plane than the support is resampled into the
support's plane (one log line) and its outputs are resampled back onto its own grid. A case whose JSON carries
the same fingerprint (support files, weights and options) is skipped on a re-run; one done with another support,
model or options is redone. A case that fails is listed with its reason and the batch goes on. Under
``torchrun`` the cases are sharded across the ranks (each case is written by exactly one) and rank 0 writes the
summary.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fewshot_monai.errors import InputError

__all__ = [
    "SegmentOptions",
    "segment_folder",
    "run_segmentation",
    "report_lines",
    "load_supports",
    "fingerprint",
    "SegmentationWriter",
    "to_input_geometry",
    "z_range_note",
    "SUMMARY_COLUMNS",
]

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = ("case", "input", "status", "reason", "seconds", "organs_found", "total_volume_ml", "segmentation")


@dataclass
class SegmentOptions:
    """What :func:`segment_folder` does besides its inputs (the ``segment`` command's options).

    Attributes:
        organs: organ name -> label id in the support labels; None: every label id found in the first support,
            named ``label_<id>``.
        weights: ALPNet weights file; None: the shipped model of ``modality``.
        modality: ``mri`` or ``ct``: the shipped model and the intensity preset used when not given.
        intensity: intensity preset of supports and queries (``mri``, ``ct``, ``preprocessed``); None: ``modality``.
        pseudo_label: inference-time pseudo-labelling strategy (``window``, ``slice``, ``reference``, ``none``).
        min_agreement: the pseudo-labelling stage steps aside for an organ when its prediction overlaps the plain
            one with a Dice below this (0.5, part of the method chosen in docs/accuracy.md; 0: never).
        adapt_iterations: support adaptation iterations, once per batch (0: none); its network is cached in
            ``adapt_cache`` (default ``<output>/.cache``).
        adapt_ensemble: adapt K copies (adaptation seeds 0 .. K-1) and average their predictions
            (:class:`~fewshot_monai.inferers.SegmenterEnsemble`; K times the adaptation and the per-case time).
        save_probabilities: also write ``<case>_prob.nii.gz``.
        overlays: write ``<case>_qa.png``.
        series: the DICOM series to read from a folder holding several.
        plane: the slicing plane of supports and queries (``auto``: each volume's acquisition plane; ``stored``,
            ``axial``, ``coronal``, ``sagittal``: see :mod:`fewshot_monai.transforms.plane`).
        n_chunks, spatial_size: the few-shot protocol's options.
        range_anchor: with several organs, each organ's range is searched near where the support's layout puts it
            relative to this organ's (``auto``: the organ with the most support voxels; ``none``: every organ in
            the whole volume; :mod:`fewshot_monai.inferers.anchor`).
        progress: show a progress bar.
        extra: further :class:`~fewshot_monai.inferers.FewShotSegmenter` options (``min_agreement``, ...).
        model: a self-trained student checkpoint (``fewshot-monai selftrain``); it segments with no support (its
            organs and intensity preset come from the checkpoint; ``intensity`` overrides the latter), and the
            few-shot options above are not used.
    """

    organs: dict[str, int] | None = None
    weights: str | None = None
    modality: str = "mri"
    intensity: str | None = None
    pseudo_label: str = "window"
    min_agreement: float = 0.5
    adapt_iterations: int = 300
    adapt_cache: str | None = None
    adapt_ensemble: int = 1
    save_probabilities: bool = False
    overlays: bool = True
    series: str | None = None
    plane: str = "auto"
    n_chunks: int = 3
    spatial_size: int = 256
    range_anchor: str = "auto"
    progress: bool = True
    extra: dict = field(default_factory=dict)
    model: str | None = None

    def __post_init__(self) -> None:
        for name in ("save_probabilities", "overlays", "progress"):  # "false" from a bundle's command line
            value = getattr(self, name)
            if isinstance(value, str):
                if value.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(f"{name} must be true or false, got {value!r}")
                setattr(self, name, value.strip().lower() in ("true", "1", "yes"))
        from fewshot_monai.transforms.plane import check_plane

        self.plane = check_plane(self.plane)
        from fewshot_monai.inferers.ensemble import check_adaptation_ensemble

        check_adaptation_ensemble(self.adapt_ensemble, bool(int(self.adapt_iterations)))

    def recorded(self) -> dict:
        """The options that change a case's outputs (part of its fingerprint)."""
        if self.model:  # a student: only these change its outputs (its file is hashed as the weights)
            return {"model": "student", "intensity": self.intensity, "series": self.series, "plane": self.plane,
                    "save_probabilities": bool(self.save_probabilities), "overlays": bool(self.overlays)}  # fmt: skip
        return {
            "organs": self.organs,
            "intensity": self.intensity or self.modality,
            "pseudo_label": self.pseudo_label,
            "min_agreement": float(self.min_agreement),
            "adapt_iterations": int(self.adapt_iterations),
            **({"adapt_ensemble": int(self.adapt_ensemble)} if int(self.adapt_ensemble) > 1 else {}),
            "n_chunks": int(self.n_chunks),
            "spatial_size": int(self.spatial_size),
            "series": self.series,
            "save_probabilities": bool(self.save_probabilities),
            "overlays": bool(self.overlays),
            "extra": dict(self.extra),
            **({"plane": self.plane} if self.plane != "auto" else {}),  # absent: fingerprints from before planes hold
            "range_anchor": self.range_anchor,
        }


def _hash_path(digest, path: Path) -> None:
    """Feed a file's bytes (or a folder's files', in name order) into ``digest``."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)


def fingerprint(support_images: Sequence, support_labels: Sequence, weights: Path | None, options: Mapping) -> str:
    """A short hash of everything a case's outputs depend on besides the case itself: the support files' bytes,
    the weights' bytes (``None``: the untrained network) and the options."""
    from fewshot_monai.errors import UnreadableFileError

    digest = hashlib.sha256()
    for path in [*support_images, *support_labels, *([] if weights is None else [weights])]:
        if not Path(path).exists():
            raise UnreadableFileError(path, "file or folder does not exist")
        _hash_path(digest, Path(path))
    digest.update(json.dumps(options, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


class SegmentationWriter:
    """What ``segment`` writes: per case the label map, JSON, QA PNG and optional probabilities.

    A writer names its files (:meth:`outputs`: ``"segmentation"`` is the label map, ``"report"`` the JSON written
    last, which marks the case done), writes one case (:meth:`write`) and the batch's extra files (:meth:`finish`,
    rank 0). ``fewshot-monai pseudolabel`` plugs in another (:class:`fewshot_monai.pseudolabel.dataset.NnUNetWriter`).
    """

    name = "segmentation"

    def recorded(self) -> dict:
        """The writer's options that change its outputs (part of the fingerprint)."""
        return {}

    def outputs(self, output: Path, case: str) -> dict[str, Path]:
        return {
            "segmentation": output / f"{case}_seg.nii.gz",
            "probabilities": output / f"{case}_prob.nii.gz",
            "report": output / f"{case}.json",
            "overlay": output / f"{case}_qa.png",
        }

    def write(self, case: dict, result, labels, query: dict, out: dict[str, Path], options, report: dict) -> None:
        """``labels``: the case's merged label map (``result.label_map()``), computed once by the caller."""
        _write_case(case, result, labels, query, out, options, report)

    def finish(self, output: Path, rows: list[dict], organs: Mapping[str, int], options) -> None:
        """Nothing beyond ``summary.csv``."""


def load_supports(
    images: Sequence, labels: Sequence, intensity: str, series: str | None = None, plane: str = "auto"
) -> list[dict]:
    """Load the support cases (image + label, validated, same grid) in their slicing ``plane``; supports cut in
    another plane than the first are resampled into it (one log line each). InputError names the bad file."""
    from fewshot_monai.data.io import load_case
    from fewshot_monai.transforms.plane import match_plane

    if not images or len(images) != len(labels):
        raise InputError(None, f"give one --support-label per --support-image (got {len(images)} and {len(labels)})")
    supports = [load_case(i, lb, intensity=intensity, series=series, plane=plane) for i, lb in zip(images, labels)]
    for support in supports[1:]:
        support.update(match_plane(support, supports[0]["image"], "support"))
    return supports


def _default_organs(label) -> dict[str, int]:
    """Every label id of a support label, named ``label_<id>``."""
    from fewshot_monai.transforms.validation import source_of

    ids = [int(v) for v in torch.unique(torch.as_tensor(label)).tolist() if int(v) != 0]
    if not ids:
        raise InputError(source_of(label), "support label is empty: nothing to segment")
    return {f"label_{i}": i for i in ids}


def to_input_geometry(volume: torch.Tensor, reference) -> tuple[torch.Tensor, np.ndarray]:
    """``(C, X, Y, Z)`` data on the loaded grid of ``reference`` -> the input file's own voxel grid and order, with
    the input's affine: the loader's reorientation (to the slicing plane) undone exactly; a query resampled into
    the support's plane (:func:`~fewshot_monai.transforms.plane.match_plane`) is resampled back (nearest for integer
    data, else bilinear)."""
    import nibabel as nib
    from monai.data import MetaTensor
    from monai.transforms import Orientation, SpatialResample

    original = np.asarray(reference.meta.get("original_affine", reference.affine), dtype=np.float64)
    codes = "".join(nib.aff2axcodes(original))
    plain = volume.as_tensor() if isinstance(volume, MetaTensor) else torch.as_tensor(volume)
    oriented = Orientation(axcodes=codes, labels=None)(MetaTensor(plain, affine=reference.affine))
    shape = reference.meta.get("spatial_shape")
    shape = None if shape is None else tuple(int(s) for s in np.asarray(shape).reshape(-1)[:3])
    affine = np.asarray(oriented.affine, dtype=np.float64)
    if shape is None or (tuple(oriented.shape[1:]) == shape and np.allclose(affine, original, atol=1e-3)):
        return oriented.as_tensor(), affine
    mode = "bilinear" if plain.is_floating_point() else "nearest"
    back = SpatialResample(mode=mode, padding_mode="zeros", dtype=torch.float32)(
        oriented.float(), dst_affine=torch.as_tensor(original), spatial_size=shape
    )
    back = back.as_tensor()
    return (back if plain.is_floating_point() else torch.round(back).to(plain.dtype)), original


def _save(array: torch.Tensor, affine: np.ndarray, path: Path, is_label: bool) -> None:
    from monai.data import MetaTensor

    from fewshot_monai.data.io import save_volume

    save_volume(MetaTensor(array, affine=torch.as_tensor(affine)), path, is_label=is_label)


def _case_report(case: dict, result, labels, query, seconds: float, print_key: str) -> dict:
    """The JSON of one case: per organ volume, confidence, z-range, seconds (``labels``: its merged label map), and
    the plane the case was cut in."""
    from monai.data.utils import affine_to_spacing

    from fewshot_monai.transforms.plane import plane_of

    voxel_ml = float(np.prod(affine_to_spacing(query.affine, r=3).numpy())) / 1000.0
    organs = {}
    for name, organ in result.organs.items():
        inside = labels == result.label_ids[name]
        voxels = int(inside.sum())
        organs[name] = {
            "label": result.label_ids[name],
            "volume_ml": round(voxels * voxel_ml, 2),
            "voxels": voxels,
            "mean_confidence": round(float(organ.probability[inside].mean()), 4) if voxels else None,
            "z_range": None if organ.z_range is None else list(organ.z_range),
            "seconds": round(organ.seconds, 2),
            "pseudo_labelled_slices": (organ.pseudo_label or {}).get("n_slices"),
        }
    return {
        "case": case["id"],
        "input": case["image"],
        "fingerprint": print_key,
        "status": "done",
        "seconds": round(seconds, 2),
        "organs": organs,
        "plane": plane_of(query),
        "z_range_note": z_range_note(query),
    }


def z_range_note(query) -> str:
    """What the ``z_range`` of a case's JSON counts: slices of the query as cut (its plane and axis codes)."""
    import nibabel as nib

    from fewshot_monai.transforms.plane import plane_of

    codes = "".join(nib.aff2axcodes(np.asarray(query.affine, dtype=np.float64)))
    first = {"S": "inferior", "A": "posterior", "R": "left"}[codes[2]]
    kind = "axial slice" if plane_of(query) == "axial" else f"slice ({plane_of(query)} plane)"
    return f"inclusive {kind} indices of the input reoriented to {codes} (slice 0 = most {first})"


def _write_case(case: dict, result, labels, query, out: dict[str, Path], options: SegmentOptions, report: dict) -> None:
    """All outputs of one case, each atomically; the JSON last (it marks the case as done)."""
    from fewshot_monai.utils.files import atomic_write
    from fewshot_monai.utils.plotting import save_three_plane_png

    seg, affine = to_input_geometry(labels[None].to(torch.int16), query["image"])
    _save(seg, affine, out["segmentation"], is_label=True)
    if options.save_probabilities:
        stacked = torch.stack([o.probability.float() for o in result.organs.values()])
        probs, affine = to_input_geometry(stacked, query["image"])
        _save(probs, affine, out["probabilities"], is_label=False)
        report["probability_channels"] = list(result.organs)
    if options.overlays:
        from monai.data import MetaTensor
        from monai.data.utils import affine_to_spacing
        from monai.transforms import Orientation

        # shown in RAS whatever the slicing plane, so the three panels are the anatomical planes
        plain = labels.as_tensor() if isinstance(labels, MetaTensor) else torch.as_tensor(labels)
        organ_masks = [(plain == i).float() for i in result.label_ids.values()]
        stacked = torch.stack([query["image"][0].as_tensor().float(), *organ_masks])
        ras = Orientation(axcodes="RAS", labels=None)(MetaTensor(stacked.float(), affine=query["image"].affine))
        masks = {name: ras[k + 1].numpy() > 0.5 for k, name in enumerate(result.organs)}
        spacing = affine_to_spacing(ras.affine, r=3).tolist()
        save_three_plane_png(out["overlay"], ras[0].numpy(), masks, spacing, title=f"{case['id']}")
    report["outputs"] = {k: p.name for k, p in out.items() if p.is_file() and k != "report"}
    with atomic_write(out["report"]) as handle:
        json.dump(report, handle, indent=2)


def _is_done(out: dict[str, Path], print_key: str) -> bool:
    if not (out["report"].is_file() and out["segmentation"].is_file()):
        return False
    try:
        return json.loads(out["report"].read_text()).get("fingerprint") == print_key
    except (OSError, ValueError):
        return False


def _row(case: dict, status: str, reason: str = "", seconds: float = 0.0, report: dict | None = None, seg=None) -> dict:
    organs = (report or {}).get("organs", {})
    found = [n for n, o in organs.items() if o.get("voxels")]
    return {
        "case": case["id"],
        "input": case["image"],
        "status": status,
        "reason": reason,
        "seconds": round(seconds, 2),
        "organs_found": ";".join(found),
        "total_volume_ml": round(sum(o.get("volume_ml") or 0.0 for o in organs.values()), 2) if organs else "",
        "segmentation": "" if seg is None else str(seg),
    }


def _distributed() -> tuple[int, int]:
    """(rank, world size): from torch.distributed, initialised here under ``torchrun`` (gloo on CPU, nccl on GPU)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _gather(rows: list[dict], world: int) -> list[dict]:
    if world <= 1:
        return rows
    import torch.distributed as dist

    gathered: list = [None] * world
    dist.all_gather_object(gathered, rows)
    return [row for part in gathered for row in part]


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def segment_folder(
    input: str | os.PathLike,
    output: str | os.PathLike,
    support_images: Sequence[str | os.PathLike],
    support_labels: Sequence[str | os.PathLike],
    options: SegmentOptions | Mapping | None = None,
    writer=None,
) -> dict:
    """Segment every volume of ``input`` (a folder, glob or file) from the labelled supports into ``output``.

    ``writer`` decides what is written per case (default :class:`SegmentationWriter`, the ``segment`` outputs).

    Returns:
        ``{"cases": [summary rows], "done", "skipped", "failed", "ignored": [paths], "support_seconds",
        "seconds_per_case", "rank", "world_size"}``; rank 0 also wrote ``<output>/summary.csv``.

    Raises:
        InputError: before any case is touched: no volume in ``input``, an unreadable or empty support, or an organ
            missing from a support (the message names the file).
    """
    from tqdm.auto import tqdm

    from fewshot_monai.data.datasets import find_volumes

    options = options if isinstance(options, SegmentOptions) else SegmentOptions(**dict(options or {}))
    writer = SegmentationWriter() if writer is None else writer
    started = time.perf_counter()
    output = Path(output)
    cases, ignored = find_volumes(input)
    if options.model:  # a self-trained student: no support
        from fewshot_monai.networks.student import load_student

        student = load_student(options.model)[1]
        supports, organs, weights = [], student.organs, Path(options.model)
        intensity = options.intensity or student.intensity
    else:
        intensity = options.intensity or options.modality
        supports = load_supports(list(support_images), list(support_labels), intensity, plane=options.plane)
        organs = dict(options.organs) if options.organs else _default_organs(supports[0]["label"])
        from fewshot_monai.zoo import shipped_weights

        weights = Path(options.weights) if options.weights else shipped_weights(options.modality)
    recorded = {**options.recorded(), "organs": organs, writer.name: writer.recorded()}
    print_key = fingerprint(support_images, support_labels, weights, recorded)
    rank, world = _distributed()
    mine = cases[rank::world]
    outputs = {case["id"]: writer.outputs(output, case["id"]) for case in mine}
    todo = [case for case in mine if not _is_done(outputs[case["id"]], print_key)]
    rows = [_row(c, "skipped", "already done with this support, model and options") for c in mine if c not in todo]
    output.mkdir(parents=True, exist_ok=True)
    support_seconds = 0.0
    segmenter = None
    if rank != 0:
        _barrier(world)  # rank 0 adapts first and fills the cache; the other ranks then read it
    if todo:
        segmenter, support_seconds = _prepare(supports, organs, weights, options, output)
    if rank == 0:
        _barrier(world)
    label = f"segment (rank {rank})" if world > 1 else "segment"
    bar = tqdm(todo, desc=label, unit="case", disable=not options.progress)
    for case in bar:
        rows.append(
            _segment_case(
                case,
                segmenter,
                outputs[case["id"]],
                options,
                intensity,
                print_key,
                writer,
                supports[0]["image"] if supports else None,
            )
        )
        bar.set_postfix(failed=sum(r["status"] == "failed" for r in rows), refresh=False)
    all_rows = _gather(rows, world)
    order = {c["id"]: i for i, c in enumerate(cases)}
    all_rows.sort(key=lambda r: order[r["case"]])
    done = [r for r in all_rows if r["status"] == "done"]
    summary = {
        "cases": all_rows,
        "done": len(done),
        "skipped": sum(r["status"] == "skipped" for r in all_rows),
        "failed": sum(r["status"] == "failed" for r in all_rows),
        "ignored": [str(p) for p in ignored],
        "support_seconds": round(support_seconds, 1),
        "seconds_per_case": round(float(np.mean([r["seconds"] for r in done])), 2) if done else None,
        "seconds_total": round(time.perf_counter() - started, 1),
        "fingerprint": print_key,
        "rank": rank,
        "world_size": world,
    }
    if rank == 0:
        writer.finish(output, all_rows, organs, options)
        _write_summary(output / "summary.csv", all_rows)
    return summary


def _prepare(supports, organs, weights, options: SegmentOptions, output: Path):
    """The segmenter of the batch and the seconds its preparation took (adaptation included)."""
    from fewshot_monai.inferers import FewShotSegmenter, adaptation_ensemble
    from fewshot_monai.pseudolabel import get_pseudo_label
    from fewshot_monai.zoo import load_model

    start = time.perf_counter()
    if options.model:
        from fewshot_monai.inferers import StudentSegmenter

        logger.info("model: self-trained student %s", options.model)
        return StudentSegmenter.from_checkpoint(options.model), time.perf_counter() - start
    model = load_model(None if weights is None else str(weights), options.modality)
    logger.info("model: %s", model.description)
    adaptation = {"iterations": int(options.adapt_iterations)} if options.adapt_iterations else None

    def build(adaptation):
        return FewShotSegmenter(
            model.network,
            [s["image"] for s in supports],
            [s["label"] for s in supports],
            organs,
            n_chunks=options.n_chunks,
            spatial_size=options.spatial_size,
            pseudo_label=get_pseudo_label(options.pseudo_label),
            min_agreement=float(options.min_agreement),
            range_anchor=None if str(options.range_anchor).lower() == "none" else options.range_anchor,
            adaptation=adaptation,
            adapt_cache=options.adapt_cache or str(output / ".cache"),
            progress=options.progress,
            **options.extra,
        )

    segmenter = adaptation_ensemble(build, adaptation, options.adapt_ensemble)
    seconds = time.perf_counter() - start
    logger.info("support prepared in %.1f s (paid once per batch)", seconds)
    return segmenter, seconds


def _segment_case(
    case: dict, segmenter, out: dict[str, Path], options, intensity, print_key, writer, reference
) -> dict:
    """Segment and write one case (brought into the plane of ``reference``, the first support image); any failure
    becomes a ``failed`` row with its reason (the batch goes on)."""
    from fewshot_monai.data.io import find_input_error, load_case
    from fewshot_monai.transforms.plane import match_plane

    start = time.perf_counter()
    try:
        query = load_case(
            case["image"], intensity=intensity, case_id=case["id"], series=options.series, plane=options.plane
        )
        query = match_plane(query, reference)
        result = segmenter(query["image"])
        labels = result.label_map()
        report = _case_report(case, result, labels, query["image"], time.perf_counter() - start, print_key)
        writer.write(case, result, labels, query, out, options, report)
    except Exception as err:  # one bad case must not stop the batch
        input_error = find_input_error(err)
        reason = str(input_error) if input_error is not None else f"{type(err).__name__}: {err}"
        logger.debug("case %s failed: %s", case["id"], reason)
        if input_error is None:
            logger.debug("".join(traceback.format_exception(err)))
        return _row(case, "failed", reason, time.perf_counter() - start)
    return _row(case, "done", "", time.perf_counter() - start, report, out["segmentation"])


def report_lines(summary: dict, output: str | os.PathLike) -> list[str]:
    """What the user reads at the end of a batch: each failed case with its reason, then one line of totals."""
    lines = [f"FAILED {row['case']}: {row['reason']}" for row in summary["cases"] if row["status"] == "failed"]
    per_case = summary["seconds_per_case"]
    lines.append(
        f"{summary['done']} done, {summary['skipped']} skipped, {summary['failed']} failed, "
        f"{len(summary['ignored'])} non-volume file(s) ignored; support prepared in {summary['support_seconds']} s"
        + (f", {per_case} s per case" if per_case is not None else "")
        + f"; wrote {Path(output) / 'summary.csv'}"
    )
    return lines


def run_segmentation(
    input: str | os.PathLike,
    output: str | os.PathLike,
    support_images: Sequence[str | os.PathLike],
    support_labels: Sequence[str | os.PathLike],
    options: SegmentOptions | Mapping | None = None,
    writer=None,
) -> int:
    """:func:`segment_folder` as a command: bad input before any work is one logged line and exit code 2; the
    report is printed (rank 0); 1 when some cases failed, else 0. The CLI and the bundle's ``inference.yaml``."""
    from fewshot_monai.errors import FewShotError

    try:
        summary = segment_folder(input, output, support_images, support_labels, options, writer)
    except (FewShotError, ValueError) as err:
        logger.error("nothing segmented: %s", err)
        return 2
    if summary["rank"] == 0:
        for path in summary["ignored"]:
            logger.info("ignored (not a volume): %s", path)
        print("\n".join(report_lines(summary, output)))
    return 1 if summary["failed"] else 0


def _write_summary(path: Path, rows: list[dict]) -> None:
    from fewshot_monai.utils.files import atomic_write

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(SUMMARY_COLUMNS))
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(path) as handle:
        handle.write(buffer.getvalue())
