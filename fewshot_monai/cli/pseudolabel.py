"""``fewshot-monai pseudolabel``: label a folder of unlabelled volumes from one labelled example, as an nnU-Net v2
raw dataset.

    fewshot-monai pseudolabel --support-image S.nii.gz --support-label S_seg.nii.gz \\
        --organs liver=1,spleen=4 --input unlabelled/ --output Dataset501_Liver/ --min-confidence 0.9

--labeller fewshot (default) labels with the few-shot segmenter (the `segment` options: adaptation, pseudo-labelling,
guard); --labeller reference gives each voxel of the organ's range the class of its nearest support pixel in feature
space (Seibold et al.; the range comes from the network's first pass), with the nearest-neighbour margin as confidence.

Writes imagesTr/<case>_0000.nii.gz (the volume), labelsTr/<case>.nii.gz (organs numbered 1..N in --organs order;
voxels below --min-confidence are the 'ignore' label N+1), confidence/<case>.nii.gz, reports/<case>.json and
dataset.json. It batches like `segment`: the support is prepared once, a re-run skips finished cases, a bad case
is listed and the others go on (docs/pseudo_labelling.md). Exit codes as `segment`.
"""

from __future__ import annotations

import argparse

from fewshot_monai.cli.main import SUBCOMMANDS
from fewshot_monai.cli.segment import add_batch_arguments, batch_options

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "pseudolabel",
        help=SUBCOMMANDS["pseudolabel"][1],
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_batch_arguments(parser)
    parser.add_argument(
        "--min-confidence", type=float, default=0.9, help="voxels less confident than this are 'ignore' (default 0.9)"
    )
    add_labeller_argument(parser)
    parser.set_defaults(run=run)


def add_labeller_argument(parser) -> None:
    """``--labeller fewshot|reference`` (``pseudolabel``, and ``selftrain``'s round-0 teacher)."""
    parser.add_argument(
        "--labeller",
        choices=("fewshot", "reference"),
        default="fewshot",
        help="fewshot (default): the few-shot segmenter; reference: nearest support pixel in feature space",
    )


def with_labeller(options, labeller: str):
    """The batch options of ``labeller``: the reference labels are final, so no stage on top and no guard."""
    if labeller == "reference":
        options.pseudo_label, options.min_agreement = "reference_labels", 0.0
    return options


def run(args: argparse.Namespace) -> int:
    from fewshot_monai.batch import run_segmentation
    from fewshot_monai.pseudolabel.dataset import NnUNetWriter

    try:
        writer = NnUNetWriter(args.min_confidence, "CT" if args.modality == "ct" else "MRI")
    except ValueError as err:
        print(f"error: {err}")
        return 2
    options = with_labeller(batch_options(args), args.labeller)
    return run_segmentation(args.input, args.output, args.support_image, args.support_label, options, writer)
