"""``fewshot-monai segment``: segment a folder of studies from one (or a few) labelled supports.

    fewshot-monai segment --support-image S.nii.gz --support-label S_seg.nii.gz \\
        --organs liver=1,spleen=4 --input studies/ --output seg_out/

Inputs may be NIfTI, NRRD/MHA files and DICOM series folders, mixed in one folder (or a glob, or one file);
other files are listed and ignored. The support is prepared once (with the default 300 iterations of support
adaptation: a few minutes on a CPU, cached in <output>/.cache), then every case gets, in --output:
<case>_seg.nii.gz (all organs, in the input's own voxel grid), <case>.json (volume in ml, mean confidence, z-range
and seconds per organ), <case>_qa.png (three planes) and, with --save-probabilities, <case>_prob.nii.gz; the
batch gets summary.csv. A re-run skips the cases already done with the same support, model and options. A case
that fails is reported with its reason and the batch goes on.

With --model student.pt (a network trained by `fewshot-monai selftrain`) no support is needed: the student
segments every case slice by slice with the organs and intensity preset stored in it, writing the same outputs.

Exit codes: 0 every case done or skipped; 1 some cases failed (see summary.csv); 2 nothing was started (missing
or empty input, bad support, bad option). Under torchrun the cases are sharded across ranks (docs/batch.md).
"""

from __future__ import annotations

import argparse
import logging

from fewshot_monai.cli.arguments import PLANE_CHOICES, PLANE_HELP, name_ids
from fewshot_monai.cli.main import SUBCOMMANDS

__all__ = ["add_parser", "run"]

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help=SUBCOMMANDS["segment"][1],
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_batch_arguments(parser, support_required=False)
    parser.add_argument("--model", default=None, help="a self-trained student (.pt from selftrain): no support needed")
    parser.add_argument("--save-probabilities", action="store_true", help="also write <case>_prob.nii.gz")
    parser.add_argument("--no-overlay", action="store_true", help="do not write <case>_qa.png")
    parser.set_defaults(run=run)


def add_batch_arguments(parser: argparse.ArgumentParser, support_required: bool = True) -> None:
    """The options of every command that segments a folder from labelled supports (``segment``, ``pseudolabel``)."""
    need = support_required
    parser.add_argument("--support-image", action="append", required=need, help="support volume (repeat: k-shot)")
    parser.add_argument("--support-label", action="append", required=need, help="its label map (repeat, same order)")
    parser.add_argument(
        "--organs", type=name_ids, default=None, help="name=id,... (default: every label of the support)"
    )
    parser.add_argument("--input", required=True, help="folder, glob or file of the studies")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--modality", choices=("mri", "ct"), default="mri", help="shipped model and intensity preset")
    parser.add_argument("--weights", default=None, help="ALPNet weights (.pt) instead of the shipped model")
    parser.add_argument("--intensity", choices=("mri", "ct", "preprocessed"), default=None, help="default: --modality")
    parser.add_argument("--pseudo-label", default="window", help="window (default), slice, reference or none")
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=0.5,
        help="pseudo-labelling steps aside where it moves an organ (Dice with the plain one below this; default 0.5)",
    )
    parser.add_argument(
        "--adapt-iterations", type=int, default=300, help="support adaptation, once per batch (default 300; 0: off)"
    )
    parser.add_argument("--adapt-cache", default=None, help="where adapted networks are kept (default <output>/.cache)")
    parser.add_argument(
        "--adapt-ensemble",
        type=int,
        default=1,
        metavar="K",
        help="adapt K copies of the network (seeds 0..K-1) and average their predictions (K times the time)",
    )
    parser.add_argument(
        "--range-anchor",
        default="auto",
        help="search each organ near where the support puts it relative to this organ's range: auto (default: the "
        "organ with the most support voxels), an organ name, or none",
    )
    parser.add_argument("--series", default=None, help="DICOM series to read from a folder holding several")
    parser.add_argument("--plane", choices=PLANE_CHOICES, default="auto", help=PLANE_HELP)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def batch_options(args: argparse.Namespace):
    """The :class:`~fewshot_monai.batch.SegmentOptions` of the parsed batch arguments."""
    from fewshot_monai.batch import SegmentOptions

    return SegmentOptions(
        organs=args.organs,
        weights=args.weights,
        modality=args.modality,
        intensity=args.intensity,
        pseudo_label=args.pseudo_label,
        min_agreement=args.min_agreement,
        adapt_iterations=args.adapt_iterations,
        adapt_cache=args.adapt_cache,
        adapt_ensemble=args.adapt_ensemble,
        save_probabilities=getattr(args, "save_probabilities", False),
        overlays=not getattr(args, "no_overlay", True),
        series=args.series,
        plane=args.plane,
        range_anchor=args.range_anchor,
        progress=not args.no_progress,
        model=getattr(args, "model", None),
    )


def run(args: argparse.Namespace) -> int:
    from fewshot_monai.batch import run_segmentation

    if args.model and (args.support_image or args.support_label):
        logger.error("nothing segmented: give --model or --support-image/--support-label, not both")
        return 2
    if not args.model and not (args.support_image and args.support_label):
        logger.error("nothing segmented: give --support-image and --support-label (or a self-trained --model)")
        return 2
    supports = ([], []) if args.model else (args.support_image, args.support_label)
    try:
        options = batch_options(args)
    except ValueError as err:
        logger.error("nothing segmented: %s", err)
        return 2
    return run_segmentation(args.input, args.output, *supports, options)
