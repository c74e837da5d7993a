"""``fewshot-monai selftrain``: from one labelled scan and a folder of unlabelled ones to a standard MONAI network
that segments with no support.

    fewshot-monai selftrain --support-image S.nii.gz --support-label S_seg.nii.gz \\
        --organs liver=1,spleen=4 --input unlabelled/ --output selftrain/ --rounds 2 --filter classwise

Each round a teacher (round 0: the few-shot segmenter with the `segment` options, or with --labeller reference the
reference-guided labels of `pseudolabel`; later: the previous student)
labels every input volume with a confidence, the filter keeps the reliable voxels (the others are ignored by the
loss), and a 2D MONAI U-Net student is trained on the support plus the kept pseudo-labels. Writes
round_<r>/pseudo/ (the teacher's labels as an nnU-Net v2 dataset), round_<r>/student.pt, round_<r>/round.json,
student.pt (the last student; run it with `fewshot-monai segment --model student.pt`) and selftrain.json.
A re-run resumes: finished cases and rounds are skipped (docs/selftrain.md).

Filters: fixed (confidence >= --threshold), classwise (per class min(--threshold, the confidence that keeps
--keep of the class's voxels)), stpp (ST++: the --fraction most reliable volumes whole; one more share per round).
Exit codes: 0 done; 2 nothing was started (bad input, support or option) or a round failed on every case.
"""

from __future__ import annotations

import argparse
import logging

from fewshot_monai.cli.arguments import int_list
from fewshot_monai.cli.main import SUBCOMMANDS
from fewshot_monai.cli.pseudolabel import add_labeller_argument, with_labeller
from fewshot_monai.cli.segment import add_batch_arguments, batch_options

__all__ = ["add_parser", "run"]

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "selftrain",
        help=SUBCOMMANDS["selftrain"][1],
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_batch_arguments(parser)
    add_labeller_argument(parser)
    group = parser.add_argument_group("self-training")
    group.add_argument("--rounds", type=int, default=2, help="teacher -> student rounds (default 2)")
    group.add_argument("--filter", choices=("fixed", "classwise", "stpp"), default="classwise", help="(classwise)")
    group.add_argument("--threshold", type=float, default=0.9, help="fixed/classwise confidence threshold (0.9)")
    group.add_argument("--keep", type=float, default=0.8, help="classwise: least share of a class's voxels kept (0.8)")
    group.add_argument("--fraction", type=float, default=0.5, help="stpp: share of volumes kept in round 0 (0.5)")
    group.add_argument("--iterations", type=int, default=500, help="student training steps per round (500)")
    group.add_argument("--batch-size", type=int, default=8, help="slices per step (8)")
    group.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (1e-3)")
    group.add_argument("--slice-size", type=int, default=128, help="student's in-plane slice size (128)")
    group.add_argument("--channels", type=int_list, default=[16, 32, 64, 128], help="U-Net channels per level")
    group.add_argument("--support-share", type=float, default=0.2, help="share of training slices from the support")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--teacher-labels", default=None, help="pseudolabel output to reuse in round 0")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fewshot_monai.engines.student import StudentTraining
    from fewshot_monai.errors import FewShotError
    from fewshot_monai.selftrain import SelfTrainOptions, self_train

    try:
        training = StudentTraining(args.iterations, args.batch_size, args.lr, support_share=args.support_share,
                                   seed=args.seed)  # fmt: skip
        options = SelfTrainOptions(
            rounds=args.rounds, filter=args.filter, threshold=args.threshold, keep=args.keep, fraction=args.fraction,
            slice_size=args.slice_size, channels=tuple(args.channels), training=training,
            teacher_labels=args.teacher_labels, progress=not args.no_progress,
        )  # fmt: skip
        result = self_train(
            args.input,
            args.output,
            args.support_image,
            args.support_label,
            with_labeller(batch_options(args), args.labeller),
            options,
        )
    except (FewShotError, ValueError, RuntimeError) as err:
        logger.error("self-training stopped: %s", err)
        return 2
    for record in result["rounds"]:
        if record.get("final"):
            continue
        print(f"round {record['round']}: kept {100 * record['kept_fraction']:.1f}% of the voxels "
              f"({record['filter']}), student trained in {record['training']['seconds']:.0f} s")  # fmt: skip
    print(f"student: {result['student']}; labelled dataset: {result['labels']}")
    return 0
