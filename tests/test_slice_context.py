"""2.5D input (``ALPNet(slice_context=1)``): neighbouring slices as the encoder's channels, everywhere slices are cut,
and the architecture recorded in the saved weights."""

from __future__ import annotations

import pytest
import torch

from fewshot_monai.data.episodes import SuperpixelEpisodeDataset, SupportEpisodeDataset
from fewshot_monai.errors import InputError
from fewshot_monai.networks import ALPNet
from fewshot_monai.transforms.slicing import image_slices, neighbour_slices, volume_to_slices
from tests.synthetic import blob_volume

SIZE = 64
NO_INTENSITY_AUG = {"gamma_prob": 0.0, "noise_prob": 0.0}  # per-channel random draws would differ between 1 and 3


def _ramp(z: int = 5) -> torch.Tensor:
    """(1, 4, 4, z) volume whose slice k is constant k."""
    return torch.arange(z, dtype=torch.float32).reshape(1, 1, 1, z).expand(1, 4, 4, z).clone()


def test_neighbour_slices_order_and_edges():
    stack = volume_to_slices(_ramp(), None, 1)  # (5, 1, 4, 4)
    out = neighbour_slices(stack, 1)
    assert out.shape == (5, 3, 4, 4)
    assert out[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4]]
    assert neighbour_slices(stack, 2, 0)[:, 0, 0].tolist() == [0, 0, 0, 1, 2]  # one slice, ends repeated
    assert torch.equal(neighbour_slices(stack, 0), stack)
    assert torch.equal(volume_to_slices(_ramp(), None, 3, context=1), out)
    assert torch.equal(image_slices(_ramp(), None, 1), out)
    assert torch.equal(image_slices(_ramp(), None, 0), stack.expand(-1, 3, -1, -1))  # grey slice tiled
    with pytest.raises(ValueError, match="2.5D slices with context 1 need a single-channel volume and 3 channels"):
        volume_to_slices(_ramp(), None, 5, context=1)


@pytest.mark.parametrize("kind", ["superpixel", "support"])
def test_episodes_carry_the_neighbours_through_the_same_augmentation(kind):
    image, label = blob_volume(shape=(64, 64, 20), z=(4, 15), seed=2)
    if kind == "superpixel":
        vol = {"id": "v", "image": image, "superpixels": label.clone().int(), "label": None}

        def make(context):
            return SuperpixelEpisodeDataset([vol], SIZE, seed=1, augmentation=NO_INTENSITY_AUG, context=context)
    else:
        vol = {"id": "v", "image": image, "label": label}

        def make(context):
            return SupportEpisodeDataset([vol], [1], SIZE, seed=1, augmentation=NO_INTENSITY_AUG, context=context)

    grey, deep = make(0), make(1)
    stack = volume_to_slices(image, SIZE, 1)
    for i in range(4):
        a, b = grey[i], deep[i]
        assert a["slice"] == b["slice"] and torch.equal(a["query_mask"], b["query_mask"])
        # the middle channel is the grey episode's slice, under the very same spatial augmentation
        assert torch.allclose(b["query_image"][1], a["query_image"][0], atol=1e-5)
        assert torch.allclose(a["query_image"][0], a["query_image"][2])  # tiled
        z = b["slice"] if kind == "superpixel" else b["query_slice"]
        below, above = stack[max(z - 1, 0), 0], stack[min(z + 1, 19), 0]
        if not torch.equal(below, above):
            assert not torch.allclose(b["query_image"][0], b["query_image"][2])  # real neighbours, not a copy
    with pytest.raises(ValueError, match="2.5D context 1 needs 3 channels"):
        SuperpixelEpisodeDataset([{"id": "v", "image": image, "superpixels": label.int()}], SIZE, channels=1,
                                 context=1)  # fmt: skip


def test_the_architecture_travels_with_the_weights(tmp_path):
    torch.manual_seed(0)
    net = ALPNet(pretrained=False, slice_context=1, feature_channels=32)
    path = tmp_path / "deep.pt"
    torch.save(net.state_dict(), path)
    again = ALPNet.from_weights(path)
    assert again.slice_context == 1 and again.feature_channels == 32
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(again.eval().encode(x), net.eval().encode(x))
    with pytest.raises(InputError, match=r"deep.pt: .*saved from ALPNet\(feature_channels=32, slice_context=1\)"):
        ALPNet(pretrained=False, weights=path)
    # weights saved before the architecture was recorded: Lite0, grey slices tiled
    legacy = {k: v for k, v in ALPNet(pretrained=False).state_dict().items() if torch.is_tensor(v)}
    torch.save(legacy, tmp_path / "legacy.pt")
    assert ALPNet.from_weights(tmp_path / "legacy.pt").slice_context == 0
    with pytest.raises(InputError, match="slice_context"):
        ALPNet(pretrained=False, slice_context=1, weights=tmp_path / "legacy.pt")
    with pytest.raises(ValueError, match="slice_context must be 0"):
        ALPNet(pretrained=False, slice_context=2)


def test_the_segmenter_feeds_a_25d_network_its_neighbours():
    from fewshot_monai.inferers.segmenter import FewShotSegmenter

    image, label = blob_volume(shape=(64, 64, 20), z=(4, 15), seed=3)
    torch.manual_seed(0)
    net = ALPNet(pretrained=False, slice_context=1, feature_channels=32).eval()
    seen = []
    encode = net.encode
    net.encode = lambda x: (seen.append(x.clone()), encode(x))[1]
    segmenter = FewShotSegmenter(net, image, label, {"organ": 1}, spatial_size=SIZE)
    seen.clear()
    segmenter(image, z_ranges={"organ": (4, 15)})
    slices = torch.cat(seen)
    expected = image_slices(image, SIZE, 1)
    assert any(torch.equal(s, expected[z]) for s in slices for z in (5, 10))
    assert not any(torch.allclose(s[0], s[2]) for s in slices)  # no tiled grey slice reaches the network
