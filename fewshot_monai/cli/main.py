"""The ``fewshot-monai`` command line.

Each sub-command lives in its own module of this package and exposes ``add_parser(subparsers)`` and
``run(args) -> int``; this module only dispatches. Only the chosen sub-command's module is imported (the others
appear in the help from :data:`SUBCOMMANDS`), so ``fewshot-monai --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser", "SUBCOMMANDS"]

#: sub-command name -> (module of this package that implements it, one line of help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "segment": ("segment", "segment a folder of studies from one or a few labelled supports"),
    "pseudolabel": ("pseudolabel", "label a folder of unlabelled volumes from one example, as an nnU-Net v2 dataset"),
    "selftrain": ("selftrain", "self-train a standard MONAI network on pseudo-labels (then segment with no support)"),
    "superpixels": ("superpixels", "cache superpixel pseudo-labels of unlabelled scans (for self-supervised training)"),
    "train": ("train", "self-supervised training of ALPNet on superpixel episodes"),
    "demo": ("demo", "segment a synthetic query phantom from a synthetic support phantom"),
    "evaluate": ("evaluate", "cross-validated few-shot evaluation (EP1/EP2) with CSV, JSON and Markdown reports"),
}


def _chosen(argv: Sequence[str]) -> str | None:
    """The sub-command named in ``argv`` (the first word that is one), or None."""
    return next((word for word in argv if word in SUBCOMMANDS), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; the full options of the sub-command chosen in ``argv`` (all of them when ``argv`` is None)."""
    parser = argparse.ArgumentParser(
        prog="fewshot-monai",
        description="Few-shot 3D organ segmentation with MONAI: segment organs from one or a few labelled examples.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = None if argv is None else _chosen(argv)
    for name, (module_name, help_line) in SUBCOMMANDS.items():
        if argv is None or name == chosen:
            importlib.import_module(f"{__package__}.{module_name}").add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=help_line)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    return int(args.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
