"""Argument types shared by the sub-commands (argparse ``type=`` callables)."""

from __future__ import annotations

import argparse

__all__ = [
    "name_list",
    "int_list",
    "name_ids",
    "add_dataset_arguments",
    "dataset_from_args",
    "PLANE_CHOICES",
    "PLANE_HELP",
]

#: the ``--plane`` choices: :data:`fewshot_monai.transforms.plane.PLANES` (repeated here so that help stays instant
#: without importing MONAI; a test checks they agree)
PLANE_CHOICES = ("auto", "stored", "axial", "coronal", "sagittal")
PLANE_HELP = (
    "slicing plane: auto (default: each volume's acquisition plane, its thickest voxel axis), stored (the stored "
    "third axis), axial, coronal or sagittal"
)


def name_list(text: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``."""
    return [v.strip() for v in text.split(",") if v.strip()]


def int_list(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``."""
    try:
        return [int(v) for v in name_list(text)]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err


def name_ids(text: str) -> dict[str, int]:
    """``"liver=1,spleen=4"`` -> ``{"liver": 1, "spleen": 4}``."""
    out = {}
    for part in name_list(text):
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip().lstrip("-").isdigit():
            raise argparse.ArgumentTypeError(f"expected name=id pairs like liver=1,spleen=4, got {part!r}")
        out[name.strip()] = int(value)
    if not out:
        raise argparse.ArgumentTypeError("expected name=id pairs like liver=1,spleen=4, got nothing")
    return out


def add_dataset_arguments(parser: argparse.ArgumentParser, default: str = "chaos", data_required: bool = True) -> None:
    """``--data``, ``--dataset`` (a built-in name or ``generic``), ``--label-map``, ``--images``, ``--labels`` and
    ``--intensity``: the data-set options of the benchmark scripts, read by :func:`dataset_from_args`."""
    parser.add_argument("--data", required=data_required, help="data folder")
    parser.add_argument(
        "--dataset",
        default=default,
        help="chaos, sabs, phantom, phantom_ct, or generic (any folder: nnU-Net raw, images/ + labels/, or images)",
    )
    parser.add_argument(
        "--label-map", type=name_ids, default=None, help="name=id,... (generic; default: nnU-Net dataset.json)"
    )
    parser.add_argument("--images", default=None, help="generic: image folder or glob, relative to --data")
    parser.add_argument("--labels", default=None, help="generic: label folder or glob, relative to --data")
    parser.add_argument("--intensity", default=None, help="intensity preset override (ct, mri, preprocessed, none)")


def dataset_from_args(args: argparse.Namespace, organs: list[str] | None = None, require_labels: bool = True):
    """The :class:`~fewshot_monai.data.datasets.LabelledDataset` named by :func:`add_dataset_arguments`' options."""
    from fewshot_monai.data.datasets import load_labelled_dataset

    return load_labelled_dataset(
        args.data,
        args.dataset,
        args.label_map,
        organs,
        args.intensity,
        images=args.images,
        labels=args.labels,
        require_labels=require_labels,
    )
