"""The models fewshot-monai ships: which weights a command uses when the user names none.

Trained ALPNet weights live in ``fewshot_monai/assets/`` as ``alpnet_lite0_<modality>.pt`` (state dicts,
``torch.load(weights_only=True)``), each described by a model card in ``docs/models.md``. Until a trained model
exists for a modality, the default is the ImageNet-pretrained EfficientNet-Lite0 encoder without any training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["ASSETS_DIR", "UNTRAINED", "ModelChoice", "shipped_weights", "load_model"]

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
#: ``load_model(UNTRAINED)``: the ImageNet-pretrained encoder without few-shot training, whatever ships
UNTRAINED = "untrained"


@dataclass
class ModelChoice:
    """A model ready for inference and a one-line description of where its weights came from."""

    network: torch.nn.Module
    description: str


def shipped_weights(modality: str) -> Path | None:
    """Path of the shipped trained weights for ``modality`` ("mri" or "ct"), or None if none are shipped."""
    path = ASSETS_DIR / f"alpnet_lite0_{modality}.pt"
    return path if path.is_file() else None


def load_model(weights: str | os.PathLike | None = None, modality: str = "mri") -> ModelChoice:
    """Build an ALPNet in eval mode.

    Args:
        weights: a trained ALPNet state dict (``.pt``); None picks the shipped model for ``modality`` or, when
            there is none, the untrained network with the ImageNet-pretrained Lite0 encoder; ``"untrained"``
            always picks the latter (the training-free baseline).
        modality: "mri" or "ct", used only when ``weights`` is None.
    """
    from fewshot_monai.networks import ALPNet

    if weights == UNTRAINED:
        path = None
    else:
        path = Path(weights) if weights is not None else shipped_weights(modality)
    if path is None:
        # the encoder's projection is freshly initialised: fix its seed so results are reproducible
        with torch.random.fork_rng():
            torch.manual_seed(0)
            network = ALPNet(pretrained=True)
        description = "ALPNet, ImageNet-pretrained EfficientNet-Lite0 encoder, no few-shot training"
    else:
        network = ALPNet(pretrained=False, weights=str(path))
        description = f"ALPNet, trained weights {path.name}"
    network.eval()
    return ModelChoice(network, description)
