"""MONAI-style transforms (array + dictionary pairs) of fewshot-monai."""

from fewshot_monai.transforms.intensity import INTENSITY_PRESETS, IntensityPreset, IntensityPresetd
from fewshot_monai.transforms.labels import (
    SelectOrgan,
    SelectOrgand,
    chunk_centres,
    chunk_slices,
    largest_component,
    merge_organ_probabilities,
    organ_z_extent,
)
from fewshot_monai.transforms.slicing import (
    VolumeToSlices,
    VolumeToSlicesd,
    slice_spacing,
    slices_to_volume,
    volume_to_slices,
)
from fewshot_monai.transforms.validation import (
    CheckGeometryd,
    EnsureVolume,
    EnsureVolumed,
    check_finite,
    check_geometry,
    check_label_values,
    check_volume,
    source_of,
)

__all__ = [
    "INTENSITY_PRESETS",
    "IntensityPreset",
    "IntensityPresetd",
    "SelectOrgan",
    "SelectOrgand",
    "organ_z_extent",
    "merge_organ_probabilities",
    "largest_component",
    "chunk_slices",
    "chunk_centres",
    "VolumeToSlices",
    "VolumeToSlicesd",
    "volume_to_slices",
    "slices_to_volume",
    "slice_spacing",
    "EnsureVolume",
    "EnsureVolumed",
    "CheckGeometryd",
    "check_volume",
    "check_finite",
    "check_geometry",
    "check_label_values",
    "source_of",
]
