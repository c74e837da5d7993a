"""Felzenszwalb superpixels per axial slice, restricted to the body: the pseudo-labels of self-supervised training.

Based on:

    Ouyang et al. "Self-supervision with Superpixels: Training Few-shot Medical Image Segmentation without
    Annotation". ECCV 2020, https://arxiv.org/abs/2007.09886

SSL-ALPNet segments every axial slice with :func:`skimage.segmentation.felzenszwalb` (``min_size=400``,
``sigma=1`` and scikit-image's default ``scale=1``) on 256 x 256 slices of *un-normalised* intensities, then
keeps only the superpixels inside a body mask (intensity threshold, largest connected component, holes filled,
per slice). This module does the same on the intensity-preset (z-scored) volumes of fewshot-monai, so:

- ``scale`` is in z-score units. Felzenszwalb is linear in the intensities: ``scale=1`` on raw CHAOS T2-SPIR
  intensities (volume std ~185-200) gives exactly the same segmentation as ``scale=1/std ~ 0.005`` on the
  z-scored volume (checked on CHAOS case 1, slice 18: identical labels). With such a small scale the graph merge
  criterion almost never joins regions by itself and the superpixels are shaped by ``min_size``, as in SSL-ALPNet.
  Larger scales (0.5-5) give fewer, larger, more intensity-driven superpixels.
- ``min_size`` is given in pixels of a 256 x 256 slice and scaled by the slice area (``reference_size``), so a
  512 x 512 CT gets superpixels of the same physical extent (``min_size * 4``). ``reference_size=None`` disables it.
- the body mask threshold is a fraction of the volume's intensity range (``lo + body_threshold * (hi - lo)``),
  applied to the slice smoothed with the same Gaussian ``sigma``; it is invariant to z-scoring. The default 0.05
  corresponds to ~43-45 raw units on CHAOS (SSL-ALPNet used 50) and ~13/255 on the 8-bit SABS CT copy
  (SSL-ALPNet: anything above the minimum); the smoothing keeps the noisy air of low-SNR MRI (e.g. the
  phantoms, Rician noise) out of the mask, where 0.03 without smoothing would take the whole field of view.

Labels: 0 is outside the body; superpixels are numbered ``1..n_k`` **per slice** (ids repeat across slices).
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, ensure_tuple
from scipy.ndimage import binary_fill_holes, gaussian_filter
from skimage.measure import label as connected_components
from skimage.segmentation import felzenszwalb, relabel_sequential

__all__ = [
    "SuperpixelParams",
    "body_mask",
    "slice_superpixels",
    "superpixel_volume",
    "Superpixels",
    "Superpixelsd",
]


@dataclass(frozen=True)
class SuperpixelParams:
    """Parameters of :func:`superpixel_volume` (see the module docstring for their units).

    Args:
        min_size: minimum superpixel size in pixels of a ``reference_size`` x ``reference_size`` slice (400).
        sigma: Gaussian pre-smoothing of Felzenszwalb, in pixels (1.0).
        scale: Felzenszwalb's ``scale`` (``k``) on z-scored intensities (0.005 ~ SSL-ALPNet's setting).
        body_threshold: body mask threshold as a fraction of the volume intensity range (0.05).
        reference_size: in-plane size ``min_size`` refers to; ``None`` uses ``min_size`` as is (256).
    """

    min_size: int = 400
    sigma: float = 1.0
    scale: float = 0.005
    body_threshold: float = 0.05
    reference_size: int | None = 256

    def __post_init__(self):
        if int(self.min_size) < 1:
            raise ValueError(f"min_size must be >= 1, got {self.min_size}")
        if float(self.sigma) < 0 or float(self.scale) <= 0:
            raise ValueError(f"sigma must be >= 0 and scale > 0, got sigma={self.sigma}, scale={self.scale}")
        if not 0.0 <= float(self.body_threshold) < 1.0:
            raise ValueError(f"body_threshold must be in [0, 1), got {self.body_threshold}")
        if self.reference_size is not None and int(self.reference_size) < 1:
            raise ValueError(f"reference_size must be positive or None, got {self.reference_size}")

    def to_dict(self) -> dict:
        return asdict(self)

    def effective_min_size(self, in_plane: tuple[int, int]) -> int:
        """``min_size`` scaled from the reference slice area to an ``in_plane = (X, Y)`` slice."""
        if self.reference_size is None:
            return int(self.min_size)
        ratio = (int(in_plane[0]) * int(in_plane[1])) / float(self.reference_size) ** 2
        return max(1, int(round(self.min_size * ratio)))


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _largest_component_filled(mask: np.ndarray) -> np.ndarray:
    if not mask.any():
        return mask
    components = connected_components(mask)
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    return binary_fill_holes(components == largest)


def body_mask(volume, threshold: float = 0.05, sigma: float = 1.0) -> np.ndarray:
    """Per-slice body mask of a volume: intensity threshold, largest connected component, holes filled.

    Args:
        volume: ``(1, X, Y, Z)`` or ``(X, Y, Z)`` image (any intensity scale).
        threshold: fraction of the volume's intensity range: a pixel is "body" when its smoothed value is above
            ``min + threshold * (max - min)`` (min and max of the whole, unsmoothed volume).
        sigma: in-plane Gaussian smoothing (pixels) before thresholding; 0 disables it.

    Returns:
        a boolean numpy array of the input's shape. Each axial slice keeps its largest 8-connected component
        with holes filled (so air inside the bowel or lungs counts as body); slices with nothing above the
        threshold are empty.
    """
    arr = _as_numpy(volume)
    squeeze = arr.ndim == 4
    if squeeze:
        if arr.shape[0] != 1:
            raise ValueError(f"body_mask expects a single-channel volume, got shape {arr.shape}")
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"body_mask expects a (1, X, Y, Z) or (X, Y, Z) volume, got shape {arr.shape}")
    lo, hi = float(arr.min()), float(arr.max())
    cut = lo + float(threshold) * (hi - lo)
    out = np.zeros(arr.shape, dtype=bool)
    if hi > lo:
        for k in range(arr.shape[-1]):
            plane = np.asarray(arr[..., k], dtype=np.float64)
            if sigma > 0:
                plane = gaussian_filter(plane, float(sigma))
            out[..., k] = _largest_component_filled(plane > cut)
    return out[None] if squeeze else out


def slice_superpixels(image_2d: np.ndarray, body_2d: np.ndarray, params: SuperpixelParams) -> np.ndarray:
    """Felzenszwalb superpixels of one slice, kept inside ``body_2d`` and renumbered ``1..n`` (0 outside)."""
    if not body_2d.any():
        return np.zeros(image_2d.shape, dtype=np.int32)
    segments = felzenszwalb(
        np.asarray(image_2d, dtype=np.float64),
        scale=float(params.scale),
        sigma=float(params.sigma),
        min_size=params.effective_min_size(image_2d.shape),
    )
    segments = np.where(body_2d, segments + 1, 0)
    return relabel_sequential(segments)[0].astype(np.int32)


def superpixel_volume(volume, params: SuperpixelParams | None = None) -> np.ndarray:
    """Superpixel label volume of a ``(1, X, Y, Z)`` or ``(X, Y, Z)`` image (int32, same shape, 0 = outside body)."""
    params = params or SuperpixelParams()
    arr = _as_numpy(volume).astype(np.float32, copy=False)
    squeeze = arr.ndim == 4
    if squeeze:
        if arr.shape[0] != 1:
            raise ValueError(f"superpixels need a single-channel volume, got shape {arr.shape}")
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"superpixels need a (1, X, Y, Z) or (X, Y, Z) volume, got shape {arr.shape}")
    body = body_mask(arr, params.body_threshold, params.sigma)
    out = np.zeros(arr.shape, dtype=np.int32)
    for k in range(arr.shape[-1]):
        out[..., k] = slice_superpixels(arr[..., k], body[..., k], params)
    return out[None] if squeeze else out


class Superpixels(Transform):
    """
    Felzenszwalb superpixels of every axial slice inside the body mask (see the module docstring).

    Args:
        min_size: minimum superpixel size in pixels of a 256 x 256 slice (scaled with the slice area). 400.
        sigma: Gaussian smoothing (pixels) before segmentation. 1.0.
        scale: Felzenszwalb ``scale`` in z-score units. 0.005.
        body_threshold: body threshold, fraction of the volume's intensity range. 0.05.
        reference_size: in-plane size ``min_size`` refers to (``None``: no scaling). 256.

    Shapes:
        input ``(1, X, Y, Z)`` intensity-preset image (axis -1 the slice axis: RAS for axial scans); output
        ``(1, X, Y, Z)`` int32 labels, 0 outside the body, ``1..n`` per slice. A ``MetaTensor`` input gives a
        ``MetaTensor`` with its meta/affine.

    Example::

        sp = Superpixels()(case["image"])        # (1, X, Y, Z) int32
        n_on_slice_10 = int(sp[..., 10].max())
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        min_size: int = 400,
        sigma: float = 1.0,
        scale: float = 0.005,
        body_threshold: float = 0.05,
        reference_size: int | None = 256,
    ):
        self.params = SuperpixelParams(int(min_size), float(sigma), float(scale), float(body_threshold), reference_size)

    def __call__(self, img):
        arr = _as_numpy(img)
        if arr.ndim != 4 or arr.shape[0] != 1:
            raise ValueError(f"Superpixels expects a channel-first volume (1, X, Y, Z), got shape {arr.shape}")
        out = torch.from_numpy(superpixel_volume(arr, self.params))
        if isinstance(img, MetaTensor):
            out = MetaTensor(out, meta=copy.deepcopy(dict(img.meta)))  # the meta holds the affine
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"


class Superpixelsd(MapTransform):
    """Dictionary version of :class:`Superpixels`: writes the superpixels of ``keys`` to ``output_keys``.

    Args:
        keys: image keys.
        output_keys: keys receiving the label volumes, one per key. Defaults to ``"superpixels"``.
        other arguments: see :class:`Superpixels`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_keys: KeysCollection = "superpixels",
        min_size: int = 400,
        sigma: float = 1.0,
        scale: float = 0.005,
        body_threshold: float = 0.05,
        reference_size: int | None = 256,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.output_keys = ensure_tuple(output_keys)
        if len(self.output_keys) != len(self.keys):
            raise ValueError(f"need one output key per key, got keys={self.keys} output_keys={self.output_keys}")
        self.superpixels = Superpixels(min_size, sigma, scale, body_threshold, reference_size)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[out_key] = self.superpixels(d[key])
        return d
