"""The support's in-plane position prior: body box, body-relative maps, placement in the query, fusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from fewshot_monai.inferers import FewShotSegmenter
from fewshot_monai.inferers.prior import apply_prior, atlas_prior, body_box, position_map, query_prior
from fewshot_monai.networks import ALPNet

from .synthetic import kidney_and_decoy_volume


def _stack(z, size, body, organ=None):
    """A (Z, 3, S, S) stack: bright body rectangle ``body`` = (r0, r1, c0, c1) on dark air; mask of ``organ``."""
    image = torch.full((z, 3, size, size), -1.0)
    r0, r1, c0, c1 = body
    image[:, :, r0 : r1 + 1, c0 : c1 + 1] = 1.0
    mask = torch.zeros((z, 1, size, size))
    if organ is not None:
        o0, o1, p0, p1 = organ
        mask[:, :, o0 : o1 + 1, p0 : p1 + 1] = 1.0
    return image, mask


def test_body_box_finds_the_body_rectangle():
    image, _ = _stack(6, 64, (10, 49, 5, 60))
    assert body_box(image) == (10, 49, 5, 60)


def test_the_prior_follows_the_organ_into_a_shifted_and_smaller_body():
    # support: body fills rows 0-63, organ in the body's left-hand quarter of columns
    s_img, s_mask = _stack(9, 64, (0, 63, 0, 63), organ=(24, 39, 0, 15))
    s_mask[:2] = 0  # slices without the organ do not dilute the map
    peaked = position_map([s_img], [s_mask], grid=32, sigma=0.05, saturation=1.0)
    assert peaked.shape == (32, 32) and float(peaked.max()) == pytest.approx(1.0)
    # query: the body is half as wide and sits on the right of the slice
    q_img, _ = _stack(5, 64, (0, 63, 32, 63))
    prior = query_prior(peaked, q_img)
    assert prior.shape == (64, 64)
    assert float(prior[:, :32].max()) == 0.0  # nothing outside the query's body
    centre = prior[32, 32:40].mean()  # the organ's relative place: first quarter of the body's columns
    far = prior[32, 56:64].mean()
    assert centre > 0.5 and far < 0.05
    # saturation: everywhere the support organ plausibly was, the prior is exactly 1
    broad = position_map([s_img], [s_mask], grid=32, sigma=0.05, saturation=0.2)
    assert float((broad == 1.0).float().mean()) > float((peaked == 1.0).float().mean())
    assert float(broad[:, -4:].max()) < 0.05


def test_apply_prior_only_lowers_the_foreground():
    p = torch.tensor([0.9, 0.6, 0.2]).reshape(3, 1, 1)
    probs = torch.cat([1 - p, p], dim=1).reshape(3, 2, 1, 1)
    ones, zeros = torch.ones(1, 1), torch.zeros(1, 1)
    assert torch.allclose(apply_prior(probs, ones, 1.0), probs)
    assert float(apply_prior(probs, zeros, 1.0)[:, 1].max()) < 1e-4
    half = apply_prior(probs, torch.full((1, 1), 0.5), 1.0)
    assert torch.all(half[:, 1] < probs[:, 1]) and torch.allclose(half.sum(dim=1), torch.ones(3, 1, 1))
    assert apply_prior(probs, zeros, 0.0) is probs  # weight 0: off


@pytest.mark.parametrize("z_range", ["given", "estimate"])
def test_the_inferer_applies_the_prior_in_both_protocols(z_range):
    from fewshot_monai.inferers import FewShotVolumeInferer
    from fewshot_monai.networks import ALPNet
    from tests.synthetic import blob_volume

    torch.manual_seed(0)
    net = ALPNet(pretrained=True).eval()
    image, label = blob_volume(shape=(64, 64, 20))
    kwargs = {"support_images": image, "support_masks": label}
    if z_range == "given":
        kwargs["query_z_range"] = (5, 14)
    plain = FewShotVolumeInferer(z_range=z_range, spatial_size=64)
    with_prior = FewShotVolumeInferer(z_range=z_range, spatial_size=64, spatial_prior=1.0)
    p0 = torch.as_tensor(plain(image[None], net, **kwargs))
    p1 = torch.as_tensor(with_prior(image[None], net, **kwargs))
    assert p1.shape == p0.shape and not torch.equal(p0, p1)
    assert float(p1[:, 1].sum()) <= float(p0[:, 1].sum()) + 1e-3  # the prior only ever lowers the foreground


def test_the_atlas_prior_is_one_near_the_registered_organ_and_falls_off_beyond():
    mask = np.zeros((1, 1, 100), dtype=bool)
    mask[0, 0, 10:20] = True
    prior = atlas_prior(mask, spacing=(1.0, 1.0, 2.0), tolerance_mm=10.0, sigma_mm=10.0)
    assert prior.shape == mask.shape and prior.dtype == np.float32
    assert np.all(prior[0, 0, 10:25] == 1.0)  # inside, and within 10 mm (5 voxels of 2 mm)
    assert prior[0, 0, 29] == pytest.approx(np.exp(-0.5), rel=1e-5)  # 20 mm away: one sigma beyond the tolerance
    assert prior[0, 0, 99] < 1e-6  # 160 mm away
    assert prior[0, 0, 0] == pytest.approx(prior[0, 0, 29])  # the same on the other side: 20 mm either way
    assert atlas_prior(np.zeros((4, 4, 4), dtype=bool), (1.0, 1.0, 1.0)) is None  # a lost organ: no prior
    with pytest.raises(ValueError, match="atlas mask must be 3D"):
        atlas_prior(np.ones((4, 4), dtype=bool), (1.0, 1.0))


def test_the_atlas_prior_moves_an_organ_off_a_larger_look_alike():
    torch.manual_seed(0)
    net = ALPNet(pretrained=True).eval()
    support_img, support_lbl = kidney_and_decoy_volume(decoy=False, seed=0)
    query_img, query_lbl = kidney_and_decoy_volume(decoy=True, seed=1)
    support_lbl = MetaTensor(torch.from_numpy(support_lbl)[None], affine=support_img.affine)
    organs, ranges = {"liver": 1, "kidney": 2}, {"liver": (4, 19), "kidney": (8, 15)}
    truth = query_lbl == 2
    # an imperfect registration: the true kidney shifted by 6 voxels (9 mm) in plane and one slice
    registered = {"kidney": np.roll(truth, (6, -4, 1), axis=(0, 1, 2))}

    def dice(mask):
        return 2 * (mask & truth).sum() / (mask.sum() + truth.sum())

    plain = FewShotSegmenter(net, support_img, support_lbl, organs, spatial_size=96)
    with_prior = FewShotSegmenter(net, support_img, support_lbl, organs, spatial_size=96, atlas_prior=1.0)
    assert dice(plain(query_img, ranges).organs["kidney"].mask) < 0.2  # the larger look-alike wins
    assert dice(with_prior(query_img, ranges, atlas=registered).organs["kidney"].mask) > 0.6
    # without a weight an atlas changes nothing; an organ without an atlas is untouched
    same = plain(query_img, ranges, atlas=registered)
    assert torch.equal(same.organs["kidney"].probability, plain(query_img, ranges).organs["kidney"].probability)
    liver = with_prior(query_img, ranges, atlas=registered).organs["liver"].probability
    assert torch.equal(liver, with_prior(query_img, ranges).organs["liver"].probability)
    with pytest.raises(ValueError, match="must have the query's shape"):
        with_prior(query_img, ranges, atlas={"kidney": truth[:-1]})
