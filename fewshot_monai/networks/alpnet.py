"""ALPNet: few-shot 2D segmentation by adaptive local prototype pooling, as a MONAI-friendly ``nn.Module``."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike

import torch
import torch.nn as nn
import torch.nn.functional as F

from fewshot_monai.errors import EmptyMaskError, InputError, NonFiniteError, UnreadableFileError
from fewshot_monai.networks.encoders import build_encoder
from fewshot_monai.networks.prototypes import PrototypeBank, score_query, score_statistics

__all__ = ["ALPNet", "Alpnet", "alpnet", "cpu_state_dict", "read_weights"]

#: the state-dict entry (``nn.Module.get_extra_state``) that records how a saved network was built.
ARCHITECTURE_KEY = "_extra_state"


def _check_images(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(
            f"{name} must have shape (N, 3, H, W) (z-scored grey slices tiled to 3 channels), got {tuple(x.shape)}."
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (N = 0).")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}.")
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError(None, f"{name} contains NaN or infinite values")


def _check_masks(masks: torch.Tensor, images_shape: Sequence[int] | None, name: str = "support_masks") -> None:
    if not isinstance(masks, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(masks).__name__}.")
    if masks.ndim != 4 or masks.shape[1] != 1:
        raise ValueError(f"{name} must have shape (K, 1, H, W), got {tuple(masks.shape)}.")
    if images_shape is not None and (
        masks.shape[0] != images_shape[0] or tuple(masks.shape[-2:]) != tuple(images_shape[-2:])
    ):
        raise ValueError(
            f"{name} {tuple(masks.shape)} do not match the support images/features "
            f"(K = {images_shape[0]}, H x W = {tuple(images_shape[-2:])})."
        )
    m = masks.float()
    if masks.numel() and (bool(m.min() < 0) or bool(m.max() > 1) or not bool(torch.isfinite(m).all())):
        raise ValueError(f"{name} must hold values in [0, 1] (binary masks), got range [{m.min()}, {m.max()}].")


def read_weights(path: str | PathLike) -> dict:
    """The ALPNet state dict in ``path``: a saved state dict, or the ``"model"`` entry of a training checkpoint
    (``weights_only=True``).

    Raises:
        UnreadableFileError: the file is missing or not a readable state dict.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # missing file, truncated archive, or objects refused by weights_only
        raise UnreadableFileError(path, f"cannot read ALPNet weights ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict):
        raise UnreadableFileError(path, f"expected a state dict, found {type(state).__name__}")
    if isinstance(state.get("model"), dict) and "trainer" in state:  # a training checkpoint
        state = state["model"]
    return state


def cpu_state_dict(network: nn.Module) -> dict:
    """``network.state_dict()`` with every tensor detached on the CPU (the recorded architecture kept as is)."""
    return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in network.state_dict().items()}


class ALPNet(nn.Module):
    """
    Few-shot 2D segmentation network with adaptive local prototype pooling (SSL-ALPNet).

    Based on:

        Ouyang et al. "Self-supervision with Superpixels: Training Few-shot Medical Image Segmentation without
        Annotation". ECCV 2020, https://arxiv.org/abs/2007.09886

    An encoder maps slices to stride-8 feature maps (:func:`~fewshot_monai.networks.encoders.build_encoder`;
    EfficientNet-Lite0 with ImageNet weights by default; Lite1 and Lite2 are also available). Support features and
    masks give foreground prototypes (local windows with foreground fraction above ``fg_threshold`` plus the global
    masked average) and background prototypes (local windows, or the global background average when none
    qualifies), collected in a
    :class:`~fewshot_monai.networks.prototypes.PrototypeBank`. Each query pixel's class score is a softmax-weighted
    sum of ``scale * cosine`` similarities to that class's prototypes; the scores are upsampled bilinearly.
    ``train_window`` is used in training mode and ``test_window`` in eval mode (4 and 2 feature pixels).

    The forward signature puts the query first and the supports in keyword arguments, so MONAI inferers work:
    ``SimpleInferer()(query, net, support_images=s, support_masks=m)``.

    Args:
        encoder: registered encoder name: ``"lite0"`` (default), ``"lite1"``, ``"lite2"`` (EfficientNet-Lite1/2;
            their weights packages come with the ``encoders`` extra), ``"resnet18"``, ``"resnet34"``.
        pretrained: load the encoder's shipped ImageNet weights (offline; only the Lite encoders have them).
            Ignored when ``weights`` is given.
        feature_channels: channels of the feature maps and prototypes. Defaults to 256.
        scale: cosine-similarity scale. Defaults to 20.
        train_window: local-prototype pooling window (feature pixels) in training mode. Defaults to 4.
        test_window: pooling window in eval mode. Defaults to 2.
        fg_threshold: a window is a foreground prototype when its foreground fraction is above this. Defaults to 0.95.
        bg_threshold: same for background windows; ``None`` means ``fg_threshold``.
        refine: add a zero-initialised residual 3x3 convolution after the encoder projection.
        freeze_bn: keep encoder batch norms in eval mode during training; ``None`` means "when ``pretrained`` or
            ``weights`` is given" (pretrained statistics are kept; tiny episode batches would spoil them).
        weights: path of a full ``ALPNet`` state dict (as saved by ``torch.save(net.state_dict(), path)``),
            loaded with ``weights_only=True`` and ``strict=True``. :meth:`from_weights` builds the network the
            file was saved from (its architecture is recorded in the state dict).
        slice_context: what the 3 input channels hold: 0 (default) the z-scored grey slice tiled; 1 the slice and
            its two neighbours ("2.5D", :func:`~fewshot_monai.transforms.slicing.neighbour_slices`). Everything that
            cuts slices for this network (inferers, support adaptation, training episodes) reads it from here.

    Shapes:
        - query: ``(B, 3, H, W)`` z-scored grey slices tiled to 3 channels, or with ``slice_context=1`` the slices
          below, at and above (float);
        - support_images: ``(K, 3, Hs, Ws)``; support_masks: ``(K, 1, Hs, Ws)`` in {0, 1};
        - output: logits ``(B, 2, H, W)``, channel 0 background, channel 1 foreground.

    Examples::

        >>> net = ALPNet().eval()  # pretrained Lite0 encoder
        >>> logits = net(query, support_images=sup, support_masks=sup_mask)  # (B, 2, H, W)

        # cache query features and reuse one bank for many slices
        >>> bank = net.build_bank(sup, sup_mask)
        >>> feats = net.encode(query)
        >>> logits = net.score(feats, bank, output_size=query.shape[-2:])

        # bundle config
        >>> {"_target_": "fewshot_monai.networks.ALPNet", "encoder": "lite0", "feature_channels": 256}

    """

    def __init__(
        self,
        encoder: str = "lite0",
        pretrained: bool = True,
        feature_channels: int = 256,
        scale: float = 20.0,
        train_window: int = 4,
        test_window: int = 2,
        fg_threshold: float = 0.95,
        bg_threshold: float | None = None,
        refine: bool = False,
        freeze_bn: bool | None = None,
        weights: str | PathLike | None = None,
        slice_context: int = 0,
    ):
        super().__init__()
        if int(slice_context) not in (0, 1):
            raise ValueError(f"slice_context must be 0 (grey slice tiled) or 1 (2.5D), got {slice_context}.")
        if int(train_window) < 1 or int(test_window) < 1:
            raise ValueError(f"pooling windows must be >= 1, got {train_window} and {test_window}.")
        if not 0.0 <= float(fg_threshold) < 1.0 or (bg_threshold is not None and not 0.0 <= float(bg_threshold) < 1):
            raise ValueError(f"thresholds must be in [0, 1), got {fg_threshold} and {bg_threshold}.")
        self.encoder = build_encoder(
            encoder,
            pretrained=bool(pretrained) and weights is None,  # a full state dict replaces the ImageNet weights
            feature_channels=feature_channels,
            refine=bool(refine),
            freeze_bn=(bool(pretrained) or weights is not None) if freeze_bn is None else bool(freeze_bn),
        )
        self.encoder_name = str(encoder)
        self.scale = float(scale)
        self.train_window = int(train_window)
        self.test_window = int(test_window)
        self.fg_threshold = float(fg_threshold)
        self.bg_threshold = self.fg_threshold if bg_threshold is None else float(bg_threshold)
        self.slice_context = int(slice_context)
        self._register_load_state_dict_pre_hook(self._default_architecture)
        if weights is not None:
            self.load_weights(weights)

    def architecture(self) -> dict:
        """The constructor arguments a state dict depends on (recorded in it: :meth:`get_extra_state`)."""
        return {
            "encoder": self.encoder_name,
            "feature_channels": int(self.feature_channels),
            "refine": self.encoder.refine is not None,
            "slice_context": self.slice_context,
        }

    def get_extra_state(self) -> dict:
        return {"architecture": self.architecture()}

    def set_extra_state(self, state) -> None:
        saved = dict(state.get("architecture", {})) if isinstance(state, dict) else {}
        mine = self.architecture()
        diff = {k: v for k, v in saved.items() if k in mine and mine[k] != v}
        if diff:
            raise ValueError(
                f"the weights were saved from ALPNet({', '.join(f'{k}={v!r}' for k, v in diff.items())}), this "
                f"network has {', '.join(f'{k}={mine[k]!r}' for k in diff)} (ALPNet.from_weights builds the right one)"
            )

    def _default_architecture(self, state_dict, prefix, *args, **kwargs) -> None:
        """State dicts saved before the architecture was recorded: tiled grey slices, this network's encoder."""
        state_dict.setdefault(prefix + ARCHITECTURE_KEY, {"architecture": {**self.architecture(), "slice_context": 0}})

    @classmethod
    def from_weights(cls, path: str | PathLike, **kwargs) -> ALPNet:
        """The network a weights file was saved from (its recorded architecture; older files: Lite0, tiled grey
        slices), with its weights loaded; ``kwargs`` set the other constructor arguments (windows, scale, ...).

        Raises:
            UnreadableFileError: the file is missing or not a readable state dict.
            InputError: the state dict does not match the recorded architecture.
        """
        state = read_weights(path)
        arch = dict(state.get(ARCHITECTURE_KEY, {}).get("architecture", {}))
        if kwargs.get("freeze_bn") is None:  # as for ALPNet(weights=path): trained statistics are kept
            kwargs["freeze_bn"] = True
        network = cls(**{**arch, **kwargs, "pretrained": False})
        network._load_state(state, path)
        return network

    def load_weights(self, path: str | PathLike) -> None:
        """Load a full ALPNet state dict saved with ``torch.save(net.state_dict(), path)`` (``weights_only=True``,
        ``strict=True``), or the ``"model"`` entry of a training checkpoint (``checkpoints/checkpoint_<n>.pt``).

        Raises:
            UnreadableFileError: the file is missing or not a readable state dict.
            InputError: the state dict does not match this network's configuration.
        """
        self._load_state(read_weights(path), path)

    def _load_state(self, state: dict, path: str | PathLike) -> None:
        try:
            self.load_state_dict(state, strict=True)
        except (RuntimeError, ValueError) as err:
            raise InputError(
                path,
                "the weights do not match this ALPNet configuration (encoder, feature_channels, refine, "
                f"slice_context): {err}",
            ) from err

    @property
    def window(self) -> int:
        """The local-prototype window in use: ``train_window`` in training mode, ``test_window`` in eval mode."""
        return self.train_window if self.training else self.test_window

    @property
    def feature_channels(self) -> int:
        return self.encoder.out_channels

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """
        Args:
            images: ``(N, 3, H, W)`` z-scored slices.

        Returns:
            features ``(N, feature_channels, ceil(H / 8), ceil(W / 8))``; callers may cache and reuse them.
        """
        _check_images(images, "images")
        return self.encoder(images)

    def build_bank(
        self,
        support_images: torch.Tensor | None = None,
        support_masks: torch.Tensor | None = None,
        *,
        support_features: torch.Tensor | None = None,
        tag: str = "support",
    ) -> PrototypeBank:
        """
        Build the prototype bank of K support slices (encoding them unless ``support_features`` is given).

        Args:
            support_images: ``(K, 3, H, W)``.
            support_masks: ``(K, 1, H, W)`` in {0, 1} (same H, W as the images; any size with features).
            support_features: ``(K, C, h, w)`` precomputed by :meth:`encode`, instead of the images.
            tag: tag of the support prototypes in the bank.

        Raises:
            EmptyMaskError: all support masks are empty (or none has background).
            ValueError: bad shapes or values.
        """
        if support_masks is None:
            raise ValueError("support_masks are required.")
        if (support_images is None) == (support_features is None):
            raise ValueError("give exactly one of support_images or support_features.")
        if support_features is None:
            _check_images(support_images, "support_images")
            _check_masks(support_masks, support_images.shape)
            support_features = self.encoder(support_images)
        else:
            if support_features.ndim != 4 or support_features.shape[1] != self.feature_channels:
                raise ValueError(
                    f"support_features must be (K, {self.feature_channels}, h, w), got {tuple(support_features.shape)}."
                )
            _check_masks(support_masks, None)
            if support_masks.shape[0] != support_features.shape[0]:
                raise ValueError(
                    f"support_masks have K = {support_masks.shape[0]} but support_features K = "
                    f"{support_features.shape[0]}."
                )
        if not bool((support_masks > 0).any()):
            raise EmptyMaskError(None, "all support masks are empty: no foreground to build prototypes from")
        return PrototypeBank.from_support(
            support_features,
            support_masks,
            window=self.window,
            threshold=self.fg_threshold,
            bg_threshold=self.bg_threshold,
            tag=tag,
        )

    def score(
        self, query_features: torch.Tensor, bank: PrototypeBank, output_size: Sequence[int] | None = None
    ) -> torch.Tensor:
        """
        Args:
            query_features: ``(B, C, h, w)`` from :meth:`encode`.
            bank: prototypes from :meth:`build_bank` (and possibly :meth:`PrototypeBank.add`).
            output_size: ``(H, W)`` to upsample the logits to (bilinear); ``None`` keeps ``(h, w)``.

        Returns:
            logits ``(B, 2, H, W)`` (background, foreground).
        """
        return self.upsample(score_query(query_features, bank, self.scale), output_size)

    def score_statistics(self, query_features: torch.Tensor, bank: PrototypeBank) -> tuple[torch.Tensor, torch.Tensor]:
        """Mergeable per-class statistics ``(log_mass, logits)`` at feature resolution
        (:func:`~fewshot_monai.networks.prototypes.score_statistics`): ``logits`` equals :meth:`score` without
        upsampling, and the statistics of prototypes added later merge with these without re-scoring them."""
        return score_statistics(query_features, bank, self.scale)

    @staticmethod
    def upsample(logits: torch.Tensor, output_size: Sequence[int] | None) -> torch.Tensor:
        """Bilinear upsampling of ``(B, 2, h, w)`` logits to ``output_size`` (``None``: unchanged)."""
        if output_size is not None and tuple(output_size) != tuple(logits.shape[-2:]):
            logits = F.interpolate(
                logits, size=tuple(int(s) for s in output_size), mode="bilinear", align_corners=False
            )
        return logits

    def forward(
        self,
        query: torch.Tensor,
        support_images: torch.Tensor | None = None,
        support_masks: torch.Tensor | None = None,
        *,
        bank: PrototypeBank | None = None,
    ) -> torch.Tensor:
        """
        Args:
            query: ``(B, 3, H, W)`` z-scored slices.
            support_images: ``(K, 3, Hs, Ws)`` support slices.
            support_masks: ``(K, 1, Hs, Ws)`` support masks in {0, 1}.
            bank: a prebuilt bank instead of ``support_images``/``support_masks``.

        Returns:
            logits ``(B, 2, H, W)``, channel 0 background, channel 1 foreground.
        """
        _check_images(query, "query")
        if bank is not None:
            if support_images is not None or support_masks is not None:
                raise ValueError("give either a bank or support_images/support_masks, not both.")
            return self.score(self.encoder(query), bank, query.shape[-2:])
        if support_images is None or support_masks is None:
            raise ValueError("ALPNet.forward needs support_images and support_masks (or bank=...).")
        _check_images(support_images, "support_images")
        _check_masks(support_masks, support_images.shape)
        if not bool((support_masks > 0).any()):
            raise EmptyMaskError(None, "all support masks are empty: no foreground to build prototypes from")
        b = query.shape[0]
        if query.shape[-2:] == support_images.shape[-2:]:  # one encoder pass for query and support
            feats = self.encoder(torch.cat([query, support_images.to(query.dtype)]))
            q_feats, s_feats = feats[:b], feats[b:]
        else:
            q_feats, s_feats = self.encoder(query), self.encoder(support_images)
        bank = self.build_bank(support_masks=support_masks, support_features=s_feats)
        return self.score(q_feats, bank, query.shape[-2:])


Alpnet = alpnet = ALPNet
