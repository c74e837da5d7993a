from .ensemble import SegmenterEnsemble, adaptation_ensemble
from .fewshot_inferer import FewShotVolumeInferer
from .protocol import (
    FewShotContext,
    FewShotSliceProtocol,
    PreparedSupport,
    SupportSet,
    estimate_z_range,
    support_set_from_stacks,
)
from .segmenter import FewShotSegmenter, OrganSegmentation, Segmentation, keep_largest_component, label_map
from .student import StudentSegmenter, organ_probabilities, student_probabilities

__all__ = [
    "FewShotVolumeInferer",
    "FewShotSegmenter",
    "SegmenterEnsemble",
    "adaptation_ensemble",
    "StudentSegmenter",
    "organ_probabilities",
    "student_probabilities",
    "Segmentation",
    "OrganSegmentation",
    "PreparedSupport",
    "keep_largest_component",
    "label_map",
    "FewShotContext",
    "FewShotSliceProtocol",
    "SupportSet",
    "estimate_z_range",
    "support_set_from_stacks",
]
