"""Tiny synthetic volumes with a known answer, shared by tests (the full phantoms live in fewshot_monai.data)."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor


def blob_volume(shape=(96, 96, 20), centre=(50, 44), radii=(22, 16), z=(5, 14), seed=0):
    """A textured bright elliptic cylinder (the 'organ', label 1 on slices z[0]..z[1]) in a darker background.

    Returns (image, label) as (1, X, Y, Z) MetaTensors with a 1.5 x 1.5 x 5 mm affine; the image is z-scored.
    """
    rng = np.random.default_rng(seed)
    xx, yy = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    disc = ((xx - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 <= 1.0
    label = np.zeros(shape, dtype=np.uint8)
    label[..., z[0] : z[1] + 1] = disc[..., None]
    image = rng.normal(0.0, 0.3, shape).astype(np.float32)
    image += np.where(label > 0, 2.0 + 0.5 * np.sin(xx / 3.0)[..., None], -0.5 + 0.3 * np.cos(yy / 5.0)[..., None])
    image = ((image - image.mean()) / image.std()).astype(np.float32)
    affine = np.diag([1.5, 1.5, 5.0, 1.0])
    return (
        MetaTensor(torch.from_numpy(image)[None], affine=affine, meta={"filename_or_obj": f"blob_{seed}.nii.gz"}),
        MetaTensor(torch.from_numpy(label)[None], affine=affine, meta={"filename_or_obj": f"blob_{seed}_label.nii.gz"}),
    )


def write_blob_case(directory, name: str, **kwargs):
    """Write a blob volume as ``<name>.nii.gz`` and ``<name>_label.nii.gz``; returns the two paths."""
    import nibabel as nib

    image, label = blob_volume(**kwargs)
    affine = np.asarray(image.affine)
    image_path, label_path = directory / f"{name}.nii.gz", directory / f"{name}_label.nii.gz"
    nib.save(nib.Nifti1Image(image[0].numpy(), affine), image_path)
    nib.save(nib.Nifti1Image(label[0].numpy(), affine), label_path)
    return image_path, label_path


def photo_input(img: np.ndarray, size: int = 224) -> torch.Tensor:
    """A photo (H, W[, 3|4]) as EfficientNet-Lite input: centre square crop, antialiased resize to ``size``,
    RGB 0..255 -> the Lite input range ``(rgb - 127.5) / 128``."""
    import torch.nn.functional as F

    from fewshot_monai.networks.lite0 import EfficientNetLite

    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[..., :3]
    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return EfficientNetLite.normalize_rgb(t)


def kidney_and_decoy_volume(decoy: bool, seed: int):
    """A liver (label 1), a small striped kidney (label 2) on one side, and optionally a larger unlabelled disc of
    the kidney's texture on the other side, on the same slices (the other kidney, for a prototype)."""
    rng = np.random.default_rng(seed)
    shape = (96, 96, 24)
    xx, yy = np.meshgrid(np.arange(96), np.arange(96), indexing="ij")
    liver = ((xx - 48) / 26.0) ** 2 + ((yy - 26) / 14.0) ** 2 <= 1
    kidney = ((xx - 24) / 9.0) ** 2 + ((yy - 72) / 9.0) ** 2 <= 1
    look_alike = ((xx - 72) / 13.0) ** 2 + ((yy - 72) / 13.0) ** 2 <= 1
    label = np.zeros(shape, dtype=np.uint8)
    label[..., 4:20][liver] = 1
    label[..., 8:16][kidney] = 2
    image = rng.normal(0.0, 0.2, shape).astype(np.float32) - 0.5
    image[label == 1] += 2.0
    stripes = (1.0 + np.sign(np.sin(yy / 1.5)))[..., None] * np.ones(shape[-1])
    image[label == 2] += stripes[label == 2] + 0.5
    if decoy:
        region = np.zeros(shape, dtype=bool)
        region[..., 8:16][look_alike] = True
        image[region] += stripes[region] + 0.5
    affine = np.diag([1.5, 1.5, 5.0, 1.0])
    return MetaTensor(torch.from_numpy(image)[None], affine=affine), label
