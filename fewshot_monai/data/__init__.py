"""Data: volume I/O (:mod:`.io`), dataset descriptors and datalists (:mod:`.datasets`), synthetic phantoms
(:mod:`.phantoms`) and training episodes (:mod:`.episodes`).

The names below are imported on first use, so that ``import fewshot_monai.data.phantoms`` (the command line's
help, for one) does not load MONAI.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "datasets": (
        "CHAOS_T2SPIR",
        "PHANTOM",
        "PHANTOM_CT",
        "SABS_CT",
        "DatasetDescriptor",
        "datalist",
        "generic_datalist",
        "find_volumes",
        "load_labelled_dataset",
        "get_descriptor",
        "nnunet_datalist",
        "nnunet_label_map",
    ),
    "io": (
        "LoadVolume",
        "LoadVolumed",
        "case_id_from_path",
        "case_loading_transforms",
        "find_input_error",
        "load_case",
        "load_volume",
        "dicom_series",
        "save_volume",
    ),
    "phantoms": ("PHANTOM_LABELS", "Phantom", "make_phantom", "make_phantom_dataset", "write_phantom"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
