"""Synthetic abdominal phantoms: deterministic 3D volumes with organ-like structures and their labels.

Each phantom is an axial stack through an elliptic body (skin, subcutaneous fat, muscle wall), a vertebra and
aorta, and four organs placed as in an abdomen: the liver (large, on the patient's right, superior), the spleen
(left, posterior, superior) and two bean-shaped kidneys (posterior, lower). A seed moves, scales and rotates every
organ and bends the whole anatomy with a smooth random displacement field, so two seeds give two different but
similar "patients": a realistic few-shot task (support and query alike, not identical).

Intensity models:

- ``"ct"``: Hounsfield-like units (air -1000, fat -100, muscle 40, liver 60 with brighter vessels, spleen 50,
  kidneys 150, aorta 180, bone 700) with smooth organ texture and Gaussian noise.
- ``"mri"``: T2-SPIR-like arbitrary units (suppressed fat dark, spleen and kidneys brighter than the liver, flow
  voids in vessels), a smooth multiplicative bias field and Rician noise.

Volumes are indexed ``[x, y, z]`` with a diagonal RAS affine (positive spacings): in RAS+ world coordinates x
grows toward the patient's Right, y toward Anterior and z toward Superior, so the liver sits at large first
indices and the spleen at small ones. ``docs/images/phantoms.png`` shows both intensity models.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fewshot_monai.utils.files import atomic_path

__all__ = ["PHANTOM_LABELS", "Phantom", "make_phantom", "write_phantom", "make_phantom_dataset"]

PHANTOM_LABELS: dict[str, int] = {"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}

# organ name -> centre (x, y, z) mm, semi-axes mm, in-plane rotation degrees (x: patient's right, y: anterior)
_ORGANS = {
    "right_kidney": ((58.0, -52.0, -38.0), (26.0, 30.0, 52.0), 25.0),
    "left_kidney": ((-58.0, -50.0, -26.0), (26.0, 30.0, 52.0), -25.0),
    "spleen": ((-82.0, -28.0, 35.0), (30.0, 48.0, 45.0), -35.0),
    "liver": ((62.0, 8.0, 35.0), (78.0, 70.0, 62.0), 20.0),
}

_CT = {
    "air": -1000.0,
    "fat": -100.0,
    "muscle": 40.0,
    "bone": 700.0,
    "aorta": 180.0,
    "vessel": 150.0,
    "liver": 60.0,
    "spleen": 50.0,
    "right_kidney": 150.0,
    "left_kidney": 150.0,
}
_MR = {
    "air": 5.0,
    "fat": 90.0,
    "muscle": 160.0,
    "bone": 110.0,
    "aorta": 60.0,
    "vessel": 70.0,
    "liver": 320.0,
    "spleen": 560.0,
    "right_kidney": 620.0,
    "left_kidney": 620.0,
}


@dataclass
class Phantom:
    """A synthetic volume: ``image`` (X, Y, Z) float32, ``label`` (X, Y, Z) uint8, RAS ``affine`` (4, 4)."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    label_map: dict[str, int]
    modality: str
    seed: int


def _smooth_noise(rng: np.random.Generator, shape, coarse) -> np.ndarray:
    """Smooth random field (unit-variance-ish): coarse Gaussian noise upsampled trilinearly to ``shape``."""
    import torch
    import torch.nn.functional as F

    field = torch.from_numpy(rng.standard_normal(coarse).astype(np.float32))[None, None]
    return F.interpolate(field, size=tuple(shape), mode="trilinear", align_corners=True)[0, 0].numpy()


def _ellipsoid(px, py, pz, centre, axes, angle_deg) -> np.ndarray:
    """Implicit function of a rotated ellipsoid: < 0 inside, 0 on the surface."""
    a = np.deg2rad(angle_deg)
    dx, dy, dz = px - centre[0], py - centre[1], pz - centre[2]
    u = np.cos(a) * dx + np.sin(a) * dy
    v = -np.sin(a) * dx + np.cos(a) * dy
    return np.sqrt((u / axes[0]) ** 2 + (v / axes[1]) ** 2 + (dz / axes[2]) ** 2) - 1.0


def _soft(f: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume membership from an implicit function (1 inside, 0 outside)."""
    return 1.0 / (1.0 + np.exp(np.clip(f / width, -30, 30)))


def make_phantom(
    seed: int = 0,
    modality: str = "mri",
    shape: tuple[int, int, int] = (192, 192, 40),
    spacing: tuple[float, float, float] = (1.8, 1.8, 7.0),
) -> Phantom:
    """Generate a phantom; the same arguments always give bit-identical arrays.

    Args:
        seed: anatomy and noise seed.
        modality: ``"mri"`` or ``"ct"`` intensity model.
        shape: (X, Y, Z) voxels.
        spacing: voxel size in mm.
    """
    if modality not in ("mri", "ct"):
        raise ValueError(f"modality must be 'mri' or 'ct', got {modality!r}")
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    centre_index = [(s - 1) / 2.0 for s in shape]
    axes = [(np.arange(n) - c) * sp for n, c, sp in zip(shape, centre_index, spacing)]
    px, py, pz = np.meshgrid(*axes, indexing="ij")
    pz = pz + rng.uniform(-15, 15)  # where the field of view sits along the body

    # smooth anatomy-wide bending (mm)
    coarse = (6, 6, 4)
    px = px + 7.0 * _smooth_noise(rng, shape, coarse)
    py = py + 7.0 * _smooth_noise(rng, shape, coarse)
    pz = pz + 5.0 * _smooth_noise(rng, shape, coarse)

    body_axes = (150.0 * rng.uniform(0.92, 1.08), 112.0 * rng.uniform(0.92, 1.08))
    r_body = np.sqrt((px / body_axes[0]) ** 2 + (py / body_axes[1]) ** 2)
    body = _soft((r_body - 1.0) * 120.0, 1.5)
    fat_inner = _soft((r_body - (1.0 - 16.0 / 120.0)) * 120.0, 1.5)  # inside the subcutaneous fat
    spine = _soft(np.sqrt(px**2 + (py + 62.0) ** 2) - 19.0, 1.2)
    aorta = _soft(np.sqrt((px + 18.0) ** 2 + (py + 30.0) ** 2) - 10.0, 1.0)

    table = _MR if modality == "mri" else _CT
    image = table["air"] * (1 - body) + table["fat"] * (body - fat_inner) + table["muscle"] * fat_inner
    image = image * (1 - spine) + table["bone"] * spine
    image = image * (1 - aorta) + table["aorta"] * aorta
    label = np.zeros(shape, dtype=np.uint8)
    occupied = (spine > 0.5) | (aorta > 0.5) | (fat_inner < 0.5)

    for organ, (centre, semi_axes, angle) in _ORGANS.items():
        c = np.asarray(centre) + rng.normal(0.0, [7.0, 6.0, 10.0])
        a = np.asarray(semi_axes) * rng.uniform(0.85, 1.15, size=3)
        f = _ellipsoid(px, py, pz, c, a, angle + rng.uniform(-12, 12))
        f = f + 0.12 * _smooth_noise(rng, shape, (5, 5, 4))  # lobulated surface
        if organ.endswith("kidney"):  # hilum notch on the medial side
            medial = -np.sign(c[0])
            f = np.maximum(
                f, -_ellipsoid(px, py, pz, c + np.array([medial * a[0] * 0.9, 0, 0]), a * [0.45, 0.35, 0.5], 0)
            )
        if organ == "liver":  # flatter medial edge toward the midline
            f = np.maximum(f, (5.0 - px) / 40.0)
        inside = (f < 0) & ~occupied
        member = _soft(f, 0.04) * ~occupied
        texture = 1.0 + 0.06 * _smooth_noise(rng, shape, (16, 16, 8))
        image = image * (1 - member) + table[organ] * texture * member
        label[inside & (label == 0)] = PHANTOM_LABELS[organ]
        occupied |= inside
        if organ == "liver":  # a few vessels through the liver
            for _ in range(4):
                p0 = c + rng.normal(0, [20, 20, 25])
                direction = rng.normal(size=3)
                direction /= np.linalg.norm(direction)
                d = np.stack([px - p0[0], py - p0[1], pz - p0[2]])
                t = np.tensordot(direction, d, axes=1)
                dist = np.sqrt(np.maximum((d**2).sum(0) - t**2, 0))
                vessel = _soft(dist - rng.uniform(2.5, 5.0), 0.8) * (label == PHANTOM_LABELS["liver"])
                image = image * (1 - vessel) + table["vessel"] * vessel

    if modality == "mri":
        bias = np.exp(0.25 * _smooth_noise(rng, shape, (3, 3, 2)))
        sigma = 18.0
        image = np.sqrt((image * bias + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2)
    else:
        image = image + rng.normal(0.0, 12.0, shape)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-c * s for c, s in zip(centre_index, spacing)]
    return Phantom(image.astype(np.float32), label, affine, dict(PHANTOM_LABELS), modality, int(seed))


def write_phantom(
    out_dir: str | os.PathLike, name: str, seed: int = 0, modality: str = "mri", **kwargs
) -> tuple[Path, Path]:
    """Generate a phantom and write ``<name>_image.nii.gz`` and ``<name>_label.nii.gz`` (atomically).

    Returns:
        (image path, label path).
    """
    import nibabel as nib

    phantom = make_phantom(seed=seed, modality=modality, **kwargs)
    out_dir = Path(out_dir)
    paths = out_dir / f"{name}_image.nii.gz", out_dir / f"{name}_label.nii.gz"
    for array, path in zip((phantom.image, phantom.label), paths):
        with atomic_path(path) as tmp:
            nib.save(nib.Nifti1Image(array, phantom.affine), tmp)
    return paths


def make_phantom_dataset(
    out_dir: str | os.PathLike, n: int = 4, modality: str = "mri", first_seed: int = 0, **kwargs
) -> list[dict]:
    """Write ``n`` phantoms ``case<k>_image.nii.gz``/``case<k>_label.nii.gz`` and return their datalist.

    Case ``k`` uses seed ``first_seed + k``; the folder follows the :data:`fewshot_monai.data.datasets.PHANTOM`
    layout (id ``case<k>``).
    """
    cases = []
    for k in range(n):
        image, label = write_phantom(out_dir, f"case{k}", seed=first_seed + k, modality=modality, **kwargs)
        cases.append({"id": f"case{k}", "image": str(image), "label": str(label)})
    return cases
