"""Self-supervised training episodes from superpixels (SSL-ALPNet), the superpixel cache, and a resumable loader.

Based on:

    Ouyang et al. "Self-supervision with Superpixels: Training Few-shot Medical Image Segmentation without
    Annotation". ECCV 2020, https://arxiv.org/abs/2007.09886

An episode is one axial slice and one of its superpixels used as the "organ": the support and the query are two
independently augmented views (random affine, elastic deformation, gamma, noise -- MONAI random transforms) of
that slice and superpixel mask. Episode ``i`` is a pure function of ``(seed, i)``: its slice, superpixel and
augmentation parameters come from ``numpy.random.default_rng([seed, i])`` and ``Compose.set_random_state``, so a
resumed training run sees exactly the episodes an uninterrupted run would have seen.

Pieces:

- :class:`SuperpixelCache` -- superpixel label volumes on disk next to a ``manifest.json`` (used by the
  ``fewshot-monai superpixels`` command and by training);
- :func:`load_training_volumes` -- load scans once (intensity preset, slicing plane) with their superpixels (and labels
  when slices must be excluded);
- :class:`SuperpixelEpisodeDataset` -- ``dataset[i]`` is episode ``i`` (slices kept in memory, resized once);
- :class:`SupportEpisodeDataset` -- labelled episodes from a support volume's own organ slices (support adaptation,
  :mod:`fewshot_monai.engines.adaptation`);
- :class:`EpisodeLoader` -- an iterable of episode batches that restarts at any iteration (for ignite).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    Rand2DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandGaussianNoised,
)
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from fewshot_monai.errors import InputError
from fewshot_monai.transforms.slicing import neighbour_slices, volume_to_slices
from fewshot_monai.transforms.superpixels import SuperpixelParams, superpixel_volume
from fewshot_monai.utils.files import atomic_write

__all__ = [
    "MANIFEST_NAME",
    "SuperpixelCache",
    "load_training_volumes",
    "EpisodeAugmentation",
    "episode_augmentation",
    "SuperpixelEpisodeDataset",
    "SupportEpisodeDataset",
    "EpisodeLoader",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
_MANIFEST_FORMAT = "fewshot-monai superpixels"
_REFERENCE_SIZE = 256


# ----------------------------------------------------------------------------------------------------------------
# superpixel cache
# ----------------------------------------------------------------------------------------------------------------


def _file_stamp(path: Path) -> dict:
    st = path.stat()
    return {"image_bytes": int(st.st_size), "image_mtime_ns": int(st.st_mtime_ns)}


class SuperpixelCache:
    """
    Superpixel label volumes cached as NIfTI files in ``directory`` with a ``manifest.json`` describing them.

    Each cached volume ``<case id>_superpixels.nii.gz`` has the geometry (affine) of the loaded image -- reoriented
    to its slicing plane (``RAS`` for axial scans), the same physical space as the image file -- and per-slice ids
    (0 = outside the body); it is read back in its stored voxel order, and recomputed when the image is now loaded
    in another plane. The
    manifest records, per image (absolute path): the superpixel file, the parameters (including the intensity
    preset), the image file's size and modification time, and counts. An entry is *done* when its parameters and
    the image stamp match and the file exists; anything else is recomputed. Files and the manifest are written
    atomically, the manifest after every volume, so an interrupted run keeps everything finished so far.
    One process should write a cache directory at a time.

    Args:
        directory: the cache folder (created on first write).
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.manifest_path = self.directory / MANIFEST_NAME
        self.manifest = self._read_manifest()

    def _read_manifest(self) -> dict:
        empty = {"format": _MANIFEST_FORMAT, "version": 1, "entries": {}, "failed": {}}
        if not self.manifest_path.is_file():
            return empty
        try:
            data = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as err:
            raise InputError(
                self.manifest_path, f"unreadable superpixel manifest ({err}); delete it to rebuild"
            ) from err
        if not isinstance(data, dict) or data.get("format") != _MANIFEST_FORMAT:
            raise InputError(self.manifest_path, "not a fewshot-monai superpixel manifest")
        data.setdefault("entries", {})
        data.setdefault("failed", {})
        return data

    def _write_manifest(self) -> None:
        with atomic_write(self.manifest_path) as f:
            json.dump(self.manifest, f, indent=2, sort_keys=True)
            f.write("\n")

    @staticmethod
    def key(image: str | os.PathLike) -> str:
        return str(Path(image).resolve())

    @staticmethod
    def describe(params: SuperpixelParams, intensity: str | None) -> dict:
        """The parameter record stored in (and compared against) the manifest."""
        return {**params.to_dict(), "intensity": intensity or "none"}

    def entry(self, image: str | os.PathLike) -> dict | None:
        return self.manifest["entries"].get(self.key(image))

    def is_done(self, image: str | os.PathLike, params: SuperpixelParams, intensity: str | None) -> bool:
        """True when ``image`` has a cached superpixel volume made with these parameters from the same file."""
        entry = self.entry(image)
        if entry is None or entry.get("parameters") != self.describe(params, intensity):
            return False
        path = Path(image)
        if not path.exists() or not (self.directory / entry["superpixels"]).is_file():
            return False
        return {k: entry.get(k) for k in ("image_bytes", "image_mtime_ns")} == _file_stamp(path)

    def _output_name(self, image: str | os.PathLike) -> str:
        from fewshot_monai.data.io import case_id_from_path

        key = self.key(image)
        name = f"{case_id_from_path(image)}_superpixels.nii.gz"
        taken = {e["superpixels"] for k, e in self.manifest["entries"].items() if k != key}
        if name in taken:  # same file name from another folder
            digest = hashlib.sha1(key.encode()).hexdigest()[:8]
            name = f"{case_id_from_path(image)}_{digest}_superpixels.nii.gz"
        return name

    def compute(
        self,
        image: str | os.PathLike,
        params: SuperpixelParams,
        intensity: str | None,
        loaded: MetaTensor | None = None,
        plane: str = "auto",
    ) -> MetaTensor:
        """Compute, write and register the superpixels of ``image``; returns them ``(1, X, Y, Z)`` int32.

        Args:
            image: the image file (or DICOM folder).
            params: superpixel parameters.
            intensity: the intensity preset applied before computing them.
            loaded: the already loaded, intensity-normalised image (saves reading it again).
            plane: the slicing plane the image is loaded in when ``loaded`` is not given.

        Raises:
            InputError: the image cannot be read (the message names the file).
        """
        from fewshot_monai.data.io import load_case, save_volume

        if loaded is None:
            loaded = load_case(image, intensity=intensity, plane=plane)["image"]
        labels = superpixel_volume(loaded, params)
        result = MetaTensor(torch.from_numpy(labels), meta=dict(loaded.meta))
        name = self._output_name(image)
        save_volume(result, self.directory / name, reference=loaded, is_label=True)
        per_slice = labels.reshape(-1, labels.shape[-1]).max(axis=0)
        body_slices = per_slice[per_slice > 0]
        key = self.key(image)
        self.manifest["entries"][key] = {
            "image": key,
            "superpixels": name,
            "parameters": self.describe(params, intensity),
            **_file_stamp(Path(image)),
            "shape": [int(s) for s in labels.shape[1:]],
            "slices": int(labels.shape[-1]),
            "body_slices": int(body_slices.size),
            "superpixels_total": int(per_slice.sum()),
            "superpixels_per_slice": {
                "min": int(body_slices.min()) if body_slices.size else 0,
                "mean": round(float(body_slices.mean()), 2) if body_slices.size else 0.0,
                "max": int(body_slices.max()) if body_slices.size else 0,
            },
        }
        self.manifest["failed"].pop(key, None)
        self._write_manifest()
        return result

    def record_failure(self, image: str | os.PathLike, message: str) -> None:
        self.manifest["failed"][self.key(image)] = str(message)
        self._write_manifest()

    def load(self, image: str | os.PathLike) -> MetaTensor:
        """The cached superpixels of ``image`` as a ``(1, X, Y, Z)`` ``MetaTensor`` (int), in the voxel order they
        were computed in (that of the image as loaded then)."""
        from fewshot_monai.data.io import load_volume

        entry = self.entry(image)
        if entry is None:
            raise KeyError(f"{image}: no cached superpixels in {self.directory}")
        return load_volume(self.directory / entry["superpixels"], is_label=True, plane=None)

    def get(
        self,
        image: str | os.PathLike,
        params: SuperpixelParams,
        intensity: str | None,
        loaded: MetaTensor | None = None,
    ) -> MetaTensor:
        """Cached superpixels when done (and matching ``loaded``'s grid: shape and orientation), else compute and
        cache them."""
        if self.is_done(image, params, intensity):
            cached = self.load(image)
            if loaded is None or (
                tuple(cached.shape) == tuple(loaded.shape)
                and np.allclose(np.asarray(cached.affine), np.asarray(loaded.affine), atol=1e-3)
            ):
                return cached
        return self.compute(image, params, intensity, loaded)


# ----------------------------------------------------------------------------------------------------------------
# loading the training scans
# ----------------------------------------------------------------------------------------------------------------


def load_training_volumes(
    cases: Sequence[Mapping],
    intensity: str | None,
    params: SuperpixelParams | None = None,
    cache_dir: str | os.PathLike | None = None,
    with_labels: bool = False,
    progress: bool = True,
    plane: str = "auto",
) -> list[dict]:
    """Load scans once, with their superpixels (from ``cache_dir`` or computed) and optionally their labels.

    Args:
        cases: ``[{"id", "image", "label"}]`` (for example a dataset ``datalist``).
        intensity: intensity preset of the images.
        params: superpixel parameters.
        cache_dir: a :class:`SuperpixelCache` folder; missing or stale entries are computed and added.
            ``None`` computes the superpixels in memory.
        with_labels: also load each case's label (required by slice exclusion).
        progress: show a tqdm bar.
        plane: the slicing plane of the scans (:mod:`fewshot_monai.transforms.plane`; ``auto``: each scan's
            acquisition plane, ``RAS`` for axial scans).

    Returns:
        ``[{"id", "image": MetaTensor (1,X,Y,Z), "superpixels": (1,X,Y,Z) int, "label": MetaTensor or None}]``.

    Raises:
        InputError: a scan cannot be read, or ``with_labels`` and a case has no label file.
    """
    from fewshot_monai.data.io import load_case

    params = params or SuperpixelParams()
    cache = SuperpixelCache(cache_dir) if cache_dir is not None else None
    cases = list(cases)
    cached = sum(cache.is_done(c["image"], params, intensity) for c in cases) if cache is not None else 0
    logger.info(
        "loading %d training scans (superpixels: %d cached, %d to compute)", len(cases), cached, len(cases) - cached
    )
    start = time.perf_counter()
    out = []
    for case in tqdm(cases, desc="loading scans", unit="scan", disable=not progress, leave=False):
        label = case.get("label")
        if with_labels and not label:
            raise InputError(
                case["image"],
                "exclude_labels needs the label file of every training scan (slices containing the excluded organs "
                "are dropped); this scan has none -- give its label or remove the scan or exclude_labels",
            )
        loaded = load_case(
            case["image"], label if with_labels else None, intensity=intensity, case_id=case.get("id"), plane=plane
        )
        if cache is not None:
            sp = cache.get(case["image"], params, intensity, loaded["image"])
        else:
            sp = torch.from_numpy(superpixel_volume(loaded["image"], params))
        out.append({"id": str(loaded["id"]), "image": loaded["image"], "superpixels": sp, "label": loaded["label"]})
    logger.info("loaded %d training scans in %.0f s", len(out), time.perf_counter() - start)
    return out


# ----------------------------------------------------------------------------------------------------------------
# augmentation
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class EpisodeAugmentation:
    """Random augmentation of one episode view; distances are for a 256 x 256 slice and scale with the size.

    Args:
        rotate_deg: rotation range +-degrees. 15.
        scale: isotropic-ish zoom range, +- fraction (``RandAffine`` ``scale_range``). 0.1.
        translate: translation range, +- fraction of the slice size. 0.1.
        elastic_prob: probability of the elastic deformation (``Rand2DElastic``). 0.5.
        elastic_spacing: control-point spacing in pixels. 32.
        elastic_magnitude: displacement magnitude range in pixels. (2, 5).
        gamma: gamma range of ``RandAdjustContrast``. (0.5, 1.5).
        gamma_prob: probability of the gamma change. 1.0.
        noise_std: maximum std of additive Gaussian noise (z-score units). 0.05.
        noise_prob: probability of the noise. 0.15.
    """

    rotate_deg: float = 15.0
    scale: float = 0.1
    translate: float = 0.1
    elastic_prob: float = 0.5
    elastic_spacing: float = 32.0
    elastic_magnitude: tuple[float, float] = (2.0, 5.0)
    gamma: tuple[float, float] = (0.5, 1.5)
    gamma_prob: float = 1.0
    noise_std: float = 0.05
    noise_prob: float = 0.15

    @classmethod
    def from_dict(cls, cfg: Mapping | None) -> EpisodeAugmentation:
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown augmentation keys {unknown}; known: {sorted(known)}")
        for key in ("elastic_magnitude", "gamma"):
            if key in cfg:
                cfg[key] = tuple(float(v) for v in cfg[key])
        return cls(**cfg)

    def to_dict(self) -> dict:
        return asdict(self)


def episode_augmentation(spatial_size: int, aug: EpisodeAugmentation | None = None) -> Compose:
    """The MONAI ``Compose`` that makes one view of a ``{"image": (1,S,S), "label": (1,S,S)}`` episode slice.

    Spatial transforms use bilinear/border padding for the image and nearest/zero padding for the mask.
    """
    aug = aug or EpisodeAugmentation()
    f = float(spatial_size) / _REFERENCE_SIZE
    keys = ("image", "label")
    spatial = {"mode": ("bilinear", "nearest"), "padding_mode": ("border", "zeros")}
    transforms = [
        RandAffined(
            keys,
            prob=1.0,
            rotate_range=np.deg2rad(aug.rotate_deg),
            scale_range=(aug.scale, aug.scale),
            translate_range=(aug.translate * spatial_size, aug.translate * spatial_size),
            **spatial,
        )
    ]
    if aug.elastic_prob > 0:
        spacing = max(2.0, aug.elastic_spacing * f)
        transforms.append(
            Rand2DElasticd(
                keys,
                spacing=(spacing, spacing),
                magnitude_range=(aug.elastic_magnitude[0] * f, aug.elastic_magnitude[1] * f),
                prob=aug.elastic_prob,
                **spatial,
            )
        )
    if aug.gamma_prob > 0:
        transforms.append(RandAdjustContrastd("image", prob=aug.gamma_prob, gamma=tuple(aug.gamma)))
    if aug.noise_prob > 0 and aug.noise_std > 0:
        transforms.append(RandGaussianNoised("image", prob=aug.noise_prob, std=aug.noise_std))
    return Compose(transforms)


# ----------------------------------------------------------------------------------------------------------------
# episodes
# ----------------------------------------------------------------------------------------------------------------


def _plain(x) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def _augmented_view(transform: Compose, image: torch.Tensor, mask: torch.Tensor, seed: int):
    """One augmented ``(image, binary mask)`` view of a ``(1, S, S)`` slice and mask, a pure function of ``seed``."""
    transform.set_random_state(seed=seed)
    out = transform({"image": image.clone(), "label": mask.clone()})
    return _plain(out["image"]).float(), (_plain(out["label"]) > 0.5).float()


def _episode_item(views, channels: int, **fields) -> dict:
    """An episode dict from the ``[(support image, mask), (query image, mask)]`` views (grey slices tiled to
    ``channels``; 2.5D views already have them) plus the identifying ``fields``."""
    (s_img, s_mask), (q_img, q_mask) = views
    return {
        "support_image": s_img.expand(channels, -1, -1).contiguous(),
        "support_mask": s_mask,
        "query_image": q_img.expand(channels, -1, -1).contiguous(),
        "query_mask": q_mask,
        **fields,
    }


def _check_context(context: int, channels: int) -> int:
    context = int(context)
    if context < 0 or (context and channels != 2 * context + 1):
        raise ValueError(f"2.5D context {context} needs {2 * context + 1} channels, got {channels}")
    return context


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run small 2D tensor work on ``n`` intra-op threads (multi-threading them is slower, and under CPU
    contention much slower); also makes the episodes independent of the caller's thread count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _EpisodeDataset(Dataset):
    """Map-style episodes: ``dataset[i]`` is ``self._episode(i)``, made on one torch thread."""

    length: int

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index < 0:
            raise IndexError(f"episode index must be non-negative, got {index}")
        with _torch_threads(1):
            return self._episode(index)

    def _episode(self, index: int) -> dict:
        raise NotImplementedError


class SuperpixelEpisodeDataset(_EpisodeDataset):
    """
    Map-style dataset of self-supervised episodes: ``dataset[i]`` is episode ``i``, a pure function of
    ``(seed, i)``.

    At construction every volume is cut into axial slices resized to ``spatial_size`` (``volume_to_slices``:
    bilinear images, nearest superpixels) and kept in memory; the eligible slices are those with at least
    ``min_body_fraction`` of body and one superpixel of at least ``min_superpixel_size`` pixels, minus the
    excluded ones. Episode ``i`` draws (with ``numpy.random.default_rng([seed, i])``) a slice uniformly among the
    eligible slices of all volumes, one of its large-enough superpixels as foreground, and two augmentation seeds;
    the support and query views are the slice and mask through :func:`episode_augmentation`. A view whose mask
    lost (nearly) all its foreground or background is redrawn (deterministically), up to ``max_redraws`` times.

    Args:
        volumes: ``[{"id", "image": (1,X,Y,Z), "superpixels": (1,X,Y,Z), "label": (1,X,Y,Z) or None}]``
            (see :func:`load_training_volumes`).
        spatial_size: slice size ``S`` (256).
        seed: episode seed.
        min_superpixel_size: smallest usable superpixel, in pixels of a 256 x 256 slice (scaled with ``S``). 100.
        min_body_fraction: smallest usable body area, as a fraction of the slice. 0.05.
        exclude_labels: label ids; every slice containing any of them is dropped (the "setting 2" of the
            literature: test organs never appear in training, even unlabelled). Needs every volume's label.
        augmentation: an :class:`EpisodeAugmentation` (or a dict of its fields); ``None`` uses the defaults.
        channels: channels of the output slices (the grey slice is tiled). 3.
        length: ``len(dataset)`` (indices beyond it are still valid: episodes are unbounded).
        max_redraws: redraws of a degenerate view before falling back to the un-augmented slice.
        context: 2.5D input (``ALPNet(slice_context=...)``): the slice's neighbours on each side become its other
            channels (:func:`~fewshot_monai.transforms.slicing.neighbour_slices`); ``channels`` must then be
            ``2 * context + 1``. 0 (the grey slice tiled).

    Each item::

        {"support_image": (C,S,S) float32, "support_mask": (1,S,S) float32 in {0,1},
         "query_image": (C,S,S), "query_mask": (1,S,S),
         "index": i, "volume": volume id, "slice": z, "superpixel": superpixel id}

    Raises:
        InputError: ``exclude_labels`` is set and a volume has no label.
        ValueError: no eligible slice remains.
    """

    def __init__(
        self,
        volumes: Sequence[Mapping],
        spatial_size: int = 256,
        seed: int = 0,
        min_superpixel_size: int = 100,
        min_body_fraction: float = 0.05,
        exclude_labels: Sequence[int] = (),
        augmentation: EpisodeAugmentation | Mapping | None = None,
        channels: int = 3,
        length: int = 10**9,
        max_redraws: int = 10,
        context: int = 0,
    ):
        if not volumes:
            raise ValueError("no training volumes given")
        self.spatial_size = int(spatial_size)
        self.seed = int(seed)
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.channels = int(channels)
        self.context = _check_context(context, self.channels)
        self.length = int(length)
        self.max_redraws = int(max_redraws)
        area = self.spatial_size**2
        self.min_superpixel_size = max(1, int(round(min_superpixel_size * area / _REFERENCE_SIZE**2)))
        self.min_body_fraction = float(min_body_fraction)
        self.exclude_labels = tuple(int(v) for v in exclude_labels)
        if not isinstance(augmentation, EpisodeAugmentation):
            augmentation = EpisodeAugmentation.from_dict(augmentation)
        self.augmentation = augmentation
        self.transform = episode_augmentation(self.spatial_size, augmentation)

        self.volume_ids: list[str] = []
        self.images: list[torch.Tensor] = []  # (Z, 1, S, S) float32 per volume
        self.superpixels: list[torch.Tensor] = []  # (Z, S, S) int16/int32 per volume
        self.slices: list[tuple[int, int]] = []  # eligible (volume index, z)
        self.candidates: list[np.ndarray] = []  # usable superpixel ids per eligible slice
        self.excluded_slices = 0
        for v, vol in enumerate(volumes):
            self._add_volume(v, vol)
        if not self.slices:
            raise ValueError(
                "no eligible training slice: every slice is excluded, has too little body or no superpixel of "
                f"{self.min_superpixel_size} pixels (at {self.spatial_size}x{self.spatial_size})"
            )

    def _add_volume(self, v: int, vol: Mapping) -> None:
        vid = str(vol.get("id", v))
        image, sp = vol["image"], vol["superpixels"]
        if tuple(image.shape) != tuple(sp.shape):
            raise InputError(vid, f"image {tuple(image.shape)} and superpixels {tuple(sp.shape)} differ in shape")
        keep_z = np.ones(image.shape[-1], dtype=bool)
        if self.exclude_labels:
            label = vol.get("label")
            if label is None:
                raise InputError(
                    vid,
                    f"exclude_labels={list(self.exclude_labels)} needs this scan's label file: slices containing "
                    "those organs are dropped",
                )
            lab = _plain(label).reshape(-1, label.shape[-1])
            hit = torch.isin(lab, torch.tensor(self.exclude_labels, dtype=lab.dtype)).any(dim=0).numpy()
            keep_z &= ~hit
            self.excluded_slices += int(hit.sum())
        img_stack = volume_to_slices(_plain(image).float(), self.spatial_size, channels=1, mode="bilinear")
        sp_stack = volume_to_slices(_plain(sp).to(torch.int32), self.spatial_size, channels=1, mode="nearest")[:, 0]
        if int(sp_stack.max()) < 2**15:
            sp_stack = sp_stack.to(torch.int16)
        self.volume_ids.append(vid)
        self.images.append(img_stack.contiguous())
        self.superpixels.append(sp_stack.contiguous())
        area = self.spatial_size**2
        for z in np.flatnonzero(keep_z):
            labels = sp_stack[z].numpy().ravel().astype(np.int64)
            counts = np.bincount(labels)
            if counts.size < 2 or 1.0 - counts[0] / area < self.min_body_fraction:
                continue
            usable = np.flatnonzero(counts[1:] >= self.min_superpixel_size) + 1
            if usable.size:
                self.slices.append((v, int(z)))
                self.candidates.append(usable)

    def describe(self) -> dict:
        """Counts for logs: volumes, eligible slices, excluded slices, usable superpixels."""
        return {
            "volumes": len(self.volume_ids),
            "eligible_slices": len(self.slices),
            "excluded_slices": self.excluded_slices,
            "usable_superpixels": int(sum(c.size for c in self.candidates)),
        }

    def _view(self, image: torch.Tensor, mask: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _augmented_view(self.transform, image, mask, seed)

    def _ok(self, mask: torch.Tensor) -> bool:
        fg = int(mask.sum())
        return fg >= max(1, self.min_superpixel_size // 4) and fg < mask.numel()

    def _episode(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        k = int(rng.integers(len(self.slices)))
        v, z = self.slices[k]
        sp_id = int(rng.choice(self.candidates[k]))
        image = neighbour_slices(self.images[v], self.context, z)  # (1 or 2c+1, S, S)
        mask = (self.superpixels[v][z] == sp_id).float()[None]
        views = []
        for _ in range(2):
            for _attempt in range(self.max_redraws + 1):
                view = self._view(image, mask, int(rng.integers(2**31)))
                if self._ok(view[1]):
                    break
            else:
                view = (image.clone(), mask.clone())
            views.append(view)
        return _episode_item(views, self.channels, index=index, volume=self.volume_ids[v], slice=z, superpixel=sp_id)


class SupportEpisodeDataset(_EpisodeDataset):
    """
    Map-style dataset of *labelled* episodes cut from support volumes, for adapting a network to its support
    (:func:`fewshot_monai.engines.adaptation.adapt_to_support`); ``dataset[i]`` is a pure function of ``(seed, i)``.

    It mimics the 3D few-shot protocol on the support itself: in inference one support slice segments the query
    slices of its chunk, so episode ``i`` draws (``numpy.random.default_rng([seed, i])``) one organ, a support
    slice ``z`` containing it, and a query slice ``z'`` of the same volume with ``|z' - z|`` at most
    ``max_offset`` of that organ's z-extent and the organ present. Both slices go through
    :func:`episode_augmentation` independently, with the organ's real mask as the foreground.

    Args:
        volumes: ``[{"id", "image": (1,X,Y,Z), "label": (1,X,Y,Z) integer label map}]`` (z-scored images, as
            :func:`fewshot_monai.data.io.load_case` returns them).
        organ_ids: the label ids to draw organs from (each must be in at least one volume).
        spatial_size: slice size ``S``.
        seed: episode seed.
        max_offset: largest support-to-query distance, as a fraction of the organ's z-extent (0: the same slice
            in two augmented views, as in superpixel training). 0.2, about the half-chunk of the 3-chunk protocol.
        min_pixels: smallest organ cross-section usable as a support or query slice, in pixels of a 256 x 256
            slice (scaled with ``S``). 50.
        augmentation: an :class:`EpisodeAugmentation` (or dict of its fields); ``None`` uses the defaults.
        channels: channels of the output slices. 3.
        length: ``len(dataset)`` (episodes are unbounded).
        context: 2.5D input, as in :class:`SuperpixelEpisodeDataset` (the adapted network's ``slice_context``).

    Items have the keys of :class:`SuperpixelEpisodeDataset` items, with ``"organ"`` (label id) instead of
    ``"superpixel"`` and ``"query_slice"`` beside ``"slice"``.

    Raises:
        EmptyMaskError: no volume has any usable slice of an organ in ``organ_ids``.
        ValueError: bad arguments.
    """

    def __init__(
        self,
        volumes: Sequence[Mapping],
        organ_ids: Sequence[int],
        spatial_size: int = 256,
        seed: int = 0,
        max_offset: float = 0.2,
        min_pixels: int = 50,
        augmentation: EpisodeAugmentation | Mapping | None = None,
        channels: int = 3,
        length: int = 10**9,
        context: int = 0,
    ):
        from fewshot_monai.errors import EmptyMaskError

        if not volumes:
            raise ValueError("no support volumes given")
        if not organ_ids:
            raise ValueError("no organ ids given")
        if not 0.0 <= float(max_offset) <= 1.0:
            raise ValueError(f"max_offset must be in [0, 1], got {max_offset}")
        self.spatial_size = int(spatial_size)
        self.seed = int(seed)
        self.channels = int(channels)
        self.context = _check_context(context, self.channels)
        self.length = int(length)
        self.max_offset = float(max_offset)
        self.min_pixels = max(1, int(round(min_pixels * self.spatial_size**2 / _REFERENCE_SIZE**2)))
        if not isinstance(augmentation, EpisodeAugmentation):
            augmentation = EpisodeAugmentation.from_dict(augmentation)
        self.augmentation = augmentation
        self.transform = episode_augmentation(self.spatial_size, augmentation)
        self.volume_ids: list[str] = []
        self.images: list[torch.Tensor] = []  # (Z, 1, S, S) per volume
        self.labels: list[torch.Tensor] = []  # (Z, S, S) per volume
        # (volume, organ id, usable slices of that organ, max offset in slices), one per usable (volume, organ)
        self.organs: list[tuple[int, int, np.ndarray, int]] = []
        for v, vol in enumerate(volumes):
            image = volume_to_slices(_plain(vol["image"]).float(), self.spatial_size, channels=1, mode="bilinear")
            label = volume_to_slices(_plain(vol["label"]).to(torch.int32), self.spatial_size, 1, "nearest")[:, 0]
            self.volume_ids.append(str(vol.get("id", v)))
            self.images.append(image.contiguous())
            self.labels.append(label.contiguous())
            for organ in organ_ids:
                area = (label == int(organ)).reshape(label.shape[0], -1).sum(dim=1).numpy()
                usable = np.flatnonzero(area >= self.min_pixels)
                if usable.size:
                    extent = int(usable[-1] - usable[0] + 1)
                    self.organs.append((v, int(organ), usable, int(round(self.max_offset * extent))))
        if not self.organs:
            raise EmptyMaskError(
                ", ".join(self.volume_ids), f"no slice shows any of the organs {list(organ_ids)} in the support"
            )

    def describe(self) -> dict:
        """Counts for logs: volumes, (volume, organ) pairs and usable slices."""
        return {
            "volumes": len(self.volume_ids),
            "organs": len(self.organs),
            "usable_slices": int(sum(u.size for _, _, u, _ in self.organs)),
        }

    def _episode(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        v, organ, usable, offset = self.organs[int(rng.integers(len(self.organs)))]
        z = int(rng.choice(usable))
        near = usable[np.abs(usable - z) <= offset]
        zq = int(rng.choice(near))
        views = []
        for slice_z in (z, zq):
            image = neighbour_slices(self.images[v], self.context, slice_z)
            mask = (self.labels[v][slice_z] == organ).float()[None]
            view = _augmented_view(self.transform, image, mask, int(rng.integers(2**31)))
            # augmentation pushed the organ out of the view: keep the slice as it is
            views.append(view if bool(view[1].any()) else (image.clone(), mask))
        return _episode_item(
            views, self.channels, index=index, volume=self.volume_ids[v], slice=z, query_slice=zq, organ=organ
        )


class _CountFrom(Sampler):
    """Infinite sampler ``start, start + 1, ...``."""

    def __init__(self, start: int):
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        i = self.start
        while True:
            yield i
            i += 1


class EpisodeLoader:
    """
    Iterable of episode batches for an ignite engine, restartable at any iteration.

    Iteration ``t`` (1-based, ignite's ``engine.state.iteration``) gets episodes ``(t-1)*B .. t*B-1`` where
    ``B = episodes_per_iteration``. Each ``iter()`` starts at :attr:`start_iteration`; the trainer sets it to
    ``engine.state.iteration`` when it (re)creates the iterator, so a resumed run continues with the very episodes
    an uninterrupted one would have used. The stream is infinite: give the engine an ``epoch_length``.

    Args:
        dataset: a dataset whose item ``i`` is episode ``i`` (:class:`SuperpixelEpisodeDataset`).
        episodes_per_iteration: episodes per batch ``B``.
        num_workers: ``DataLoader`` worker processes (0: load in the main process).
    """

    def __init__(self, dataset: Dataset, episodes_per_iteration: int = 1, num_workers: int = 0):
        if int(episodes_per_iteration) < 1:
            raise ValueError(f"episodes_per_iteration must be >= 1, got {episodes_per_iteration}")
        self.dataset = dataset
        self.episodes_per_iteration = int(episodes_per_iteration)
        self.num_workers = int(num_workers)
        self.start_iteration = 0

    def __iter__(self) -> Iterator[dict]:
        loader = DataLoader(
            self.dataset,
            batch_size=self.episodes_per_iteration,
            sampler=_CountFrom(self.start_iteration * self.episodes_per_iteration),
            num_workers=self.num_workers,
        )
        return iter(loader)
