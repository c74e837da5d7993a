"""Inference-time pseudo-labelling: confidence measures, selection strategies, the support-expansion stage,
and the registry of named strategies."""

from .confidence import CONFIDENCE_MEASURES, perturb_probabilities, pixel_confidence, region_confidence
from .reference import ReferenceLabels
from .registry import available_pseudo_labels, get_pseudo_label, register_pseudo_label, support_expansion_factory
from .selection import PseudoSlice, Selection, SliceSelection, WindowSelection
from .self_support import SELF_TAG, SelfSupport
from .stage import PSEUDO_TAG, SupportExpansion

register_pseudo_label("slice", support_expansion_factory(SliceSelection), overwrite=True)
register_pseudo_label("window", support_expansion_factory(WindowSelection), overwrite=True)
register_pseudo_label(
    "reference",
    lambda **options: support_expansion_factory(WindowSelection)(**{"source": "reference", **options}),
    overwrite=True,
)
register_pseudo_label("self", SelfSupport, overwrite=True)
register_pseudo_label("reference_labels", lambda **options: ReferenceLabels(**options), overwrite=True)

__all__ = [
    "CONFIDENCE_MEASURES",
    "pixel_confidence",
    "region_confidence",
    "perturb_probabilities",
    "PseudoSlice",
    "Selection",
    "SliceSelection",
    "WindowSelection",
    "SupportExpansion",
    "PSEUDO_TAG",
    "SelfSupport",
    "ReferenceLabels",
    "SELF_TAG",
    "register_pseudo_label",
    "get_pseudo_label",
    "available_pseudo_labels",
    "support_expansion_factory",
]
