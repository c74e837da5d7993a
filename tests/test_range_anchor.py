"""The range anchor (fewshot_monai.inferers.anchor): organs searched near where the support's layout puts them."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from fewshot_monai.inferers import FewShotSegmenter
from fewshot_monai.inferers.anchor import (
    OrganPosition,
    nearest_component,
    organ_positions,
    pick_anchor,
    search_window,
    stack_centroid,
)
from fewshot_monai.networks import ALPNet
from fewshot_monai.transforms.slicing import slice_step

from .synthetic import kidney_and_decoy_volume


def _stack(n_slices, extents):
    """(Z, 1, 4, 4) label stack with organ id k on slices extents[k] (inclusive)."""
    stack = torch.zeros((n_slices, 1, 4, 4), dtype=torch.long)
    for label_id, (first, last) in extents.items():
        stack[first : last + 1, 0, :label_id, :2] = label_id
    return stack


def test_positions_are_world_mm_and_the_window_follows_the_support_layout():
    support = organ_positions(_stack(40, {1: (20, 29), 2: (10, 13)}), {"liver": 1, "kidney": 2}, step=2.5)
    assert support["liver"] == OrganPosition(centre=61.25, length=25.0, voxels=10 * 1 * 2, centroid=(61.25, 0.0, 0.5))
    assert support["kidney"].centre == pytest.approx(28.75) and support["kidney"].length == 10.0
    # query with 5 mm slices: the kidney centre lies 32.5 mm = 6.5 slices below the liver's centre (slice 30)
    assert search_window([support], "kidney", "liver", (26, 34), step=5.0, n_slices=60) == (21, 26)
    # the same query stored head-first (slice index running the other way): the window is mirrored
    assert search_window([support], "kidney", "liver", (25, 33), step=-5.0, n_slices=60) == (33, 38)
    # a window beyond the query's last slice is clipped; one that misses the query entirely means "search everywhere"
    assert search_window([support], "kidney", "liver", (0, 2), step=5.0, n_slices=60) is None
    assert search_window([support], "spleen", "liver", (26, 34), step=5.0, n_slices=60) is None


def test_auto_anchor_is_the_organ_with_most_support_voxels():
    # "long" spans 10 slices of 2 px (20 voxels), "big" 5 slices of 6 px (30 voxels): voxels decide, not length
    positions = [organ_positions(_stack(40, {1: (20, 29), 3: (0, 4)}), {"long": 1, "big": 3}, step=1.0)]
    assert pick_anchor(positions, "auto", ["long", "big"]) == "big"
    assert pick_anchor(positions, "long", ["long", "big"]) == "long"


def test_slice_step_is_signed_and_one_without_affine():
    assert slice_step(torch.zeros(1, 4, 4, 4)) == 1.0
    assert slice_step(MetaTensor(torch.zeros(1, 4, 4, 4), affine=np.diag([1.0, 1.0, -3.0, 1.0]))) == -3.0
    coronal = np.array([[1.0, 0, 0, 0], [0, 0, 2.0, 0], [0, -1.0, 0, 0], [0, 0, 0, 1]])  # slice axis along A/P
    assert slice_step(MetaTensor(torch.zeros(1, 4, 4, 4), affine=coronal)) == 2.0


def _two_organ_volume(n_slices, big, small, decoy=None, seed=0):
    """A large textured organ (label 1) and a small one with another texture (label 2); optionally a larger
    copy of the small organ's texture (a decoy, unlabelled) on the ``decoy`` slices."""
    rng = np.random.default_rng(seed)
    shape = (96, 96, n_slices)
    xx, yy = np.meshgrid(np.arange(96), np.arange(96), indexing="ij")
    big_disc = ((xx - 48) / 30.0) ** 2 + ((yy - 40) / 22.0) ** 2 <= 1
    small_disc = ((xx - 50) / 12.0) ** 2 + ((yy - 70) / 10.0) ** 2 <= 1
    label = np.zeros(shape, dtype=np.uint8)
    label[..., big[0] : big[1] + 1][big_disc] = 1
    label[..., small[0] : small[1] + 1][small_disc] = 2
    image = rng.normal(0.0, 0.2, shape).astype(np.float32) - 0.5
    image[label == 1] += 2.0
    stripes = (1.0 + np.sign(np.sin(yy / 1.5)))[..., None] * np.ones(n_slices)
    image[label == 2] += stripes[label == 2] + 0.5
    if decoy is not None:
        decoy_disc = ((xx - 48) / 24.0) ** 2 + ((yy - 48) / 24.0) ** 2 <= 1
        region = np.zeros(shape, dtype=bool)
        region[..., decoy[0] : decoy[1] + 1][decoy_disc] = True
        image[region] += stripes[region] + 0.5
    affine = np.diag([1.5, 1.5, 5.0, 1.0])
    return MetaTensor(torch.from_numpy(image)[None], affine=affine), MetaTensor(
        torch.from_numpy(label)[None], affine=affine
    )


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return ALPNet(pretrained=True).eval()


def test_the_anchor_keeps_an_organ_off_a_larger_look_alike_far_away(net):
    support_img, support_lbl = _two_organ_volume(40, big=(10, 25), small=(22, 27))
    query_img, query_lbl = _two_organ_volume(60, big=(12, 27), small=(24, 29), decoy=(44, 55), seed=1)
    organs = {"liver": 1, "kidney": 2}
    plain = FewShotSegmenter(net, support_img, support_lbl, organs, spatial_size=96)(query_img)
    anchored = FewShotSegmenter(net, support_img, support_lbl, organs, spatial_size=96, range_anchor="auto")(query_img)
    truth = (24, 29)
    # without the anchor the first pass picks the look-alike: the kidney's range lands on its slices
    first, last = plain.organs["kidney"].z_range
    assert first >= 40, plain.organs["kidney"].z_range
    # with it, the kidney is searched near the liver's range, and its range overlaps the truth
    first, last = anchored.organs["kidney"].z_range
    assert first <= truth[1] and last >= truth[0], anchored.organs["kidney"].z_range
    assert anchored.organs["kidney"].diagnostics["search_window"][1] < 44
    kidney = anchored.organs["kidney"].mask
    dice = 2 * (kidney & (query_lbl[0].numpy() == 2)).sum() / (kidney.sum() + (query_lbl[0].numpy() == 2).sum())
    assert dice > 0.5
    # the anchor's own range is not touched, and the organs come back in the caller's order
    assert anchored.organs["liver"].z_range == plain.organs["liver"].z_range
    assert list(anchored.organs) == ["liver", "kidney"]


def test_an_unknown_anchor_is_refused_before_any_work(net):
    img, lbl = _two_organ_volume(20, big=(2, 10), small=(8, 12))
    with pytest.raises(ValueError, match="range_anchor 'spleen' is not one of the organs"):
        FewShotSegmenter(net, img, lbl, {"liver": 1, "kidney": 2}, spatial_size=64, range_anchor="spleen")


def test_positions_carry_the_organ_centroid_in_mm():
    stack = torch.zeros((10, 1, 8, 8), dtype=torch.long)
    stack[2:5, 0, 1:3, 4:8] = 1  # slices 2-4, rows 1-2, columns 4-7
    position = organ_positions(stack, {"kidney": 1}, step=-3.0, pixel_mm=(2.0, 0.5))["kidney"]
    assert position.centroid == pytest.approx((-9.0, 3.0, 2.75))
    assert stack_centroid(stack[:, 0] == 2, step=1.0) is None


def test_the_nearest_component_wins_over_the_largest_but_never_a_speck():
    foreground = np.zeros((10, 40, 40), dtype=bool)
    foreground[2:8, 25:38, 25:38] = True  # the largest piece, far from the target
    foreground[3:7, 2:8, 2:8] = True  # a smaller piece near it
    foreground[5, 12, 12] = True  # a speck nearer still
    target = np.array([5.0, 10.0, 10.0])
    kept = nearest_component(foreground, target, step=1.0)
    assert kept[4, 5, 5] and not kept[4, 30, 30] and not kept[5, 12, 12]
    assert kept.sum() == 4 * 6 * 6
    # distances are in mm: with rows 10 mm apart, a target at 310 mm (row 31) is nearest the piece of rows 25-37
    tensor = torch.from_numpy(foreground)
    far = nearest_component(tensor, np.array([5.0, 310.0, 5.0]), step=1.0, pixel_mm=(10.0, 1.0))
    assert isinstance(far, torch.Tensor) and bool(far[4, 30, 30]) and not bool(far[4, 5, 5])
    assert not nearest_component(np.zeros((2, 3, 3), dtype=bool), target, step=1.0).any()


def test_the_component_anchor_keeps_the_piece_where_the_support_layout_puts_the_organ(net):
    support_img, support_lbl = kidney_and_decoy_volume(decoy=False, seed=0)
    query_img, query_lbl = kidney_and_decoy_volume(decoy=True, seed=1)
    organs, ranges = {"liver": 1, "kidney": 2}, {"liver": (4, 19), "kidney": (8, 15)}
    support_lbl = MetaTensor(torch.from_numpy(support_lbl)[None], affine=support_img.affine)
    options = {"spatial_size": 96, "range_anchor": "auto"}
    largest = FewShotSegmenter(net, support_img, support_lbl, organs, **options)(query_img, ranges)
    anchored = FewShotSegmenter(net, support_img, support_lbl, organs, component_anchor=True, **options)(
        query_img, ranges
    )
    truth = query_lbl == 2

    def dice(mask):
        return 2 * (mask & truth).sum() / (mask.sum() + truth.sum())

    assert dice(largest.organs["kidney"].mask) < 0.2  # the larger look-alike is the largest piece
    assert dice(anchored.organs["kidney"].mask) > 0.6  # the piece on the support's side is kept
    assert np.array_equal(anchored.organs["liver"].mask, largest.organs["liver"].mask)  # the anchor is untouched
    assert anchored.organs["liver"].diagnostics["centroid_mm"] is not None
    with pytest.raises(ValueError, match="component_anchor needs range_anchor"):
        FewShotSegmenter(net, support_img, support_lbl, organs, spatial_size=96, component_anchor=True)
