"""The shipped models: one trained ALPNet per modality, small, strict-loading, and the bundle points at them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fewshot_monai.networks import ALPNet
from fewshot_monai.zoo import load_model, shipped_weights

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


@pytest.mark.parametrize("modality", ["mri", "ct"])
def test_each_modality_ships_a_trained_model_under_25_mb(modality):
    path = shipped_weights(modality)
    assert path is not None and path.name == f"alpnet_lite0_{modality}.pt"
    assert path.stat().st_size < 25 * 2**20
    state = torch.load(path, weights_only=True)
    ALPNet(pretrained=False).load_state_dict(state, strict=True)
    choice = load_model(modality=modality)
    assert path.name in choice.description and not choice.network.training
    # the backbone was trained: it differs from the ImageNet weights it started from
    name = "encoder.backbone._conv_stem.weight"
    assert not torch.equal(state[name], ALPNet(pretrained=True).state_dict()[name])
    # the modality's bundle reads the same file as models/model.pt
    bundled = BUNDLES / f"fewshot_alpnet_{modality}" / "models" / "model.pt"
    assert bundled.resolve() == path.resolve()


def test_explicit_weights_and_missing_modality(tmp_path):
    net = ALPNet(pretrained=False)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    choice = load_model(tmp_path / "w.pt")
    assert "w.pt" in choice.description
    assert shipped_weights("ultrasound") is None
    assert "no few-shot training" in load_model(modality="ultrasound").description
    # "untrained" is the training-free baseline even where a trained model ships
    untrained = load_model("untrained", modality="mri")
    assert "no few-shot training" in untrained.description
    stem = "encoder.backbone._conv_stem.weight"
    assert torch.equal(untrained.network.state_dict()[stem], ALPNet(pretrained=True).state_dict()[stem])
