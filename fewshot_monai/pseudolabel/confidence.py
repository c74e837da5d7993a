"""How sure is a prediction? Per-pixel confidence measures, their aggregation over regions, and perturbations.

All functions take softmax probabilities ``(N, 2, H, W)`` (channel 0 background, channel 1 foreground, as the
few-shot protocol produces them) and return confidences in [0, 1], 1 being certain:

- ``"max_prob"``: the winning class's probability, rescaled from [0.5, 1] to [0, 1];
- ``"entropy"``: 1 - normalised entropy, ``1 - H(p) / log 2``;
- ``"margin"``: the top-2 margin ``|p_fg - p_bg|``.

With two classes the three orderings agree; the scales differ (entropy is the strictest near 0.5, max_prob and
margin are identical after rescaling), which matters once a threshold is fixed.
"""

from __future__ import annotations

import math

import torch

__all__ = ["CONFIDENCE_MEASURES", "pixel_confidence", "region_confidence", "perturb_probabilities"]

CONFIDENCE_MEASURES = ("max_prob", "entropy", "margin")
REGION_REDUCTIONS = ("mean_foreground", "mean_slice", "min_foreground")

_EPS = 1e-12


def _check_probabilities(probabilities: torch.Tensor) -> None:
    if probabilities.ndim != 4 or probabilities.shape[1] != 2:
        raise ValueError(f"probabilities must be (N, 2, H, W), got shape {tuple(probabilities.shape)}")


def pixel_confidence(probabilities: torch.Tensor, measure: str = "max_prob") -> torch.Tensor:
    """Per-pixel confidence ``(N, H, W)`` in [0, 1] of ``(N, 2, H, W)`` probabilities.

    Raises:
        ValueError: unknown ``measure`` or wrong shape.
    """
    _check_probabilities(probabilities)
    p = probabilities.float()
    if measure == "max_prob":
        return (p.max(dim=1).values - 0.5).clamp(min=0.0) * 2.0
    if measure == "margin":
        return (p[:, 1] - p[:, 0]).abs().clamp(max=1.0)
    if measure == "entropy":
        entropy = -(p * (p + _EPS).log()).sum(dim=1)
        return (1.0 - entropy / math.log(2.0)).clamp(0.0, 1.0)
    raise ValueError(f"unknown confidence measure {measure!r}; valid: {', '.join(CONFIDENCE_MEASURES)}")


def region_confidence(confidence: torch.Tensor, foreground: torch.Tensor, reduction: str = "mean_foreground"):
    """One confidence per slice ``(N,)`` from pixel confidences ``(N, H, W)`` and the predicted foreground.

    Args:
        confidence: per-pixel confidence.
        foreground: ``(N, H, W)`` boolean predicted foreground.
        reduction: ``"mean_foreground"`` (mean over the predicted organ; 0 for an empty prediction),
            ``"min_foreground"`` (its least confident pixel) or ``"mean_slice"`` (mean over the whole slice).
    """
    if confidence.shape != foreground.shape:
        raise ValueError(f"confidence {tuple(confidence.shape)} and foreground {tuple(foreground.shape)} differ")
    fg = foreground.bool()
    if reduction == "mean_slice":
        return confidence.flatten(1).mean(dim=1)
    area = fg.flatten(1).sum(dim=1)
    if reduction == "mean_foreground":
        total = (confidence * fg).flatten(1).sum(dim=1)
        return torch.where(area > 0, total / area.clamp(min=1), torch.zeros_like(total))
    if reduction == "min_foreground":
        masked = torch.where(fg, confidence, torch.full_like(confidence, 2.0)).flatten(1).min(dim=1).values
        return torch.where(area > 0, masked, torch.zeros_like(masked))
    raise ValueError(f"unknown region reduction {reduction!r}; valid: {', '.join(REGION_REDUCTIONS)}")


def perturb_probabilities(
    probabilities: torch.Tensor,
    temperature: float = 1.0,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Probabilities recomputed from perturbed logits: ``softmax(log p / temperature + noise)``.

    Used to test how gracefully a selection degrades when its confidence is miscalibrated: ``temperature > 1``
    flattens (under-confident), ``< 1`` sharpens (over-confident); ``noise_std`` adds Gaussian logit noise per
    pixel. ``temperature=1, noise_std=0`` returns the input unchanged (the same tensor).
    """
    _check_probabilities(probabilities)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    if temperature == 1.0 and noise_std == 0.0:
        return probabilities
    logits = (probabilities.float() + _EPS).log() / float(temperature)
    if noise_std > 0:
        noise = torch.randn(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
        logits = logits + float(noise_std) * noise
    return torch.softmax(logits, dim=1)
