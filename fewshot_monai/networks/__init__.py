"""Networks: EfficientNet-Lite0/1/2, feature encoders, prototypes and the prototype bank, ALPNet, losses."""

from fewshot_monai.networks.alpnet import ALPNet, Alpnet, alpnet
from fewshot_monai.networks.encoders import (
    ENCODERS,
    FusedFeatureEncoder,
    Lite0Encoder,
    LiteEncoder,
    ResNetEncoder2D,
    build_encoder,
    register_encoder,
)
from fewshot_monai.networks.lite0 import EfficientNetLite, EfficientNetLite0, lite0_weights_path, lite_weights_path
from fewshot_monai.networks.losses import MaskedDiceCELoss, PrototypeAlignmentLoss, WeightedCrossEntropyLoss
from fewshot_monai.networks.prototypes import (
    PrototypeBank,
    downsample_masks,
    local_prototypes,
    masked_average_prototype,
    pool_windows,
    score_query,
)

__all__ = [
    "ALPNet",
    "Alpnet",
    "alpnet",
    "ENCODERS",
    "EfficientNetLite",
    "EfficientNetLite0",
    "FusedFeatureEncoder",
    "Lite0Encoder",
    "LiteEncoder",
    "MaskedDiceCELoss",
    "PrototypeAlignmentLoss",
    "PrototypeBank",
    "ResNetEncoder2D",
    "WeightedCrossEntropyLoss",
    "build_encoder",
    "downsample_masks",
    "lite0_weights_path",
    "lite_weights_path",
    "local_prototypes",
    "masked_average_prototype",
    "pool_windows",
    "register_encoder",
    "score_query",
]
