"""Run a few-shot evaluation end to end: the fold loop and the books (per-scan rows, skipped cases, seconds).

The pieces it drives live where they belong: the labelled data set
(:func:`fewshot_monai.data.datasets.load_labelled_dataset`), the fold models
(:func:`fewshot_monai.zoo.resolve_checkpoint`), the segmentation of each fold's queries from its prepared support
(:class:`fewshot_monai.inferers.FewShotSegmenter`, under the protocol's rules:
:func:`fewshot_monai.evaluation.protocols.segment_query`), the registration baseline
(:mod:`fewshot_monai.evaluation.registration`) and the report (:func:`fewshot_monai.evaluation.report.write_outputs`).

:func:`run_evaluation` is plain Python (used by ``fewshot-monai evaluate`` and usable from a MONAI bundle
config); it takes an :class:`EvaluationConfig` (or a dictionary of its fields) and returns the summary dict that
it also writes to ``<out>/summary.json``, next to ``per_scan.csv``, ``report.md`` and the figures.

Model selection (``model``): see :func:`fewshot_monai.zoo.resolve_checkpoint` (None: the shipped model;
``"untrained"``; a ``.pt`` or bundle folder; or a folder of ``fold<k>_setting<s>.pt``).

Bad cases (unreadable file, organ missing from a scan, failed registration) are logged, listed under
``"skipped"`` in the summary and the report, and the run goes on.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fewshot_monai.data.datasets import load_labelled_dataset
from fewshot_monai.errors import InputError
from fewshot_monai.evaluation.folds import Fold, folds
from fewshot_monai.evaluation.metrics import segmentation_metrics, spacing_from_affine
from fewshot_monai.evaluation.protocols import get_protocol, segment_query
from fewshot_monai.evaluation.pseudo_labels import pseudo_label_record, pseudo_label_summary
from fewshot_monai.evaluation.report import summarise_rows, write_outputs
from fewshot_monai.pseudolabel import get_pseudo_label
from fewshot_monai.zoo import FoldModels, resolve_checkpoint

# resolve_checkpoint lives in fewshot_monai.zoo; it is re-exported here for scripts that import it from the runner
__all__ = ["EvaluationConfig", "run_evaluation", "resolve_checkpoint", "METHOD_NAME", "BASELINES"]

logger = logging.getLogger(__name__)

#: name of our method in per_scan.csv and the report
METHOD_NAME = "fewshot"
#: name of the same model's plain prediction (no pseudo-labelling), scored in the same run when --pseudo-label is set
PLAIN_METHOD_NAME = "fewshot_plain"
#: name of our final prediction with the organs merged into one label map (each voxel to its most probable organ)
JOINT_METHOD_NAME = "fewshot_joint"
BASELINES = ("none", "registration")
Z_RANGE_SOURCES = ("network", "registration")
ATLAS_REGISTRATIONS = ("affine", "bspline")
DATASETS = ("chaos", "sabs", "generic", "phantom")


@dataclass
class EvaluationConfig:
    """Options of one evaluation run (the CLI flags of ``fewshot-monai evaluate``).

    Attributes:
        data: data folder.
        out: output folder (created).
        dataset: ``chaos``, ``sabs``, ``phantom`` (label maps/intensity from their descriptors) or ``generic``
            (needs ``label_map``).
        model: see the module docstring.
        protocol: ``ep1`` or ``ep2``.
        setting: 1 or 2, recorded and used to pick per-fold checkpoints.
        folds: fold indices to run (default: all).
        n_folds: number of cross-validation folds.
        shots: support volumes per fold (k-shot).
        pseudo_label: refinement strategy (:mod:`fewshot_monai.pseudolabel.registry`); with a strategy, the same
            model's plain prediction is scored too (method ``fewshot_plain``), from the same run.
        pseudo_label_options: options of the strategy (e.g. ``{"threshold": 0.95, "k_per_chunk": 3}``).
        baseline: ``none`` or ``registration``.
        z_range_from: EP2 only: how our method finds the organ range: ``network`` (its own first pass) or
            ``registration`` (the extent of the support label registered onto the query, itk-elastix; its time is
            added to our method's; an organ missing from the warped label falls back to the network's estimate).
            Neither reads the query label.
        organs: organ names to evaluate (default: every organ of the label map).
        label_map: organ name -> label id, required for ``generic`` (overrides the descriptor's otherwise).
        images, labels: ``generic`` only: image and label folders or globs relative to ``data`` (default:
            nnU-Net ``imagesTr``/``labelsTr``, else ``images/`` + ``labels/``).
        intensity: intensity preset override (default: the descriptor's).
        plane: slicing plane of every scan (:mod:`fewshot_monai.transforms.plane`; ``auto``: its acquisition plane).
        limit_queries: evaluate only the first N queries of each fold (quick runs).
        n_chunks, spatial_size, batch_size: inferer options.
        inferer_options: further :class:`~fewshot_monai.inferers.FewShotVolumeInferer` options, e.g.
            ``{"largest_component": False}`` or ``{"peak_fraction": None, "prior_weight": 0}`` (ablations).
        adapt: support adaptation options (:class:`~fewshot_monai.engines.adaptation.SupportAdaptation` fields,
            e.g. ``{"iterations": 600}``); None or ``{"iterations": 0}``: no adaptation. The network of each fold is
            fine-tuned once on its support scan(s), for all evaluated organs together, and then segments every
            query of the fold; the one-off seconds are reported per support.
        adapt_cache: folder where adapted networks are kept and reused across runs (EP1 and EP2 share them).
        adapt_ensemble: adapt K copies of the fold's network, with the adaptation seeds ``seed .. seed + K - 1``,
            and average their predictions (:class:`~fewshot_monai.inferers.SegmenterEnsemble`); 1 (default): one.
        registration_threads: elastix threads per registration.
        atlas_registration: with the atlas prior (``inferer_options={"atlas_prior": w}``: the support label
            registered onto every query tempers our method's foreground, :mod:`fewshot_monai.inferers.prior`), how
            it is registered: ``affine`` (default; several times faster than the baseline's) or ``bspline`` (the
            baseline's affine then B-spline registration, shared with it). Its time is added to our method's.
        registration_cache: folder where warped support labels are kept and reused across runs (e.g. the EP2
            run after EP1 registers nothing again); None: registered afresh in every run.
        joint: also score the organs merged into one label map (``fewshot_joint``: every voxel goes to its most
            probable organ, :func:`~fewshot_monai.transforms.labels.merge_organ_probabilities`), so that one voxel
            is never two organs; the per-organ binary protocol of the literature stays the headline method.
        save_predictions: also write predicted label maps under ``<out>/predictions/<method>/``.
        overlays: write overlay PNGs of the best, median and worst scan.
        progress: show tqdm progress bars.
        command: the command line that made this run, recorded as ``command`` in ``summary.json`` (the CLI fills
            it in) so that a single fold can be re-run by changing ``--folds`` and ``--out``.
        extra: advanced options, e.g. ``{"registration": {"affine_iterations": 100, "bspline_iterations": 100}}``
            (passed to :func:`~fewshot_monai.evaluation.registration.register_atlases`).
    """

    data: str
    out: str
    dataset: str = "chaos"
    model: str | None = None
    protocol: str = "ep1"
    setting: int = 1
    folds: list[int] | None = None
    n_folds: int = 5
    shots: int = 1
    pseudo_label: str = "none"
    pseudo_label_options: dict = field(default_factory=dict)
    baseline: str = "none"
    z_range_from: str = "network"
    organs: list[str] | None = None
    label_map: dict[str, int] | None = None
    images: str | None = None
    labels: str | None = None
    intensity: str | None = None
    plane: str = "auto"
    limit_queries: int | None = None
    n_chunks: int = 3
    spatial_size: int = 256
    batch_size: int = 8
    inferer_options: dict = field(default_factory=dict)
    adapt: dict | None = None
    adapt_cache: str | None = None
    adapt_ensemble: int = 1
    registration_threads: int = 2
    atlas_registration: str = "affine"
    registration_cache: str | None = None
    joint: bool = False
    save_predictions: bool = False
    overlays: bool = True
    progress: bool = True
    command: str | None = None
    extra: dict = field(default_factory=dict)


def _coerce(config) -> EvaluationConfig:
    if isinstance(config, EvaluationConfig):
        cfg = dataclasses.replace(config)
    elif isinstance(config, Mapping):
        names = {f.name for f in dataclasses.fields(EvaluationConfig)}
        unknown = sorted(set(config) - names)
        if unknown:
            raise ValueError(f"unknown evaluation option(s) {unknown}; valid: {sorted(names)}")
        cfg = EvaluationConfig(**dict(config))
    else:
        raise TypeError(f"config must be an EvaluationConfig or a mapping, got {type(config).__name__}")
    cfg.dataset = str(cfg.dataset).lower()
    cfg.baseline = str(cfg.baseline or "none").lower()
    if cfg.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {cfg.dataset!r}; valid: {', '.join(DATASETS)}")
    if cfg.baseline not in BASELINES:
        raise ValueError(f"unknown baseline {cfg.baseline!r}; valid: {', '.join(BASELINES)}")
    cfg.z_range_from = str(cfg.z_range_from or "network").lower()
    if cfg.z_range_from not in Z_RANGE_SOURCES:
        raise ValueError(f"unknown z_range_from {cfg.z_range_from!r}; valid: {', '.join(Z_RANGE_SOURCES)}")
    if cfg.z_range_from != "network" and str(cfg.protocol).lower() != "ep2":
        raise ValueError("z_range_from applies to EP2 only (EP1 takes the range from the query label)")
    cfg.atlas_registration = str(cfg.atlas_registration or "affine").lower()
    if cfg.atlas_registration not in ATLAS_REGISTRATIONS:
        valid = ", ".join(ATLAS_REGISTRATIONS)
        raise ValueError(f"unknown atlas_registration {cfg.atlas_registration!r}; valid: {valid}")
    from fewshot_monai.inferers.ensemble import check_adaptation_ensemble

    check_adaptation_ensemble(cfg.adapt_ensemble, bool((cfg.adapt or {}).get("iterations")))
    if int(cfg.setting) not in (1, 2):
        raise ValueError(f"setting must be 1 or 2, got {cfg.setting}")
    if cfg.limit_queries is not None and int(cfg.limit_queries) < 1:
        raise ValueError(f"limit_queries must be >= 1, got {cfg.limit_queries}")
    return cfg


def _check_inferer_options(options: Mapping) -> None:
    """Refuse options :class:`~fewshot_monai.inferers.FewShotSegmenter` does not take (the evaluation sets the rest)."""
    import inspect

    from fewshot_monai.inferers import FewShotSegmenter

    own = {"n_chunks", "spatial_size", "batch_size", "pseudo_label", "adaptation", "adapt_cache", "progress"}
    valid = {n for n, p in inspect.signature(FewShotSegmenter).parameters.items() if p.kind == p.KEYWORD_ONLY} - own
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ValueError(f"bad inferer option(s) {unknown}; valid: {', '.join(sorted(valid))}")
    if options.get("component_anchor") and options.get("range_anchor") is None:
        raise ValueError("component_anchor needs range_anchor (an organ name or 'auto')")


def _organ_mask(label, label_id: int):
    return (label == int(label_id)).to(torch.uint8)


def _extent(mask: np.ndarray) -> tuple[int, int] | None:
    z = np.flatnonzero(mask.reshape(-1, mask.shape[-1]).any(axis=0))
    return (int(z[0]), int(z[-1])) if z.size else None


def _row(method, cfg, fold: Fold, scan, organ, label_id, metrics, seconds, used, scored, true):
    return {
        "method": method,
        "protocol": cfg.protocol,
        "setting": int(cfg.setting),
        "fold": fold.index,
        "scan": scan,
        "organ": organ,
        "label_id": int(label_id),
        "support_ids": list(fold.support_ids),
        **metrics,
        "seconds": float(seconds),
        "z_first": None if used is None else used[0],
        "z_last": None if used is None else used[1],
        "scored_first": None if scored is None else scored[0],
        "scored_last": None if scored is None else scored[1],
        "true_first": true[0],
        "true_last": true[1],
    }


def _save_prediction(out: Path, method: str, fold: int, scan: str, labels, reference) -> None:
    from fewshot_monai.data.io import save_volume

    path = out / "predictions" / method / f"fold{fold}_{scan}.nii.gz"
    save_volume(torch.as_tensor(labels)[None], path, reference=reference, is_label=True)


def run_evaluation(config) -> dict:
    """Evaluate a few-shot model (and optionally the registration baseline) with SSL-ALPNet's cross-validation.

    Args:
        config: an :class:`EvaluationConfig` or a mapping of its fields.

    Returns:
        the summary dictionary written to ``<out>/summary.json``: per-organ ``dice`` (mean over scans, 0..1),
        ``dice_std``, ``dice_mean`` (mean of the organ means), ``hd95_mm``, ``asd_mm`` (+ ``_std``), ``n_scans``,
        ``seconds_per_query``, ``protocol`` (every option, data folder, model description, date), ``folds``,
        ``skipped``, ``outputs`` and, with a baseline, ``baseline: {"registration": {same keys}}``.
    """
    cfg = _coerce(config)
    run = _EvaluationRun(cfg)
    with tempfile.TemporaryDirectory(prefix="fewshot_eval_") as cache:
        run.cache = Path(cache)
        try:
            run.run()
        finally:
            if run.worker is not None:
                run.worker.close()
        summary = run.summary()
        overlay_case = run.overlay_case if cfg.overlays else None
        write_outputs(run.out, summary, run.rows, run.organs, METHOD_NAME, overlay_case)
    return summary


class _EvaluationRun:
    """The state of one evaluation: validated options, data, models, and the rows scored so far."""

    def __init__(self, cfg: EvaluationConfig):
        self.cfg = cfg
        self.protocol = get_protocol(cfg.protocol)
        self.pseudo_label = get_pseudo_label(cfg.pseudo_label, **dict(cfg.pseudo_label_options or {}))
        self.worker = None
        self.uses_atlas = float(cfg.inferer_options.get("atlas_prior") or 0.0) > 0
        if cfg.baseline == "registration" or cfg.z_range_from == "registration" or self.uses_atlas:
            from fewshot_monai.evaluation.registration import RegistrationWorker, require_elastix

            require_elastix()
            self.worker = RegistrationWorker(threads=cfg.registration_threads)
        _check_inferer_options(cfg.inferer_options)  # bad options fail here, before any data is read
        from fewshot_monai.engines.adaptation import SupportAdaptation

        self.adaptation = SupportAdaptation.from_dict(cfg.adapt) if cfg.adapt else None
        if self.adaptation is not None and self.adaptation.spatial_size is None:
            self.adaptation = dataclasses.replace(self.adaptation, spatial_size=int(cfg.spatial_size))
        if self.adaptation is not None and self.adaptation.iterations == 0:
            self.adaptation = None
        self.adapted: dict[int, dict] = {}
        self.data = load_labelled_dataset(
            cfg.data, cfg.dataset, cfg.label_map, cfg.organs, cfg.intensity, images=cfg.images, labels=cfg.labels
        )
        self.organs = list(cfg.organs) if cfg.organs else list(self.data.label_map)
        unknown = [o for o in self.organs if o not in self.data.label_map]
        if unknown:
            raise ValueError(f"unknown organ(s) {unknown}; the label map has {list(self.data.label_map)}")
        self.all_folds = folds(self.data.order, n_folds=cfg.n_folds, shots=cfg.shots)
        self.indices = list(range(len(self.all_folds))) if cfg.folds is None else [int(k) for k in cfg.folds]
        bad = [k for k in self.indices if not 0 <= k < len(self.all_folds)]
        if bad:
            raise ValueError(f"fold index(es) {bad} out of range 0..{len(self.all_folds) - 1}")
        self.models = FoldModels(cfg.model, cfg.setting, self.data.modality)
        self.models.check(self.indices)
        if self.worker is not None:
            self.worker.start()  # elastix must load (torch-free subprocess) before any work: one-line error if not
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        plain = [PLAIN_METHOD_NAME] if self.pseudo_label is not None else []
        joint = [JOINT_METHOD_NAME] if cfg.joint else []
        self.methods = [METHOD_NAME, *plain, *joint] + (["registration"] if cfg.baseline == "registration" else [])
        self.rows: list[dict] = []
        self.skipped: list[dict] = []
        self.query_seconds: dict[str, dict] = {m: {} for m in self.methods}
        self.model_descriptions: dict[int, str] = {}
        self.cache: Path | None = None
        self.started = time.perf_counter()

    def load(self, scan_id: str) -> dict:
        from fewshot_monai.data.io import load_case

        item = self.data.items[scan_id]
        return load_case(
            item["image"], item["label"], intensity=self.data.intensity, case_id=scan_id, plane=self.cfg.plane
        )

    def overlay_case(self, fold: int, scan: str):
        """(image, predictions, truths, plane) of a scored scan of our method, for the report's overlays; None if
        gone."""
        path = self.cache / f"{METHOD_NAME}__{fold}__{scan}.npz"
        if not path.is_file():
            return None
        try:
            case = self.load(scan)
        except InputError as err:  # pragma: no cover - it was readable a moment ago
            logger.warning("overlay of scan %s skipped: %s", scan, err)
            return None
        with np.load(path) as saved:
            predictions = {organ: saved[organ] for organ in saved.files}
        truths = {o: (case["label"][0] == self.data.label_map[o]).cpu().numpy() for o in predictions}
        from fewshot_monai.transforms.plane import plane_of

        return case["image"][0].cpu().numpy(), predictions, truths, plane_of(case["image"])

    def skip(self, method: str, fold: int, scan: str, organ: str | None, reason: str) -> None:
        logger.warning("skipped %s fold %s scan %s %s: %s", method, fold, scan, organ or "", reason)
        self.skipped.append({"method": method, "fold": fold, "scan": scan, "organ": organ, "reason": reason})

    def run(self) -> None:
        bar = tqdm([self.all_folds[k] for k in self.indices], desc="folds", unit="fold", disable=not self.cfg.progress)
        for fold in bar:
            self.run_fold(fold)

    def run_fold(self, fold: Fold) -> None:
        model = self.models.get(fold.index)
        self.model_descriptions[fold.index] = model.description
        try:
            supports = [self.load(s) for s in fold.support_ids]
        except InputError as err:
            for scan in fold.query_ids:
                self.skip("all", fold.index, scan, None, f"support unreadable: {err}")
            return
        support_masks: dict[str, list] = {}
        for organ in self.organs:
            masks = [_organ_mask(s["label"], self.data.label_map[organ]) for s in supports]
            empty = [s["id"] for s, m in zip(supports, masks) if not bool(m.any())]
            if empty:
                self.skip("all", fold.index, "*", organ, f"organ missing in support scan(s) {empty}")
                continue
            support_masks[organ] = masks
        from fewshot_monai.inferers import FewShotSegmenter, adaptation_ensemble

        cfg = self.cfg

        def build(adaptation):
            return FewShotSegmenter(
                model.network,
                [s["image"] for s in supports],
                [s["label"] for s in supports],
                {o: self.data.label_map[o] for o in support_masks},
                n_chunks=cfg.n_chunks,
                spatial_size=cfg.spatial_size,
                batch_size=cfg.batch_size,
                pseudo_label=self.pseudo_label,
                adaptation=adaptation if support_masks else None,
                adapt_cache=cfg.adapt_cache,
                progress=cfg.progress,
                **cfg.inferer_options,
            )

        try:
            segmenter = adaptation_ensemble(build, self.adaptation, cfg.adapt_ensemble)
        except InputError as err:  # e.g. no support slice shows the organs large enough to adapt to
            for scan in fold.query_ids:
                self.skip("all", fold.index, scan, None, f"support preparation failed: {err}")
            return
        adapted = segmenter.preparation["adaptation"]
        if adapted is not None:
            self.adapted[fold.index] = {**adapted, "seconds": round(adapted["seconds"], 1)}
            logger.info(
                "fold %d: network adapted to support %s in %.0f s",
                fold.index,
                ",".join(fold.support_ids),
                adapted["seconds"],
            )
        queries = list(fold.query_ids)[: cfg.limit_queries] if cfg.limit_queries else list(fold.query_ids)
        bar = tqdm(queries, desc=f"fold {fold.index} scans", unit="scan", leave=False, disable=not cfg.progress)
        for scan in bar:
            self.run_query(fold, scan, segmenter, supports[0]["image"])
            self.log_query(fold, scan)
        done = [r["dice"] for r in self.rows if r["method"] == METHOD_NAME and r["fold"] == fold.index]
        if done:
            logger.info("fold %d: %d scan-organ pairs, mean Dice %.3f", fold.index, len(done), float(np.mean(done)))

    def log_query(self, fold: Fold, scan: str) -> None:
        """One line per scored query (with or without a progress bar): Dice per organ and seconds."""
        rows = [r for r in self.rows if r["method"] == METHOD_NAME and r["fold"] == fold.index and r["scan"] == scan]
        if rows:
            dice = ", ".join(f"{r['organ']} {r['dice']:.3f}" for r in rows)
            seconds = self.query_seconds[METHOD_NAME].get(f"{fold.index}/{scan}", 0.0)
            logger.info("fold %d scan %s: %s (%.1f s)", fold.index, scan, dice, seconds)

    def run_query(self, fold: Fold, scan: str, segmenter, support_image) -> None:
        from fewshot_monai.transforms.plane import match_plane

        try:  # a query cut in another plane than the support is resampled into the support's (logged), label too
            query = match_plane(self.load(scan), support_image)
        except InputError as err:
            self.skip("all", fold.index, scan, None, str(err))
            return
        truths = {}
        for organ in segmenter.organs:
            truth = _organ_mask(query["label"], self.data.label_map[organ])
            if not bool(truth.any()):
                self.skip("all", fold.index, scan, organ, "organ missing in the query label")
                continue
            truths[organ] = truth
        if not truths:
            return
        spacing = spacing_from_affine(query["image"].affine)
        predictions: dict[str, dict[str, np.ndarray]] = {m: {} for m in self.methods}
        baseline = self.cfg.baseline == "registration" or self.cfg.z_range_from == "registration"
        atlas = self.register(fold, scan, query, truths) if baseline else None
        hints, before = {}, 0.0
        if self.cfg.z_range_from == "registration":
            if atlas is None:
                for organ in truths:
                    self.skip(METHOD_NAME, fold.index, scan, organ, "no organ range: the registration failed")
                return
            from fewshot_monai.evaluation.registration import fuse_organ

            # an organ the warped support label lost gets no hint: the network estimates its range itself
            hints = {organ: _extent(fuse_organ(atlas, self.data.label_map[organ])) for organ in truths}
            before = atlas.seconds
        atlas_masks = None
        if self.uses_atlas:
            from fewshot_monai.evaluation.registration import fuse_organ

            shared = atlas is not None and self.cfg.atlas_registration == "bspline"
            warped = atlas if shared else self.register(fold, scan, query, truths, self.cfg.atlas_registration)
            # a failed registration leaves the query without a prior (logged as a registration skip)
            if warped is not None:
                atlas_masks = {organ: fuse_organ(warped, self.data.label_map[organ]) for organ in truths}
                if not (shared and self.cfg.z_range_from == "registration"):  # not counted twice
                    before += warped.seconds
        try:
            result = segment_query(
                self.protocol,
                segmenter,
                query["image"],
                {organ: (lambda truth=truth: truth) for organ, truth in truths.items()},  # called by EP1 only
                z_range_hints=hints,
                atlas=atlas_masks,
            )
        except InputError as err:
            for organ in truths:
                self.skip(METHOD_NAME, fold.index, scan, organ, str(err))
            return
        share = result.encode_seconds / len(result.organs)  # the query is encoded once for all organs
        total = before + result.seconds
        for organ, organ_result in result.organs.items():
            truth = truths[organ]
            seconds = organ_result.seconds + share
            extra = {}
            if self.pseudo_label is not None:
                extra = pseudo_label_record(organ_result, truth, self.cfg.spatial_size)
                plain = organ_result.plain_mask
                plain_seconds = seconds - extra["pl_seconds"]
                self.score(
                    PLAIN_METHOD_NAME, fold, scan, organ, plain, truth, spacing, plain_seconds, organ_result.z_range
                )
                predictions[PLAIN_METHOD_NAME][organ] = plain
            mask = organ_result.mask
            self.score(METHOD_NAME, fold, scan, organ, mask, truth, spacing, seconds, organ_result.z_range, extra)
            predictions[METHOD_NAME][organ] = mask
        if self.cfg.joint:
            self.score_joint(fold, scan, result, truths, spacing, total, predictions)
        self.query_seconds[METHOD_NAME][f"{fold.index}/{scan}"] = total
        if self.pseudo_label is not None:
            stage = sum(o.pseudo_label_seconds() for o in result.organs.values())
            self.query_seconds[PLAIN_METHOD_NAME][f"{fold.index}/{scan}"] = total - stage
        if atlas is not None and "registration" in self.methods:
            self.score_registration(fold, scan, atlas, truths, spacing, predictions)
        for method, masks in predictions.items():
            if masks:
                np.savez_compressed(self.cache / f"{method}__{fold.index}__{scan}.npz", **masks)
        if self.cfg.save_predictions:
            self.save_predictions(fold, scan, result, predictions, query["image"])

    def save_predictions(self, fold: Fold, scan: str, result, predictions, reference) -> None:
        """Label maps under ``<out>/predictions/<method>/``, organs merged by the one rule
        (:func:`fewshot_monai.inferers.label_map`: the most probable organ wins a voxel)."""
        from fewshot_monai.inferers import label_map

        maps = {METHOD_NAME: result.label_map(), JOINT_METHOD_NAME: result.label_map()}
        if self.pseudo_label is not None:
            maps[PLAIN_METHOD_NAME] = result.label_map(plain=True)
        if predictions.get("registration"):
            ids = self.data.label_map
            maps["registration"] = label_map(
                {ids[o]: torch.as_tensor(m).float() for o, m in predictions["registration"].items()}
            )
        for method, labels in maps.items():
            if method in self.methods and predictions.get(method):
                _save_prediction(self.out, method, fold.index, scan, labels, reference)

    def score(self, method, fold: Fold, scan, organ, pred, truth, spacing, seconds, used, extra=None) -> None:
        truth_np = truth[0].cpu().numpy().astype(bool)
        scored = self.protocol.scored_range(truth)
        metrics = segmentation_metrics(pred, truth_np, spacing, scored)
        label_id = self.data.label_map[organ]
        row = _row(method, self.cfg, fold, scan, organ, label_id, metrics, seconds, used, scored, _extent(truth_np))
        self.rows.append({**row, **(extra or {})})

    def score_joint(self, fold: Fold, scan: str, result, truths, spacing, seconds, predictions) -> None:
        """Score the organs merged into one label map (:func:`fewshot_monai.inferers.label_map`)."""
        merged = result.label_map().cpu().numpy()
        self.query_seconds[JOINT_METHOD_NAME][f"{fold.index}/{scan}"] = seconds
        for organ, organ_result in result.organs.items():
            pred = merged == result.label_ids[organ]
            self.score(
                JOINT_METHOD_NAME, fold, scan, organ, pred, truths[organ], spacing, seconds, organ_result.z_range
            )
            predictions[JOINT_METHOD_NAME][organ] = pred

    def register(self, fold: Fold, scan: str, query, truths, transform: str = "bspline"):
        """The fold's support labels registered onto the query (None when it failed, logged per organ):
        ``bspline``, the baseline's affine then B-spline registration, or ``affine`` only."""
        from fewshot_monai.evaluation.registration import register_atlases

        items = self.data.items
        options = dict(self.cfg.extra.get("registration", {}))
        if transform == "affine":
            options["bspline_iterations"] = 0
        try:
            atlas = register_atlases(
                items[scan]["image"],
                [items[s]["image"] for s in fold.support_ids],
                [items[s]["label"] for s in fold.support_ids],
                reference=query["image"],
                worker=self.worker,
                cache_dir=self.cfg.registration_cache,
                **options,
            )
        except InputError as err:
            for organ in truths:
                self.skip("registration", fold.index, scan, organ, str(err))
            return None
        return atlas

    def score_registration(self, fold: Fold, scan: str, atlas, truths, spacing, predictions) -> None:
        from fewshot_monai.evaluation.registration import fuse_organ

        self.query_seconds["registration"][f"{fold.index}/{scan}"] = atlas.seconds
        for organ, truth in truths.items():
            pred = fuse_organ(atlas, self.data.label_map[organ])
            used = self.protocol.scored_range(truth) or _extent(pred)
            self.score("registration", fold, scan, organ, pred, truth, spacing, atlas.seconds, used)
            predictions["registration"][organ] = pred

    def summary(self) -> dict:
        import monai

        import fewshot_monai

        cfg, data = self.cfg, self.data
        descriptions = sorted(set(self.model_descriptions.values()))
        ours = [r for r in self.rows if r["method"] == METHOD_NAME]
        summary = summarise_rows(ours, self.organs, self.query_seconds[METHOD_NAME])
        summary["method"] = METHOD_NAME
        summary["command"] = cfg.command
        summary["protocol"] = {
            "dataset": cfg.dataset,
            "data": str(Path(cfg.data).resolve()),
            "protocol": self.protocol.name,
            "protocol_description": self.protocol.description,
            "setting": int(cfg.setting),
            "folds": self.indices,
            "n_folds": cfg.n_folds,
            "shots": cfg.shots,
            "pseudo_label": cfg.pseudo_label,
            "baseline": cfg.baseline,
            "z_range_from": cfg.z_range_from,
            "atlas_registration": cfg.atlas_registration if self.uses_atlas else None,
            "organs": self.organs,
            "label_map": {o: data.label_map[o] for o in self.organs},
            "images": cfg.images,
            "labels": cfg.labels,
            "intensity": data.intensity,
            "limit_queries": cfg.limit_queries,
            "n_chunks": cfg.n_chunks,
            "spatial_size": cfg.spatial_size,
            "inferer_options": dict(cfg.inferer_options),
            "adapt": None if self.adaptation is None else self.adaptation.to_dict(),
            "adapt_ensemble": int(cfg.adapt_ensemble),
            "model_arg": cfg.model,
            "model": descriptions[0] if len(descriptions) == 1 else "; ".join(descriptions),
            "model_per_fold": {str(k): v for k, v in self.model_descriptions.items()},
            "method_name": METHOD_NAME,
            "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "versions": {
                "fewshot_monai": fewshot_monai.__version__,
                "monai": monai.__version__,
                "torch": torch.__version__,
            },
            "seconds_total": round(time.perf_counter() - self.started, 1),
        }
        summary["folds"] = [
            {"index": f.index, "query_ids": list(f.query_ids), "support_ids": list(f.support_ids)}
            for f in self.all_folds
            if f.index in self.indices
        ]
        summary["skipped"] = self.skipped
        if self.adaptation is not None:
            per_fold = {str(k): v for k, v in sorted(self.adapted.items())}
            seconds = [v["seconds"] for v in self.adapted.values()]
            summary["adaptation"] = {
                "options": self.adaptation.to_dict(),
                "seconds_per_support": float(np.mean(seconds)) if seconds else None,
                "per_fold": per_fold,
                "note": "one-off fine-tuning per support, not included in seconds_per_query",
            }
        if self.pseudo_label is not None:
            plain_rows = [r for r in self.rows if r["method"] == PLAIN_METHOD_NAME]
            plain = summarise_rows(plain_rows, self.organs, self.query_seconds[PLAIN_METHOD_NAME])
            plain["method"] = PLAIN_METHOD_NAME
            plain["description"] = "the same model and run without pseudo-labelling (the stage's input)"
            summary["plain"] = plain
            summary["pseudo_label"] = pseudo_label_summary(ours, summary, plain, self.organs, self.pseudo_label)
        if JOINT_METHOD_NAME in self.methods:
            rows = [r for r in self.rows if r["method"] == JOINT_METHOD_NAME]
            joint = summarise_rows(rows, self.organs, self.query_seconds[JOINT_METHOD_NAME])
            joint["method"] = JOINT_METHOD_NAME
            joint["description"] = "the final prediction with all organs merged into one label map (most probable wins)"
            summary["joint"] = joint
        if "registration" in self.methods:
            rows = [r for r in self.rows if r["method"] == "registration"]
            reg = summarise_rows(rows, self.organs, self.query_seconds["registration"])
            reg["method"] = "registration"
            reg["description"] = (
                "single-atlas registration (itk-elastix affine + B-spline, support image -> query image), support "
                "label warped with nearest neighbour; k-shot: majority vote"
            )
            reg["worker_startup_seconds"] = self.worker.startup_seconds  # once per run, not in seconds_per_query
            summary["baseline"] = {"registration": reg}
        return summary
