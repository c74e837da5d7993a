from .fewshot_inferer import FewShotVolumeInferer
from .protocol import FewShotContext, FewShotSliceProtocol, SupportSet, estimate_z_range, support_set_from_stacks

__all__ = [
    "FewShotVolumeInferer",
    "FewShotContext",
    "FewShotSliceProtocol",
    "SupportSet",
    "estimate_z_range",
    "support_set_from_stacks",
]
