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

__all__ = [
    "ASSETS_DIR",
    "UNTRAINED",
    "ModelChoice",
    "shipped_weights",
    "load_model",
    "resolve_checkpoint",
    "FoldModels",
]

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
        network = ALPNet.from_weights(str(path))
        description = f"ALPNet, trained weights {path.name}"
    network.eval()
    return ModelChoice(network, description)


def resolve_checkpoint(model: str | os.PathLike | None, fold: int, setting: int) -> Path | str | None:
    """The weights an evaluation uses for ``fold`` and ``setting``.

    - ``None``: the shipped model of the data set's modality (returned as None for :func:`load_model`);
    - ``"untrained"``: the ImageNet-pretrained network without few-shot training;
    - a ``.pt`` file, or a bundle folder holding ``models/model.pt``: that model for every fold;
    - any other folder: one checkpoint per fold and setting, ``<folder>/fold<k>_setting<s>.pt``.

    Raises:
        UnreadableFileError: the file or folder does not exist, or the folder has neither layout.
    """
    from fewshot_monai.errors import UnreadableFileError

    if model is None or model == UNTRAINED:
        return model
    path = Path(model).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        bundle = path / "models" / "model.pt"
        if bundle.is_file():
            return bundle
        per_fold = path / f"fold{int(fold)}_setting{int(setting)}.pt"
        if per_fold.is_file():
            return per_fold
        raise UnreadableFileError(
            path,
            f"no {per_fold.name} (per-fold checkpoints <dir>/fold<k>_setting<s>.pt) and no models/model.pt (bundle)",
        )
    raise UnreadableFileError(path, "model file or folder does not exist")


class FoldModels:
    """The models of an evaluation's folds (:func:`resolve_checkpoint`), each distinct checkpoint loaded once."""

    def __init__(self, model: str | os.PathLike | None, setting: int, modality: str):
        self.model, self.setting, self.modality = model, int(setting), modality
        self._loaded: dict[str, ModelChoice] = {}

    def check(self, folds) -> None:
        """Raise now (before any work) if a fold has no checkpoint."""
        for k in folds:
            resolve_checkpoint(self.model, k, self.setting)

    def get(self, fold: int) -> ModelChoice:
        path = resolve_checkpoint(self.model, fold, self.setting)
        key = str(path)
        if key not in self._loaded:
            self._loaded[key] = load_model(path, modality=self.modality)
        return self._loaded[key]
