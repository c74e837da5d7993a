"""The 3D few-shot protocol and the MONAI inferer that runs it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewshot_monai.errors import EmptyMaskError
from fewshot_monai.evaluation.metrics import dice_score
from fewshot_monai.inferers import (
    FewShotSegmenter,
    FewShotSliceProtocol,
    FewShotVolumeInferer,
    estimate_z_range,
    support_set_from_stacks,
)
from fewshot_monai.inferers.segmenter import keep_largest_component
from fewshot_monai.networks import ALPNet

from .synthetic import blob_volume as _blob_volume


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return ALPNet(pretrained=True).eval()


def test_estimate_z_range_keeps_largest_component():
    fg = np.zeros((20, 16, 16), dtype=bool)
    fg[4:12, 4:10, 4:10] = True  # large component, slices 4..11
    fg[15:17, 0:2, 0:2] = True  # small one
    assert estimate_z_range(fg) == (4, 11)
    assert estimate_z_range(np.zeros((5, 8, 8), dtype=bool)) is None
    assert estimate_z_range(fg[15:17], min_voxels=100) is None


def test_estimated_range_ignores_a_thin_tail_and_follows_the_length_prior():
    fg = np.zeros((30, 16, 16), dtype=bool)
    fg[10:20, 2:8, 2:8] = True  # the organ: slices 10..19, 36 pixels each
    fg[0:10, 4:5, 4:6] = True  # a thin false-positive tail touching it (2 pixels a slice)
    assert estimate_z_range(fg, peak_fraction=None) == (0, 19)  # the component's whole extent
    assert estimate_z_range(fg) == (10, 19)  # the run around the largest cross-section
    # a prior of 20 slices with full weight: 20 slices centred on the organ; weight 0.5: the geometric mean
    first, last = estimate_z_range(fg, prior_length=20.0, prior_weight=1.0)
    assert last - first + 1 == 20 and abs((first + last) / 2 - 14.5) <= 0.5
    first, last = estimate_z_range(fg, prior_length=40.0, prior_weight=0.5)
    assert last - first + 1 == 20  # sqrt(10 * 40)
    assert estimate_z_range(fg, prior_length=20.0, prior_weight=0.0) == (10, 19)


def test_keep_largest_component_removes_the_second_blob_only():
    probs = torch.zeros(6, 2, 8, 8)
    probs[:, 0] = 1.0
    probs[1:4, :, 1:4, 1:4] = torch.tensor([0.1, 0.9])[:, None, None]  # 27 voxels
    probs[5, :, 6:8, 6:8] = torch.tensor([0.2, 0.8])[:, None, None]  # 4 voxels, not connected
    kept = keep_largest_component(probs)
    assert bool((kept[1:4, 1, 1:4, 1:4] == 0.9).all()) and not bool((kept[5, 1] > 0.5).any())
    assert torch.allclose(kept.sum(1), torch.ones(6, 8, 8))
    assert keep_largest_component(kept) is kept  # nothing left to remove: the input itself


def test_range_prior_comes_from_the_support_organ_length_in_mm(net):
    support_img, support_lbl = _blob_volume(seed=0)  # organ on 10 slices of 5 mm: 50 mm
    query_img, _ = _blob_volume(centre=(46, 48), radii=(20, 17), z=(7, 16), seed=1)
    thick = query_img.clone()
    thick.affine = torch.diag(torch.tensor([1.5, 1.5, 2.5, 1.0], dtype=torch.float64))  # same voxels, 2.5 mm slices
    segmenter = FewShotSegmenter(net, support_img, support_lbl, {"blob": 1}, spatial_size=64)
    assert segmenter(query_img).organs["blob"].diagnostics["prior_length_slices"] == pytest.approx(10.0)
    assert segmenter(thick).organs["blob"].diagnostics["prior_length_slices"] == pytest.approx(20.0)


def test_support_set_picks_chunk_centres():
    images = torch.arange(12, dtype=torch.float32).reshape(12, 1, 1, 1).expand(12, 3, 4, 4)
    masks = torch.zeros(12, 1, 4, 4)
    masks[2:11] = 1  # organ on slices 2..10 -> chunks [2..4], [5..7], [8..10], centres 3, 6, 9
    support = support_set_from_stacks([images], [masks], n_chunks=3)
    assert [int(img[0, 0, 0, 0]) for img in support.images] == [3, 6, 9]
    with pytest.raises(EmptyMaskError, match="sup.nii.gz"):
        support_set_from_stacks([images], [torch.zeros_like(masks)], 3, sources=["sup.nii.gz"])


def test_identity_episode_given_range_is_accurate_and_zero_outside(net):
    image, label = _blob_volume()
    inferer = FewShotVolumeInferer(n_chunks=3, z_range="given", spatial_size=128)
    probs = inferer(image[None], net, support_images=image, support_masks=label, query_z_range=(5, 14))
    assert probs.shape == (1, 2, 96, 96, 20)
    assert torch.allclose(probs.sum(1), torch.ones(1, 96, 96, 20), atol=1e-5)
    pred = probs[0, 1] > 0.5
    assert dice_score(pred, label[0] > 0) > 0.9
    assert not pred[..., :5].any() and not pred[..., 15:].any()  # outside the range: background
    assert torch.equal(probs.affine, image.affine)


def test_estimated_range_without_query_label(net):
    support_img, support_lbl = _blob_volume(seed=0)
    query_img, query_lbl = _blob_volume(centre=(46, 48), radii=(20, 17), z=(7, 16), seed=1)
    inferer = FewShotVolumeInferer(n_chunks=3, z_range="estimate", spatial_size=128)
    probs = inferer(query_img[None], net, support_images=[support_img], support_masks=[support_lbl])
    assert dice_score(probs[0, 1] > 0.5, query_lbl[0] > 0) > 0.85
    result = FewShotSegmenter(net, [support_img], [support_lbl], {"blob": 1}, spatial_size=128)(query_img)
    first, last = result.organs["blob"].z_range
    assert abs(first - 7) <= 1 and abs(last - 16) <= 1
    assert torch.equal(result.organs["blob"].probability, probs[0, 1].as_tensor())  # the inferer adapts the segmenter


def test_given_mode_requires_range_and_shapes_are_checked(net):
    image, label = _blob_volume()
    with pytest.raises(ValueError, match="query_z_range"):
        FewShotVolumeInferer(z_range="given", spatial_size=64)(
            image[None], net, support_images=image, support_masks=label
        )
    with pytest.raises(ValueError, match="support_images"):
        FewShotVolumeInferer(spatial_size=64)(image[None], net)
    with pytest.raises(EmptyMaskError, match="blob_0_label.nii.gz"):
        FewShotVolumeInferer(spatial_size=64)(image[None], net, support_images=image, support_masks=label * 0)
    with pytest.raises(ValueError, match="chunks"):
        FewShotSliceProtocol(n_chunks=0)


def test_pseudo_label_stage_receives_cached_features(net):
    image, label = _blob_volume()
    seen = {}

    def stage(network, protocol, context):
        seen["features"] = context.query_features.shape
        seen["chunks"] = context.chunk_of_slice.tolist()
        return context.probabilities

    inferer = FewShotVolumeInferer(z_range="given", spatial_size=64, pseudo_label=stage)
    inferer(image[None], net, support_images=image, support_masks=label, query_z_range=(5, 14))
    assert seen["features"][0] == 20
    assert seen["chunks"] == [-1] * 5 + [0] * 4 + [1] * 3 + [2] * 3 + [-1] * 5


def test_a_pseudo_label_stage_that_moves_the_organ_steps_aside(net):
    image, label = _blob_volume()

    def relocate(network, protocol, context):  # a stage that followed wrong pseudo-labels: the organ moves away
        moved = context.probabilities.clone()
        moved[:, 1] = torch.roll(context.probabilities[:, 1], shifts=32, dims=-1)
        moved[:, 0] = 1.0 - moved[:, 1]
        return moved

    def nudge(network, protocol, context):  # a small, plausible change
        out = context.probabilities.clone()
        out[:, 1] = (out[:, 1] * 1.05).clamp(max=1.0)
        out[:, 0] = 1.0 - out[:, 1]
        return out

    def segment(stage=None, min_agreement=0.0):
        segmenter = FewShotSegmenter(
            net, image, label, {"blob": 1}, spatial_size=64, pseudo_label=stage, min_agreement=min_agreement
        )
        return segmenter(image, {"blob": (5, 14)}).organs["blob"]

    reference = segment().probability
    guarded = segment(relocate, 0.5)
    assert torch.equal(guarded.probability, reference) and torch.equal(guarded.plain_probability, reference)
    assert guarded.pseudo_label["accepted"] is False and guarded.pseudo_label["agreement"] < 0.5
    unguarded = segment(relocate, 0.0)
    assert not torch.equal(unguarded.probability, reference) and unguarded.pseudo_label["accepted"] is True
    assert torch.equal(unguarded.plain_probability, reference)
    assert segment(nudge, 0.5).pseudo_label["accepted"] is True
    with pytest.raises(ValueError, match="min_agreement"):
        FewShotVolumeInferer(min_agreement=1.5)
