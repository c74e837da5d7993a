"""Label a whole folder of unlabelled volumes from one labelled example, as an nnU-Net v2 raw dataset.

``fewshot-monai pseudolabel`` runs the batch segmenter (:func:`fewshot_monai.batch.segment_folder`: support
prepared once, resumable, bad cases listed, atomic writes) with :class:`NnUNetWriter`, which writes per case:

- ``imagesTr/<case>_0000.nii.gz``: the volume itself (its own intensities and voxel grid, whatever its format);
- ``labelsTr/<case>.nii.gz``: the pseudo-label map, organs numbered ``1..N`` in the order of ``--organs``;
  voxels whose confidence is below ``min_confidence`` get the ``ignore`` label ``N + 1`` (nnU-Net v2's ignore
  label is the highest one and contributes nothing to its loss);
- ``confidence/<case>.nii.gz``: the per-voxel confidence, the probability of the class the voxel was given (an
  organ's probability, or for background one minus the largest organ probability);
- ``reports/<case>.json``: volumes, confidences, the fraction of voxels kept, and the fingerprint (a re-run skips
  the cases done with the same support, model and options);

and for the batch ``dataset.json`` (``channel_names``, ``labels`` with ``ignore``, ``numTraining``,
``file_ending``), in the format nnU-Net v2 documents for its raw datasets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["NnUNetWriter", "confidence_map"]


def confidence_map(result, labels: torch.Tensor) -> torch.Tensor:
    """Per voxel, the probability of the class ``labels`` (``result.label_map()``) gave it: the most probable organ
    above 0.5 wins a voxel, so an organ voxel's confidence is the largest organ probability, and a background
    voxel's is one minus it."""
    best = torch.stack([o.probability.float() for o in result.organs.values()]).amax(dim=0)
    return torch.where(labels > 0, best, 1.0 - best)


@dataclass
class NnUNetWriter:
    """Per-case outputs of ``fewshot-monai pseudolabel``: an nnU-Net v2 raw dataset (see the module docstring).

    Args:
        min_confidence: voxels whose confidence is below this become ``ignore`` (0: keep every voxel).
        channel_name: the ``channel_names`` entry of ``dataset.json`` (``MRI``, ``CT``...).
    """

    min_confidence: float = 0.9
    channel_name: str = "MRI"
    name = "nnunet"

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.min_confidence) <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence}")

    def recorded(self) -> dict:
        return {"min_confidence": float(self.min_confidence)}

    def outputs(self, output: Path, case: str) -> dict[str, Path]:
        return {
            "image": output / "imagesTr" / f"{case}_0000.nii.gz",
            "segmentation": output / "labelsTr" / f"{case}.nii.gz",
            "confidence": output / "confidence" / f"{case}.nii.gz",
            "report": output / "reports" / f"{case}.json",
        }

    def write(self, case: dict, result, labels, query: dict, out: dict[str, Path], options, report: dict) -> None:
        from fewshot_monai.batch import to_input_geometry
        from fewshot_monai.data.io import load_volume, save_volume
        from fewshot_monai.utils.files import atomic_write

        confidence = confidence_map(result, labels)
        order = {result.label_ids[name]: k + 1 for k, name in enumerate(result.organs)}  # support id -> 1..N
        train = torch.zeros_like(labels, dtype=torch.int16)
        for support_id, index in order.items():
            train[labels == support_id] = index
        ignore = len(order) + 1
        kept = confidence >= float(self.min_confidence)
        train[~kept] = ignore
        raw = load_volume(case["image"], orientation=None)  # the file's own intensities and voxel order
        train_file, affine = to_input_geometry(train[None], query["image"])
        conf_file, _ = to_input_geometry(confidence[None], query["image"])
        from monai.data import MetaTensor

        save_volume(raw, out["image"])
        save_volume(MetaTensor(train_file, affine=torch.as_tensor(affine)), out["segmentation"], is_label=True)
        save_volume(MetaTensor(conf_file, affine=torch.as_tensor(affine)), out["confidence"])
        report["kept_fraction"] = round(float(kept.float().mean()), 4)
        report["labels"] = {"background": 0, **{n: order[result.label_ids[n]] for n in result.organs}, "ignore": ignore}
        report["min_confidence"] = float(self.min_confidence)
        with atomic_write(out["report"]) as handle:
            json.dump(report, handle, indent=2)

    def finish(self, output: Path, rows: list[dict], organs: Mapping[str, int], options) -> None:
        """``dataset.json`` for every case whose label file exists (this run's and earlier ones')."""
        from fewshot_monai.utils.files import atomic_write

        labels = {"background": 0, **{name: k + 1 for k, name in enumerate(organs)}, "ignore": len(organs) + 1}
        cases = sorted(p.name[: -len(".nii.gz")] for p in (output / "labelsTr").glob("*.nii.gz"))
        dataset = {
            "channel_names": {"0": self.channel_name},
            "labels": labels,
            "numTraining": len(cases),
            "file_ending": ".nii.gz",
            "name": output.name,
            "description": "pseudo-labels from one labelled example (fewshot-monai pseudolabel); voxels below "
            f"confidence {self.min_confidence} are 'ignore'",
            "fewshot_monai": {"support_label_ids": dict(organs), "min_confidence": float(self.min_confidence)},
        }
        output.mkdir(parents=True, exist_ok=True)
        with atomic_write(output / "dataset.json") as handle:
            json.dump(dataset, handle, indent=2)
