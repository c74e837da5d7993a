"""Losses: for episodic prototype training, PANet's prototype alignment loss and a class-weighted cross-entropy; for
self-training on filtered pseudo-labels, a Dice + cross-entropy loss that ignores the voxels the filter rejected."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from fewshot_monai.errors import EmptyMaskError

if TYPE_CHECKING:
    from fewshot_monai.networks.alpnet import ALPNet

__all__ = ["WeightedCrossEntropyLoss", "PrototypeAlignmentLoss", "MaskedDiceCELoss"]


def _as_index_target(target: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` or ``(B, H, W)`` masks (any dtype) -> ``(B, H, W)`` int64 class indices."""
    if target.ndim == 4:
        if target.shape[1] != 1:
            raise ValueError(f"target masks must be (B, 1, H, W) or (B, H, W), got {tuple(target.shape)}.")
        target = target[:, 0]
    return (target > 0.5).long() if target.is_floating_point() else target.long()


class WeightedCrossEntropyLoss(nn.CrossEntropyLoss):
    """
    ``torch.nn.CrossEntropyLoss`` with per-class weights (background 0.05, foreground 1.0 as in SSL-ALPNet)
    that also accepts ``(B, 1, H, W)`` binary masks as targets.

    Args:
        bg_weight: weight of class 0. Defaults to 0.05.
        fg_weight: weight of class 1. Defaults to 1.0.
        kwargs: other ``torch.nn.CrossEntropyLoss`` arguments (``ignore_index``, ``reduction``, ...).

    Example::

        loss = WeightedCrossEntropyLoss()(logits, masks)  # logits (B, 2, H, W), masks (B, 1, H, W) in {0, 1}
    """

    def __init__(self, bg_weight: float = 0.05, fg_weight: float = 1.0, **kwargs):
        super().__init__(weight=torch.tensor([float(bg_weight), float(fg_weight)]), **kwargs)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(input, _as_index_target(target))


class PrototypeAlignmentLoss(nn.Module):
    """
    Prototype alignment regularisation (PAR) of PANet.

    Based on:

        Wang et al. "PANet: Few-Shot Image Semantic Segmentation with Prototype Alignment". ICCV 2019,
        https://arxiv.org/abs/1908.06391

    Prototypes are built from the query features and the query's predicted mask (argmax of the logits, no gradient
    through the mask) -- or a given query mask --, with the same adaptive local pooling as the network; they then
    segment the support slices back, and the loss is the (weighted) cross-entropy against the support masks.
    Gradients flow through the query features (prototypes) and the support features.
    When the query mask has no foreground or no background, the loss is 0 (still attached to the graph).

    Args:
        bg_weight: cross-entropy weight of the background class. Defaults to 0.05.
        fg_weight: cross-entropy weight of the foreground class. Defaults to 1.0.

    Example::

        q_feat, s_feat = net.encode(query), net.encode(support)
        bank = net.build_bank(support_masks=s_mask, support_features=s_feat)
        logits = net.score(q_feat, bank, query.shape[-2:])
        loss = ce(logits, q_mask) + PrototypeAlignmentLoss()(net, q_feat, logits, s_feat, s_mask)
    """

    def __init__(self, bg_weight: float = 0.05, fg_weight: float = 1.0):
        super().__init__()
        self.ce = WeightedCrossEntropyLoss(bg_weight, fg_weight)

    def forward(
        self,
        net: ALPNet,
        query_features: torch.Tensor,
        query_prediction: torch.Tensor,
        support_features: torch.Tensor,
        support_masks: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            net: the network whose window, thresholds and scale are used (``build_bank``/``score``).
            query_features: ``(B, C, h, w)``.
            query_prediction: logits ``(B, 2, H, W)`` (the mask is their argmax) or a mask ``(B, 1, H, W)``.
            support_features: ``(K, C, h, w)``.
            support_masks: ``(K, 1, Hs, Ws)`` in {0, 1}.

        Returns:
            the scalar loss.
        """
        if query_prediction.ndim != 4 or query_prediction.shape[1] not in (1, 2):
            raise ValueError(
                "query_prediction must be logits (B, 2, H, W) or a mask (B, 1, H, W), "
                f"got {tuple(query_prediction.shape)}."
            )
        if query_prediction.shape[1] == 2:
            q_mask = query_prediction.detach().argmax(dim=1, keepdim=True).to(query_features.dtype)
        else:
            q_mask = (query_prediction.detach() > 0.5).to(query_features.dtype)
        zero = query_features.sum() * 0.0 + support_features.sum() * 0.0
        if not bool(q_mask.any()) or bool(q_mask.all()):
            return zero
        try:
            bank = net.build_bank(support_masks=q_mask, support_features=query_features, tag="query")
        except EmptyMaskError:
            return zero
        logits = net.score(support_features, bank, support_masks.shape[-2:])
        return self.ce(logits, support_masks)


class MaskedDiceCELoss(nn.Module):
    """
    Multi-class soft Dice + cross-entropy in which the voxels labelled ``ignore_index`` contribute nothing: neither
    to the loss value nor to any gradient (the pseudo-labels' ``ignore`` label of self-training).

    The logits of ignored voxels are replaced by zeros before the softmax (so even non-finite values there cannot
    leak in), their probabilities and one-hot targets are zeroed before MONAI's :class:`~monai.losses.DiceLoss`
    (batch Dice, background included), and the cross-entropy is averaged over the valid voxels only. With no valid
    voxel in the batch the loss is 0 (still attached to the graph).

    Args:
        ignore_index: the target value of ignored voxels (nnU-Net's convention: the number of organs + 1).
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the cross-entropy term.

    Example::

        loss = MaskedDiceCELoss(ignore_index=5)(logits, target)  # logits (B, 5, H, W), target (B, 1, H, W) in 0..5
    """

    def __init__(self, ignore_index: int, lambda_dice: float = 1.0, lambda_ce: float = 1.0):
        super().__init__()
        from monai.losses import DiceLoss

        self.ignore_index = int(ignore_index)
        self.lambda_dice, self.lambda_ce = float(lambda_dice), float(lambda_ce)
        self.dice = DiceLoss(include_background=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``input``: logits ``(B, C, *spatial)``; ``target``: class indices ``(B, 1, *spatial)`` or ``(B, *spatial)``
        with values in ``0..C-1`` or ``ignore_index``."""
        if target.ndim == input.ndim:
            target = target[:, 0]
        target = target.long()
        if target.shape != input.shape[:1] + input.shape[2:]:
            raise ValueError(f"target {tuple(target.shape)} does not fit logits {tuple(input.shape)}")
        valid = target != self.ignore_index
        n_classes = input.shape[1]
        if bool((target[valid] < 0).any() or (target[valid] >= n_classes).any()):
            raise ValueError(f"target values must be in 0..{n_classes - 1} or {self.ignore_index}")
        logits = torch.where(valid[:, None], input, torch.zeros((), dtype=input.dtype, device=input.device))
        if not bool(valid.any()):
            return logits.sum() * 0.0
        index = torch.where(valid, target, torch.zeros_like(target))
        weight = valid[:, None].to(input.dtype)
        probabilities = torch.softmax(logits, dim=1) * weight
        one_hot = nn.functional.one_hot(index, n_classes).movedim(-1, 1).to(input.dtype) * weight
        dice = self.dice(probabilities, one_hot)
        ce = nn.functional.cross_entropy(logits, index, reduction="none")
        ce = (ce * valid.to(input.dtype)).sum() / valid.sum()
        return self.lambda_dice * dice + self.lambda_ce * ce
