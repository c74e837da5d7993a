"""Support adaptation: labelled support episodes, the fine-tuning, its cache, and the evaluation option."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fewshot_monai.data.episodes import SupportEpisodeDataset
from fewshot_monai.engines.adaptation import SupportAdaptation, adapt_to_support
from fewshot_monai.errors import EmptyMaskError
from fewshot_monai.networks import ALPNet
from tests.synthetic import blob_volume

SIZE = 64


@pytest.fixture(scope="module")
def support():
    image, label = blob_volume(shape=(64, 64, 20), z=(4, 15), seed=1)
    return image, label


def _network():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return ALPNet(pretrained=True).eval()


def test_support_episodes_are_labelled_nearby_slices_and_reproducible(support):
    image, label = support
    data = SupportEpisodeDataset([{"id": "s", "image": image, "label": label}], [1], spatial_size=SIZE, seed=3,
                                 max_offset=0.2)  # fmt: skip
    usable = data.organs[0][2]
    assert usable.min() == 4 and usable.max() == 15  # the organ's slices, and only them
    for i in range(20):
        ep = data[i]
        assert abs(ep["query_slice"] - ep["slice"]) <= round(0.2 * 12)
        assert ep["support_image"].shape == (3, SIZE, SIZE) and ep["query_mask"].shape == (1, SIZE, SIZE)
        assert ep["support_mask"].sum() > 0 and ep["query_mask"].sum() > 0  # real organ foreground in both views
        assert set(torch.unique(ep["query_mask"]).tolist()) <= {0.0, 1.0}
    again = SupportEpisodeDataset([{"id": "s", "image": image, "label": label}], [1], spatial_size=SIZE, seed=3)
    for key in ("support_image", "query_image", "query_mask"):
        assert torch.equal(data[7][key], again[7][key])  # episode i is a pure function of (seed, i)
    same_slice = SupportEpisodeDataset([{"id": "s", "image": image, "label": label}], [1], spatial_size=SIZE,
                                       max_offset=0.0)  # fmt: skip
    assert all(same_slice[i]["query_slice"] == same_slice[i]["slice"] for i in range(10))


def test_support_episodes_refuse_an_organ_the_support_does_not_show(support):
    image, label = support
    with pytest.raises(EmptyMaskError, match=r"no slice shows any of the organs \[7\]"):
        SupportEpisodeDataset([{"id": "s", "image": image, "label": label}], [7], spatial_size=SIZE)


def test_adaptation_options_are_checked():
    with pytest.raises(ValueError, match="unknown adaptation option"):
        SupportAdaptation.from_dict({"iteration": 5})
    with pytest.raises(ValueError, match="unknown adaptation freeze"):
        SupportAdaptation.from_dict({"freeze": "half"})
    with pytest.raises(ValueError, match="iterations >= 0"):
        SupportAdaptation.from_dict({"iterations": -1})


def _weights(net) -> dict:
    """The network's tensors (its state dict without the recorded architecture)."""
    return {k: v for k, v in net.state_dict().items() if torch.is_tensor(v)}


def test_adaptation_fits_the_support_leaves_the_input_alone_and_caches(support, tmp_path):
    from fewshot_monai.evaluation.metrics import dice_score
    from fewshot_monai.transforms.slicing import volume_to_slices

    image, label = support
    net = _network()
    before = {k: v.clone() for k, v in _weights(net).items()}
    opts = {"iterations": 25, "spatial_size": SIZE, "lr": 5e-3}
    first = adapt_to_support(net, [image], [label], [1], opts, cache_dir=tmp_path)
    assert all(torch.equal(before[k], v) for k, v in _weights(net).items())  # the input network is unchanged
    assert not first.network.training and not first.from_cache and first.seconds > 0
    assert any(not torch.equal(before[k], v) for k, v in _weights(first.network).items())
    record = json.loads((tmp_path / f"{first.key}.json").read_text())
    assert record["options"]["iterations"] == 25 and record["seconds"] == pytest.approx(first.seconds)

    # the adapted network segments the support's own off-centre slices better from its centre slice
    stack = volume_to_slices(image, SIZE, 3, "bilinear").float()
    masks = (volume_to_slices(label, SIZE, 1, "nearest") > 0).float()
    centre, targets = 10, [4, 5, 14, 15]

    def dice(network):
        with torch.no_grad():
            bank = network.build_bank(stack[centre : centre + 1], masks[centre : centre + 1])
            probs = torch.softmax(network.score(network.encode(stack[targets]), bank, (SIZE, SIZE)), 1)[:, 1]
        return dice_score((probs > 0.5).numpy(), masks[targets, 0].numpy() > 0)

    assert dice(first.network) > dice(net) + 0.02  # measured: 0.856 -> 0.894

    again = adapt_to_support(net, [image], [label], [1], opts, cache_dir=tmp_path)
    assert again.from_cache and again.key == first.key and again.seconds == pytest.approx(first.seconds)
    assert all(
        torch.equal(a, b) for a, b in zip(_weights(first.network).values(), _weights(again.network).values())
    )
    other = adapt_to_support(net, [image], [label], [1], {**opts, "iterations": 0})
    assert other.key != first.key and other.seconds == 0
    assert all(torch.equal(before[k], v) for k, v in _weights(other.network).items())


def test_adaptation_freeze_keeps_the_backbone(support):
    image, label = support
    net = _network()
    adapted = adapt_to_support(
        net, [image], [label], [1], {"iterations": 3, "spatial_size": SIZE, "freeze": "backbone"}
    )
    new = adapted.network.state_dict()
    for name, value in _weights(net).items():
        if name.startswith("encoder.backbone."):
            assert torch.equal(value, new[name]), name
    assert not torch.equal(net.state_dict()["encoder.project.weight"], new["encoder.project.weight"])
    assert all(p.requires_grad for p in adapted.network.parameters())


def test_evaluation_adapts_once_per_fold_and_reports_the_cost(tmp_path):
    from fewshot_monai.data.phantoms import make_phantom_dataset
    from fewshot_monai.evaluation.runner import run_evaluation

    root = tmp_path / "data"
    make_phantom_dataset(root, n=3, modality="mri", shape=(48, 48, 12), spacing=(7.2, 7.2, 23.0))
    config = {"data": str(root), "dataset": "phantom", "n_folds": 3, "spatial_size": 48, "progress": False,
              "overlays": False, "folds": [0], "organs": ["liver", "spleen"],
              "command": "fewshot-monai evaluate"}  # fmt: skip
    plain = run_evaluation({**config, "out": str(tmp_path / "plain")})
    adapted = run_evaluation({**config, "out": str(tmp_path / "adapted"), "adapt": {"iterations": 4},
                              "adapt_cache": str(tmp_path / "cache")})  # fmt: skip
    assert "adaptation" not in plain and plain["protocol"]["adapt"] is None
    info = adapted["adaptation"]
    assert list(info["per_fold"]) == ["0"] and info["seconds_per_support"] > 0
    assert adapted["protocol"]["adapt"]["iterations"] == 4 and adapted["protocol"]["adapt"]["spatial_size"] == 48
    assert adapted["command"] == "fewshot-monai evaluate"
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    assert adapted["dice"] != plain["dice"]
    assert np.isfinite(adapted["dice_mean"])


def test_a_support_that_cannot_be_adapted_to_skips_its_fold_and_the_run_goes_on(tmp_path, monkeypatch):
    import fewshot_monai.engines.adaptation as adaptation
    from fewshot_monai.data.phantoms import make_phantom_dataset
    from fewshot_monai.evaluation.runner import run_evaluation

    def refuse(network, images, labels, organ_ids, *args, **kwargs):
        raise EmptyMaskError("support.nii.gz", "no slice shows any of the organs [1] in the support")

    monkeypatch.setattr(adaptation, "adapt_to_support", refuse)
    root = tmp_path / "data"
    make_phantom_dataset(root, n=3, modality="mri", shape=(48, 48, 12), spacing=(7.2, 7.2, 23.0))
    summary = run_evaluation({"data": str(root), "dataset": "phantom", "n_folds": 3, "spatial_size": 48,
                              "progress": False, "overlays": False, "folds": [0, 1], "organs": ["liver"],
                              "adapt": {"iterations": 2}, "out": str(tmp_path / "out")})  # fmt: skip
    assert {s["fold"] for s in summary["skipped"]} == {0, 1}
    assert all("support preparation failed: support.nii.gz" in s["reason"] for s in summary["skipped"])
    assert (tmp_path / "out" / "summary.json").is_file()


def test_an_ensemble_averages_members_adapted_with_different_seeds(support, tmp_path):
    from fewshot_monai.inferers import FewShotSegmenter, SegmenterEnsemble

    image, label = support
    query, _ = blob_volume(shape=(64, 64, 20), z=(5, 14), seed=2)
    net = _network()
    options = {"spatial_size": SIZE, "largest_component": False, "adapt_cache": str(tmp_path)}
    members = [
        FewShotSegmenter(net, image, label, {"blob": 1}, adaptation={"iterations": 3, "seed": k}, **options)
        for k in (0, 1)
    ]
    result = SegmenterEnsemble(members)(query, {"blob": (5, 14)})
    parts = [m(query, {"blob": (5, 14)}).organs["blob"] for m in members]
    assert not torch.equal(parts[0].probability, parts[1].probability)  # the seeds make different networks
    expected = (parts[0].probability + parts[1].probability) / 2
    assert torch.allclose(torch.as_tensor(result.organs["blob"].probability), torch.as_tensor(expected))
    assert result.organs["blob"].z_range == (5, 14)
    assert len(list(tmp_path.glob("*.pt"))) == 2  # each member's adaptation is cached under its own key
    ensemble = SegmenterEnsemble(members)
    assert ensemble.preparation["adaptation"]["key"].count(",") == 1
    with pytest.raises(ValueError, match="at least one segmenter"):
        SegmenterEnsemble([])


def test_the_evaluation_ensemble_needs_the_adaptation(tmp_path):
    from fewshot_monai.evaluation.runner import run_evaluation

    with pytest.raises(ValueError, match="adapt_ensemble needs the support adaptation"):
        run_evaluation({"data": str(tmp_path), "dataset": "phantom", "out": str(tmp_path / "o"), "adapt_ensemble": 2})
    assert not (tmp_path / "o").exists()
