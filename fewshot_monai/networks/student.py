"""The self-trained student: an ordinary MONAI segmentation network in a self-describing checkpoint.

``fewshot-monai selftrain`` trains a 2D :class:`monai.networks.nets.UNet` on axial slices (background + one class
per organ). Its checkpoint holds everything needed to run it with no support and no fewshot-monai state::

    {"format": "fewshot-monai-student/1",
     "network": {"name": "UNet", "args": {...}},        # monai.networks.nets.<name>(**args)
     "state_dict": {...},
     "organs": {"liver": 1, ...},                       # organ -> label id written; k-th organ = output channel k+1
     "intensity": "mri",                                # fewshot_monai.transforms.IntensityPreset of the inputs
     "slice_size": 128,                                 # axial slices are resized to slice_size x slice_size
     "training": {...}}                                 # rounds, filter, iterations... (informative)

so in a plain MONAI workflow ``net, info = load_student("student.pt")`` and a
``monai.inferers.SliceInferer(roi_size=(S, S), spatial_dim=2)`` over a volume resized in plane to ``(S, S)`` give the
class logits (:class:`fewshot_monai.inferers.StudentSegmenter` does exactly that).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from fewshot_monai.errors import UnreadableFileError

__all__ = ["STUDENT_FORMAT", "StudentInfo", "build_student", "default_student_args", "save_student", "load_student"]

STUDENT_FORMAT = "fewshot-monai-student/1"


@dataclass
class StudentInfo:
    """What a student checkpoint says about its network (see the module docstring)."""

    name: str
    args: dict
    organs: dict[str, int]
    intensity: str
    slice_size: int
    training: dict = field(default_factory=dict)


def default_student_args(n_organs: int, channels: tuple[int, ...] = (16, 32, 64, 128)) -> dict:
    """A small 2D U-Net: one input channel, background + ``n_organs`` outputs, residual units, instance norm."""
    return {
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": int(n_organs) + 1,
        "channels": [int(c) for c in channels],
        "strides": [2] * (len(channels) - 1),
        "num_res_units": 1,
        "norm": "instance",
    }


def build_student(name: str, args: Mapping) -> torch.nn.Module:
    """``monai.networks.nets.<name>(**args)``."""
    from monai.networks import nets

    if not hasattr(nets, name):
        raise ValueError(f"monai.networks.nets has no network {name!r}")
    return getattr(nets, name)(**dict(args))


def save_student(path: str | os.PathLike, network: torch.nn.Module, info: StudentInfo) -> None:
    """Write the checkpoint atomically."""
    from fewshot_monai.networks.alpnet import cpu_state_dict
    from fewshot_monai.utils.files import atomic_write

    checkpoint = {
        "format": STUDENT_FORMAT,
        "network": {"name": info.name, "args": dict(info.args)},
        "state_dict": cpu_state_dict(network),
        "organs": dict(info.organs),
        "intensity": info.intensity,
        "slice_size": int(info.slice_size),
        "training": dict(info.training),
    }
    with atomic_write(path, "wb") as handle:
        torch.save(checkpoint, handle)


def load_student(path: str | os.PathLike) -> tuple[torch.nn.Module, StudentInfo]:
    """The network (eval mode) and its description; UnreadableFileError names the file when it is not a student."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise UnreadableFileError(path, "file does not exist") from err
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same one-line error
        raise UnreadableFileError(path, f"not a readable PyTorch checkpoint ({type(err).__name__})") from err
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != STUDENT_FORMAT:
        raise UnreadableFileError(path, f"not a fewshot-monai student checkpoint (no format {STUDENT_FORMAT!r})")
    info = StudentInfo(
        name=checkpoint["network"]["name"],
        args=dict(checkpoint["network"]["args"]),
        organs={str(k): int(v) for k, v in checkpoint["organs"].items()},
        intensity=str(checkpoint["intensity"]),
        slice_size=int(checkpoint["slice_size"]),
        training=dict(checkpoint.get("training", {})),
    )
    network = build_student(info.name, info.args)
    network.load_state_dict(checkpoint["state_dict"])
    return network.eval(), info
