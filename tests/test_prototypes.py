"""Prototype pooling, scoring and PrototypeBank (no encoder involved: exact, hand-checkable values)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fewshot_monai.errors import EmptyMaskError, InputError
from fewshot_monai.networks.prototypes import (
    PrototypeBank,
    downsample_masks,
    local_prototypes,
    masked_average_prototype,
    pool_windows,
    score_query,
)


def _features(k=1, c=4, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, c, h, w, generator=g)


def _box_mask(k=1, size=64, box=(0, 32, 0, 32)):
    m = torch.zeros(k, 1, size, size)
    y0, y1, x0, x1 = box
    m[:, :, y0:y1, x0:x1] = 1
    return m


def test_downsample_masks_fractions():
    m = torch.zeros(1, 1, 8, 8)
    m[..., :4, :4] = 1
    m[..., 4:6, 4:8] = 1  # half of the bottom-right 4x4 cell
    out = downsample_masks(m, (2, 2))
    assert torch.equal(out, torch.tensor([[[[1.0, 0.0], [0.0, 0.5]]]]))
    assert downsample_masks(m, (8, 8)) is m  # already at feature resolution


def test_masked_average_prototype():
    f = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    m = torch.zeros(2, 1, 2, 2)
    m[0, 0, 0, 0] = 1
    m[1, 0, 1, 1] = 1
    proto = masked_average_prototype(f, m)
    assert torch.equal(proto, ((f[0, :, 0, 0] + f[1, :, 1, 1]) / 2)[None])
    assert masked_average_prototype(f, torch.zeros_like(m)) is None


def test_local_prototypes_threshold_and_selection():
    f = _features(h=8, w=8)
    m = torch.zeros(1, 1, 8, 8)
    m[..., :4, :4] = 1  # full fg window (0, 0) for window 4
    m[..., 4:8, 4:8] = 1
    m[..., 7, 7] = 0  # window (1, 1): 15/16 = 0.9375 foreground
    pooled, frac = pool_windows(f, m, 4)
    assert pooled.shape == (1, 4, 2, 2) and frac[0, 0, 1, 1] == 15 / 16
    fg, bg = local_prototypes(f, m, window=4, threshold=0.95)
    assert fg.shape == (1, 4) and torch.allclose(fg[0], f[0, :, :4, :4].mean((1, 2)))
    assert bg.shape == (2, 4)  # windows (0, 1) and (1, 0)
    fg, _ = local_prototypes(f, m, window=4, threshold=0.9)  # 0.9375 > 0.9 is kept
    assert fg.shape == (2, 4)
    fg, bg = local_prototypes(
        f, m, window=4, threshold=0.95, valid_windows=torch.tensor([[[False, True], [True, True]]])
    )
    assert fg.shape == (0, 4) and bg.shape == (2, 4)
    with pytest.raises(ValueError, match="window"):
        pool_windows(f, m, 16)


def test_from_support_rules():
    f = _features(h=16, w=16)
    m = _box_mask(size=64, box=(0, 32, 0, 32))  # top-left quarter -> 4x4 feature windows of size 2 fully fg
    bank = PrototypeBank.from_support(f, m, window=2, threshold=0.95)
    assert bank.num_fg == 16 + 1  # 4x4 local windows + the global prototype
    assert bank.num_bg == 64 - 16  # no global bg when local ones exist
    assert bank.counts() == {"support": {"fg": 17, "bg": 48}}
    assert torch.allclose(bank.fg_prototypes[-1], f[0, :, :8, :8].mean((1, 2)), atol=1e-6)
    # a blob too small for any window: global prototype only
    small = _box_mask(size=64, box=(0, 3, 0, 3))
    bank = PrototypeBank.from_support(f, small, window=2, threshold=0.95)
    assert bank.num_fg == 1
    # k-shot: prototypes are pooled from all K maps
    f3 = _features(k=3, h=16, w=16, seed=1)
    bank3 = PrototypeBank.from_support(f3, _box_mask(k=3), window=2, threshold=0.95)
    assert bank3.num_fg == 3 * 16 + 1 and bank3.num_bg == 3 * 48


def test_from_support_bg_fallback_and_errors():
    f = _features(h=8, w=8)
    m = torch.ones(1, 1, 8, 8)
    m[..., ::2, ::2] = 0  # 25 % background everywhere: no background window, global bg fallback
    bank = PrototypeBank.from_support(f, m, window=2, threshold=0.95)
    assert bank.num_bg == 1
    assert torch.allclose(bank.bg_prototypes[0], f[0, :, ::2, ::2].mean((1, 2)), atol=1e-6)
    with pytest.raises(EmptyMaskError):
        PrototypeBank.from_support(f, torch.zeros(1, 1, 8, 8))
    with pytest.raises(EmptyMaskError) as info:
        PrototypeBank.from_support(f, torch.ones(1, 1, 8, 8))
    assert isinstance(info.value, InputError) and "background" in str(info.value)


def test_score_single_prototype_is_scaled_cosine():
    q = _features(k=2, c=5, h=3, w=4, seed=3)
    bank = PrototypeBank()
    fg, bg = torch.randn(1, 5), torch.randn(1, 5)
    bank.add_prototypes(fg, bg, tag="support")
    out = score_query(q, bank, scale=20.0)
    assert out.shape == (2, 2, 3, 4) and out.dtype == torch.float32
    assert torch.allclose(out[:, 1], 20 * F.cosine_similarity(q, fg[0, :, None, None], dim=1), atol=1e-5)
    assert torch.allclose(out[:, 0], 20 * F.cosine_similarity(q, bg[0, :, None, None], dim=1), atol=1e-5)


def test_score_softmax_weighted_sum_with_weights():
    q = _features(k=1, c=6, h=2, w=2, seed=4)
    p = torch.randn(3, 6)
    bank = PrototypeBank()
    bank.add_prototypes(p[:2], torch.randn(1, 6), tag="support")
    bank.add_prototypes(p[2:], tag="pseudo", weight=0.25)
    out = score_query(q, bank, scale=10.0)
    s = 10 * F.cosine_similarity(q[:, None], p[None, :, :, None, None], dim=2)  # (1, 3, 2, 2)
    logits = s + torch.tensor([0.0, 0.0, math.log(0.25)])[None, :, None, None]
    expected = (logits.softmax(dim=1) * s).sum(1)
    assert torch.allclose(out[:, 1], expected, atol=1e-5)
    assert torch.equal(bank.fg_weights, torch.tensor([1.0, 1.0, 0.25]))
    assert bank.fg_tags == ["support", "support", "pseudo"] and bank.bg_tags == ["support"]


def test_zero_weight_is_bit_identical():
    f = _features(k=2, c=8, h=16, w=16, seed=5)
    q = _features(k=3, c=8, h=16, w=16, seed=6)
    bank = PrototypeBank.from_support(f, _box_mask(k=2), window=2)
    ref = bank.score(q)
    pseudo = bank.copy()
    fg, bg = q[0, :, :2, :2].mean((1, 2))[None], q[1, :, :2, :2].mean((1, 2))[None]
    assert pseudo.add_prototypes(fg, bg, weight=0.0) == 2
    assert len(pseudo) == len(bank) + 2 and torch.equal(pseudo.score(q), ref)  # exact
    assert len(bank) == pseudo.num_fg + pseudo.num_bg - 2  # the copy's additions leave the bank as it is
    weighted = bank.copy()
    weighted.add_prototypes(q[0, :, :2, :2].mean((1, 2))[None], weight=0.5, tag="pseudo")
    assert not torch.equal(weighted.score(q), ref) and weighted.tags == ["support", "pseudo"]
    with pytest.raises(ValueError):
        weighted.add_prototypes(q[0, :, 0, 0][None], weight=-1.0)
    only_zero = PrototypeBank()
    only_zero.add_prototypes(torch.randn(1, 8), torch.randn(1, 8), weight=0.0)
    with pytest.raises(ValueError, match="positive weight"):
        only_zero.score(q)


def test_adding_no_prototypes_adds_no_group():
    bank = PrototypeBank.from_support(_features(h=16, w=16), _box_mask(), window=2)
    n = len(bank)
    assert bank.add_prototypes(torch.zeros(0, 8)) == 0 and bank.add_prototypes() == 0
    assert len(bank) == n and bank.tags == ["support"]


def test_gradients_flow_and_detach():
    f = _features(h=16, w=16).requires_grad_(True)
    q = _features(h=16, w=16, seed=9).requires_grad_(True)
    bank = PrototypeBank.from_support(f, _box_mask(), window=4)
    bank.score(q).sum().backward()
    assert f.grad is not None and q.grad is not None and float(f.grad.abs().sum()) > 0
    det = bank.detach()
    assert not det.fg_prototypes.requires_grad and len(det) == len(bank)
    assert det.to(torch.float64).fg_prototypes.dtype == torch.float64


def test_statistics_of_two_banks_merge_to_the_score_of_their_union():
    from fewshot_monai.networks.prototypes import merge_statistics, score_statistics

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 16, 8, 8, generator=g)
    masks = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    support = PrototypeBank.from_support(feats[:1], masks[:1], window=2, threshold=0.5)
    pseudo = PrototypeBank.from_support(feats[1:], masks[1:], window=2, threshold=0.5)
    union = support.copy()
    union.add_prototypes(pseudo.fg_prototypes, pseudo.bg_prototypes, weight=0.5, tag="pseudo")
    extra = PrototypeBank(window=2, threshold=0.5)
    extra.add_prototypes(pseudo.fg_prototypes, pseudo.bg_prototypes, weight=0.5, tag="pseudo")
    query = torch.randn(3, 16, 8, 8, generator=g)
    _, merged = merge_statistics(score_statistics(query, support), score_statistics(query, extra))
    assert torch.allclose(merged, union.score(query), atol=1e-5)
    only_fg = PrototypeBank()
    only_fg.add_prototypes(fg=torch.randn(2, 16, generator=g))
    mass, value = score_statistics(query, only_fg)
    assert torch.isinf(mass[:, 0]).all() and (value[:, 0] == 0).all()  # no background prototype: neutral
    _, same = merge_statistics(score_statistics(query, support), (mass, value))
    assert torch.allclose(same[:, 0], support.score(query)[:, 0], atol=1e-6)
