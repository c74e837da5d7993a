"""Which parts of the query become pseudo-labelled support: confidence-aware selection strategies.

A strategy looks at the plain prediction of every query slice (softmax probabilities from the support) and picks,
for each chunk of the few-shot protocol, the query slices (or windows of them) reliable enough to serve as extra
support; it then adds their prototypes to that chunk's :class:`~fewshot_monai.networks.PrototypeBank`.

- :class:`SliceSelection`: whole slices whose organ prediction is confident (mean confidence over the predicted
  foreground above a threshold) and large enough; at most ``k_per_chunk`` per chunk, the most confident first.
- :class:`WindowSelection`: "windowed transfer": within the candidate slices only the local windows (the
  prototype windows of ALPNet) whose mean confidence passes a threshold become local prototypes, foreground when
  their pseudo-mask fraction exceeds ``fg_fraction``, background when their background fraction does; the rest of
  the slice is ignored.

Both take a ``neighbourhood``: which query slices may serve a chunk (``0``: the chunk's own slices; ``n``: also
in-range slices up to ``n`` slices beyond its borders; ``None``: any scored slice).

A strategy is stateless apart from its options, so one instance serves every query, organ and round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fewshot_monai.networks.prototypes import (
    diverse_subset,
    downsample_masks,
    local_prototypes,
    masked_average_prototype,
)
from fewshot_monai.pseudolabel.confidence import pixel_confidence, region_confidence
from fewshot_monai.transforms.labels import largest_component

__all__ = ["PseudoSlice", "Selection", "SliceSelection", "WindowSelection"]


@dataclass
class PseudoSlice:
    """One pseudo-labelled query slice.

    Attributes:
        index: query slice index (axial position in the slice stack).
        chunk: the protocol chunk the slice belongs to.
        confidence: its region confidence (the selection measure).
        area: predicted foreground pixels.
        mask: ``(1, H, W)`` float pseudo-label (1 foreground).
        valid_windows: for windowed transfer, ``(h // window, w // window)`` boolean map of usable windows.
    """

    index: int
    chunk: int
    confidence: float
    area: int
    mask: torch.Tensor
    valid_windows: torch.Tensor | None = None

    def describe(self) -> dict:
        out = {"index": self.index, "chunk": self.chunk, "confidence": round(self.confidence, 4), "area": self.area}
        if self.valid_windows is not None:
            out["windows"] = int(self.valid_windows.sum())
        return out


@dataclass
class Selection:
    """The pseudo-labelled slices chosen for each chunk (a slice may serve several chunks with a neighbourhood)."""

    per_chunk: dict[int, list[PseudoSlice]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any(self.per_chunk.values())

    def slices(self) -> list[PseudoSlice]:
        """Every selected slice once, by index."""
        unique = {s.index: s for chunk in self.per_chunk.values() for s in chunk}
        return [unique[i] for i in sorted(unique)]

    def describe(self) -> dict:
        slices = self.slices()
        out = {
            "n_slices": len(slices),
            "slices": [s.describe() for s in slices],
            "per_chunk": {int(c): [s.index for s in v] for c, v in sorted(self.per_chunk.items())},
            "mean_confidence": (sum(s.confidence for s in slices) / len(slices)) if slices else None,
        }
        if any(s.valid_windows is not None for s in slices):
            out["n_windows"] = sum(int(s.valid_windows.sum()) for s in slices if s.valid_windows is not None)
        return out


class SliceSelection:
    """Per-slice threshold: confident, large-enough predicted slices become support, at most ``k`` per chunk.

    Args:
        threshold: a slice is selected when its region confidence is strictly greater (so 1.0 selects nothing).
        measure: pixel confidence, ``"max_prob"``, ``"entropy"`` or ``"margin"``
            (:func:`~fewshot_monai.pseudolabel.confidence.pixel_confidence`).
        reduction: how pixel confidences make a slice confidence: ``"mean_foreground"``, ``"min_foreground"`` or
            ``"mean_slice"``.
        k_per_chunk: at most this many slices per chunk, most confident first (None: no limit).
        min_area: smallest predicted foreground, in pixels of the protocol's slices (256 x 256 by default).
        neighbourhood: which slices may serve a chunk: 0 its own, n also n slices beyond it, None any scored slice.
        foreground_threshold: probability above which a pixel is pseudo-foreground.
        max_prototypes: at most this many pseudo prototypes per class and chunk, a diverse subset (None: all);
            bounds the re-scoring time.
        bg_margin: background prototypes of a pseudo-labelled slice come only from windows within this many windows
            of its pseudo-organ (None: every background window).
        largest_component: keep only the largest 3D connected component of the predicted foreground (over the
            scored slices) as pseudo-label: an organ is one connected object, and a second blob (the other kidney,
            a bright neighbour) is the typical error that pseudo-labelling would otherwise reinforce.
    """

    name = "slice"
    #: whole slices also contribute their global foreground average (as a support slice does)
    global_prototype = True

    def __init__(
        self,
        threshold: float = 0.7,
        measure: str = "max_prob",
        reduction: str = "mean_foreground",
        k_per_chunk: int | None = None,
        min_area: int = 64,
        neighbourhood: int | None = None,
        foreground_threshold: float = 0.5,
        largest_component: bool = True,
        bg_margin: int | None = 2,
        max_prototypes: int | None = 64,
    ) -> None:
        pixel_confidence(torch.full((1, 2, 1, 1), 0.5), measure)  # validate the names early
        region_confidence(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1, dtype=torch.bool), reduction)
        if k_per_chunk is not None and int(k_per_chunk) < 1:
            raise ValueError(f"k_per_chunk must be >= 1 or None, got {k_per_chunk}")
        if neighbourhood is not None and int(neighbourhood) < 0:
            raise ValueError(f"neighbourhood must be >= 0 or None, got {neighbourhood}")
        self.threshold = float(threshold)
        self.measure = measure
        self.reduction = reduction
        self.k_per_chunk = None if k_per_chunk is None else int(k_per_chunk)
        self.min_area = int(min_area)
        self.neighbourhood = None if neighbourhood is None else int(neighbourhood)
        self.foreground_threshold = float(foreground_threshold)
        self.largest_component = bool(largest_component)
        if bg_margin is not None and int(bg_margin) < 0:
            raise ValueError(f"bg_margin must be >= 0 or None, got {bg_margin}")
        self.bg_margin = None if bg_margin is None else int(bg_margin)
        self.max_prototypes = None if max_prototypes is None else int(max_prototypes)

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({options})"

    def options(self) -> dict:
        return {
            "threshold": self.threshold,
            "measure": self.measure,
            "reduction": self.reduction,
            "k_per_chunk": self.k_per_chunk,
            "min_area": self.min_area,
            "neighbourhood": self.neighbourhood,
            "largest_component": self.largest_component,
            "bg_margin": self.bg_margin,
            "max_prototypes": self.max_prototypes,
        }

    # ------------------------------------------------------------------------------------------ selecting
    def candidates(self, chunk_of_slice: torch.Tensor, chunk: int) -> torch.Tensor:
        """Indices of the query slices that may serve ``chunk``."""
        in_range = chunk_of_slice >= 0
        own = torch.nonzero(chunk_of_slice == chunk).flatten()
        if own.numel() == 0:
            return own
        if self.neighbourhood is None:
            return torch.nonzero(in_range).flatten()
        z = torch.arange(chunk_of_slice.numel())
        near = (z >= int(own.min()) - self.neighbourhood) & (z <= int(own.max()) + self.neighbourhood)
        return torch.nonzero(in_range & near).flatten()

    def slice_windows(self, confidence: torch.Tensor, feature_size, bank_window: int) -> torch.Tensor | None:
        """Usable windows of one slice (None: the whole slice is used). Overridden by windowed transfer."""
        return None

    def select(
        self, probabilities: torch.Tensor, chunk_of_slice: torch.Tensor, feature_size=None, bank_window: int = 2
    ) -> Selection:
        """Choose pseudo-labelled slices for every chunk.

        Args:
            probabilities: ``(Z, 2, H, W)`` plain (or previous-round) probabilities of every query slice.
            chunk_of_slice: ``(Z,)`` chunk of each slice, -1 for unscored slices (never selected).
            feature_size: ``(h, w)`` of the encoder's feature maps (needed by windowed transfer).
            bank_window: the prototype banks' window (windowed transfer's default window).
        """
        selection = Selection()
        scored = torch.nonzero(chunk_of_slice >= 0).flatten()
        if scored.numel() == 0:
            return selection
        # only the scored slices (a contiguous range) are looked at: the others are never selected
        first, last = int(scored.min()), int(scored.max()) + 1
        confidence = pixel_confidence(probabilities[first:last], self.measure)
        foreground = probabilities[first:last, 1] > self.foreground_threshold
        foreground &= (chunk_of_slice[first:last] >= 0)[:, None, None]
        if self.largest_component:
            foreground = largest_component(foreground)
        slice_conf = region_confidence(confidence, foreground, self.reduction)
        area = foreground.flatten(1).sum(dim=1)
        eligible = (chunk_of_slice[first:last] >= 0) & (area >= max(self.min_area, 1)) & (slice_conf > self.threshold)
        made: dict[int, PseudoSlice | None] = {}
        for chunk in sorted(int(c) for c in torch.unique(chunk_of_slice) if c >= 0):
            idx = [int(i) - first for i in self.candidates(chunk_of_slice, chunk) if eligible[int(i) - first]]
            idx.sort(key=lambda i: (-float(slice_conf[i]), i))
            chosen: list[PseudoSlice] = []
            for i in idx:
                if self.k_per_chunk is not None and len(chosen) >= self.k_per_chunk:
                    break
                if i not in made:
                    windows = self.slice_windows(confidence[i], feature_size, bank_window)
                    made[i] = (
                        None
                        if windows is not None and not bool(windows.any())
                        else PseudoSlice(
                            index=i + first,
                            chunk=int(chunk_of_slice[i + first]),
                            confidence=float(slice_conf[i]),
                            area=int(area[i]),
                            mask=foreground[i][None].float(),
                            valid_windows=windows,
                        )
                    )
                if made[i] is not None:
                    chosen.append(made[i])
            if chosen:
                selection.per_chunk[chunk] = chosen
        return selection

    # ------------------------------------------------------------------------------------------ transferring
    def transfer_window(self, bank) -> int:
        """Window (feature pixels) of the pseudo prototypes: the bank's (the network's test window)."""
        return int(bank.window)

    def transfer(self, bank, features: torch.Tensor, slices: list[PseudoSlice], weight: float, tag: str = "pseudo"):
        """Add the prototypes of ``slices`` (cached query ``features`` ``(Z, C, h, w)``) to ``bank``; returns
        the number of prototypes added.

        Local windows follow the bank's thresholds (foreground / background fraction); background windows only
        within ``bg_margin`` windows of the pseudo-organ (the informative negatives: the support already describes
        the far background, and every extra prototype costs scoring time); whole slices also add their global
        foreground average, like a support slice. At most ``max_prototypes`` per class are kept, a diverse subset
        (:func:`~fewshot_monai.networks.prototypes.diverse_subset`).
        """
        if not slices:
            return 0
        idx = torch.as_tensor([s.index for s in slices], dtype=torch.long)
        feats = features[idx]
        small = downsample_masks(torch.stack([s.mask for s in slices]), feats.shape[-2:])
        window = self.transfer_window(bank)
        valid = self.background_band(small, window)
        own = [s.valid_windows for s in slices]
        if all(v is not None for v in own):
            valid = torch.stack(own) if valid is None else valid & torch.stack(own)
        threshold = self.transfer_threshold(bank)
        fg, bg = local_prototypes(feats, small, window, threshold, threshold, valid)
        if self.global_prototype:
            average = masked_average_prototype(feats, small)
            if average is not None:
                fg = torch.cat([fg, average])
        fg, bg = diverse_subset(fg, self.max_prototypes), diverse_subset(bg, self.max_prototypes)
        return bank.add_prototypes(fg, bg, weight=weight, tag=tag)

    def transfer_threshold(self, bank) -> float:
        return float(bank.threshold)

    def background_band(self, masks: torch.Tensor, window: int) -> torch.Tensor | None:
        """``(K, h // window, w // window)`` windows within ``bg_margin`` windows of any pseudo-foreground
        (None: no limit)."""
        if self.bg_margin is None:
            return None
        present = F.avg_pool2d(masks.float(), window, window) > 0
        m = self.bg_margin
        band = F.max_pool2d(present.float(), 2 * m + 1, stride=1, padding=m) > 0 if m > 0 else present
        return band[:, 0]


class WindowSelection(SliceSelection):
    """Windowed transfer: only confident local windows of the candidate slices become prototypes.

    Candidate slices are chosen as in :class:`SliceSelection` (``threshold`` is the *slice* threshold, 0 by
    default: any slice with a large-enough prediction), then each ALPNet window (``window`` feature pixels,
    the bank's window when None) is kept when its mean pixel confidence exceeds ``window_threshold``; a kept
    window is a foreground prototype when its pseudo-mask fraction exceeds ``fg_fraction`` and a background one
    when its background fraction does. No global average is added.

    Args:
        window_threshold: a window is usable when its mean confidence is strictly greater (1.0: none).
        fg_fraction: pseudo-mask fraction for a foreground (and background) window.
        window: window size in feature pixels (None: the bank's, i.e. the network's test window).
        threshold: the slice threshold (0: any slice with a large-enough predicted organ).
        options: every other :class:`SliceSelection` option (``k_per_chunk``, ``neighbourhood``, ...), same defaults.
    """

    name = "window"
    global_prototype = False

    def __init__(
        self,
        window_threshold: float = 0.8,
        fg_fraction: float = 0.95,
        window: int | None = None,
        threshold: float = 0.0,
        **options,
    ) -> None:
        super().__init__(threshold=threshold, **options)
        if window is not None and int(window) < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        self.window_threshold = float(window_threshold)
        self.fg_fraction = float(fg_fraction)
        self.window = None if window is None else int(window)

    def options(self) -> dict:
        return {
            **super().options(),
            "window_threshold": self.window_threshold,
            "fg_fraction": self.fg_fraction,
            "window": self.window,
        }

    def windows_for(self, bank_window: int) -> int:
        return self.window if self.window is not None else int(bank_window)

    def slice_windows(self, confidence: torch.Tensor, feature_size, bank_window: int) -> torch.Tensor:
        if feature_size is None:
            raise ValueError("windowed transfer needs the feature map size (feature_size=(h, w))")
        window = self.windows_for(bank_window)
        at_features = F.adaptive_avg_pool2d(confidence[None, None].float(), tuple(int(s) for s in feature_size))
        pooled = F.avg_pool2d(at_features, window, window)[0, 0]
        return pooled > self.window_threshold

    def transfer_window(self, bank) -> int:
        return self.windows_for(bank.window)

    def transfer_threshold(self, bank) -> float:
        return self.fg_fraction
