"""Intensity presets: the per-modality normalisation applied to every volume before slicing.

=================  =========================================================================================
preset             operation (per volume, all voxels, output float32)
=================  =========================================================================================
``"ct"``           clip to the HU window ``ct_window`` (default [-125, 275]), then z-score
``"mri"``          clip values above the ``mri_upper_percentile`` (default 99.5th) percentile, then z-score
``"preprocessed"`` z-score only, for data already windowed or quantised (e.g. the 8-bit ``sabs_ct`` copy)
``"none"``         identity (the input is returned unchanged)
=================  =========================================================================================

z-score means ``(x - mean) / std`` over the whole volume (population std; a constant volume is only centred).
The steps are MONAI transforms: :class:`monai.transforms.ThresholdIntensity` (exact clipping),
:class:`monai.transforms.ClipIntensityPercentiles` and :class:`monai.transforms.NormalizeIntensity`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import get_track_meta
from monai.transforms import (
    ClipIntensityPercentiles,
    MapTransform,
    NormalizeIntensity,
    ThresholdIntensity,
    Transform,
)
from monai.utils import convert_to_tensor

__all__ = ["INTENSITY_PRESETS", "IntensityPreset", "IntensityPresetd"]

INTENSITY_PRESETS = ("ct", "mri", "preprocessed", "none")


class IntensityPreset(Transform):
    """Apply one of the named intensity presets (see the module docstring) to a channel-first volume.

    Args:
        preset: ``"ct"``, ``"mri"``, ``"preprocessed"`` or ``"none"`` (``None`` means ``"none"``).
        ct_window: (low, high) HU window of the ``"ct"`` preset.
        mri_upper_percentile: upper clipping percentile of the ``"mri"`` preset, in [0, 100].
        zscore: if False, only the clipping step is applied (useful to look at windowed HU values).

    Returns:
        float32 tensor of the input's shape (a ``MetaTensor`` keeps its meta), or the input for ``"none"``.

    Example::

        IntensityPreset("ct")(ct_volume)          # clip to [-125, 275] HU, then z-score
        IntensityPreset("mri")(mr_volume)         # clip above the 99.5th percentile, then z-score
    """

    def __init__(
        self,
        preset: str | None = "none",
        ct_window: tuple[float, float] = (-125.0, 275.0),
        mri_upper_percentile: float = 99.5,
        zscore: bool = True,
    ):
        preset = "none" if preset is None else str(preset).lower()
        if preset not in INTENSITY_PRESETS:
            raise ValueError(f"unknown intensity preset {preset!r}; expected one of {INTENSITY_PRESETS}")
        low, high = (float(v) for v in ct_window)
        if not low < high:
            raise ValueError(f"ct_window must be (low, high) with low < high, got {ct_window}")
        if not 0.0 <= mri_upper_percentile <= 100.0:
            raise ValueError(f"mri_upper_percentile must be in [0, 100], got {mri_upper_percentile}")
        self.preset = preset
        self.ct_window = (low, high)
        self.mri_upper_percentile = float(mri_upper_percentile)
        self.zscore = zscore

        steps: list[Transform] = []
        if preset == "ct":
            # keep values above `low` (others become `low`), then values below `high` (others become `high`)
            steps += [ThresholdIntensity(low, above=True, cval=low), ThresholdIntensity(high, above=False, cval=high)]
        elif preset == "mri":
            steps.append(ClipIntensityPercentiles(lower=None, upper=self.mri_upper_percentile, dtype=np.float32))
        if preset != "none" and zscore:
            steps.append(NormalizeIntensity(nonzero=False, channel_wise=False, dtype=np.float32))
        self.steps = steps

    def __call__(self, img):
        if self.preset == "none":
            return img
        img = convert_to_tensor(img, dtype=torch.float32, track_meta=get_track_meta())
        for step in self.steps:
            img = step(img)
        return img

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(preset={self.preset!r}, ct_window={self.ct_window}, "
            f"mri_upper_percentile={self.mri_upper_percentile}, zscore={self.zscore})"
        )


class IntensityPresetd(MapTransform):
    """Dictionary version of :class:`IntensityPreset` (apply it to the image keys, never to labels)."""

    def __init__(
        self,
        keys: KeysCollection,
        preset: str | None = "none",
        ct_window: tuple[float, float] = (-125.0, 275.0),
        mri_upper_percentile: float = 99.5,
        zscore: bool = True,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.preset = IntensityPreset(preset, ct_window, mri_upper_percentile, zscore)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.preset(d[key])
        return d
