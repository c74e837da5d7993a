"""Inference-time pseudo-labelling: confidence measures, selection rules, the support-expansion stage, the MONAI
inferer wrapper (also from a bundle-style YAML config) and the evaluation's plain-vs-refined report."""

from __future__ import annotations

import math

import pytest
import torch

from fewshot_monai.errors import EmptyMaskError
from fewshot_monai.evaluation.metrics import dice_score
from fewshot_monai.inferers import FewShotContext, FewShotSegmenter, FewShotSliceProtocol, FewShotVolumeInferer
from fewshot_monai.networks import PrototypeBank
from fewshot_monai.pseudolabel import (
    SelfSupport,
    SliceSelection,
    SupportExpansion,
    WindowSelection,
    get_pseudo_label,
    perturb_probabilities,
    pixel_confidence,
    region_confidence,
)
from fewshot_monai.transforms.labels import organ_z_extent


def _probs(fg: torch.Tensor) -> torch.Tensor:
    return torch.stack([1 - fg, fg], dim=1)


# ------------------------------------------------------------------------------------------------ confidence
def test_pixel_confidence_measures_have_known_values():
    p = _probs(torch.tensor([[[0.5, 1.0, 0.0, 0.9]]]))
    assert pixel_confidence(p, "max_prob")[0, 0].tolist() == pytest.approx([0.0, 1.0, 1.0, 0.8])
    assert pixel_confidence(p, "margin")[0, 0].tolist() == pytest.approx([0.0, 1.0, 1.0, 0.8])
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)
    assert pixel_confidence(p, "entropy")[0, 0].tolist() == pytest.approx([0.0, 1.0, 1.0, 1 - h], abs=1e-5)
    with pytest.raises(ValueError, match="unknown confidence measure 'magic'"):
        pixel_confidence(p, "magic")
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        pixel_confidence(torch.zeros(2, 3, 4), "max_prob")


def test_region_confidence_is_over_the_predicted_foreground_and_zero_when_empty():
    conf = torch.tensor([[[0.2, 0.8], [0.6, 0.0]], [[0.9, 0.9], [0.9, 0.9]]])
    fg = torch.tensor([[[False, True], [True, False]], [[False, False], [False, False]]])
    assert region_confidence(conf, fg, "mean_foreground").tolist() == pytest.approx([0.7, 0.0])
    assert region_confidence(conf, fg, "min_foreground").tolist() == pytest.approx([0.6, 0.0])
    assert region_confidence(conf, fg, "mean_slice").tolist() == pytest.approx([0.4, 0.9])


def test_perturbation_identity_temperature_and_seeded_noise():
    p = _probs(torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert perturb_probabilities(p) is p
    flat = perturb_probabilities(p, temperature=3.0)
    assert (pixel_confidence(flat) <= pixel_confidence(p) + 1e-6).all()  # a higher temperature is less sure
    assert torch.equal(flat.argmax(1), p.argmax(1))  # ... but never changes the decision
    a = perturb_probabilities(p, noise_std=1.0, generator=torch.Generator().manual_seed(1))
    b = perturb_probabilities(p, noise_std=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, p)
    with pytest.raises(ValueError, match="temperature"):
        perturb_probabilities(p, temperature=0.0)


# ------------------------------------------------------------------------------------------------ selection
def _stack(confidences, areas, size=32):
    """Probabilities whose slice z has a square organ of ``areas[z]`` pixels at probability 0.5 + conf / 2."""
    probs = torch.zeros(len(confidences), 2, size, size)
    probs[:, 0] = 1.0
    for z, (c, a) in enumerate(zip(confidences, areas)):
        side = int(round(math.sqrt(a)))
        probs[z, 1, :side, :side] = 0.5 + c / 2
        probs[z, 0, :side, :side] = 0.5 - c / 2
    return probs


def test_slice_selection_respects_threshold_area_k_and_chunks():
    conf = [0.95, 0.3, 0.8, 0.99, 0.85, 0.7, 0.9, 0.6]
    area = [100, 100, 100, 9, 100, 100, 100, 100]
    chunk = torch.tensor([-1, 0, 0, 0, 1, 1, 2, 2])
    sel = SliceSelection(threshold=0.65, k_per_chunk=1, min_area=16, neighbourhood=0, largest_component=False)
    chosen = sel.select(_stack(conf, area), chunk)
    # slice 0 is outside the scored range, slice 3 too small; best of each chunk's own: 2 (0.8), 4 (0.85), 6 (0.9)
    assert {c: [s.index for s in v] for c, v in chosen.per_chunk.items()} == {0: [2], 1: [4], 2: [6]}
    anywhere = SliceSelection(threshold=0.65, k_per_chunk=1, min_area=16, largest_component=False)  # the default
    assert {c: [s.index for s in v] for c, v in anywhere.select(_stack(conf, area), chunk).per_chunk.items()} == {
        0: [6], 1: [6], 2: [6]  # any scored slice may serve any chunk: the most confident one serves all
    }
    assert all(s.confidence > 0.65 and s.area >= 16 for s in chosen.slices())
    every = SliceSelection(threshold=0.65, k_per_chunk=None, min_area=16, largest_component=False)
    assert [s.index for s in every.select(_stack(conf, area), chunk).slices()] == [2, 4, 5, 6]
    near = SliceSelection(threshold=0.65, k_per_chunk=None, min_area=16, neighbourhood=1, largest_component=False)
    per_chunk = near.select(_stack(conf, area), chunk).per_chunk
    assert [s.index for s in per_chunk[0]] == [4, 2]  # chunk 0 = slices 1..3, may borrow slice 4; by confidence
    assert not SliceSelection(threshold=1.0, largest_component=False).select(_stack(conf, area), chunk)


def test_selected_slices_are_never_below_the_threshold():
    g = torch.Generator().manual_seed(3)
    probs = _probs(torch.rand(30, 24, 24, generator=g))
    chunk = torch.arange(30) // 10
    for threshold in (0.0, 0.2, 0.4, 0.6):
        sel = SliceSelection(threshold=threshold, k_per_chunk=None, min_area=1, largest_component=False)
        chosen = sel.select(probs, chunk).slices()
        conf = region_confidence(pixel_confidence(probs), probs[:, 1] > 0.5)
        assert all(float(conf[s.index]) > threshold for s in chosen)
        assert {s.index for s in chosen} == {z for z in range(30) if float(conf[z]) > threshold}


def test_largest_component_drops_a_second_blob():
    probs = _stack([0.9, 0.9, 0.9], [64, 64, 64], size=32)
    probs[1, 1, 24:28, 24:28], probs[1, 0, 24:28, 24:28] = 0.95, 0.05  # a small second object on slice 1
    chunk = torch.zeros(3, dtype=torch.long)
    kept = SliceSelection(threshold=0.5, k_per_chunk=None, min_area=1).select(probs, chunk).slices()
    assert all(not s.mask[0, 24:28, 24:28].any() for s in kept) and kept[1].area == 64
    raw = SliceSelection(threshold=0.5, k_per_chunk=None, min_area=1, largest_component=False).select(probs, chunk)
    assert raw.slices()[1].area == 80


def test_window_selection_keeps_only_confident_windows():
    probs = _stack([0.9], [256], size=32)  # organ = top-left 16x16 at confidence 0.9, background certain
    probs[0, :, 16:, 16:] = 0.5  # an unsure corner: confidence 0
    sel = WindowSelection(window_threshold=0.5, fg_fraction=0.95, min_area=16)
    (chosen,) = sel.select(probs, torch.zeros(1, dtype=torch.long), feature_size=(8, 8), bank_window=2).slices()
    assert chosen.valid_windows.shape == (4, 4)
    assert not chosen.valid_windows[2:, 2:].any() and chosen.valid_windows[:2, :2].all()
    nothing = WindowSelection(window_threshold=1.0).select(probs, torch.zeros(1, dtype=torch.long), (8, 8))
    assert not nothing


# ------------------------------------------------------------------------------------------------ the stage
class _Scorer:
    """The scoring half of ALPNet (``score_statistics``, ``upsample``), on ready-made features."""

    def score_statistics(self, features, bank):
        from fewshot_monai.networks.prototypes import score_statistics

        return score_statistics(features, bank, 20.0)

    @staticmethod
    def upsample(logits, output_size):
        return logits


def _toy_context():
    """Query features where the organ (channel 0 high) is on slices 2..7; the support prototype is off-axis."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(10, 8, 8, 8, generator=g) * 0.1
    feats[2:8, 0, :4, :4] += 2.0
    feats[:, 1] += 1.0
    support_feat = torch.zeros(1, 8, 8, 8)
    support_feat[0, 0, :4, :4], support_feat[0, 2, :4, :4] = 1.0, 1.5  # fg looks partly like the query organ
    support_feat[0, 1] = 1.0
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, :4, :4] = 1
    bank = PrototypeBank.from_support(support_feat, mask, window=2, threshold=0.95)
    chunk = torch.full((10,), -1, dtype=torch.long)
    chunk[2:8] = 0
    ctx = FewShotContext(feats, chunk, [bank], torch.empty(0), (2, 7), (8, 8))
    ctx.probabilities = FewShotSliceProtocol(n_chunks=1).predict_chunks(_Scorer(), ctx)
    return ctx


def test_stage_with_threshold_one_or_weight_zero_returns_the_plain_prediction_exactly():
    for stage in (
        SupportExpansion(SliceSelection(threshold=1.0)),
        SupportExpansion(WindowSelection(window_threshold=1.0)),
        SupportExpansion(SliceSelection(threshold=0.0), weight=0.0),
    ):
        ctx = _toy_context()
        out = stage(_Scorer(), FewShotSliceProtocol(n_chunks=1), ctx)
        assert torch.equal(out, ctx.probabilities)
        assert ctx.diagnostics["pseudo_label"]["n_slices"] == 0 and ctx.diagnostics["pseudo_slices"] == []
        assert ctx.banks[0].tags == ["support"]  # the context's own banks are never modified


def test_stage_transfers_confident_slices_and_reports_them():
    ctx = _toy_context()
    stage = SupportExpansion(SliceSelection(threshold=0.0, k_per_chunk=2, min_area=1), rounds=2)
    out = stage(_Scorer(), FewShotSliceProtocol(n_chunks=1), ctx)
    diag = ctx.diagnostics["pseudo_label"]
    assert diag["n_slices"] == 2 and len(diag["rounds_run"]) == 2 and diag["rounds_run"][0]["prototypes_added"] > 0
    assert diag["strategy"] == "slice" and diag["seconds"] >= 0
    truth = torch.zeros(10, 8, 8, dtype=torch.bool)
    truth[2:8, :4, :4] = True
    assert dice_score(out[:, 1] > 0.5, truth) >= dice_score(ctx.probabilities[:, 1] > 0.5, truth)
    assert torch.equal(out[:2], ctx.probabilities[:2])  # unscored slices stay background


def test_registry_builds_stages_from_names_and_options():
    stage = get_pseudo_label("slice", threshold=0.7, k_per_chunk=3, weight=0.5, rounds=2)
    assert isinstance(stage, SupportExpansion) and isinstance(stage.selection, SliceSelection)
    assert (stage.selection.threshold, stage.selection.k_per_chunk, stage.weight, stage.rounds) == (0.7, 3, 0.5, 2)
    assert isinstance(get_pseudo_label("window").selection, WindowSelection)
    assert get_pseudo_label("none") is None
    with pytest.raises(ValueError, match="unknown option.*'tau'.*valid:"):
        get_pseudo_label("slice", tau=1)


def test_self_support_refines_each_slice_from_its_own_confident_core_only():
    ctx = _toy_context()
    out = SelfSupport(threshold=0.9)(_Scorer(), FewShotSliceProtocol(n_chunks=1), ctx)
    diag = ctx.diagnostics["pseudo_label"]
    assert diag["strategy"] == "self" and diag["n_slices"] > 0 and diag["prototypes_added"] > 0
    truth = torch.zeros(10, 8, 8, dtype=torch.bool)
    truth[2:8, :4, :4] = True
    assert dice_score(out[:, 1] > 0.5, truth) >= dice_score(ctx.probabilities[:, 1] > 0.5, truth)
    assert torch.equal(out[:2], ctx.probabilities[:2]) and torch.equal(out[8:], ctx.probabilities[8:])
    assert ctx.banks[0].tags == ["support"]  # the support's banks are never modified
    # no slice has a confident core: nothing to describe the organ with, the plain prediction comes back exactly
    ctx = _toy_context()
    ctx.probabilities = torch.full_like(ctx.probabilities, 0.5)
    assert torch.equal(SelfSupport()(_Scorer(), FewShotSliceProtocol(n_chunks=1), ctx), ctx.probabilities)
    assert ctx.diagnostics["pseudo_label"]["n_slices"] == 0
    assert isinstance(get_pseudo_label("self", threshold=0.95), SelfSupport)
    with pytest.raises(ValueError, match="threshold"):
        SelfSupport(threshold=1.0)


# ------------------------------------------------------------------------------------------------ on phantoms
@pytest.fixture(scope="module")
def phantom_case():
    from fewshot_monai.data.phantoms import make_phantom
    from fewshot_monai.transforms import IntensityPreset
    from fewshot_monai.zoo import load_model

    norm = IntensityPreset("mri")

    def volume(seed):
        p = make_phantom(seed, "mri", shape=(128, 128, 32))
        return norm(torch.as_tensor(p.image)[None].float()), torch.as_tensor(p.label)[None]

    (s_img, s_lbl), (q_img, q_lbl) = volume(2), volume(4)  # support and query: two different phantoms
    return load_model().network, s_img, (s_lbl == 1).float(), q_img, q_lbl == 1


def test_expansion_improves_a_phantom_liver_from_a_different_phantom(phantom_case):
    net, s_img, s_mask, q_img, truth = phantom_case
    z_range = {"liver": organ_z_extent(truth)}

    def segment(stage):
        segmenter = FewShotSegmenter(net, s_img, s_mask, {"liver": 1}, spatial_size=128, pseudo_label=stage)
        return segmenter(q_img, z_range).organs["liver"]

    plain = segment(None)
    refined = segment(SupportExpansion(WindowSelection()))  # the recommended default strategy
    d_plain = dice_score(plain.mask, truth[0])
    d_refined = dice_score(refined.mask, truth[0])
    assert d_refined > d_plain + 0.02, (d_plain, d_refined)  # measured with the shipped MRI model: 0.708 -> 0.734
    assert refined.pseudo_label["n_slices"] > 10 and plain.pseudo_label is None
    assert torch.equal(refined.plain_probability, plain.probability)  # the stage's input is the plain prediction
    # thresholds at 1.0: nothing is transferred and the prediction is exactly the plain one
    strict = segment(SupportExpansion(SliceSelection(threshold=1.0)))
    assert torch.equal(strict.probability, plain.probability) and strict.pseudo_label["n_slices"] == 0


def test_pseudo_label_inferer_in_a_supervised_evaluator_from_yaml(phantom_case, tmp_path):
    from monai.bundle import ConfigParser
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator

    net, s_img, s_mask, q_img, truth = phantom_case
    yaml_text = """
pseudo_label_stage:
  _target_: fewshot_monai.pseudolabel.SupportExpansion
  weight: 1.0
  selection:
    _target_: fewshot_monai.pseudolabel.SliceSelection
    threshold: 0.5
    k_per_chunk: null
    neighbourhood: null
pseudo_label: true
inferer:
  _target_: fewshot_monai.inferers.FewShotVolumeInferer
  z_range: estimate
  spatial_size: 128
  pseudo_label: "$@pseudo_label_stage if @pseudo_label else None"
"""
    (tmp_path / "inference.yaml").write_text(yaml_text)
    outputs = {}
    for enabled in (True, False):
        parser = ConfigParser()
        parser.read_config(str(tmp_path / "inference.yaml"))
        parser["pseudo_label"] = enabled
        inferer = parser.get_parsed_content("inferer")
        assert isinstance(inferer, FewShotVolumeInferer) and (inferer.options["pseudo_label"] is not None) is enabled

        def prepare(batch, device=None, non_blocking=False, **kw):
            return batch["image"], None, (), {"support_images": s_img, "support_masks": s_mask}

        evaluator = SupervisedEvaluator(
            device=torch.device("cpu"),
            val_data_loader=DataLoader(Dataset([{"image": q_img}]), batch_size=1),
            network=net,
            inferer=inferer,
            prepare_batch=prepare,
        )
        evaluator.run()
        outputs[enabled] = evaluator.state.output[0]["pred"]
    assert not torch.equal(outputs[True], outputs[False])


# ------------------------------------------------------------------------------------ reference-guided labels
def test_nearest_reference_labels_recover_a_shifted_mask():
    from fewshot_monai.data.phantoms import make_phantom
    from fewshot_monai.networks import ALPNet
    from fewshot_monai.networks.prototypes import downsample_masks
    from fewshot_monai.pseudolabel.reference import label_by_reference, reference_bank, reference_probabilities
    from fewshot_monai.transforms import IntensityPreset

    phantom = make_phantom(3, "mri", shape=(128, 128, 24))
    image = IntensityPreset("mri")(torch.as_tensor(phantom.image)[None].float())[0]
    z = int(torch.as_tensor(phantom.label == 1).sum(dim=(0, 1)).argmax())  # the liver's largest slice
    support = image[..., z][None, None].expand(1, 3, 128, 128)
    mask = torch.as_tensor(phantom.label[..., z] == 1)[None, None].float()
    query, truth = torch.roll(support, (16, 8), (2, 3)), torch.roll(mask, (16, 8), (2, 3))  # a shifted copy
    torch.manual_seed(0)
    net = ALPNet(pretrained=True).eval()
    with torch.no_grad():
        bank = reference_bank(net.encode(support), mask)
        foreground, margin = label_by_reference(net.encode(query), bank)
    expected = downsample_masks(truth, foreground.shape[-2:])[:, 0] > 0.5
    assert dice_score(foreground, expected) > 0.85
    assert float(margin[expected].mean()) > 0 > float(margin[~expected].mean())  # the margin orders the classes
    probs = reference_probabilities(margin, (128, 128))
    assert probs.shape == (1, 2, 128, 128) and torch.allclose(probs.sum(1), torch.ones(1, 128, 128))
    with pytest.raises(EmptyMaskError):
        reference_bank(net.encode(support), torch.zeros_like(mask))


def test_reference_guided_stage_on_a_phantom_liver(phantom_case):
    net, s_img, s_mask, q_img, truth = phantom_case
    segmenter = FewShotSegmenter(net, s_img, s_mask, {"liver": 1}, spatial_size=128,
                                 pseudo_label=get_pseudo_label("reference"))  # fmt: skip
    organ = segmenter(q_img, {"liver": organ_z_extent(truth)}).organs["liver"]
    report = organ.pseudo_label
    assert report["source"] == "reference" and report["n_slices"] > 0
    d_plain, d_reference = dice_score(organ.plain_mask, truth[0]), dice_score(organ.mask, truth[0])
    assert d_reference > d_plain - 0.02, (d_plain, d_reference)
    print(f"phantom liver Dice: plain {d_plain:.3f}, reference-guided {d_reference:.3f}")


def test_keep_volume_shifts_the_threshold_so_the_stage_cannot_grow_the_organ():
    from fewshot_monai.pseudolabel.stage import keep_foreground_volume

    fg = torch.linspace(0.05, 0.95, 100).reshape(1, 1, 10, 10)
    probabilities = torch.cat([1 - fg, fg], dim=1)
    kept, shift = keep_foreground_volume(probabilities, 20)
    assert int((kept[:, 1] > 0.5).sum()) == 20 and shift > 0
    assert torch.equal(kept[:, 1].flatten().argsort(), fg.flatten().argsort())  # the ranking is kept
    assert torch.allclose(kept.sum(dim=1), torch.ones(1, 10, 10))
    assert bool((kept[:, 1] > 0.5).flatten()[-20:].all())  # the 20 most probable voxels stay foreground
    same, none = keep_foreground_volume(probabilities, 60)  # 50 voxels above 0.5: nothing to trim
    assert same is probabilities and none == 0.0
    empty, _ = keep_foreground_volume(probabilities, 0)
    assert not bool((empty[:, 1] > 0.5).any())
    stage = get_pseudo_label("window", keep_volume=True)
    assert stage.options()["keep_volume"] is True and "keep_volume=True" in repr(stage)
