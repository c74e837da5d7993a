"""Inference-time pseudo-labelling: confidence measures, selection strategies, the support-expansion stage,
the MONAI inferer wrapper, and the registry of named strategies."""

from .confidence import CONFIDENCE_MEASURES, perturb_probabilities, pixel_confidence, region_confidence
from .inferer import PseudoLabelInferer
from .registry import available_refinements, get_refinement, register_refinement, support_expansion_factory
from .selection import PseudoSlice, Selection, SliceSelection, WindowSelection
from .stage import PSEUDO_TAG, SupportExpansion

register_refinement("slice", support_expansion_factory(SliceSelection), overwrite=True)
register_refinement("window", support_expansion_factory(WindowSelection), overwrite=True)

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
    "PseudoLabelInferer",
    "register_refinement",
    "get_refinement",
    "available_refinements",
    "support_expansion_factory",
]
