"""Argument types shared by the sub-commands (argparse ``type=`` callables)."""

from __future__ import annotations

import argparse

__all__ = ["name_list", "int_list", "name_ids", "PLANE_CHOICES", "PLANE_HELP"]

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
