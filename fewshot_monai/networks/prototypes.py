"""Prototype pooling and scoring of SSL-ALPNet, and :class:`PrototypeBank`, a weighted, tagged prototype store.

Based on:

    Ouyang et al. "Self-supervision with Superpixels: Training Few-shot Medical Image Segmentation without
    Annotation". ECCV 2020, https://arxiv.org/abs/2007.09886

Conventions: features are ``(K, C, h, w)`` maps from an encoder; masks are ``(K, 1, H, W)`` in [0, 1] at any
resolution (they are area-averaged to ``(h, w)``, so each feature pixel gets its mask fraction). Prototypes are
``(P, C)`` vectors. Scores are ``(B, 2, h, w)``: channel 0 background, channel 1 foreground.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fewshot_monai.errors import EmptyMaskError

__all__ = [
    "PrototypeBank",
    "downsample_masks",
    "masked_average_prototype",
    "pool_windows",
    "local_prototypes",
    "score_query",
    "diverse_subset",
    "score_statistics",
    "merge_statistics",
]

_EPS = 1e-8


def downsample_masks(masks: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Area-average ``(K, 1, H, W)`` masks to ``size = (h, w)``: each output pixel holds its foreground fraction."""
    masks = masks.float() if not masks.is_floating_point() else masks
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    return F.adaptive_avg_pool2d(masks, tuple(int(s) for s in size))


def masked_average_prototype(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor | None:
    """Masked average pooling over all K maps.

    Args:
        features: ``(K, C, h, w)``.
        masks: ``(K, 1, h, w)`` weights in [0, 1] (already at feature resolution).

    Returns:
        the ``(1, C)`` prototype, or None when the mask is empty.
    """
    total = masks.sum()
    if float(total) <= 0:
        return None
    return ((features * masks).sum(dim=(0, 2, 3)) / total).unsqueeze(0)


def pool_windows(features: torch.Tensor, masks: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool features and mask fractions over non-overlapping ``window x window`` cells.

    Args:
        features: ``(K, C, h, w)``.
        masks: ``(K, 1, h, w)`` at feature resolution.
        window: cell size in feature pixels; incomplete cells at the bottom/right border are dropped.

    Returns:
        pooled features ``(K, C, h // window, w // window)`` and mask fractions ``(K, 1, h // window, w // window)``.
    """
    window = int(window)
    if window < 1 or window > min(features.shape[-2:]):
        raise ValueError(f"window {window} does not fit feature maps of size {tuple(features.shape[-2:])}.")
    return F.avg_pool2d(features, window, window), F.avg_pool2d(masks, window, window)


def _check_valid(valid, grid: torch.Size, device: torch.device) -> torch.Tensor:
    valid = torch.as_tensor(valid).to(device=device).bool()
    if valid.ndim == 3:
        valid = valid.unsqueeze(1)
    if tuple(valid.shape) != (grid[0], 1, grid[2], grid[3]):
        raise ValueError(
            f"valid_windows must have shape (K, h // window, w // window) = {(grid[0], grid[2], grid[3])} "
            f"(or with a singleton channel), got {tuple(valid.shape)}."
        )
    return valid


def local_prototypes(
    features: torch.Tensor,
    masks: torch.Tensor,
    window: int,
    threshold: float,
    bg_threshold: float | None = None,
    valid_windows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive local prototypes: pooled windows whose foreground (background) fraction exceeds the threshold.

    Args:
        features: ``(K, C, h, w)``.
        masks: ``(K, 1, h, w)`` at feature resolution.
        window: window size in feature pixels.
        threshold: a window is a foreground prototype when its mask fraction is ``> threshold``.
        bg_threshold: same for background (fraction of ``1 - mask``); defaults to ``threshold``.
        valid_windows: optional boolean ``(K, h // window, w // window)`` map; only True windows may be used.

    Returns:
        foreground ``(P, C)`` and background ``(Q, C)`` prototypes (possibly with P or Q = 0).
    """
    bg_threshold = threshold if bg_threshold is None else bg_threshold
    pooled, frac = pool_windows(features, masks, window)
    fg_sel = frac > threshold
    bg_sel = (1.0 - frac) > bg_threshold
    if valid_windows is not None:
        valid = _check_valid(valid_windows, frac.shape, fg_sel.device)
        fg_sel, bg_sel = fg_sel & valid, bg_sel & valid
    vectors = pooled.permute(0, 2, 3, 1)  # (K, gh, gw, C)
    return vectors[fg_sel[:, 0]], vectors[bg_sel[:, 0]]


def diverse_subset(prototypes: torch.Tensor, m: int | None) -> torch.Tensor:
    """At most ``m`` of the ``(P, C)`` prototypes, spread over feature space (greedy farthest-point sampling in
    cosine distance, starting from the one closest to their mean); all of them when ``P <= m`` or ``m`` is None.

    Deterministic. Scoring cost grows with the number of prototypes, and near-duplicates add little to ALPNet's
    soft-maximum scoring, so a diverse subset keeps most of a large set's information.
    """
    if m is None or prototypes.shape[0] <= int(m):
        return prototypes
    m = int(m)
    if m < 1:
        return prototypes[:0]
    unit = F.normalize(prototypes, dim=1, eps=_EPS)
    first = int(torch.argmax(unit @ F.normalize(unit.mean(0), dim=0, eps=_EPS)))
    chosen = [first]
    distance = 1.0 - unit @ unit[first]
    for _ in range(m - 1):
        nxt = int(torch.argmax(distance))
        chosen.append(nxt)
        distance = torch.minimum(distance, 1.0 - unit @ unit[nxt])
    return prototypes[torch.as_tensor(sorted(chosen), dtype=torch.long)]


@dataclass
class _Entry:
    tag: str
    fg: torch.Tensor  # (n, C)
    bg: torch.Tensor  # (m, C)
    weight: float


class PrototypeBank:
    """
    Foreground and background prototypes with a non-negative weight and a tag per group.

    A bank is built once from support features (:meth:`from_support`, or ``ALPNet.build_bank``) and scores any
    number of cached query feature maps (:meth:`score`) without re-encoding anything. Prototypes computed from
    other features -- typically pseudo-labelled query slices (:mod:`fewshot_monai.pseudolabel.selection`) -- are
    added with :meth:`add_prototypes` under a tag and a weight.

    A weight ``w`` enters the per-class softmax as ``s_p + log(w)``; a group with ``w == 0`` is skipped entirely,
    so its result is bit-identical to a bank without it.

    Args:
        window: pooling window (feature pixels) of the local prototypes.
        threshold: foreground fraction a window needs to become a foreground prototype.
        bg_threshold: the same for background; ``None`` means ``threshold``.

    Example::

        bank = net.build_bank(support_images, support_masks)
        feats = net.encode(query_slices)                       # cache these
        logits = net.score(feats, bank, output_size=(256, 256))
        bank.add_prototypes(fg_vectors, bg_vectors, tag="pseudo", weight=0.5)
        logits2 = net.score(feats, bank, output_size=(256, 256))
    """

    def __init__(self, window: int = 2, threshold: float = 0.95, bg_threshold: float | None = None):
        self.window = int(window)
        self.threshold = float(threshold)
        self.bg_threshold = self.threshold if bg_threshold is None else float(bg_threshold)
        self._entries: list[_Entry] = []

    # ----------------------------------------------------------------------------------------------- building
    @classmethod
    def from_support(
        cls,
        features: torch.Tensor,
        masks: torch.Tensor,
        *,
        window: int = 2,
        threshold: float = 0.95,
        bg_threshold: float | None = None,
        tag: str = "support",
    ) -> PrototypeBank:
        """Build a bank from K support feature maps and masks.

        Foreground: local prototypes plus the global masked average (only the global one when no window
        qualifies). Background: local prototypes, or the global background average when no window qualifies.

        Raises:
            EmptyMaskError: all support masks are empty, or they leave no background.
        """
        bank = cls(window=window, threshold=threshold, bg_threshold=bg_threshold)
        fg, bg = bank._compute(features, masks)
        if fg.shape[0] == 0:
            raise EmptyMaskError(None, "all support masks are empty: no foreground prototype can be built")
        if bg.shape[0] == 0:
            raise EmptyMaskError(None, "the support masks cover the whole slice: no background prototype")
        bank._entries.append(_Entry(str(tag), fg, bg, 1.0))
        return bank

    def _compute(self, features, masks):
        if features.ndim != 4:
            raise ValueError(f"features must be (K, C, h, w), got shape {tuple(features.shape)}.")
        if masks.ndim != 4 or masks.shape[1] != 1 or masks.shape[0] != features.shape[0]:
            raise ValueError(
                f"masks must be (K, 1, H, W) with K = {features.shape[0]} matching the features, "
                f"got shape {tuple(masks.shape)}."
            )
        m = downsample_masks(masks.to(device=features.device, dtype=features.dtype), features.shape[-2:])
        fg, bg = local_prototypes(features, m, self.window, self.threshold, self.bg_threshold)
        g_fg = masked_average_prototype(features, m)  # global fg always, global bg as fallback
        if g_fg is not None:
            fg = torch.cat([fg, g_fg])
        if bg.shape[0] == 0:
            g_bg = masked_average_prototype(features, 1.0 - m)
            if g_bg is not None:
                bg = g_bg
        return fg, bg

    def add_prototypes(
        self,
        fg: torch.Tensor | None = None,
        bg: torch.Tensor | None = None,
        *,
        weight: float = 1.0,
        tag: str = "pseudo",
    ) -> int:
        """Add ready-made ``(P, C)`` foreground and/or background prototype vectors; returns how many."""
        ref = fg if fg is not None else bg
        if ref is None:
            return 0
        empty = ref.new_zeros((0, ref.shape[-1]))
        fg = empty if fg is None else fg.reshape(-1, ref.shape[-1])
        bg = empty if bg is None else bg.reshape(-1, ref.shape[-1])
        n = fg.shape[0] + bg.shape[0]
        if n:
            if not float(weight) >= 0:
                raise ValueError(f"weight must be >= 0, got {weight}.")
            self._entries.append(_Entry(str(tag), fg, bg, float(weight)))
        return n

    # ---------------------------------------------------------------------------------------------- managing
    def copy(self) -> PrototypeBank:
        """A copy with its own list of groups (the prototype tensors are shared, they are never modified in place):
        adding to or removing from the copy leaves this bank as it is."""
        return self._copy(lambda t: t)

    def detach(self) -> PrototypeBank:
        """A copy whose prototype tensors are detached from the autograd graph."""
        return self._copy(lambda t: t.detach())

    def to(self, *args, **kwargs) -> PrototypeBank:
        """A copy with every prototype tensor moved/cast by ``Tensor.to(*args, **kwargs)``."""
        return self._copy(lambda t: t.to(*args, **kwargs))

    def _copy(self, fn) -> PrototypeBank:
        new = PrototypeBank(self.window, self.threshold, self.bg_threshold)
        new._entries = [_Entry(e.tag, fn(e.fg), fn(e.bg), e.weight) for e in self._entries]
        return new

    # -------------------------------------------------------------------------------------------- inspecting
    def __len__(self) -> int:
        return self.num_fg + self.num_bg

    def __repr__(self) -> str:
        return f"PrototypeBank(window={self.window}, threshold={self.threshold}, groups={self.counts()})"

    @property
    def num_fg(self) -> int:
        return sum(e.fg.shape[0] for e in self._entries)

    @property
    def num_bg(self) -> int:
        return sum(e.bg.shape[0] for e in self._entries)

    @property
    def tags(self) -> list[str]:
        """Distinct tags in insertion order."""
        return list(dict.fromkeys(e.tag for e in self._entries))

    def counts(self) -> dict[str, dict[str, int]]:
        """``{tag: {"fg": n, "bg": m}}``."""
        out: dict[str, dict[str, int]] = {}
        for e in self._entries:
            c = out.setdefault(e.tag, {"fg": 0, "bg": 0})
            c["fg"] += e.fg.shape[0]
            c["bg"] += e.bg.shape[0]
        return out

    def _stack(self, cls: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        parts = [getattr(e, cls) for e in self._entries]
        if not parts:
            return torch.zeros(0, 0), torch.zeros(0), []
        protos = torch.cat(parts)
        weights = torch.cat([torch.full((p.shape[0],), e.weight) for p, e in zip(parts, self._entries)])
        tags = [e.tag for p, e in zip(parts, self._entries) for _ in range(p.shape[0])]
        return protos, weights, tags

    @property
    def fg_prototypes(self) -> torch.Tensor:
        """All foreground prototypes ``(P, C)`` (including zero-weight ones)."""
        return self._stack("fg")[0]

    @property
    def bg_prototypes(self) -> torch.Tensor:
        """All background prototypes ``(Q, C)``."""
        return self._stack("bg")[0]

    @property
    def fg_weights(self) -> torch.Tensor:
        return self._stack("fg")[1]

    @property
    def bg_weights(self) -> torch.Tensor:
        return self._stack("bg")[1]

    @property
    def fg_tags(self) -> list[str]:
        return self._stack("fg")[2]

    @property
    def bg_tags(self) -> list[str]:
        return self._stack("bg")[2]

    # ----------------------------------------------------------------------------------------------- scoring
    def score(self, query_features: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
        """Score query feature maps; see :func:`score_query`."""
        return score_query(query_features, self, scale)


def score_query(query_features: torch.Tensor, bank: PrototypeBank, scale: float = 20.0) -> torch.Tensor:
    """
    Per-class scores of query features against a prototype bank.

    For every pixel and prototype ``p`` of a class, ``s_p = scale * cos(q, p)``; the class score is the
    softmax-weighted sum ``sum_p softmax_p(s_p + log w_p) * s_p`` over that class's prototypes (a single prototype
    gives ``s_p``; many behave like a soft maximum). Zero-weight groups are skipped, not just down-weighted.

    Args:
        query_features: ``(B, C, h, w)``.
        bank: the prototypes.
        scale: cosine-similarity temperature (20 in SSL-ALPNet).

    Returns:
        scores ``(B, 2, h, w)``, channel 0 background, channel 1 foreground.

    Raises:
        ValueError: a class has no prototype with positive weight, or the channel counts differ.
    """
    log_mass, value = score_statistics(query_features, bank, scale)
    for k, name in ((0, "background"), (1, "foreground")):
        if bool(torch.isinf(log_mass[:, k]).all()):
            raise ValueError(f"the prototype bank has no {name} prototype with a positive weight.")
    return value


def score_statistics(
    query_features: torch.Tensor, bank: PrototypeBank, scale: float = 20.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two quantities behind :func:`score_query`, per class and pixel, which merge across banks.

    Returns:
        ``log_mass`` ``(B, 2, h, w)``: ``logsumexp_p(s_p + log w_p)`` over the class's prototypes (``-inf`` when
        the class has none), and ``value`` ``(B, 2, h, w)``: the class score ``sum_p softmax_p(s_p + log w_p) s_p``
        (0 when none). Scoring a bank ``A + B`` equals :func:`merge_statistics` of scoring ``A`` and ``B`` apart,
        so prototypes added to a bank can be scored alone and merged with the cached statistics of the rest.
    """
    if query_features.ndim != 4:
        raise ValueError(f"query features must be (B, C, h, w), got shape {tuple(query_features.shape)}.")
    b, c, h, w = query_features.shape
    q = F.normalize(query_features, dim=1, eps=_EPS).reshape(b, c, h * w)
    sims: dict[str, list[torch.Tensor]] = {"fg": [], "bg": []}
    logw: dict[str, list[torch.Tensor]] = {"fg": [], "bg": []}
    for e in bank._entries:
        if e.weight <= 0:
            continue
        protos = torch.cat([e.fg, e.bg]).to(device=q.device, dtype=q.dtype)
        if protos.shape[-1] != c:
            raise ValueError(f"prototypes have {protos.shape[-1]} channels but the query features have {c}.")
        sim = scale * torch.matmul(F.normalize(protos, dim=1, eps=_EPS), q)  # (B, n + m, h*w)
        n = e.fg.shape[0]
        for cls, part in (("fg", sim[:, :n]), ("bg", sim[:, n:])):
            if part.shape[1]:
                sims[cls].append(part)
                logw[cls].append(torch.full((part.shape[1],), math.log(e.weight), device=q.device, dtype=q.dtype))
    masses, values = [], []
    for cls in ("bg", "fg"):
        if not sims[cls]:
            masses.append(q.new_full((b, h * w), -math.inf))
            values.append(q.new_zeros((b, h * w)))
            continue
        sim = torch.cat(sims[cls], dim=1)
        logits = sim + torch.cat(logw[cls])[None, :, None]
        attn = torch.softmax(logits, dim=1)
        masses.append(torch.logsumexp(logits, dim=1))
        values.append((attn * sim).sum(dim=1))
    return torch.stack(masses, dim=1).reshape(b, 2, h, w), torch.stack(values, dim=1).reshape(b, 2, h, w)


def merge_statistics(
    first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Statistics of the union of two prototype sets from those of each (see :func:`score_statistics`)."""
    (m1, v1), (m2, v2) = first, second
    mass = torch.logaddexp(m1, m2)
    a = torch.where(torch.isinf(m1), torch.zeros_like(m1), torch.exp(m1 - mass))
    b = torch.where(torch.isinf(m2), torch.zeros_like(m2), torch.exp(m2 - mass))
    return mass, a * v1 + b * v2
