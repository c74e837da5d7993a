"""Exception types raised by fewshot-monai.

Every error caused by user input names the offending file (or data item) and the problem, so that a batch
job can log it and go on with the next case::

    try:
        item = load_case(image_path, label_path)
    except InputError as err:
        logger.error(str(err))   # "/data/ct_07.nii.gz: contains 12 NaN/inf voxels"
"""

from __future__ import annotations

from os import PathLike

__all__ = [
    "FewShotError",
    "InputError",
    "UnreadableFileError",
    "DimensionalityError",
    "GeometryMismatchError",
    "MissingOrganError",
    "EmptyMaskError",
    "NonFiniteError",
]


class FewShotError(Exception):
    """Base class of every error raised on purpose by fewshot-monai."""


class InputError(FewShotError, ValueError):
    """A problem with one input file or data item.

    Args:
        source: the file path (or a data-item identifier) that caused the problem.
        problem: a short human-readable description of what is wrong.
    """

    def __init__(self, source: str | PathLike | None, problem: str):
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)


class UnreadableFileError(InputError):
    """The file does not exist, is truncated, or no reader understands it."""


class DimensionalityError(InputError):
    """The array has the wrong number of spatial dimensions (for example a 2D image where 3D is expected)."""


class GeometryMismatchError(InputError):
    """An image and its label (or two volumes that must align) differ in shape, spacing, origin or direction."""


class MissingOrganError(InputError):
    """The requested organ label id does not occur in the label volume."""


class EmptyMaskError(InputError):
    """A mask that must contain foreground (for example a support mask) is empty."""


class NonFiniteError(InputError):
    """The image contains NaN or infinite intensities."""
