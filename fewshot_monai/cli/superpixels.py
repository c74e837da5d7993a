"""``fewshot-monai superpixels``: cache the superpixel pseudo-labels of unlabelled scans for self-supervised training.

For every image, the intensity preset is applied, each slice (in the volume's slicing plane, ``--plane``) is
segmented with Felzenszwalb's algorithm inside the body mask (:mod:`fewshot_monai.transforms.superpixels`), and the
label volume is written to ``OUT/<case id>_superpixels.nii.gz`` with the image's geometry, next to
``OUT/manifest.json`` (image path, superpixel file, parameters, counts). Re-running skips images already done with
the same parameters (and an unchanged image file); a file that cannot be read is reported by name and the others go
on. The exit code is 1 when some file failed, else 0.

Examples::

    fewshot-monai superpixels --images ../shared/data/chaos_t2spir --out cache/chaos_sp --intensity mri
    fewshot-monai superpixels --images "scans/*.nii.gz" --out cache/my_sp --intensity ct
"""

from __future__ import annotations

import argparse
import glob
import logging
from pathlib import Path

from tqdm.auto import tqdm

from fewshot_monai.cli.arguments import PLANE_CHOICES, PLANE_HELP
from fewshot_monai.cli.main import SUBCOMMANDS
from fewshot_monai.data.episodes import SuperpixelCache
from fewshot_monai.transforms.intensity import INTENSITY_PRESETS
from fewshot_monai.transforms.superpixels import SuperpixelParams

__all__ = ["add_parser", "run", "find_images", "cache_superpixels"]

logger = logging.getLogger(__name__)

_SKIP_WORDS = ("label", "seg", "mask", "superpixel")


def _is_volume(path: Path) -> bool:
    from fewshot_monai.data.io import READABLE_SUFFIXES

    name = path.name.lower()
    return path.is_file() and any(name.endswith(s) for s in READABLE_SUFFIXES)


def find_images(spec: str) -> list[Path]:
    """Images named by ``spec``: a file, a glob pattern, or a folder (its volume files whose names do not contain
    ``label``, ``seg``, ``mask`` or ``superpixel``), sorted."""
    path = Path(spec).expanduser()
    if path.is_dir():
        found = [p for p in path.iterdir() if _is_volume(p) and not any(w in p.name.lower() for w in _SKIP_WORDS)]
    elif path.is_file():
        found = [path]
    else:
        found = [Path(p) for p in glob.glob(str(path))]
        found = [p for p in found if p.is_file() or p.is_dir()]
    return sorted(found)


def cache_superpixels(
    images: list[Path],
    out_dir: str | Path,
    params: SuperpixelParams,
    intensity: str | None,
    progress: bool = True,
    plane: str = "auto",
) -> dict:
    """Compute (or skip, when done) the superpixels of ``images``, cut in their slicing ``plane``, into the cache
    ``out_dir``.

    Returns:
        ``{"computed": [paths], "skipped": [paths], "failed": {path: message}}``.
    """
    cache = SuperpixelCache(out_dir)
    report: dict = {"computed": [], "skipped": [], "failed": {}}
    bar = tqdm(images, desc="superpixels", unit="scan", disable=not progress)
    for image in bar:
        bar.set_postfix_str(image.name)
        if cache.is_done(image, params, intensity):
            report["skipped"].append(str(image))
            continue
        try:
            cache.compute(image, params, intensity, plane=plane)
        except Exception as err:  # a bad file must not stop the batch
            from fewshot_monai.data.io import find_input_error

            found = find_input_error(err)
            message = str(found) if found is not None else f"{image}: {type(err).__name__}: {err}"
            logger.error("skipping %s", message)
            cache.record_failure(image, message)
            report["failed"][str(image)] = message
            continue
        report["computed"].append(str(image))
    return report


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "superpixels",
        help=SUBCOMMANDS["superpixels"][1],
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = SuperpixelParams()
    parser.add_argument("--images", required=True, help="a folder, a glob pattern (quote it) or one image file")
    parser.add_argument("--out", required=True, help="cache folder (superpixel volumes + manifest.json)")
    parser.add_argument(
        "--intensity",
        choices=[p for p in INTENSITY_PRESETS if p != "none"],
        default="preprocessed",
        help="intensity preset before segmentation: mri, ct (HU data) or preprocessed (z-score only; default)",
    )
    parser.add_argument("--min-size", type=int, default=defaults.min_size, help="min superpixel size (256x256 px)")
    parser.add_argument("--sigma", type=float, default=defaults.sigma, help="Gaussian smoothing in pixels")
    parser.add_argument("--scale", type=float, default=defaults.scale, help="Felzenszwalb scale (z-score units)")
    parser.add_argument(
        "--body-threshold", type=float, default=defaults.body_threshold, help="fraction of the intensity range"
    )
    parser.add_argument("--plane", choices=PLANE_CHOICES, default="auto", help=PLANE_HELP)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    images = find_images(args.images)
    if not images:
        logger.error("%s: no image found", args.images)
        return 2
    try:
        params = SuperpixelParams(args.min_size, args.sigma, args.scale, args.body_threshold)
    except ValueError as err:
        logger.error("%s", err)
        return 2
    report = cache_superpixels(
        images, args.out, params, args.intensity, progress=not args.no_progress, plane=args.plane
    )
    logger.info(
        "superpixels in %s: %d computed, %d already done, %d failed",
        args.out,
        len(report["computed"]),
        len(report["skipped"]),
        len(report["failed"]),
    )
    for message in report["failed"].values():
        logger.error("failed: %s", message)
    return 1 if report["failed"] else 0
