"""Run a self-trained student (:mod:`fewshot_monai.networks.student`) on a volume: no support, no z-range.

:class:`StudentSegmenter` resizes the query's axial slices to the student's ``slice_size``, runs the 2D network
slice by slice with :class:`monai.inferers.SliceInferer`, takes the softmax over background and organs, turns it into
one probability per organ (:func:`organ_probabilities`: the organ against its strongest rival, so that the shared
label-map rule gives the softmax's argmax), keeps each organ's largest 3D component and maps the probabilities back
to the query's geometry. It returns the same
:class:`~fewshot_monai.inferers.Segmentation` as :class:`~fewshot_monai.inferers.FewShotSegmenter`, so the batch
machinery (``fewshot-monai segment --model student.pt``, the bundle) writes the same outputs with the same merging
rule (:func:`~fewshot_monai.inferers.label_map`), and a self-training round uses it as the next teacher.
"""

from __future__ import annotations

import os
import time

import torch

from fewshot_monai.inferers.segmenter import OrganSegmentation, Segmentation
from fewshot_monai.transforms.labels import largest_component

__all__ = ["StudentSegmenter", "organ_probabilities", "student_probabilities"]


@torch.no_grad()
def student_probabilities(network: torch.nn.Module, volume: torch.Tensor, slice_size: int, batch_size: int = 16):
    """``(K, X, Y, Z)`` softmax class probabilities of a 2D network over the axial slices of ``(1, X, Y, Z)``.

    The slices are resized to ``slice_size`` (bilinear), segmented by :class:`monai.inferers.SliceInferer` and the
    probabilities resized back (bilinear)."""
    import torch.nn.functional as F
    from monai.inferers import SliceInferer

    plain = volume.as_tensor() if hasattr(volume, "as_tensor") else torch.as_tensor(volume)
    x, y, z = plain.shape[1:]
    size = (int(slice_size), int(slice_size))
    resized = F.interpolate(plain[None].float(), size=(*size, z), mode="trilinear", align_corners=False)
    inferer = SliceInferer(roi_size=size, spatial_dim=2, sw_batch_size=int(batch_size), progress=False)
    logits = inferer(resized, network)
    probabilities = torch.softmax(torch.as_tensor(logits).float(), dim=1)
    return F.interpolate(probabilities, size=(x, y, z), mode="trilinear", align_corners=False)[0]


def organ_probabilities(softmax: torch.Tensor) -> torch.Tensor:
    """``(K, ...)`` softmax over background and ``K - 1`` organs -> ``(K - 1, ...)``: each organ's probability against
    its strongest rival (the background or another organ), ``p_k / (p_k + max_{j != k} p_j)``.

    An organ is above 0.5 exactly where it is the softmax's argmax, so the one label-map rule of every entry point
    (:func:`~fewshot_monai.inferers.label_map`: the most probable organ above 0.5) gives the argmax, and each organ's
    mask (``> 0.5``) is its argmax region. Thresholding the raw softmax at 0.5 instead loses every voxel where the
    argmax organ holds less than half the mass: a kidney beside the liver, with the probability spread over five
    classes, shrank by a third that way, and a student trained on such labels lost it.
    """
    softmax = torch.as_tensor(softmax).float()
    top, index = softmax.topk(2, dim=0)  # a class's strongest rival: the top class, or the second where it is the top
    organs = []
    for k in range(1, softmax.shape[0]):
        rival = torch.where(index[0] == k, top[1], top[0])
        organs.append(softmax[k] / (softmax[k] + rival).clamp_min(1e-12))
    return torch.stack(organs)


class StudentSegmenter:
    """Segment query volumes with a student network, with no support (the ``organs`` of its checkpoint).

    Args:
        network: the 2D network (eval mode); output channel ``k`` is organ ``k`` (0: background).
        organs: organ name -> label id of the written map, in the order of the network's output channels (the
            ``k``-th organ is channel ``k + 1``; channel 0 is the background).
        slice_size: in-plane size the network was trained at.
        largest_component: keep each organ's largest 3D connected component.
        batch_size: slices per network call.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        organs: dict[str, int],
        slice_size: int,
        largest_component: bool = True,
        batch_size: int = 16,
    ) -> None:
        if not organs:
            raise ValueError("organs must name at least one organ (name -> class index)")
        self.network = network.eval()
        self.organs = {str(k): int(v) for k, v in organs.items()}
        self.slice_size = int(slice_size)
        self.largest_component = bool(largest_component)
        self.batch_size = int(batch_size)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **options) -> StudentSegmenter:
        """The segmenter of a student checkpoint (:func:`~fewshot_monai.networks.student.load_student`)."""
        from fewshot_monai.networks.student import load_student

        network, info = load_student(path)
        return cls(network, info.organs, info.slice_size, **options)

    def __call__(self, query: torch.Tensor) -> Segmentation:
        """Segment one ``(1, X, Y, Z)`` query, intensity-normalised with the student's preset."""
        start = time.perf_counter()
        if query.ndim != 4:
            raise ValueError(f"query must be (C, X, Y, Z), got shape {tuple(query.shape)}")
        softmax = student_probabilities(self.network, query, self.slice_size, self.batch_size)
        probabilities = organ_probabilities(softmax)
        encode_seconds = time.perf_counter() - start
        results = {}
        for index, organ in enumerate(self.organs):
            t0 = time.perf_counter()
            probability = probabilities[index]
            if self.largest_component:
                foreground = probability > 0.5
                probability = torch.where(foreground & ~largest_component(foreground), 0.0, probability)
            z = torch.nonzero((probability > 0.5).flatten(0, 1).any(dim=0)).flatten()
            z_range = (int(z[0]), int(z[-1])) if len(z) else None
            results[organ] = OrganSegmentation(probability, probability, z_range, time.perf_counter() - t0)
        return Segmentation(results, dict(self.organs), time.perf_counter() - start, encode_seconds)
