"""Superpixel pseudo-labels: the transform, the body mask, the cache and the ``fewshot-monai superpixels`` command."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy.ndimage import binary_fill_holes

from fewshot_monai.cli.main import main
from fewshot_monai.data.episodes import SuperpixelCache
from fewshot_monai.data.io import load_case, load_volume
from fewshot_monai.data.phantoms import make_phantom, write_phantom
from fewshot_monai.transforms.intensity import IntensityPreset
from fewshot_monai.transforms.superpixels import (
    SuperpixelParams,
    Superpixels,
    Superpixelsd,
    body_mask,
    superpixel_volume,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SMALL = {"shape": (96, 96, 10), "spacing": (3.6, 3.6, 16.0)}


def _phantom_volume(seed: int) -> MetaTensor:
    p = make_phantom(seed, "mri", **SMALL)
    return IntensityPreset("mri")(MetaTensor(torch.from_numpy(p.image)[None], affine=torch.as_tensor(p.affine)))


def test_fixed_seed_gives_the_same_segmentation_inside_the_body():
    sp = Superpixels()(_phantom_volume(3))
    again = Superpixels()(_phantom_volume(3))  # phantom regenerated from the seed
    assert isinstance(sp, MetaTensor) and sp.dtype == torch.int32 and sp.shape == (1, 96, 96, 10)
    assert torch.equal(sp, again)
    assert torch.equal(sp.affine, _phantom_volume(3).affine)
    other = Superpixels()(_phantom_volume(4))
    assert not torch.equal(sp, other)

    body = body_mask(_phantom_volume(3))
    labels = sp[0].numpy()
    # every superpixel lies inside the body mask, and the body is fully covered by superpixels
    np.testing.assert_array_equal(labels > 0, body[0])
    for k in range(labels.shape[-1]):
        ids = np.unique(labels[..., k])
        ids = ids[ids > 0]
        if ids.size:  # per-slice ids 1..n
            np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))
    # several superpixels per body slice (min_size 400 at 256^2 -> 56 px at 96^2)
    counts = [int(labels[..., k].max()) for k in range(labels.shape[-1]) if body[0, ..., k].any()]
    assert counts and min(counts) >= 5


def test_body_mask_is_one_filled_component_without_the_air():
    vol = _phantom_volume(1)
    mask = body_mask(vol)
    assert mask.shape == vol.shape and mask.dtype == bool
    for k in range(mask.shape[-1]):
        m = mask[0, ..., k]
        assert m[48, 48]  # body centre
        assert not m[:, :8].any() and not m[:, -8:].any()  # air in front of and behind the body
        assert not m[:8, :8].any() and not m[-8:, -8:].any()  # air in the corners
        np.testing.assert_array_equal(binary_fill_holes(m), m)
        # the phantom body is an ellipse of semi-axes ~150 x 112 mm: ~40 % of the 346 mm field of view
        assert 0.3 < m.mean() < 0.55


def test_superpixels_dict_transform_and_parameters():
    vol = _phantom_volume(2)
    out = Superpixelsd("image", min_size=200)({"image": vol})
    assert torch.equal(out["superpixels"], Superpixels(min_size=200)(vol))
    assert out["image"] is vol
    assert SuperpixelParams().effective_min_size((512, 512)) == 1600
    assert SuperpixelParams(reference_size=None).effective_min_size((512, 512)) == 400
    # smaller superpixels -> more of them
    assert int(out["superpixels"].max()) > int(Superpixels(min_size=800)(vol).max())
    with pytest.raises(ValueError):
        Superpixels()(torch.zeros(2, 8, 8, 3))
    with pytest.raises(ValueError):
        SuperpixelParams(body_threshold=1.5)


def test_plain_arrays_and_empty_slices():
    arr = np.zeros((32, 32, 3), np.float32)
    arr[8:24, 8:24, 1] = 1.0
    sp = superpixel_volume(arr, SuperpixelParams(min_size=10, reference_size=None))
    assert sp.shape == arr.shape and sp.dtype == np.int32
    assert not sp[..., 0].any() and not sp[..., 2].any()  # no body on these slices
    body = sp[..., 1] > 0
    assert body[8:24, 8:24].all()  # the bright square (the Gaussian-smoothed threshold widens it a little)
    assert not body[:6].any() and not body[:, :6].any() and body.sum() <= 20 * 20


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sp_images")
    for k in range(2):
        write_phantom(d, f"case{k}", seed=k, modality="mri", **SMALL)
    (d / "case9_image.nii.gz").write_bytes(b"this is not a NIfTI file")
    return d


def test_cache_command_skips_done_and_reports_bad_file(image_dir, tmp_path, caplog):
    out = tmp_path / "cache"
    args = ["superpixels", "--images", str(image_dir), "--out", str(out), "--intensity", "mri", "--no-progress"]
    with caplog.at_level(logging.ERROR):
        assert main(args) == 1  # one bad file
    assert "case9_image.nii.gz" in caplog.text  # reported by name ...
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["entries"]) == 2  # ... and the other images were done
    assert any("case9_image.nii.gz" in k for k in manifest["failed"])
    for k in range(2):
        image = image_dir / f"case{k}_image.nii.gz"
        entry = manifest["entries"][str(image.resolve())]
        assert entry["parameters"]["intensity"] == "mri" and entry["parameters"]["min_size"] == 400
        assert entry["slices"] == 10 and entry["superpixels_total"] > 0
        cached = load_volume(out / entry["superpixels"], is_label=True)
        loaded = load_case(image, intensity="mri")["image"]
        np.testing.assert_array_equal(cached.numpy(), Superpixels()(loaded).numpy())
        np.testing.assert_allclose(cached.affine, loaded.affine, atol=1e-5)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left

    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*_superpixels.nii.gz")}
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(args) == 1
    assert "0 computed, 2 already done, 1 failed" in caplog.text
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("*_superpixels.nii.gz")}

    # other parameters: recomputed; a glob selects files
    glob_args = ["superpixels", "--images", str(image_dir / "case*_image.nii.gz"), "--out", str(out)]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main([*glob_args, "--intensity", "mri", "--min-size", "200", "--no-progress"]) == 1
    assert "2 computed, 0 already done, 1 failed" in caplog.text
    cache = SuperpixelCache(out)
    assert cache.is_done(image_dir / "case0_image.nii.gz", SuperpixelParams(min_size=200), "mri")
    assert not cache.is_done(image_dir / "case0_image.nii.gz", SuperpixelParams(), "mri")


def test_cache_command_without_images(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert main(["superpixels", "--images", str(tmp_path / "nothing*.nii.gz"), "--out", str(tmp_path)]) == 2
    assert "no image found" in caplog.text


@pytest.mark.real_data
def test_real_chaos_superpixels_cover_the_organs():
    image, label = DATA / "chaos_t2spir" / "image_1.nii.gz", DATA / "chaos_t2spir" / "label_1.nii.gz"
    if not image.is_file():
        pytest.skip("../shared/data not present")
    case = load_case(image, label, intensity="mri")
    vol = case["image"][..., 14:22]
    sp = Superpixels()(vol)[0].numpy()
    organs = case["label"][0, ..., 14:22].numpy() > 0
    assert organs.any()
    assert (sp[organs] > 0).mean() > 0.999  # the labelled organs lie inside the body mask
    per_slice = [int(sp[..., k].max()) for k in range(sp.shape[-1])]
    assert all(15 <= n <= 45 for n in per_slice), per_slice  # SSL-ALPNet-like granularity (~25 per slice)
