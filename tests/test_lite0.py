"""EfficientNet-Lite0: strict loading of the shipped ImageNet weights and correct ImageNet predictions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from skimage import data

from fewshot_monai.networks.lite0 import LITE0_STAGE_ENDS, EfficientNetLite0, SameConv2d, lite0_weights_path
from tests.synthetic import photo_input

# ImageNet-1k class ids
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO, CUP = 967, 968
TRIPOD = 872
MOPED, MOTOR_SCOOTER = 665, 670
MISSILE, PROJECTILE, SPACE_SHUTTLE = 657, 744, 812


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return EfficientNetLite0(pretrained=True).eval()


def test_every_key_loads_strictly():
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0(pretrained=False)
    assert set(model.state_dict()) == set(state)
    assert len(state) == 296
    result = model.load_state_dict(state, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert torch.equal(model._blocks[11]._depthwise_conv.weight, state["_blocks.11._depthwise_conv.weight"])
    assert torch.equal(model._fc.bias, state["_fc.bias"])
    assert len(model._blocks) == 16
    assert not any(b._bn1.eps != 1e-3 for b in model._blocks)


@pytest.mark.parametrize(
    "name, allowed",
    [
        ("chelsea", CATS),  # tabby cat; top-1 is "Egyptian cat"
        ("coffee", {ESPRESSO}),
        ("camera", {TRIPOD}),  # the grey "cameraman": photographer behind a camera on a tripod
        ("stereo_motorcycle", {MOPED, MOTOR_SCOOTER}),
        ("rocket", {MISSILE, PROJECTILE, SPACE_SHUTTLE}),
    ],
)
def test_imagenet_top1(net, name, allowed):
    img = getattr(data, name)()
    if isinstance(img, tuple):  # stereo pair: left view
        img = img[0]
    with torch.no_grad():
        probs = net(photo_input(img)).softmax(dim=1)[0]
    top1 = int(probs.argmax())
    assert top1 in allowed, (name, top1, float(probs.max()))


def test_coffee_is_confident(net):
    with torch.no_grad():
        probs = net(photo_input(data.coffee())).softmax(dim=1)[0]
    assert float(probs[ESPRESSO] + probs[CUP]) > 0.9


def test_same_padding_matches_tensorflow():
    torch.manual_seed(0)
    conv = SameConv2d(2, 3, 3, stride=2, bias=False)
    x = torch.randn(1, 2, 8, 8)
    # TF "SAME" for k=3, s=2, even input: pad 0 before and 1 after in each spatial dim
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    assert torch.equal(conv(x), expected)
    x = torch.randn(1, 2, 7, 7)  # odd input: symmetric
    assert torch.equal(conv(x), F.conv2d(x, conv.weight, stride=2, padding=1))
    conv1 = SameConv2d(2, 3, 5, stride=1, bias=False)
    assert torch.equal(conv1(x), F.conv2d(x, conv1.weight, padding=2))


def test_forward_features_strides():
    model = EfficientNetLite0(pretrained=False).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.zeros(1, 3, 224, 200))
        sub = model.forward_features(torch.zeros(2, 3, 64, 64), stages=(4, 10))
    for f, (stride, ch) in zip(feats, LITE0_STAGE_ENDS.values()):
        assert tuple(f.shape) == (1, ch, -(-224 // stride), -(-200 // stride))
    assert [tuple(f.shape) for f in sub] == [(2, 40, 8, 8), (2, 112, 4, 4)]


def test_drop_head():
    model = EfficientNetLite0(pretrained=False)
    model.drop_head()
    assert not any(k.startswith(("_fc", "_conv_head", "_bn1.")) for k in model.state_dict())
    with pytest.raises(RuntimeError):
        model(torch.zeros(1, 3, 32, 32))
