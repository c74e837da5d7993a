"""One labelled support prepared once, any number of queries segmented from it: the project's inference path.

:class:`FewShotSegmenter` is what the ``segment`` command, the evaluation, the demo, the bundle and the MONAI
inferer (:class:`~fewshot_monai.inferers.FewShotVolumeInferer`) all use::

    segmenter = FewShotSegmenter(network, [support["image"]], [support["label"]], {"liver": 1, "spleen": 4},
                                 pseudo_label=get_pseudo_label("window"))
    result = segmenter(query["image"])            # a Segmentation: nothing is left on the segmenter
    labels = result.label_map()                   # (X, Y, Z) uint8, one rule for every entry point
    result.organs["liver"].z_range, result.organs["liver"].probability

Building the segmenter does the per-support work once: the optional support adaptation (fine-tuning a copy of
the network on the support's own labelled slices, :mod:`fewshot_monai.engines.adaptation`), cutting the support
volumes into slices, and encoding each organ's support slices into prototype banks. A call then encodes the query
slices once and scores every organ against its banks (:class:`~fewshot_monai.inferers.protocol.FewShotSliceProtocol`:
the organ's z-range is given, e.g. EP1, or estimated from a first pass), keeps each organ's largest 3D component,
runs the optional pseudo-labelling stage and maps the probabilities back to the query's geometry.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.data import MetaTensor

from fewshot_monai.errors import EmptyMaskError
from fewshot_monai.inferers.anchor import (
    nearest_component,
    organ_positions,
    pick_anchor,
    predicted_centroid,
    search_window,
    stack_centroid,
)
from fewshot_monai.inferers.protocol import (
    FewShotContext,
    FewShotSliceProtocol,
    PreparedSupport,
    support_set_from_stacks,
)
from fewshot_monai.transforms.labels import largest_component, merge_organ_probabilities
from fewshot_monai.transforms.plane import plane_of
from fewshot_monai.transforms.slicing import (
    image_slices,
    slice_spacing,
    slice_step,
    slices_to_volume,
    volume_to_slices,
)
from fewshot_monai.transforms.validation import source_of

logger = logging.getLogger(__name__)

__all__ = ["FewShotSegmenter", "as_volumes", "OrganSegmentation", "Segmentation", "keep_largest_component", "label_map"]


def keep_largest_component(
    probabilities: torch.Tensor, threshold: float = 0.5, choose: Callable = largest_component
) -> torch.Tensor:
    """``(Z, 2, H, W)`` probabilities whose foreground outside the largest 3D connected component of
    ``p_fg > threshold`` is set to background (p_fg = 0); the input itself when there is nothing to remove.
    ``choose`` picks another component instead (a function of the ``(Z, H, W)`` foreground returning the mask to
    keep, e.g. :func:`~fewshot_monai.inferers.anchor.nearest_component`)."""
    foreground = probabilities[:, 1] > threshold
    drop = foreground & ~choose(foreground)
    if not bool(drop.any()):
        return probabilities
    kept = probabilities.clone()
    kept[:, 1][drop] = 0.0
    kept[:, 0][drop] = 1.0
    return kept


def _pixel_mm(volume, spatial_size: int) -> tuple[float, float]:
    """mm per pixel of the ``spatial_size``-square slices cut from ``(C, X, Y, Z)`` ``volume`` (rows: X, columns:
    Y); 1 mm without spacing information."""
    shape = volume.shape[1:3]
    spacing = volume.pixdim[:2].tolist() if isinstance(volume, MetaTensor) else (1.0, 1.0)
    return tuple(float(n) * float(s) / float(spatial_size) for n, s in zip(shape, spacing))


def label_map(probabilities: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """The one rule that turns organ probabilities into a label map, used by every entry point: each voxel gets
    the label id of its most probable organ among those above 0.5, and 0 where none is
    (:func:`~fewshot_monai.transforms.labels.merge_organ_probabilities`)."""
    return merge_organ_probabilities(probabilities, threshold=0.5)


@dataclass
class OrganSegmentation:
    """One organ of one query.

    Attributes:
        probability: ``(X, Y, Z)`` final foreground probability in the query's geometry.
        plain_probability: the same before pseudo-labelling (the same tensor when no stage ran).
        z_range: inclusive query slices that were scored (given or estimated); None when no organ was found.
        seconds: scoring time of this organ (the query's encoding is counted once, in :attr:`Segmentation`).
        pseudo_label: what the pseudo-labelling stage did (slices, windows, confidence, seconds, and ``agreement``
            / ``accepted``: whether its prediction was kept), None without a stage.
        pseudo_slices: the query slices the stage transferred, with their masks (to score them against a truth).
        diagnostics: the range estimate's details (``estimated_z_range``, ``prior_length_slices``).
    """

    probability: torch.Tensor
    plain_probability: torch.Tensor
    z_range: tuple[int, int] | None
    seconds: float
    pseudo_label: dict | None = None
    pseudo_slices: list = field(default_factory=list)
    diagnostics: dict = field(default_factory=dict)

    @property
    def mask(self) -> np.ndarray:
        """Binary ``(X, Y, Z)`` prediction (probability > 0.5)."""
        return (self.probability > 0.5).cpu().numpy()

    @property
    def plain_mask(self) -> np.ndarray:
        """Binary ``(X, Y, Z)`` prediction before pseudo-labelling."""
        return (self.plain_probability > 0.5).cpu().numpy()

    def pseudo_label_seconds(self) -> float:
        return float((self.pseudo_label or {}).get("seconds") or 0.0)


@dataclass
class Segmentation:
    """Every organ of one query: ``organs[name]`` (:class:`OrganSegmentation`), their label ids, and the time.

    Attributes:
        organs: organ name -> result.
        label_ids: organ name -> label id in :meth:`label_map`.
        seconds: wall time of the call (encoding, scoring, pseudo-labelling, mapping back).
        encode_seconds: the part spent encoding the query slices (once for all organs).
    """

    organs: dict[str, OrganSegmentation]
    label_ids: dict[str, int]
    seconds: float
    encode_seconds: float

    def label_map(self, plain: bool = False) -> torch.Tensor:
        """``(X, Y, Z)`` uint8 label map of the final (or, ``plain=True``, the pre-pseudo-labelling) prediction,
        merged by :func:`label_map`; all zeros when there are no organs."""
        if not self.organs:
            raise ValueError("no organ was segmented")
        return label_map(
            {self.label_ids[name]: (o.plain_probability if plain else o.probability) for name, o in self.organs.items()}
        )


def as_volumes(volumes, name: str) -> list:
    """One ``(C, X, Y, Z)`` volume, a ``(K, C, X, Y, Z)`` batch or a sequence of volumes -> list of volumes."""
    if isinstance(volumes, torch.Tensor):
        if volumes.ndim == 4:
            return [volumes]
        if volumes.ndim == 5:
            return list(volumes)
        raise ValueError(f"{name} must be (C, X, Y, Z) or (K, C, X, Y, Z), got shape {tuple(volumes.shape)}")
    volumes = list(volumes)
    if not volumes:
        raise ValueError(f"{name} is empty")
    return volumes


class FewShotSegmenter:
    """Segment query volumes from one or more labelled support volumes, preparing the support once.

    Args:
        network: an encoder-and-bank few-shot network (:class:`~fewshot_monai.networks.ALPNet`), in eval mode.
        support_images: one ``(1, X, Y, Z)`` support volume or a sequence of them (k-shot), intensity-normalised
            like the queries.
        support_labels: their label maps (integer organ ids; a binary mask is a label map with id 1).
        organs: organ name -> label id, the organs to segment (every support must show each of them).
        n_chunks: chunks per organ extent (3 in SSL-ALPNet).
        spatial_size: in-plane size of the slices the network sees.
        batch_size: slices per network call.
        pseudo_label: optional inference-time pseudo-labelling stage ``(network, protocol, context) ->
            (Z, 2, H, W)`` probabilities (:func:`fewshot_monai.pseudolabel.get_pseudo_label`).
        largest_component: keep only each organ's largest 3D connected component (before the stage sees the
            prediction, and after it).
        peak_fraction, prior_weight: how an organ range is estimated when none is given
            (:func:`~fewshot_monai.inferers.protocol.estimate_z_range`).
        spatial_prior: weight of the support organ's in-plane position prior (:mod:`fewshot_monai.inferers.prior`);
            0 (default): none.
        atlas_prior: weight of the atlas prior, when a call passes ``atlas`` (each organ's support label registered
            onto the query): the foreground is tempered by :func:`~fewshot_monai.inferers.prior.atlas_prior` (1
            within 15 mm of the registered organ, a Gaussian fall-off of 15 mm beyond), first pass included; 0
            (default): ``atlas`` is ignored.
        min_agreement: the stage steps aside (the plain prediction is kept) when its prediction overlaps the plain
            one with a Dice below this; 0 (default) disables the check.
        range_anchor: when ranges are estimated and the support labels several organs, find this organ's range
            first (``"auto"``: the organ with the most support voxels) and search each other organ only near where
            the support's layout puts it relative to the anchor (:mod:`fewshot_monai.inferers.anchor`); None
            (default): every organ is searched in the whole query.
        component_anchor: with ``range_anchor`` and ``largest_component``, keep for each other organ the 3D
            component nearest to where the support's layout puts its centroid relative to the anchor's (in mm, in
            all three directions), instead of the largest one
            (:func:`~fewshot_monai.inferers.anchor.nearest_component`).
        adaptation: optional :class:`~fewshot_monai.engines.adaptation.SupportAdaptation` (or a dict of its
            fields): fine-tune a copy of the network on the support's own slices, for all organs, before encoding.
        adapt_cache: folder where adapted networks are kept and reused.
        progress: show a progress bar while adapting.

    Raises:
        EmptyMaskError: an organ is missing from a support label (the message names the support and the organ).
        InputError: the adaptation found nothing to learn from.

    The preparation's cost is in :attr:`preparation` (``seconds``, ``adaptation``: seconds, cache hit, key).
    """

    def __init__(
        self,
        network,
        support_images,
        support_labels,
        organs: Mapping[str, int],
        *,
        n_chunks: int = 3,
        spatial_size: int = 256,
        batch_size: int = 8,
        pseudo_label=None,
        largest_component: bool = True,
        peak_fraction: float | None = 0.5,
        prior_weight: float = 0.5,
        spatial_prior: float = 0.0,
        atlas_prior: float = 0.0,
        min_agreement: float = 0.0,
        range_anchor: str | None = None,
        component_anchor: bool = False,
        adaptation=None,
        adapt_cache: str | None = None,
        progress: bool = False,
    ) -> None:
        start = time.perf_counter()
        if not organs:
            raise ValueError("organs must name at least one organ (name -> label id)")
        if not 0.0 <= float(min_agreement) <= 1.0:
            raise ValueError(f"min_agreement must be in [0, 1], got {min_agreement}")
        self.protocol = FewShotSliceProtocol(
            n_chunks=n_chunks,
            batch_size=batch_size,
            peak_fraction=peak_fraction,
            prior_weight=prior_weight,
            spatial_prior=spatial_prior,
            atlas_prior=atlas_prior,
        )
        self.organs = {str(k): int(v) for k, v in organs.items()}
        self.spatial_size = int(spatial_size)
        self.pseudo_label = pseudo_label
        self.largest_component = bool(largest_component)
        self.min_agreement = float(min_agreement)
        if range_anchor is not None and range_anchor != "auto" and range_anchor not in self.organs:
            raise ValueError(f"range_anchor {range_anchor!r} is not one of the organs {list(self.organs)} (or 'auto')")
        if component_anchor and range_anchor is None:
            raise ValueError("component_anchor needs range_anchor (an organ name or 'auto')")
        self.component_anchor = bool(component_anchor)
        images = as_volumes(support_images, "support_images")
        labels = as_volumes(support_labels, "support_labels")
        if len(images) != len(labels):
            raise ValueError(f"got {len(images)} support images but {len(labels)} support labels")
        sources = [
            source_of(lb) or source_of(im) or f"support volume {k}" for k, (im, lb) in enumerate(zip(images, labels))
        ]
        for organ, label_id in self.organs.items():
            for label, source in zip(labels, sources):
                if not bool((torch.as_tensor(label) == label_id).any()):
                    raise EmptyMaskError(
                        source, f"organ {organ!r} (label {label_id}) is missing from the support label"
                    )
        adapted = None
        if adaptation is not None:
            network, adapted = self._adapt(network, images, labels, adaptation, adapt_cache, progress)
        self.network = network
        context = getattr(network, "slice_context", 0)
        image_stacks = [image_slices(img, self.spatial_size, context) for img in images]
        label_stacks = [volume_to_slices(lb, self.spatial_size, 1, "nearest").round().long() for lb in labels]
        spacings = [slice_spacing(img) for img in images]
        self.positions = [
            organ_positions(lb, self.organs, slice_step(im), _pixel_mm(im, self.spatial_size))
            for lb, im in zip(label_stacks, images)
        ]
        self.range_anchor = range_anchor and pick_anchor(self.positions, range_anchor, list(self.organs))
        self.plane = plane_of(images[0]) if isinstance(images[0], MetaTensor) else None
        self.supports: dict[str, PreparedSupport] = {}
        for organ, label_id in self.organs.items():
            masks = [(stack == label_id).float() for stack in label_stacks]
            support = support_set_from_stacks(
                image_stacks, masks, n_chunks, sources, spacings, position=self.protocol.spatial_prior > 0
            )
            self.supports[organ] = self.protocol.prepare(network, support)
        self.preparation = {"seconds": time.perf_counter() - start, "adaptation": adapted}

    def _adapt(self, network, images, labels, adaptation, cache, progress):
        from fewshot_monai.engines.adaptation import SupportAdaptation, adapt_to_support

        options = adaptation if isinstance(adaptation, SupportAdaptation) else SupportAdaptation.from_dict(adaptation)
        if options.spatial_size is None:
            options = dataclasses.replace(options, spatial_size=self.spatial_size)
        if options.iterations == 0:
            return network, None
        result = adapt_to_support(
            network, images, labels, list(self.organs.values()), options, cache_dir=cache, progress=progress
        )
        report = {
            "seconds": result.seconds,
            "from_cache": result.from_cache,
            "key": result.key,
            "losses": result.losses,
        }
        return result.network, report

    @torch.no_grad()
    def __call__(
        self,
        query: torch.Tensor,
        z_ranges: Mapping[str, tuple[int, int] | None] | None = None,
        organs: Sequence[str] | None = None,
        atlas: Mapping[str, torch.Tensor | np.ndarray | None] | None = None,
    ) -> Segmentation:
        """Segment one query volume.

        Args:
            query: ``(1, X, Y, Z)`` query volume, intensity-normalised like the supports.
            z_ranges: organ -> inclusive ``(first, last)`` query slices to segment it on (EP1, or a range found by
                other means); an organ without one gets its range estimated from a first pass.
            organs: the organs to segment (default: all of the segmenter's).
            atlas: organ -> ``(X, Y, Z)`` binary mask of the support organ registered onto the query (the query's
                geometry), used as a prior with the ``atlas_prior`` weight; an organ without one (or with an empty
                one) gets no atlas prior.

        Returns:
            a :class:`Segmentation`; the probabilities are in the query's geometry (a ``MetaTensor`` query gives
            them its affine).
        """
        start = time.perf_counter()
        if query.ndim != 4:
            raise ValueError(f"query must be (C, X, Y, Z), got shape {tuple(query.shape)}")
        names = list(self.organs) if organs is None else list(organs)
        unknown = [o for o in names if o not in self.organs]
        if unknown:
            raise ValueError(f"unknown organ(s) {unknown}; this segmenter was prepared for {list(self.organs)}")
        z_ranges = dict(z_ranges or {})
        if self.plane is not None and isinstance(query, MetaTensor) and plane_of(query) != self.plane:
            logger.warning(
                "%s: query cut in the %s plane but the support in the %s plane; resample it first "
                "(fewshot_monai.transforms.plane.match_plane)",
                source_of(query, "query"),
                plane_of(query),
                self.plane,
            )
        stack = image_slices(query, self.spatial_size, getattr(self.network, "slice_context", 0))
        features = self.protocol.encode(self.network, stack)
        encode_seconds = time.perf_counter() - start
        spacing, step, pixel_mm = slice_spacing(query), slice_step(query), _pixel_mm(query, self.spatial_size)
        anchor = self.range_anchor if self.range_anchor in names and len(names) > 1 else None
        order = names if anchor is None else [anchor] + [o for o in names if o != anchor]
        results = {}
        for organ in order:
            t0 = time.perf_counter()
            atlas_stack = self._atlas_stack((atlas or {}).get(organ), tuple(query.shape[1:]), step, pixel_mm)
            given = z_ranges.get(organ)
            window = None
            if given is None and anchor is not None and organ != anchor and results[anchor].z_range is not None:
                window = search_window(self.positions, organ, anchor, results[anchor].z_range, step, len(stack))
            choose = largest_component
            if self.component_anchor and anchor is not None and organ != anchor:
                found = results[anchor].diagnostics.get("centroid_mm")
                target = predicted_centroid(self.positions, organ, anchor, found)
                if target is not None:
                    choose = functools.partial(nearest_component, target=target, step=step, pixel_mm=pixel_mm)
            context = self.protocol(
                self.network,
                stack,
                self.supports[organ],
                z_range="estimate" if given is None else (int(given[0]), int(given[1])),
                query_features=features,
                slice_spacing=spacing,
                search_window=window,
                atlas=atlas_stack,
            )
            centroid_scale = (step, pixel_mm) if self.component_anchor and organ == anchor else None
            results[organ] = self._finish(context, query, time.perf_counter() - t0, choose, centroid_scale)
        results = {o: results[o] for o in names}
        return Segmentation(results, {o: self.organs[o] for o in names}, time.perf_counter() - start, encode_seconds)

    def _atlas_stack(self, mask, shape: tuple, step: float, pixel_mm: tuple[float, float]) -> torch.Tensor | None:
        """``(Z, H, W)`` atlas prior of one organ on the query's slice stack; None without a weight or a mask."""
        from fewshot_monai.inferers.prior import atlas_prior

        if mask is None or self.protocol.atlas_prior <= 0:
            return None
        mask = torch.as_tensor(np.asarray(mask)).float()
        if tuple(mask.shape) != shape:
            raise ValueError(f"an atlas mask must have the query's shape {shape}, got {tuple(mask.shape)}")
        stack = volume_to_slices(mask[None], self.spatial_size, 1, "nearest")[:, 0].numpy() > 0.5
        prior = atlas_prior(stack, (abs(step), *pixel_mm))
        return None if prior is None else torch.from_numpy(prior)

    def _finish(
        self,
        context: FewShotContext,
        query: torch.Tensor,
        seconds: float,
        choose: Callable,
        centroid_scale: tuple | None = None,
    ) -> OrganSegmentation:
        """Largest (or ``choose``'s) component, the pseudo-labelling stage, and the way back to the query's
        geometry. With ``centroid_scale`` (the stack's signed mm per slice and mm per pixel; only the anchor of a
        component anchor needs it) the diagnostics get the final prediction's ``centroid_mm``
        (:func:`~fewshot_monai.inferers.anchor.stack_centroid`)."""
        t0 = time.perf_counter()
        if self.largest_component:
            context.probabilities = keep_largest_component(context.probabilities, choose=choose)
        plain = torch.as_tensor(slices_to_volume(context.probabilities, query, mode="bilinear"))[1]
        final, report, slices, final_stack = plain, None, [], context.probabilities
        if self.pseudo_label is not None:
            refined = self.pseudo_label(self.network, self.protocol, context)
            if self.largest_component:
                refined = keep_largest_component(refined, choose=choose)
            report = dict(context.diagnostics.get("pseudo_label", {}))
            report.update(self._agreement(context.probabilities, refined))
            slices = context.diagnostics.get("pseudo_slices", [])
            if report["accepted"]:
                final = torch.as_tensor(slices_to_volume(refined, query, mode="bilinear"))[1]
                final_stack = refined
        diagnostics = {
            k: context.diagnostics[k]
            for k in ("estimated_z_range", "prior_length_slices", "search_window")
            if k in context.diagnostics
        }
        if centroid_scale is not None:
            diagnostics["centroid_mm"] = stack_centroid(final_stack[:, 1] > 0.5, *centroid_scale)
        return OrganSegmentation(
            probability=final,
            plain_probability=plain,
            z_range=None if context.z_range is None else (int(context.z_range[0]), int(context.z_range[1])),
            seconds=seconds + time.perf_counter() - t0,
            pseudo_label=report,
            pseudo_slices=slices,
            diagnostics=diagnostics,
        )

    def _agreement(self, plain: torch.Tensor, refined: torch.Tensor) -> dict:
        """Dice of the stage's foreground with the plain one, and whether the stage's prediction is kept."""
        plain_fg, refined_fg = plain[:, 1] > 0.5, refined[:, 1] > 0.5
        total = int(plain_fg.sum()) + int(refined_fg.sum())
        agreement = 1.0 if total == 0 else 2.0 * int((plain_fg & refined_fg).sum()) / total
        return {"agreement": agreement, "accepted": agreement >= self.min_agreement}
