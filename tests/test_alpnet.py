"""ALPNet: shapes, k-shot batching, training-free identity episodes, bank == forward, MONAI integration, losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from monai.bundle import ConfigParser
from monai.inferers import SimpleInferer

from fewshot_monai.errors import EmptyMaskError, InputError, NonFiniteError, UnreadableFileError
from fewshot_monai.networks import (
    ALPNet,
    PrototypeAlignmentLoss,
    PrototypeBank,
    WeightedCrossEntropyLoss,
    build_encoder,
)


def phantom(seed: int = 0, size: int = 256, shift: tuple[int, int] = (0, 0)) -> tuple[torch.Tensor, torch.Tensor]:
    """A z-scored slice (1, 3, size, size) with three textured elliptic "organs" (labels 1..3) on a textured
    background, and its label map (1, 1, size, size)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) * (256.0 / size)
    img = 0.2 * np.sin(xx / 37.0) * np.cos(yy / 23.0) + 0.05 * rng.standard_normal((size, size))
    labels = np.zeros((size, size), np.int64)
    organs = [(90, 100, 50, 70, 1.2, 6.0), (180, 180, 35, 30, -0.8, 0.0), (180, 70, 30, 40, 0.5, 3.0)]
    for lab, (cy, cx, ry, rx, value, period) in enumerate(organs, start=1):
        inside = ((yy - cy - shift[0]) / ry) ** 2 + ((xx - cx - shift[1]) / rx) ** 2 <= 1.0
        texture = 0.3 * np.sin(2 * np.pi * (xx + yy) / period) if period else 0.0
        img = np.where(inside, value + texture + 0.05 * rng.standard_normal((size, size)), img)
        labels[inside] = lab
    img = (img - img.mean()) / img.std()
    x = torch.from_numpy(img.astype(np.float32))[None, None].repeat(1, 3, 1, 1)
    return x, torch.from_numpy(labels)[None, None]


def dice(pred: torch.Tensor, gt: torch.Tensor) -> float:
    pred, gt = pred.bool(), gt.bool()
    return float(2 * (pred & gt).sum() / (pred.sum() + gt.sum()))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return ALPNet().eval()  # pretrained Lite0, shipped weights, no download


@pytest.fixture(scope="module")
def episode():
    x, lab = phantom(0)
    xq, labq = phantom(1, shift=(8, -6))
    return x, lab, xq, labq


@pytest.mark.parametrize("b, k", [(1, 1), (4, 1), (1, 3), (4, 3)])
def test_shapes_and_kshot(net, b, k):
    x, lab = phantom(2, size=64)
    query = x.repeat(b, 1, 1, 1) + 0.01 * torch.randn(b, 3, 64, 64)
    sup, mask = x.repeat(k, 1, 1, 1), (lab == 1).float().repeat(k, 1, 1, 1)
    with torch.no_grad():
        out = net(query, support_images=sup, support_masks=mask)
        feats = net.encode(torch.cat([query, sup]))
        bank = net.build_bank(support_masks=mask, support_features=feats[b:])
        bank1 = net.build_bank(support_masks=mask[:1], support_features=feats[b : b + 1])
    assert out.shape == (b, 2, 64, 64) and out.dtype == torch.float32
    assert feats.shape == (b + k, 256, 8, 8) and feats.dtype == torch.float32
    # prototypes are pooled from all K support slices (one global fg prototype over all of them)
    assert bank.num_fg - 1 == k * (bank1.num_fg - 1) and bank.num_bg == k * bank1.num_bg


def test_support_size_differs_from_query(net):
    x, lab = phantom(2, size=96)
    q, _ = phantom(3, size=64)
    with torch.no_grad():
        out = net(q, support_images=x, support_masks=(lab == 2).float())
    assert out.shape == (1, 2, 64, 64)


def test_identity_episode_dice(net, episode):
    x, lab, xq, labq = episode
    with torch.no_grad():
        feats = net.encode(torch.cat([x, xq]))
        for organ in (1, 2, 3):
            m = (lab == organ).float()
            logits = net.score(feats, net.build_bank(support_masks=m, support_features=feats[:1]), (256, 256))
            same, moved = logits.argmax(1, keepdim=True)
            assert dice(same, m) > 0.9, organ  # support == query
            assert dice(moved, labq == organ) > 0.9, organ  # another phantom, organs shifted by (8, -6) px
        forward = net(x, support_images=x, support_masks=(lab == 1).float())
    assert dice(forward.argmax(1, keepdim=True), lab == 1) > 0.9


def test_bank_path_equals_forward(net):
    x, lab = phantom(0, size=128)
    xq, labq = phantom(1, size=128, shift=(8, -6))
    queries = torch.cat([xq, x.flip(-1)])
    sup = torch.cat([x, xq])
    masks = torch.cat([(lab == 1), (labq == 1)]).float()
    with torch.no_grad():
        ref = net(queries, support_images=sup, support_masks=masks)
        feats = net.encode(queries)  # cached once
        sfeats = net.encode(sup)
        bank = net.build_bank(support_masks=masks, support_features=sfeats)
        via_bank = net.score(feats, bank, output_size=(128, 128))
        via_images = net.score(feats, net.build_bank(sup, masks), output_size=(128, 128))
        per_slice = torch.cat([net.score(feats[i : i + 1], bank, (128, 128)) for i in range(2)])
        via_forward_bank = net(queries, bank=bank)
    assert torch.allclose(via_bank, ref, atol=1e-4, rtol=1e-5)
    assert torch.equal(via_images, via_bank)
    assert torch.allclose(per_slice, via_bank, atol=1e-5, rtol=1e-5)
    assert torch.allclose(via_forward_bank, via_bank, atol=1e-4, rtol=1e-5)
    assert net.score(feats, bank).shape == (2, 2, 16, 16)


def test_pseudo_prototypes_weight_zero_and_one(net, episode):
    from fewshot_monai.networks.prototypes import downsample_masks, masked_average_prototype

    x, lab, xq, labq = episode
    with torch.no_grad():
        feats = net.encode(xq)
        bank = net.build_bank(x, (lab == 2).float())
        ref = net.score(feats, bank, (256, 256))
        pseudo = downsample_masks(ref.argmax(1, keepdim=True).float(), feats.shape[-2:])
        fg, bg = masked_average_prototype(feats, pseudo), masked_average_prototype(feats, 1.0 - pseudo)
        silent = bank.copy()
        assert silent.add_prototypes(fg, bg, weight=0.0, tag="pseudo") == 2
        assert torch.equal(net.score(feats, silent, (256, 256)), ref)
        bank.add_prototypes(fg, bg, weight=1.0, tag="pseudo")
        refined = net.score(feats, bank, (256, 256)).argmax(1, keepdim=True)
    assert dice(refined, labq == 2) > 0.9


def test_errors(net, episode):
    x, lab, _, _ = episode
    m = (lab == 1).float()
    with pytest.raises(EmptyMaskError):
        net(x, support_images=x, support_masks=torch.zeros_like(m))
    with pytest.raises(EmptyMaskError):
        net.build_bank(x, torch.zeros_like(m))
    with pytest.raises(ValueError, match="query"):
        net(x[:, :1], support_images=x, support_masks=m)
    with pytest.raises(ValueError, match="support_masks"):
        net(x, support_images=x, support_masks=m[..., :128])
    with pytest.raises(ValueError, match="support_masks"):
        net(x, support_images=x, support_masks=m * 2)
    with pytest.raises(ValueError, match="support_masks"):
        net(x, support_images=torch.cat([x, x]), support_masks=m)
    with pytest.raises(ValueError, match="needs support"):
        net(x)
    with pytest.raises(NonFiniteError):
        net(x * float("nan"), support_images=x, support_masks=m)


def test_train_and_eval_windows():
    model = ALPNet(pretrained=False, feature_channels=32, train_window=4, test_window=1)
    x, lab = phantom(3, size=64)
    m = (lab == 1).float()
    model.train()
    assert model.build_bank(x, m).window == 4
    model.eval()
    assert model.build_bank(x, m).window == 1


def test_state_dict_round_trip(tmp_path, episode):
    x, lab, xq, _ = episode
    torch.manual_seed(1)
    model = ALPNet(pretrained=False, feature_channels=64, refine=True).eval()
    with torch.no_grad():
        for p in model.encoder.refine.parameters():  # make the refinement non-trivial
            p.normal_(0, 0.01)
    path = tmp_path / "alpnet.pt"
    torch.save(model.state_dict(), path)
    loaded = ALPNet(pretrained=False, feature_channels=64, refine=True, weights=str(path)).eval()
    other = ALPNet(pretrained=False, feature_channels=64, refine=True).eval()
    other.load_state_dict(torch.load(path, weights_only=True))
    m = (lab == 1).float()
    with torch.no_grad():
        ref = model(xq, support_images=x, support_masks=m)
        assert torch.equal(loaded(xq, support_images=x, support_masks=m), ref)
        assert torch.equal(other(xq, support_images=x, support_masks=m), ref)
    with pytest.raises(UnreadableFileError):
        ALPNet(pretrained=False, weights=str(tmp_path / "missing.pt"))
    with pytest.raises(InputError, match="do not match"):
        ALPNet(pretrained=False, feature_channels=32, weights=str(path))


def test_bundle_config_and_simple_inferer(episode):
    x, lab, xq, _ = episode
    config = {
        "network": {
            "_target_": "fewshot_monai.networks.ALPNet",
            "encoder": "lite0",
            "pretrained": True,
            "feature_channels": 128,
            "scale": 10.0,
        }
    }
    model = ConfigParser(config).get_parsed_content("network")
    assert isinstance(model, ALPNet) and model.feature_channels == 128 and model.scale == 10.0
    model.eval()
    m = (lab == 3).float()
    with torch.no_grad():
        direct = model(xq, support_images=x, support_masks=m)
        inferred = SimpleInferer()(xq, model, support_images=x, support_masks=m)
    assert torch.equal(inferred, direct)


def test_resnet_encoder():
    with pytest.raises(ValueError, match="pretrained=False"):
        build_encoder("resnet18", pretrained=True)
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder("vgg")
    model = ALPNet(encoder="resnet18", pretrained=False, feature_channels=64).eval()
    x, lab = phantom(4, size=128)
    with torch.no_grad():
        out = model(x.repeat(2, 1, 1, 1), support_images=x, support_masks=(lab == 1).float())
        feats = model.encode(x)
    assert out.shape == (2, 2, 128, 128) and feats.shape == (1, 64, 16, 16)


def test_frozen_bn_keeps_imagenet_statistics():
    model = ALPNet(feature_channels=32).train()  # pretrained -> freeze_bn defaults to True
    before = model.encoder.backbone._bn0.running_mean.clone()
    x, lab = phantom(5, size=64)
    model(x, support_images=x, support_masks=(lab == 1).float())
    assert torch.equal(model.encoder.backbone._bn0.running_mean, before)
    assert model.training and not model.encoder.backbone._bn0.training


def test_weighted_ce_matches_torch():
    logits = torch.randn(2, 2, 8, 8)
    masks = (torch.rand(2, 1, 8, 8) > 0.5).float()
    ours = WeightedCrossEntropyLoss()(logits, masks)
    ref = nn.CrossEntropyLoss(weight=torch.tensor([0.05, 1.0]))(logits, masks[:, 0].long())
    assert torch.equal(ours, ref)


def test_alignment_loss_and_training_step():
    torch.manual_seed(0)
    model = ALPNet(feature_channels=32, train_window=2).train()
    x, lab = phantom(6, size=64)
    xq, labq = phantom(7, size=64, shift=(4, 4))
    sm, qm = (lab == 1).float(), (labq == 1).float()
    ce, par = WeightedCrossEntropyLoss(), PrototypeAlignmentLoss()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    losses = []
    for _ in range(2):
        feats = model.encode(torch.cat([xq, x]))
        q_feat, s_feat = feats[:1], feats[1:]
        logits = model.score(q_feat, model.build_bank(support_masks=sm, support_features=s_feat), (64, 64))
        align = par(model, q_feat, logits, s_feat, sm)
        loss = ce(logits, qm) + align
        assert torch.isfinite(align) and float(align.detach()) > 0
        opt.zero_grad()
        loss.backward()
        assert float(model.encoder.project.weight.grad.abs().sum()) > 0
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    # a query prediction without foreground gives a zero (but differentiable) loss
    empty = par(model, q_feat, torch.zeros(1, 1, 64, 64), s_feat.detach(), sm)
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_bank_is_plain_prototype_bank(net, episode):
    x, lab, _, _ = episode
    with torch.no_grad():
        bank = net.build_bank(x, (lab == 1).float())
    assert isinstance(bank, PrototypeBank) and bank.tags == ["support"] and bank.window == 2
