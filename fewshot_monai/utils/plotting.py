"""Overlays of segmentations on the slices of a volume (axial, or its slicing plane), saved as PNG (matplotlib, no
display needed)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fewshot_monai.utils.files import atomic_path  # noqa: E402

__all__ = ["radiological_view", "pick_overlay_slices", "save_overlay_png", "save_three_plane_png"]


def radiological_view(axial_slice: np.ndarray) -> np.ndarray:
    """Turn a slice ``volume[..., k]`` of a loaded volume (indexed ``[x, y]``) into display rows/columns.

    The result is shown with ``origin="lower"``. For an axial slice of a RAS-oriented volume: anterior at the top
    and the patient's right on the viewer's left, as radiologists read axial images; for the other slicing planes
    (:mod:`fewshot_monai.transforms.plane`: coronal ``RSA``, sagittal ``ASR``) superior at the top.
    """
    return np.asarray(axial_slice).T[:, ::-1]


def pick_overlay_slices(mask: np.ndarray, count: int = 3) -> list[int]:
    """``count`` slice indices spread over the extent of ``mask`` (X, Y, Z) along its last axis; the middle of the
    volume if empty."""
    z_with_fg = np.flatnonzero(np.asarray(mask).reshape(-1, mask.shape[-1]).any(axis=0))
    if z_with_fg.size == 0:
        return [mask.shape[-1] // 2]
    lo, hi = int(z_with_fg[0]), int(z_with_fg[-1])
    return sorted({int(round(v)) for v in np.linspace(lo, hi, count + 2)[1:-1]})


def save_overlay_png(
    path: str | os.PathLike,
    image: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    truths: Mapping[str, np.ndarray] | None = None,
    slices: Sequence[int] | None = None,
    title: str | None = None,
    plane: str = "axial",
) -> None:
    """Save a row of slices ``image[..., z]`` with predicted (solid) and reference (dashed) organ contours.

    Args:
        path: output PNG, written atomically.
        image: (X, Y, Z) intensities.
        predictions: organ name -> (X, Y, Z) binary prediction.
        truths: organ name -> (X, Y, Z) binary reference, optional.
        slices: slice indices to show; by default three spread over the union of the predictions/references.
        title: figure title.
        plane: the volume's slicing plane; the panels say "axial slice" only when it is ``"axial"``.
    """
    from fewshot_monai.transforms.plane import slice_label

    image = np.asarray(image, dtype=np.float32)
    truths = dict(truths or {})
    if slices is None:
        union = np.zeros(image.shape, dtype=bool)
        for mask in list(predictions.values()) + list(truths.values()):
            union |= np.asarray(mask).astype(bool)
        slices = pick_overlay_slices(union)
    lo, hi = np.percentile(image, [1, 99])
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(slices), figsize=(4 * len(slices), 4.4), squeeze=False)
    for ax, z in zip(axes[0], slices):
        ax.imshow(radiological_view(image[..., z]), cmap="gray", vmin=lo, vmax=hi, origin="lower")
        for i, (organ, mask) in enumerate(predictions.items()):
            colour = colours(i % 10)
            pred = radiological_view(np.asarray(mask)[..., z]).astype(float)
            if pred.any():
                ax.contour(pred, levels=[0.5], colors=[colour], linewidths=1.5, origin="lower")
            if organ in truths:
                ref = radiological_view(np.asarray(truths[organ])[..., z]).astype(float)
                if ref.any():
                    ax.contour(ref, levels=[0.5], colors=[colour], linewidths=1.0, linestyles="--", origin="lower")
            ax.plot([], [], color=colour, label=organ)
        ax.set_title(f"{slice_label(plane)} {z}")
        ax.axis("off")
    axes[0][0].legend(loc="lower left", fontsize=7, framealpha=0.6)
    fig.suptitle(title or "prediction (solid) vs reference (dashed)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def save_three_plane_png(
    path: str | os.PathLike,
    image: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    title: str | None = None,
) -> None:
    """Save a quality-control view: axial, coronal and sagittal planes through the predicted organs' centre, each
    organ's contour in its own colour, at the true physical aspect ratio.

    Args:
        path: output PNG, written atomically.
        image: (X, Y, Z) intensities of a RAS-oriented volume.
        predictions: organ name -> (X, Y, Z) binary prediction.
        spacing: voxel size (mm) along X, Y, Z.
        title: figure title.
    """
    image = np.asarray(image, dtype=np.float32)
    union = np.zeros(image.shape, dtype=bool)
    for mask in predictions.values():
        union |= np.asarray(mask).astype(bool)
    centre = [int(round(c.mean())) for c in np.nonzero(union)] if union.any() else [s // 2 for s in image.shape]
    sx, sy, sz = (float(v) for v in spacing)
    planes = [  # (name, slicer, aspect = row spacing / column spacing, display transform)
        ("axial", np.s_[:, :, centre[2]], sy / sx, radiological_view),
        ("coronal", np.s_[:, centre[1], :], sz / sx, radiological_view),
        ("sagittal", np.s_[centre[0], :, :], sz / sy, lambda a: np.asarray(a).T),
    ]
    lo, hi = np.percentile(image, [1, 99])
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (name, where, aspect, view) in zip(axes, planes):
        ax.imshow(view(image[where]), cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect)
        for i, (organ, mask) in enumerate(predictions.items()):
            plane = view(np.asarray(mask)[where]).astype(float)
            if plane.any():
                ax.contour(plane, levels=[0.5], colors=[colours(i % 10)], linewidths=1.2, origin="lower")
            ax.plot([], [], color=colours(i % 10), label=organ)
        ax.set_title(name)
        ax.axis("off")
    axes[0].legend(loc="lower left", fontsize=7, framealpha=0.6)
    fig.suptitle(title or "segmentation")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
