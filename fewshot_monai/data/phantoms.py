"""Synthetic abdominal phantoms: deterministic 3D volumes with organ-like structures and their labels.

A phantom is a stack of axial slices through a synthetic abdomen laid out like the CHAOS T2-SPIR scans:

- a body outline (an ellipse flattened at the back) with skin, a subcutaneous fat layer of varying thickness, an
  abdominal wall with ribs, paraspinal and psoas muscles, and a vertebral column (vertebral bodies and discs,
  posterior arch, spinal canal);
- the aorta and inferior vena cava, lung bases and heart above the diaphragm domes, a stomach with a gas cap,
  a gallbladder and bowel loops (mesenteric fat, walls, fluid and gas) in the lower abdomen;
- the four labelled organs: the **liver** (largest, on the patient's right, superior, with a left lobe crossing
  the midline anteriorly and a vessel tree), the **spleen** (left, posterior, superior, with a concave hilum),
  and two **kidneys** (posterior, lower, bean-shaped with cortex, medulla and renal sinus, the left one higher).

The seed draws one "patient": a global similarity transform, a smooth random displacement field, per-organ
shifts, scales and rotations, and lobulated organ surfaces (smooth random fields added to their signed distance).
Two seeds give alike but different anatomies (livers overlap with a Dice of about 0.6-0.8), a realistic few-shot
task. Boundaries are partial-volume blended over about one voxel; the final image is slightly blurred.

Intensity models (``modality``):

- ``"ct"``: Hounsfield-like units (air -1000, lung -850, fat -100, muscle 45, liver 60 with contrast-filled
  vessels at 150, spleen 50, kidneys about 150 (cortex 165, medulla 130), aorta 180, vertebral bone 400-800),
  smooth organ textures and Gaussian noise.
- ``"mri"``: T2-SPIR-like arbitrary units on the scale of the CHAOS copy (0 to about 1300): suppressed fat dark
  (~85), muscle ~170, liver ~340, spleen ~650, kidneys ~720-860, fluid (CSF, gallbladder, stomach) bright, aortic
  flow void, a per-patient gain, a smooth multiplicative bias field (receive-coil shading) and Rician noise.

Geometry: arrays are indexed ``[x, y, z]`` with a diagonal RAS affine (positive spacings, centred on the volume).
In nibabel's RAS+ world coordinates x grows toward the patient's **Right**, y toward **Anterior** and z toward
**Superior** (``nibabel.aff2axcodes(affine) == ("R", "A", "S")``), so the liver sits at large first indices
and the spleen at small ones; axis -1 is the axial axis, as everywhere in fewshot-monai.

The anatomy is defined in a reference field of view of :data:`REFERENCE_FOV` mm and always fills the volume:
``shape`` only sets the sampling (the same seed gives the same anatomy at any resolution, up to partial volume),
and ``spacing`` (by default ``REFERENCE_FOV / shape``) only sets the voxel size written to the affine.
For the same seed, the ``"ct"`` and ``"mri"`` phantoms share the same label volume (a cross-modality pair).

Example::

    from fewshot_monai.data.phantoms import make_phantom, write_phantom

    p = make_phantom(seed=0, modality="ct")      # p.image (192, 192, 40) float32, p.label uint8, p.affine RAS
    write_phantom("out", "support", seed=0)      # out/support_image.nii.gz, out/support_label.nii.gz
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from fewshot_monai.utils.files import atomic_path

__all__ = [
    "PHANTOM_LABELS",
    "PHANTOM_MODALITIES",
    "DEFAULT_SHAPE",
    "REFERENCE_FOV",
    "Phantom",
    "make_phantom",
    "write_phantom",
    "make_phantom_dataset",
]

PHANTOM_LABELS: dict[str, int] = {"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}
"""Label ids of the phantoms, identical to the CHAOS T2-SPIR convention."""

PHANTOM_MODALITIES = ("mri", "ct")

DEFAULT_SHAPE: tuple[int, int, int] = (192, 192, 40)
"""Default (X, Y, Z) voxels: with the default spacing 1.75 x 1.75 x 7.2 mm, close to a CHAOS T2-SPIR scan."""

REFERENCE_FOV: tuple[float, float, float] = (336.0, 336.0, 288.0)
"""Field of view (mm) the anatomy is laid out in; ``REFERENCE_FOV / DEFAULT_SHAPE`` is the default spacing."""

# tissue -> (CT Hounsfield units, MR T2-SPIR arbitrary units)
_TISSUES: dict[str, tuple[float, float]] = {
    "air": (-1000.0, 0.0),
    "lung": (-850.0, 25.0),
    "skin": (30.0, 260.0),
    "fat": (-100.0, 85.0),
    "muscle": (45.0, 170.0),
    "heart": (110.0, 120.0),
    "liver": (60.0, 340.0),
    "liver_vessel": (150.0, 580.0),
    "spleen": (50.0, 650.0),
    "kidney_cortex": (165.0, 720.0),
    "kidney_medulla": (130.0, 860.0),
    "renal_sinus": (-40.0, 220.0),
    "gallbladder": (10.0, 1150.0),
    "stomach_wall": (45.0, 260.0),
    "stomach_fluid": (15.0, 950.0),
    "gas": (-950.0, 15.0),
    "bowel_wall": (40.0, 230.0),
    "bowel_content": (20.0, 650.0),
    "aorta": (180.0, 50.0),
    "vessel_wall": (50.0, 320.0),
    "ivc": (130.0, 420.0),
    "cortical_bone": (800.0, 60.0),
    "cancellous_bone": (420.0, 250.0),
    "disc": (80.0, 520.0),
    "csf": (10.0, 1150.0),
    "rib": (650.0, 110.0),
    "table": (150.0, 0.0),
}
# tissue -> texture standard deviation (CT HU, MR a.u.); the other tissues are homogeneous before noise
_TEXTURE: dict[str, tuple[float, float]] = {
    "fat": (8.0, 10.0),
    "muscle": (6.0, 16.0),
    "liver": (6.0, 24.0),
    "spleen": (4.0, 28.0),
    "kidney_cortex": (8.0, 40.0),
    "kidney_medulla": (8.0, 50.0),
    "bowel_content": (30.0, 160.0),
    "cancellous_bone": (60.0, 40.0),
}


@dataclass
class Phantom:
    """A synthetic volume and its label.

    Attributes:
        image: (X, Y, Z) float32 intensities (Hounsfield-like for CT, arbitrary positive units for MRI).
        label: (X, Y, Z) uint8 label volume, ids as in ``label_map``.
        affine: (4, 4) RAS voxel-to-world matrix (mm).
        label_map: organ name -> label id (:data:`PHANTOM_LABELS`).
        modality: ``"ct"`` or ``"mri"``.
        seed: the seed that drew the anatomy and the noise.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    label_map: dict[str, int] = field(default_factory=lambda: dict(PHANTOM_LABELS))
    modality: str = "mri"
    seed: int = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm), the column norms of the affine."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    def organ_mask(self, organ: str) -> np.ndarray:
        """Boolean (X, Y, Z) mask of ``organ`` (a name of ``label_map``)."""
        if organ not in self.label_map:
            raise KeyError(f"unknown organ {organ!r}; the phantom has {sorted(self.label_map)}")
        return self.label == self.label_map[organ]

    def to_metatensors(self):
        """The image and label as channel-first MONAI ``MetaTensor`` s ``(1, X, Y, Z)`` carrying the affine.

        The image is float32, the label int16 (as :func:`fewshot_monai.data.io.load_case` returns them), and
        ``meta["filename_or_obj"]`` is ``"phantom_<modality>_seed<seed>"``.
        """
        import torch
        from monai.data import MetaTensor

        affine = torch.as_tensor(self.affine, dtype=torch.float64)
        name = f"phantom_{self.modality}_seed{self.seed}"
        image = MetaTensor(torch.from_numpy(self.image[None].copy()), affine=affine, meta={"filename_or_obj": name})
        label = MetaTensor(
            torch.from_numpy(self.label[None].astype(np.int16)), affine=affine.clone(), meta={"filename_or_obj": name}
        )
        return image, label


# ----------------------------------------------------------------------------------------------------- helpers


def _check_args(seed, modality, shape, spacing) -> tuple[int, str, tuple[int, int, int], tuple[float, float, float]]:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if modality not in PHANTOM_MODALITIES:
        raise ValueError(f"modality must be one of {PHANTOM_MODALITIES}, got {modality!r}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be 3 sizes of at least 8 voxels, got {shape}")
    if spacing is None:
        spacing = tuple(f / n for f, n in zip(REFERENCE_FOV, shape))
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive sizes in mm, got {spacing}")
    return int(seed), modality, shape, spacing


def _smooth_field(rng: np.random.Generator, axes: Sequence[np.ndarray], sigma: float, box=None) -> np.ndarray:
    """A smooth, zero-mean, unit-variance Gaussian random field (correlation length ``sigma`` mm) at ``axes``.

    White noise on a lattice fixed in the reference field of view is convolved with a Gaussian kernel, evaluated
    separably at the voxel centres (three small matrix products): the field does not depend on the sampling,
    and ``box`` (a tuple of slices) evaluates only a sub-block of the same field.
    """
    step = 0.75 * sigma
    weights = []
    box = box or (slice(None),) * 3
    for coords, fov in zip((a[b] for a, b in zip(axes, box)), REFERENCE_FOV):
        half = fov / 2 + 3 * sigma
        nodes = np.arange(-round(half / step), round(half / step) + 1) * step
        d = (coords[:, None] - nodes[None, :]) / sigma
        weights.append(np.exp(-0.5 * d * d).astype(np.float32))
    wx, wy, wz = weights
    noise = rng.standard_normal((wx.shape[1], wy.shape[1], wz.shape[1]), dtype=np.float32)
    # contiguous matrix products, innermost axis first: (nx, ny, nz) -> (nx, ny, Z) -> (nx, Y, Z) -> (X, Y, Z)
    f = (noise.reshape(-1, wz.shape[1]) @ wz.T).reshape(wx.shape[1], wy.shape[1], wz.shape[0])
    f = np.matmul(wy[None], f)
    f = (wx @ f.reshape(wx.shape[1], -1)).reshape(wx.shape[0], wy.shape[0], wz.shape[0])
    # variance of a sum of unit-noise Gaussian bumps: (sqrt(pi) sigma / step) per axis
    f *= np.float32((math.sqrt(math.pi) * sigma / step) ** -1.5)
    return f


def _texture(white: np.ndarray, sigma: Sequence[float]) -> np.ndarray:
    t = ndimage.gaussian_filter(white, sigma, mode="reflect", truncate=3.0)
    t /= max(float(t.std()), 1e-6)
    return t


def _ellipsoid(x, y, z, centre, radii, yaw: float = 0.0, shear: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Approximate signed distance (mm, < 0 inside) to an ellipsoid.

    ``yaw`` (radians) turns the first semi-axis from +x toward +y; ``shear`` moves the centre by
    ``shear * (z - centre_z)`` in x and y (a tilted long axis).
    """
    dz = z - centre[2]
    dx = x - centre[0] - shear[0] * dz
    dy = y - centre[1] - shear[1] * dz
    if yaw:
        c, s = math.cos(yaw), math.sin(yaw)
        dx, dy = c * dx + s * dy, c * dy - s * dx
    a, b, cz = (float(r) for r in radii)
    u, v, w = dx * (1.0 / a), dy * (1.0 / b), dz * (1.0 / cz)
    k0 = np.sqrt(u * u + v * v + w * w)
    k1 = np.sqrt((u * (1.0 / a)) ** 2 + (v * (1.0 / b)) ** 2 + (w * (1.0 / cz)) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def _ellipse(x, y, centre, radii) -> np.ndarray:
    """Approximate signed distance (mm) to an infinite elliptic cylinder along z."""
    a, b = float(radii[0]), float(radii[1])
    u, v = (x - centre[0]) * (1.0 / a), (y - centre[1]) * (1.0 / b)
    k0 = np.sqrt(u * u + v * v)
    k1 = np.sqrt((u * (1.0 / a)) ** 2 + (v * (1.0 / b)) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def _bounding_box(mask: np.ndarray, box) -> tuple[slice, slice, slice] | None:
    """The voxel box (in full-volume indices) of the True voxels of ``mask``, itself the sub-block ``box``."""
    out = []
    for axis, b in enumerate(box):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if hits.size == 0:
            return None
        start = b.start or 0
        out.append(slice(start + int(hits[0]), start + int(hits[-1]) + 1))
    return tuple(out)


def _smooth_union(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Union of two implicit shapes with a rounded fillet of size ``k`` mm."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + h * (a - b) - k * h * (1.0 - h)


class _Canvas:
    """Paints tissues (partial-volume blended) and labels into a volume, one sub-box at a time.

    Coordinates are mm in the per-patient "atlas" frame (after the global transform and the warp), voxel
    boxes are found from the reference frame position of a structure plus a safety margin.
    """

    def __init__(self, axes, coords, to_reference, width: float, margin: float, values, textures):
        self.axes = axes
        self.x, self.y, self.z = coords
        self.to_reference = to_reference
        self.width = width
        self.margin = margin
        self.values = values
        self.textures = textures
        shape = tuple(len(a) for a in axes)
        self.image = np.full(shape, values["air"], dtype=np.float32)
        self.label = np.zeros(shape, dtype=np.uint8)

    def box(self, centre, half_extent) -> tuple[slice, slice, slice]:
        """Voxel box around an atlas-frame ``centre`` (mm) of half size ``half_extent`` (mm, per axis)."""
        ref = self.to_reference(centre)
        box = []
        for coords, c, h in zip(self.axes, ref, half_extent):
            lo = np.searchsorted(coords, c - h - self.margin)
            hi = np.searchsorted(coords, c + h + self.margin)
            box.append(slice(int(lo), int(max(hi, lo))))
        return tuple(box)

    def coords(self, box):
        return self.x[box], self.y[box], self.z[box]

    def occupancy(self, sd: np.ndarray) -> np.ndarray:
        return np.clip(0.5 - sd * (1.0 / self.width), 0.0, 1.0)

    def value(self, tissue: str, box, texture: str = "fine"):
        value = self.values[tissue]
        amp = self.values.get(f"{tissue}:texture", 0.0)
        if amp and box is not None:
            return value + amp * self.textures[texture][box]
        return value

    def paint(self, box, sd, tissue, label: int | None = None, texture: str = "fine", weight=None) -> None:
        """Blend ``tissue`` where ``sd < 0`` (soft over ~1 voxel); set ``label`` (0 clears) where ``sd < 0``."""
        occ = self.occupancy(sd)
        if weight is not None:
            occ = occ * weight
        self.blend(box, occ, self.value(tissue, box, texture))
        if label is not None:
            self.label[box][occ > 0.5] = label

    def blend(self, box, occ, value) -> None:
        view = self.image[box]
        view += occ * (value - view)


# ----------------------------------------------------------------------------------------------- the generator


def _draw_anatomy(rng: np.random.Generator) -> dict:
    """Scalar parameters of one synthetic patient (atlas frame, mm and radians); fixed draw order."""

    def u(lo, hi):
        return float(rng.uniform(lo, hi))

    def n(sd, limit=2.0):
        return float(np.clip(rng.normal(0.0, 1.0), -limit, limit) * sd)

    p = {
        "scale": (u(0.95, 1.05), u(0.94, 1.06), u(0.94, 1.06)),
        "shift": (n(3.0), n(4.0), n(5.0)),
        "roll": n(math.radians(3.0)),
        "warp": (u(2.5, 4.0), u(2.5, 4.0), u(2.5, 4.5)),
        "body": (112.0 * u(0.95, 1.04), 76.0 * u(0.93, 1.06), 86.0 * u(0.95, 1.05)),  # cavity x, y; back skin
        "fat": u(7.0, 24.0),
        "wall": u(7.0, 11.0),
        "dome": (118.0 + n(7.0), 106.0 + n(7.0)),
        "disc_phase": u(0.0, 36.0),
        "rib_phase": u(0.0, 1.0),
    }
    for organ in ("liver", "spleen", "right_kidney", "left_kidney", "stomach", "gallbladder"):
        p[organ] = {
            "shift": (n(4.0), n(4.0), n(5.0)),
            "scale": (u(0.9, 1.1), u(0.9, 1.1), u(0.9, 1.1)),
            "yaw": n(math.radians(6.0)),
            "rough": u(1.5, 3.5),
        }
    p["liver"]["left_lobe"] = u(0.65, 1.25)
    p["left_kidney"]["above_right"] = u(0.0, 18.0)
    p["gallbladder"]["present"] = bool(rng.uniform() < 0.85)
    p["stomach"]["gas"] = u(0.0, 1.0)
    p["bowel_top"] = 25.0 + n(10.0)
    return p


def _tissue_values(rng: np.random.Generator, modality: str) -> dict:
    """Per-patient tissue intensities: CT values jittered by a few HU, MR values by a gain and +-6 %."""
    col = 0 if modality == "ct" else 1
    gain = float(rng.uniform(0.85, 1.2))
    values: dict = {}
    for tissue, pair in _TISSUES.items():
        jitter = float(rng.normal())
        base = pair[col]
        if modality == "ct":
            values[tissue] = base + (4.0 * jitter if abs(base) < 300 else 0.0)
        else:
            values[tissue] = base * gain * math.exp(0.06 * jitter)
    for tissue, pair in _TEXTURE.items():
        values[f"{tissue}:texture"] = pair[col] * (1.0 if modality == "ct" else gain)
    return values


def make_phantom(
    seed: int = 0,
    modality: str = "mri",
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] | None = None,
) -> Phantom:
    """Generate a synthetic abdominal volume and its label; the same arguments give bit-identical arrays.

    Args:
        seed: non-negative integer; draws the anatomy (shared by both modalities) and the noise.
        modality: ``"mri"`` (T2-SPIR-like) or ``"ct"`` (Hounsfield-like) intensity model.
        shape: (X, Y, Z) voxels; the anatomy always fills the field of view. Defaults to (192, 192, 40).
        spacing: voxel size in mm written to the affine; defaults to ``REFERENCE_FOV / shape``
            (1.75 x 1.75 x 7.2 mm for the default shape), which gives true-to-life organ sizes.

    Returns:
        a :class:`Phantom` with ``image`` (X, Y, Z) float32, ``label`` (X, Y, Z) uint8 with the ids of
        :data:`PHANTOM_LABELS` and a RAS ``affine``.

    Raises:
        ValueError: bad seed, modality, shape or spacing.
    """
    seed, modality, shape, spacing = _check_args(seed, modality, shape, spacing)
    anatomy_rng, look_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    p = _draw_anatomy(anatomy_rng)
    values = _tissue_values(look_rng, modality)

    # voxel centres in the reference frame (mm, RAS, centred); independent of `spacing`
    axes = [((np.arange(n, dtype=np.float64) + 0.5) / n - 0.5) * f for n, f in zip(shape, REFERENCE_FOV)]
    # smooth displacement fields, softly limited to +-2 sd so that no organ is thrown far off its place
    warp = [2.0 * np.tanh(0.5 * _smooth_field(anatomy_rng, axes, 60.0)) for _ in range(3)]
    rough = _smooth_field(anatomy_rng, axes, 14.0)
    body_rough = _smooth_field(anatomy_rng, axes, 30.0)

    # atlas coordinates: undo the per-patient similarity transform, then bend with the smooth warp
    (sx, sy, sz), (tx, ty, tz), roll = p["scale"], p["shift"], p["roll"]
    cr, sr = math.cos(roll), math.sin(roll)
    xr = ((axes[0] - tx) / sx).astype(np.float32)[:, None, None]
    yr = ((axes[1] - ty) / sy).astype(np.float32)[None, :, None]
    zr = ((axes[2] - tz) / sz).astype(np.float32)[None, None, :]
    x = cr * xr + sr * yr + p["warp"][0] * warp[0]
    y = cr * yr - sr * xr + p["warp"][1] * warp[1]
    z = zr + p["warp"][2] * warp[2]
    del warp

    def to_reference(c):
        xa, ya = c[0] * cr - c[1] * sr, c[0] * sr + c[1] * cr
        return (xa * sx + tx, ya * sy + ty, c[2] * sz + tz)

    white = look_rng.standard_normal(shape, dtype=np.float32)
    textures = {"fine": _texture(white, (0.8, 0.8, 0.6)), "coarse": _texture(white, (2.5, 2.5, 0.8))}
    del white
    width = float(min(f / n for f, n in zip(REFERENCE_FOV[:2], shape[:2])))  # one in-plane voxel (mm)
    margin = 2.0 * max(p["warp"]) + 6.0 + 2.0 * width  # the warp moves a structure by less than 2 sd
    canvas = _Canvas(axes, (x, y, z), to_reference, width, margin, values, textures)
    full = (slice(None),) * 3

    # body: skin, subcutaneous fat, abdominal wall muscle, visceral (retroperitoneal and mesenteric) fat
    # the abdominal cavity has a patient-specific size; subcutaneous fat and the wall are added outside it
    # (thinner at the back), so a thick fat layer makes the body larger, not the organs smaller
    a_cavity, b_cavity, b_back = p["body"]
    a_body = a_cavity + p["fat"] + p["wall"]
    b_ant = b_cavity + p["fat"] + p["wall"]
    b_post = b_back + 0.3 * (p["fat"] - 15.0)
    inv_b = np.where(y >= 0, np.float32(1.0 / b_ant), np.float32(1.0 / b_post))
    bu, bv = x * (1.0 / a_body), y * inv_b
    k0 = np.sqrt(bu * bu + bv * bv)
    k1 = np.sqrt((bu * (1.0 / a_body)) ** 2 + (bv * inv_b) ** 2)
    skin = k0 * (k0 - 1.0) / np.maximum(k1, 1e-6) + 3.0 * body_rough
    del inv_b, bu, bv, k0, k1
    fat = p["fat"] * np.clip(1.0 + 0.35 * body_rough, 0.35, 2.0) * (0.65 + 0.35 * np.clip(0.5 + y / 60.0, 0.0, 1.0))
    inner = skin + fat + p["wall"]  # < 0 inside the abdominal cavity
    canvas.paint(full, skin, "skin")
    canvas.paint(full, skin + 1.8, "fat")
    canvas.paint(full, skin + fat, "muscle")
    canvas.paint(full, inner, "fat")

    # bowel loops in the lower and anterior abdomen: walls and lumen are the blobs of a smooth random field
    z_top = p["bowel_top"]
    box = canvas.box((0.0, 10.0, (z_top - 150.0) / 2), (150.0, 110.0, (z_top + 150.0) / 2))
    bx, by, bz = canvas.coords(box)
    region = canvas.occupancy(np.maximum(np.maximum(inner[box] + 4.0, bz - z_top), -30.0 - by))
    loops = _smooth_field(anatomy_rng, axes, 8.0, box)
    canvas.blend(box, region * np.clip((loops + 0.1) / 0.15, 0.0, 1.0), canvas.value("bowel_wall", box))
    gas = np.clip((_smooth_field(anatomy_rng, axes, 25.0, box) - 0.9) / 0.3, 0.0, 1.0)
    content = canvas.value("bowel_content", box, "coarse") * (1.0 - gas) + values["gas"] * gas
    canvas.blend(box, region * np.clip((loops - 0.3) / 0.12, 0.0, 1.0), content)
    del loops, gas, content, region

    # posterior muscles: paraspinal (all levels) and psoas (growing toward the pelvis)
    for side in (1.0, -1.0):
        box = canvas.box((33.0 * side, -64.0, 0.0), (30.0, 24.0, 150.0))
        bx, by, bz = canvas.coords(box)
        canvas.paint(box, np.maximum(_ellipse(bx, by, (33.0 * side, -64.0), (25.0, 17.0)), inner[box] - 12.0), "muscle")
        box = canvas.box((30.0 * side, -18.0, -60.0), (30.0, 30.0, 90.0))
        bx, by, bz = canvas.coords(box)
        radius = 5.0 + 17.0 * np.clip((10.0 - bz) / 140.0, 0.0, 1.0)
        psoas = np.sqrt((bx - 30.0 * side - 0.1 * bz * side) ** 2 + ((by + 18.0) * 1.2) ** 2) - radius
        canvas.paint(box, np.maximum(psoas, bz - 10.0), "muscle")

    # diaphragm: two domes; lung bases and the heart above them
    dome_r, dome_l = p["dome"]

    def diaphragm(bx, by):
        side = 1.0 / (1.0 + np.exp(-bx * (1.0 / 20.0)))
        top = dome_l + (dome_r - dome_l) * side
        return top - 22.0 * ((np.abs(bx) - 55.0) * (1.0 / 95.0)) ** 2 - 30.0 * (by * (1.0 / 105.0)) ** 2

    low = min(dome_r, dome_l) - 60.0
    box = canvas.box((0.0, 0.0, (low + 150.0) / 2), (150.0, 110.0, (150.0 - low) / 2))
    bx, by, bz = canvas.coords(box)
    above = diaphragm(bx, by) - bz  # < 0 above the diaphragm
    canvas.paint(box, np.maximum(inner[box], above), "lung")
    heart = _ellipsoid(bx, by, bz, (-15.0, 28.0, dome_l + 42.0), (72.0, 52.0, 48.0))
    canvas.paint(box, np.maximum(heart, above + 3.0), "heart")

    def below_diaphragm(bx, by, bz, gap: float = 5.0):
        return bz - diaphragm(bx, by) + gap

    # stomach: left upper quadrant, anterior to the spleen; fluid with an anterior gas cap
    q = p["stomach"]
    c = (-48.0 + q["shift"][0], 30.0 + q["shift"][1], 45.0 + q["shift"][2])
    r = tuple(a * s for a, s in zip((42.0, 30.0, 50.0), q["scale"]))
    box = canvas.box(c, (48.0, 48.0, r[2] + 5.0))
    bx, by, bz = canvas.coords(box)
    sd = _ellipsoid(bx, by, bz, c, r, yaw=math.radians(35.0) + q["yaw"]) + q["rough"] * rough[box]
    sd = np.maximum(np.maximum(sd, inner[box] + 3.0), below_diaphragm(bx, by, bz))
    canvas.paint(box, sd, "stomach_wall")
    gas = np.clip((by - (c[1] + 22.0 - 18.0 * q["gas"])) / 4.0, 0.0, 1.0)
    canvas.blend(box, canvas.occupancy(sd + 4.0), values["stomach_fluid"] * (1.0 - gas) + values["gas"] * gas)

    # keep-out zone of the liver and spleen: vertebra, aorta and the posterior midline
    def retroperitoneum(bx, by):
        return -_ellipse(bx, by, (0.0, -36.0), (38.0, 34.0))

    # liver: right lobe + left lobe (smooth union), lobulated, under the right dome, with a vessel tree
    q = p["liver"]
    c = (68.0 + q["shift"][0], 4.0 + q["shift"][1], 24.0 + q["shift"][2])
    r = tuple(a * s for a, s in zip((72.0, 86.0, 100.0), q["scale"]))
    c_left = (c[0] - 78.0, c[1] + 42.0, c[2] + 34.0)
    r_left = (46.0 * q["left_lobe"], 25.0 * q["scale"][1], 42.0 * q["scale"][2])
    box = canvas.box((c[0] - 35.0, c[1], c[2]), (125.0, 100.0, r[2] + 5.0))
    bx, by, bz = canvas.coords(box)
    right_lobe = _ellipsoid(bx, by, bz, c, r, yaw=q["yaw"])
    left_lobe = _ellipsoid(bx, by, bz, c_left, r_left, yaw=q["yaw"] - math.radians(10.0))
    sd = _smooth_union(right_lobe, left_lobe, 18.0) + q["rough"] * rough[box]
    del right_lobe, left_lobe
    sd = np.maximum(sd, inner[box] + 2.0)
    sd = np.maximum(sd, below_diaphragm(bx, by, bz))
    sd = np.maximum(sd, retroperitoneum(bx, by))
    canvas.paint(box, sd, "liver", PHANTOM_LABELS["liver"], texture="coarse")
    # vessel tree: tubes along the curves where two smooth random fields both cross zero
    inner_box = _bounding_box(sd < -4.0, box)
    if inner_box is not None:
        tube = np.maximum(
            np.abs(_smooth_field(anatomy_rng, axes, 9.0, inner_box)),
            np.abs(_smooth_field(anatomy_rng, axes, 9.0, inner_box)),
        )
        sub = tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner_box, box))
        inside = np.clip((-sd[sub] - 4.0) / 4.0, 0.0, 1.0)
        canvas.blend(inner_box, inside * np.clip((0.17 - tube) / 0.07, 0.0, 1.0), values["liver_vessel"])
        del tube, inside

    # gallbladder: under the inferior surface of the liver, anterior (absent in some patients)
    q = p["gallbladder"]
    if q["present"]:
        cg = (c[0] - 22.0 + q["shift"][0], c[1] + 40.0 + q["shift"][1], c[2] - 58.0 + q["shift"][2])
        rg = tuple(a * s for a, s in zip((15.0, 17.0, 32.0), q["scale"]))
        box = canvas.box(cg, (40.0, 40.0, 40.0))
        bx, by, bz = canvas.coords(box)
        sd = _ellipsoid(bx, by, bz, cg, rg, yaw=math.radians(30.0) + q["yaw"], shear=(0.25, 0.2))
        canvas.paint(box, np.maximum(sd, inner[box] + 3.0), "gallbladder", 0)

    # spleen: posterolateral left, along the wall, with a concave hilum facing the stomach and kidney
    q = p["spleen"]
    c = (-80.0 + q["shift"][0], -34.0 + q["shift"][1], 38.0 + q["shift"][2])
    r = tuple(a * s for a, s in zip((24.0, 58.0, 50.0), q["scale"]))
    outward = math.atan2(c[1] + 10.0, c[0])  # direction from the abdominal centre to the spleen
    hilum = (c[0] - 36.0 * math.cos(outward), c[1] - 36.0 * math.sin(outward), c[2])
    box = canvas.box(c, (62.0, 62.0, r[2] + 5.0))
    bx, by, bz = canvas.coords(box)
    sd = _ellipsoid(bx, by, bz, c, r, yaw=outward + q["yaw"], shear=(0.0, -0.15))
    sd = np.maximum(sd, -_ellipsoid(bx, by, bz, hilum, (24.0, 34.0, 42.0), yaw=outward))
    sd = sd + q["rough"] * 0.7 * rough[box]
    sd = np.maximum(np.maximum(sd, inner[box] + 2.0), below_diaphragm(bx, by, bz))
    sd = np.maximum(sd, retroperitoneum(bx, by))
    canvas.paint(box, sd, "spleen", PHANTOM_LABELS["spleen"])

    # kidneys: perirenal fat, cortex, medulla, renal sinus; hilum toward the spine and anteriorly
    z_right = -40.0
    for organ, side, z_kidney in (
        ("right_kidney", 1.0, z_right),
        ("left_kidney", -1.0, z_right + p["left_kidney"]["above_right"]),
    ):
        q = p[organ]
        c = (62.0 * side + q["shift"][0], -32.0 + q["shift"][1], z_kidney + q["shift"][2])
        r = tuple(a * s for a, s in zip((31.0, 22.0, 57.0), q["scale"]))
        yaw = math.atan2(math.sin(math.radians(35.0)), -side * math.cos(math.radians(35.0))) + q["yaw"] * side
        medial = (math.cos(yaw), math.sin(yaw))
        shear = (-0.18 * side, 0.1)  # upper pole closer to the spine and more posterior
        box = canvas.box(c, (45.0, 45.0, r[2] + 10.0))
        bx, by, bz = canvas.coords(box)
        sd = _ellipsoid(bx, by, bz, c, r, yaw=yaw, shear=shear)
        notch = (c[0] + 0.95 * r[0] * medial[0], c[1] + 0.95 * r[0] * medial[1], c[2])
        sd = np.maximum(sd, -_ellipsoid(bx, by, bz, notch, (12.0, 13.0, 20.0), yaw=yaw, shear=shear))
        sd = np.maximum(sd + q["rough"] * 0.5 * rough[box], inner[box] + 1.0)
        canvas.paint(box, np.maximum(sd - 5.0, inner[box]), "fat", 0)
        canvas.paint(box, sd, "kidney_cortex", PHANTOM_LABELS[organ])
        medulla = np.clip((canvas.textures["coarse"][box] + 0.2) / 0.5, 0.0, 1.0)
        canvas.paint(box, sd + 6.0, "kidney_medulla", weight=medulla)
        sinus = (c[0] + 0.45 * r[0] * medial[0], c[1] + 0.45 * r[0] * medial[1], c[2])
        sd_sinus = _ellipsoid(bx, by, bz, sinus, (0.45 * r[0], 0.45 * r[1], 0.5 * r[2]), yaw=yaw, shear=shear)
        canvas.paint(box, np.maximum(sd_sinus, sd + 2.0), "renal_sinus")

    # great vessels: aorta (left of the midline, on the vertebra) and inferior vena cava (right, in the liver)
    box = canvas.box((0.0, 0.0, 0.0), (50.0, 30.0, 150.0))
    bx, by, bz = canvas.coords(box)
    aorta = _ellipse(bx, by, (-14.0, -3.0 + 0.05 * bz), (11.0, 11.0))
    canvas.paint(box, aorta, "vessel_wall", 0)
    canvas.paint(box, aorta + 2.0, "aorta")
    canvas.paint(box, _ellipse(bx, by, (24.0, -4.0), (13.0, 9.0)), "ivc", 0)

    # vertebral column: bodies and discs, posterior arch, spinal canal, spinous and transverse processes
    box = canvas.box((0.0, -52.0, 0.0), (60.0, 45.0, 150.0))
    bx, by, bz = canvas.coords(box)
    disc = np.clip((np.cos((bz - p["disc_phase"]) * (2.0 * math.pi / 36.0)) - 0.55) / 0.2, 0.0, 1.0)
    body = _ellipse(bx, by, (0.0, -31.0), (21.0, 17.0))
    canvas.paint(box, body, "cortical_bone", 0)
    canvas.paint(box, body + 2.0, "cancellous_bone", texture="coarse")
    canvas.paint(box, body + 0.5, "disc", weight=disc)
    arch = np.maximum(_ellipse(bx, by, (0.0, -56.0), (15.0, 14.0)), -52.0 - by)
    arch = np.minimum(arch, _ellipse(bx, by, (0.0, -75.0), (5.0, 13.0)))
    for side in (1.0, -1.0):
        arch = np.minimum(arch, _ellipse(bx, by, (30.0 * side, -46.0), (15.0, 4.0)) + 30.0 * disc)
    canvas.paint(box, arch, "cortical_bone", 0)
    canvas.paint(box, arch + 2.0, "cancellous_bone")
    canvas.paint(box, _ellipse(bx, by, (0.0, -56.0), (8.5, 8.0)), "csf", 0)

    # ribs in the wall of the upper abdomen, sloping down anteriorly, none at the front and back midline
    box = canvas.box((0.0, 0.0, 55.0), (150.0, 110.0, 95.0))
    bx, by, bz = canvas.coords(box)
    wall = canvas.occupancy(skin[box] + fat[box]) * canvas.occupancy(-inner[box])
    phase = (bz + 0.5 * (by + 90.0) - 0.3 * np.abs(bx)) * (1.0 / 30.0) + p["rib_phase"]
    ribs = np.clip((np.cos(2.0 * math.pi * phase) - 0.7) / 0.12, 0.0, 1.0)
    ribs *= np.clip((bz + 35.0) / 10.0, 0.0, 1.0) * np.clip((np.abs(bx) - 40.0) / 8.0, 0.0, 1.0)
    canvas.blend(box, wall * ribs, values["rib"])
    del wall, ribs, phase, fat

    image = canvas.image
    if modality == "ct":  # the patient table, a few mm under the back
        back = np.flatnonzero((skin < 0).any(axis=(0, 2)))
        if back.size and back[0] > 2:
            y_table = axes[1][back[0]] - 8.0
            rows = (axes[1] > y_table - 6.0) & (axes[1] <= y_table)
            image[:, rows, :] = values["table"]
    image = ndimage.gaussian_filter(image, (0.45, 0.45, 0.3), mode="nearest")

    if modality == "mri":  # receive-coil shading, smooth bias, Rician noise
        b = look_rng.normal(0.0, 0.12, size=4)
        xs = (axes[0] / 150.0).astype(np.float32)[:, None, None]
        ys = (axes[1] / 100.0).astype(np.float32)[None, :, None]
        zs = (axes[2] / 144.0).astype(np.float32)[None, None, :]
        bias = np.exp(float(b[0]) * xs + float(b[1]) * ys + float(b[2]) * zs + float(b[3]) * xs * xs)
        coil = float(look_rng.uniform(0.15, 0.4))
        bias = bias * (1.0 + coil * np.exp(np.minimum(skin, 0.0) * (1.0 / 40.0)))
        sigma = 0.05 * values["liver"] * float(look_rng.uniform(0.8, 1.2))
        real = image * bias + look_rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)
        imag = look_rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)
        image = np.sqrt(real * real + imag * imag)
    else:
        sigma = float(look_rng.uniform(8.0, 14.0))
        image = image + look_rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)

    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-(n - 1) / 2.0 * s for n, s in zip(shape, spacing)]
    return Phantom(
        image=np.ascontiguousarray(image, dtype=np.float32),
        label=canvas.label,
        affine=affine,
        label_map=dict(PHANTOM_LABELS),
        modality=modality,
        seed=seed,
    )


# ------------------------------------------------------------------------------------------------------ writers


def write_phantom(
    out_dir: str | os.PathLike,
    name: str,
    seed: int = 0,
    modality: str = "mri",
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] | None = None,
) -> tuple[Path, Path]:
    """Generate a phantom and write ``<name>_image.nii.gz`` (float32) and ``<name>_label.nii.gz`` (uint8).

    Both files carry the RAS affine (sform and qform, code "scanner", mm) and are written atomically: a failure
    never leaves a partial file behind.

    Returns:
        (image path, label path).
    """
    import nibabel as nib

    phantom = make_phantom(seed=seed, modality=modality, shape=shape, spacing=spacing)
    out_dir = Path(out_dir)
    paths = out_dir / f"{name}_image.nii.gz", out_dir / f"{name}_label.nii.gz"
    for array, path in zip((phantom.image, phantom.label), paths):
        img = nib.Nifti1Image(array, phantom.affine)
        img.header.set_xyzt_units("mm")
        img.set_sform(phantom.affine, code=1)
        img.set_qform(phantom.affine, code=1)
        img.header["descrip"] = f"fewshot-monai phantom {modality} seed {seed}".encode()[:79]
        with atomic_path(path) as tmp:
            nib.save(img, tmp)
    return paths


def make_phantom_dataset(
    out_dir: str | os.PathLike,
    n: int = 4,
    modality: str = "mri",
    first_seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] | None = None,
) -> list[dict]:
    """Write ``n`` phantoms ``case<k>_image.nii.gz`` / ``case<k>_label.nii.gz`` and return their datalist.

    Case ``k`` (id ``"case<k>"``) uses seed ``first_seed + k``. The folder follows the layout of the
    :data:`fewshot_monai.data.datasets.PHANTOM` descriptor, so ``datalist(out_dir, "phantom")`` lists it again.

    Returns:
        ``[{"id": "case0", "image": str, "label": str}, ...]`` in case order.
    """
    if int(n) < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    cases = []
    for k in range(int(n)):
        image, label = write_phantom(
            out_dir, f"case{k}", seed=first_seed + k, modality=modality, shape=shape, spacing=spacing
        )
        cases.append({"id": f"case{k}", "image": str(image), "label": str(label)})
    return cases
