"""Self-training: from one labelled scan and a folder of unlabelled ones to a standard MONAI network that needs no
support (``fewshot-monai selftrain``).

Round ``r`` (``r = 0 .. rounds - 1``):

1. the *teacher* labels every input volume with a per-voxel confidence, written as an nnU-Net v2 raw dataset in
   ``<output>/round_<r>/pseudo`` (:class:`~fewshot_monai.pseudolabel.dataset.NnUNetWriter`, nothing ignored yet).
   Round 0's teacher is the few-shot segmenter (the ``segment`` options: support adaptation, pseudo-labelling...);
   round ``r > 0``'s is the student of round ``r - 1`` (its softmax probabilities,
   :class:`~fewshot_monai.inferers.StudentSegmenter`). The batch machinery does the labelling, so it is resumable
   case by case and a bad case is listed and left out;
2. the round's *filter* (:mod:`fewshot_monai.pseudolabel.filters`: ``fixed``, ``classwise`` or ``stpp``) decides,
   on the training grid, which voxels are kept; the others become the ``ignore`` label;
3. a fresh *student*, a 2D :class:`monai.networks.nets.UNet` (background + organs, axial slices resized to
   ``slice_size``), is trained with ignite on the support's slices plus the kept pseudo-labels
   (:func:`~fewshot_monai.engines.student.train_student`, ignored voxels contribute nothing to the loss) and saved
   as ``<output>/round_<r>/student.pt`` (:mod:`fewshot_monai.networks.student`), then ``round.json`` (filter,
   fractions kept, seconds). A re-run skips every round whose ``round.json`` exists.

Finally the last student labels the inputs once more (``<output>/round_<rounds>/pseudo``: the dataset labelled by
the final model) and is copied to ``<output>/student.pt``; ``<output>/selftrain.json`` sums it up.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fewshot_monai.engines.student import StudentTraining

__all__ = ["SelfTrainOptions", "self_train"]

logger = logging.getLogger(__name__)


@dataclass
class SelfTrainOptions:
    """What :func:`self_train` does besides the teacher's segmentation options.

    Attributes:
        rounds: teacher -> student rounds.
        filter: ``fixed``, ``classwise`` or ``stpp`` (:mod:`fewshot_monai.pseudolabel.filters`).
        threshold: confidence threshold of ``fixed`` and the cap of ``classwise``.
        keep: least fraction of each class's voxels ``classwise`` keeps.
        fraction: share of the volumes ``stpp`` keeps in round 0 (one more share each round).
        slice_size: in-plane size of the student's slices.
        channels: the student U-Net's channels per level.
        training: the student's :class:`~fewshot_monai.engines.student.StudentTraining`.
        teacher_labels: a ``fewshot-monai pseudolabel --min-confidence 0`` output to reuse as round 0's labels
            (its cases are copied in and skipped when they were made with the same support, model and options).
        progress: progress bars.
    """

    rounds: int = 2
    filter: str = "classwise"
    threshold: float = 0.9
    keep: float = 0.8
    fraction: float = 0.5
    slice_size: int = 128
    channels: tuple[int, ...] = (16, 32, 64, 128)
    training: StudentTraining = field(default_factory=StudentTraining)
    teacher_labels: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        from fewshot_monai.pseudolabel.filters import FILTERS

        if int(self.rounds) < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.filter not in FILTERS:
            raise ValueError(f"unknown filter {self.filter!r}; valid: {', '.join(FILTERS)}")
        if int(self.slice_size) < 16:
            raise ValueError(f"slice_size must be >= 16, got {self.slice_size}")

    def filter_options(self) -> dict:
        """The options the chosen filter takes (from ``threshold``, ``keep``, ``fraction``)."""
        from fewshot_monai.pseudolabel.filters import FILTERS

        taken = inspect.signature(FILTERS[self.filter]).parameters
        return {k: float(getattr(self, k)) for k in ("threshold", "keep", "fraction") if k in taken}


def _reuse_teacher_labels(source: Path, pseudo: Path, cases: Sequence[dict]) -> int:
    """Copy the files of ``cases`` from a ``pseudolabel`` output into round 0's folder; how many cases."""
    copied = 0
    for case in cases:
        names = [f"imagesTr/{case['id']}_0000.nii.gz", f"labelsTr/{case['id']}.nii.gz",
                 f"confidence/{case['id']}.nii.gz", f"reports/{case['id']}.json"]  # fmt: skip
        if all((source / n).is_file() for n in names) and not (pseudo / names[-1]).is_file():
            for name in names:  # the report last: it marks the case done
                (pseudo / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / name, pseudo / name)
            copied += 1
    return copied


def _training_grid(case: dict, pseudo: Path, intensity: str, series, size: int):
    """A labelled case on the student's grid: ``(Z, 1, S, S)`` image, labels and confidence stacks."""
    from fewshot_monai.data.io import load_case, load_volume
    from fewshot_monai.transforms.slicing import volume_to_slices

    image = load_case(case["image"], intensity=intensity, series=series)["image"]
    labels = load_volume(pseudo / "labelsTr" / f"{case['id']}.nii.gz", is_label=True)
    confidence = load_volume(pseudo / "confidence" / f"{case['id']}.nii.gz")
    return (
        volume_to_slices(image, size, 1, "bilinear").float(),
        volume_to_slices(labels, size, 1, "nearest").long(),
        volume_to_slices(confidence, size, 1, "bilinear").float(),
    )


def _support_samples(supports, organs, size: int, ignore: int) -> list[dict]:
    from fewshot_monai.engines.student import slice_samples
    from fewshot_monai.transforms.slicing import volume_to_slices

    samples = []
    for support in supports:
        label = torch.as_tensor(support["label"]).long()
        index = torch.zeros_like(label)
        for k, label_id in enumerate(organs.values(), start=1):
            index[label == label_id] = k
        image = volume_to_slices(support["image"], size, 1, "bilinear").float()
        samples += slice_samples(image, volume_to_slices(index, size, 1, "nearest").long(), ignore)
    return samples


def _train_round(r, done, pseudo, supports, organs, intensity, segment, options, round_dir) -> dict:
    """Filter round ``r``'s labels, train and save its student; the round's record."""
    from fewshot_monai.engines.student import slice_samples, train_student
    from fewshot_monai.networks.student import StudentInfo, build_student, default_student_args, save_student
    from fewshot_monai.pseudolabel.filters import apply_filter

    size, ignore = int(options.slice_size), len(organs) + 1
    grids = [_training_grid(c, pseudo, intensity, segment.series, size) for c in done]
    labels = [g[1][:, 0].numpy() for g in grids]
    keeps, details = apply_filter(
        options.filter, labels, [g[2][:, 0].numpy() for g in grids], r, **options.filter_options()
    )
    pseudo_samples = []
    for (image, label, _), keep in zip(grids, keeps):
        train = label.clone()
        train[:, 0][torch.from_numpy(~keep)] = ignore
        pseudo_samples += slice_samples(image, train, ignore)
    args = default_student_args(len(organs), tuple(options.channels))
    with torch.random.fork_rng():
        torch.manual_seed(int(options.training.seed))
        network = build_student("UNet", args)
    stats = train_student(
        network, _support_samples(supports, organs, size, ignore), pseudo_samples, ignore, options.training,
        progress=options.progress,
    )  # fmt: skip
    kept = {c["id"]: round(float(k.mean()), 4) for c, k in zip(done, keeps)}
    organ_kept = [float(k[lab > 0].mean()) for k, lab in zip(keeps, labels) if (lab > 0).any()]
    record = {
        "round": r,
        "filter": options.filter,
        "filter_options": options.filter_options(),
        "filter_details": json.loads(json.dumps(details, default=float)),
        "kept_fraction": round(float(np.mean(list(kept.values()))), 4),
        "kept_fraction_of_organ_voxels": round(float(np.mean(organ_kept)), 4) if organ_kept else None,
        "kept_fraction_per_case": kept,
        "training": stats,
    }
    info = StudentInfo(
        "UNet", args, dict(organs), intensity, size,
        {"round": r, "filter": options.filter, **options.filter_options(),
         **{k: v for k, v in dataclasses.asdict(options.training).items()}},
    )  # fmt: skip
    save_student(round_dir / "student.pt", network, info)
    return record


def self_train(
    input: str | os.PathLike,
    output: str | os.PathLike,
    support_images: Sequence[str | os.PathLike],
    support_labels: Sequence[str | os.PathLike],
    segment=None,
    options: SelfTrainOptions | None = None,
) -> dict:
    """Self-train a student from the labelled supports and the volumes of ``input`` (see the module docstring).

    Args:
        segment: the few-shot teacher's :class:`~fewshot_monai.batch.SegmentOptions` (round 0).
        options: :class:`SelfTrainOptions`.

    Returns:
        the content of ``<output>/selftrain.json``: per round the teacher, labelling and training seconds, the
        filter's details and fractions kept; the final student's path.

    Raises:
        InputError: bad support or input (before any work); ValueError: bad options; RuntimeError: every case of
        a round failed.
    """
    from fewshot_monai.batch import SegmentOptions, _default_organs, load_supports, segment_folder
    from fewshot_monai.data.datasets import find_volumes
    from fewshot_monai.pseudolabel.dataset import NnUNetWriter
    from fewshot_monai.utils.files import atomic_write

    segment = segment if isinstance(segment, SegmentOptions) else SegmentOptions(**dict(segment or {}))
    options = options or SelfTrainOptions()
    output = Path(output)
    cases, _ = find_volumes(input)
    intensity = segment.intensity or segment.modality
    supports = load_supports(list(support_images), list(support_labels), intensity, segment.series)
    organs = dict(segment.organs) if segment.organs else _default_organs(supports[0]["label"])
    segment = dataclasses.replace(segment, organs=organs, progress=options.progress)
    writer = NnUNetWriter(0.0, "CT" if segment.modality == "ct" else "MRI")
    rounds = []
    for r in range(int(options.rounds) + 1):
        round_dir = output / f"round_{r}"
        pseudo = round_dir / "pseudo"
        record_path = round_dir / "round.json"
        start = time.perf_counter()
        if r == 0:
            if options.teacher_labels:
                reused = _reuse_teacher_labels(Path(options.teacher_labels), pseudo, cases)
                logger.info("round 0: %d case(s) copied from %s", reused, options.teacher_labels)
            summary = segment_folder(input, pseudo, support_images, support_labels, segment, writer)
        else:
            teacher = dataclasses.replace(segment, model=str(output / f"round_{r - 1}" / "student.pt"))
            summary = segment_folder(input, pseudo, [], [], teacher, writer)
        first = "reference" if segment.pseudo_label == "reference_labels" else "few-shot"
        labelling = {"teacher": first if r == 0 else f"student of round {r - 1}",
                     "seconds": round(time.perf_counter() - start, 1), "done": summary["done"],
                     "skipped": summary["skipped"], "failed": [c["case"] for c in summary["cases"]
                                                               if c["status"] == "failed"]}  # fmt: skip
        done = [c for c, row in zip(cases, summary["cases"]) if row["status"] != "failed"]
        if not done:
            raise RuntimeError(f"round {r}: the teacher failed on every case (see {pseudo / 'summary.csv'})")
        if r == int(options.rounds):
            rounds.append({"round": r, "labelling": labelling, "final": True})
            break
        if record_path.is_file() and (round_dir / "student.pt").is_file():
            logger.info("round %d: done before, student %s", r, round_dir / "student.pt")
            record = json.loads(record_path.read_text())
        else:
            record = _train_round(r, done, pseudo, supports, organs, intensity, segment, options, round_dir)
            record["labelling"] = labelling
            with atomic_write(record_path) as handle:
                json.dump(record, handle, indent=2)
        logger.info("round %d: kept %.1f%% of the voxels, student trained in %.0f s (loss %.3f -> %.3f)", r,
                    100 * record["kept_fraction"], record["training"]["seconds"], record["training"]["loss"]["first"],
                    record["training"]["loss"]["last"])  # fmt: skip
        rounds.append(record)
    final = output / "student.pt"
    with atomic_write(final, "wb") as handle:
        handle.write((output / f"round_{int(options.rounds) - 1}" / "student.pt").read_bytes())
    result = {"student": str(final), "labels": str(output / f"round_{int(options.rounds)}" / "pseudo"),
              "organs": organs, "filter": options.filter, "rounds": rounds}  # fmt: skip
    with atomic_write(output / "selftrain.json") as handle:
        json.dump(result, handle, indent=2, default=str)
    return result
