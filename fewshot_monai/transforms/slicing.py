"""Invertible conversion between a 3D volume and the stack of 2D slices the network sees.

A volume ``(C, X, Y, Z)`` (axis -1 the slice axis of its plane, :mod:`fewshot_monai.transforms.plane`: RAS and
axial for axial scans) becomes a stack ``(Z, channels, S, S)``: slice ``k`` is
``volume[..., k]``, resized in plane to ``S x S`` and, for a single-channel volume, tiled to ``channels``
channels. The inverse maps any stack ``(Z, K, S, S)`` (for example ``K = 2`` class probabilities) back to
``(K, X, Y, Z)`` at the original in-plane size with the original affine.

Exactness:

- ``spatial_size=None`` (or a size equal to the in-plane size) skips resizing: slicing and un-slicing are
  pure permutations, bit-exact for every dtype.
- with resizing, the inverse returns the original shape and affine; values are interpolated twice
  (``"bilinear"``), or are exact for labels resized with ``"nearest"`` by an integer factor (e.g. 128 -> 256 ->
  128).

In-plane resizing uses :class:`monai.transforms.Resize` (``torch.nn.functional.interpolate``) on the whole
stack at once. ``"nearest"`` is run as pixel-centre nearest neighbour (torch's ``"nearest-exact"``), which stays
aligned with ``"bilinear"`` (``align_corners=False``) so image and label stacks keep matching; any other MONAI
``InterpolateMode`` is passed through. The in-plane aspect ratio is not preserved (``X x Y -> S x S``).
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, get_track_meta
from monai.transforms import InvertibleTransform, MapTransform, Resize
from monai.utils import TraceKeys, ensure_tuple_rep

from fewshot_monai.errors import GeometryMismatchError
from fewshot_monai.transforms.validation import source_of

__all__ = [
    "volume_to_slices",
    "slices_to_volume",
    "slice_spacing",
    "slice_step",
    "neighbour_slices",
    "image_slices",
    "VolumeToSlices",
    "VolumeToSlicesd",
]


def _plain(x) -> torch.Tensor:
    if isinstance(x, MetaTensor):
        return x.as_tensor()
    return torch.as_tensor(x)


def slice_spacing(volume) -> float:
    """Distance between the slices of a ``(C, X, Y, Z)`` volume in mm (the affine's last column), 1.0 without an
    affine (a plain tensor: lengths are then counted in slices)."""
    from monai.data.utils import affine_to_spacing

    if isinstance(volume, MetaTensor):
        return float(affine_to_spacing(volume.affine, r=3)[2])
    return 1.0


def slice_step(volume) -> float:
    """Signed mm per slice of a ``(C, X, Y, Z)`` volume along the world axis its slice axis follows most (for an
    axial scan: positive when the slice index runs towards the head). 1.0 without an affine: positions are then
    counted in slices, and volumes are taken to run the same way."""
    if not isinstance(volume, MetaTensor):
        return 1.0
    column = torch.as_tensor(volume.affine, dtype=torch.float64)[:3, 2]
    step = float(column[int(torch.argmax(column.abs()))])
    return step if step != 0.0 else 1.0


def _size2d(spatial_size) -> tuple[int, int] | None:
    if spatial_size is None:
        return None
    size = ensure_tuple_rep(spatial_size, 2)
    if len(size) != 2 or any(int(s) < 1 for s in size):
        raise ValueError(f"spatial_size must be a positive int or (H, W), got {spatial_size}")
    return int(size[0]), int(size[1])


def _torch_mode(mode: str) -> str:
    return "nearest-exact" if str(mode) == "nearest" else str(mode)


def _resize_stack(stack: torch.Tensor, size: tuple[int, int] | None, mode: str, align_corners) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` in plane to ``size``; the input is returned untouched when no resize is needed."""
    if size is None or tuple(stack.shape[-2:]) == size:
        return stack
    n, c, h, w = stack.shape
    torch_mode = _torch_mode(mode)
    if torch_mode not in ("linear", "bilinear", "bicubic", "trilinear"):
        align_corners = None
    resizer = Resize(spatial_size=size, mode=torch_mode, align_corners=align_corners, dtype=torch.float32)
    out = _plain(resizer(stack.reshape(n * c, h, w)))  # channels = N*C, spatial = (H, W)
    if not stack.is_floating_point():
        out = torch.round(out)
    return out.to(stack.dtype).reshape(n, c, *size)


def neighbour_slices(stack: torch.Tensor, context: int, index=None) -> torch.Tensor:
    """2.5D input: each slice of a single-channel stack ``(Z, 1, H, W)`` with its ``context`` neighbours on each
    side as channels, ``(Z, 2 * context + 1, H, W)`` ordered from the lowest slice index to the highest; the first
    and last slices stand in for the missing neighbours at the volume's ends.

    Args:
        stack: ``(Z, 1, H, W)``.
        context: neighbours on each side (0 returns the stack's slices unchanged).
        index: optional slice indices ``(N,)`` (or one int) to return only those slices, ``(N, 2c+1, H, W)``
            (or ``(2c+1, H, W)`` for an int), without building the whole 2.5D stack.
    """
    if stack.ndim != 4 or stack.shape[1] != 1:
        raise ValueError(f"expected a single-channel slice stack (Z, 1, H, W), got shape {tuple(stack.shape)}")
    single = isinstance(index, int)
    z = torch.arange(stack.shape[0]) if index is None else torch.as_tensor(index).reshape(-1)
    offsets = torch.arange(-int(context), int(context) + 1)
    rows = (z[:, None] + offsets[None, :]).clamp(0, stack.shape[0] - 1)  # (N, 2c+1)
    out = stack[:, 0][rows]
    return out[0] if single else out


def volume_to_slices(
    volume,
    spatial_size: int | Sequence[int] | None = 256,
    channels: int | None = 3,
    mode: str = "bilinear",
    align_corners: bool | None = None,
    context: int = 0,
) -> torch.Tensor:
    """Cut a channel-first volume ``(C, X, Y, Z)`` into axial slices ``(Z, channels, S, S)``.

    Args:
        volume: tensor-like ``(C, X, Y, Z)``.
        spatial_size: in-plane output size ``S`` (int or ``(H, W)``); ``None`` keeps ``(X, Y)``.
        channels: output channels. A single-channel volume is tiled (or, with ``context``, stacked with its
            neighbours); otherwise it must equal ``C``. ``None`` keeps ``C``.
        mode: interpolation mode (``"bilinear"`` for images, ``"nearest"`` for labels; see module docstring).
        align_corners: passed to the interpolation for the linear modes.
        context: 2.5D input (:func:`neighbour_slices`): each slice with its ``context`` neighbours on each side as
            its channels, for a single-channel volume; ``channels`` must then be ``2 * context + 1`` (or None).

    Returns:
        a plain ``torch.Tensor`` of the volume's dtype (integer labels stay integer).
    """
    vol = _plain(volume)
    if vol.ndim != 4:
        raise ValueError(f"expected a channel-first volume (C, X, Y, Z), got shape {tuple(vol.shape)}")
    in_channels = vol.shape[0]
    context = int(context)
    if context:
        if in_channels != 1 or channels not in (None, 2 * context + 1):
            raise ValueError(
                f"2.5D slices with context {context} need a single-channel volume and {2 * context + 1} channels, "
                f"got {in_channels} input and {channels} output channels"
            )
        channels = 1
    channels = in_channels if channels is None else int(channels)
    if in_channels not in (1, channels):
        raise ValueError(f"cannot make {channels} channels from a {in_channels}-channel volume")
    stack = _resize_stack(vol.permute(3, 0, 1, 2), _size2d(spatial_size), mode, align_corners)
    if context:
        return neighbour_slices(stack, context).contiguous()
    if channels != in_channels:
        stack = stack.expand(-1, channels, -1, -1)
    return stack.contiguous()


def image_slices(volume, spatial_size: int | Sequence[int] | None = 256, context: int = 0) -> torch.Tensor:
    """The float32 input slices ``(Z, 3, S, S)`` of the 2D encoders for an image volume ``(1, X, Y, Z)``: the grey
    slice tiled (``context=0``) or the slice with its neighbours (2.5D, ``context=1``; a network's
    ``slice_context``)."""
    channels = 2 * int(context) + 1 if context else 3
    return volume_to_slices(_plain(volume).float(), spatial_size, channels, "bilinear", context=context).float()


def _unslice(slices: torch.Tensor, in_plane: tuple[int, int], mode: str, align_corners) -> torch.Tensor:
    if slices.ndim != 4:
        raise ValueError(f"expected a slice stack (Z, K, H, W), got shape {tuple(slices.shape)}")
    return _resize_stack(slices, in_plane, mode, align_corners).permute(1, 2, 3, 0).contiguous()


def slices_to_volume(
    slices,
    reference,
    mode: str = "bilinear",
    align_corners: bool | None = None,
) -> MetaTensor:
    """Put a slice stack ``(Z, K, H, W)`` back into the geometry of ``reference``: ``(K, X, Y, Z)``.

    Args:
        slices: tensor-like stack, one entry per axial slice of ``reference`` (any channel count ``K``).
        reference: the volume ``(C, X, Y, Z)`` the stack was cut from (a ``MetaTensor`` supplies the affine and
            meta, which are copied to the output, together with its ``applied_operations`` so that earlier MONAI
            transforms such as ``Orientation`` can still be inverted), or a plain spatial shape ``(X, Y, Z)``.
        mode: interpolation back to ``(X, Y)``: ``"bilinear"`` for images/probabilities, ``"nearest"`` for labels.
        align_corners: passed to the interpolation for the linear modes.

    Raises:
        GeometryMismatchError: the stack has a different number of slices than ``reference``.
    """
    if isinstance(reference, torch.Tensor):
        spatial = tuple(int(s) for s in reference.shape[1:])
    else:
        spatial = tuple(int(s) for s in reference)
    if len(spatial) != 3:
        raise ValueError(f"reference must be a (C, X, Y, Z) volume or an (X, Y, Z) shape, got {spatial}")
    stack = _plain(slices)
    if stack.ndim != 4 or stack.shape[0] != spatial[2]:
        raise GeometryMismatchError(
            source_of(reference) or source_of(slices),
            f"slice stack of shape {tuple(stack.shape)} does not fit a volume with {spatial[2]} slices "
            f"(spatial shape {spatial})",
        )
    vol = _unslice(stack, spatial[:2], mode, align_corners)
    if isinstance(reference, MetaTensor):
        return MetaTensor(
            vol,
            meta=copy.deepcopy(reference.meta),
            applied_operations=copy.deepcopy(reference.applied_operations),
        )
    return MetaTensor(vol)


class VolumeToSlices(InvertibleTransform):
    """Invertible transform: volume ``(C, X, Y, Z)`` -> axial slice stack ``(Z, channels, S, S)``.

    The output is a ``MetaTensor`` that keeps the source meta (file name; its ``affine`` is still the volume's,
    the stack itself has no 3D geometry) and records what :meth:`inverse` needs in ``applied_operations``
    (original spatial shape, affine, mode). :meth:`inverse` accepts any stack ``(Z, K, S, S)`` carrying those
    operations, e.g. a network prediction via :class:`monai.transforms.Invertd`, and returns ``(K, X, Y, Z)``
    with the original affine. For a plain prediction tensor use :func:`slices_to_volume` with the source volume.

    Args:
        spatial_size: in-plane output size ``S`` (int or ``(H, W)``), default 256; ``None`` = no resizing.
        channels: output channels (grey slice tiled), 3 for the 2D encoders; use 1 for labels.
        mode: ``"bilinear"`` for images, ``"nearest"`` for labels (used by the inverse too).
        align_corners: for the linear modes.

    Example::

        slicer = VolumeToSlices(spatial_size=256, channels=3)
        stack = slicer(image)                      # (Z, 3, 256, 256)
        probs = MetaTensor(model(stack).softmax(1)).copy_meta_from(stack)  # (Z, 2, 256, 256), deep copy
        volume_probs = slicer.inverse(probs)       # (2, X, Y, Z), image.affine

    ``inverse`` pops its record from ``applied_operations`` (as every MONAI inverse does), so give a prediction
    a copy of the stack's record (``copy_meta_from``) rather than the same list.
    """

    def __init__(
        self,
        spatial_size: int | Sequence[int] | None = 256,
        channels: int | None = 3,
        mode: str = "bilinear",
        align_corners: bool | None = None,
    ):
        self.spatial_size = _size2d(spatial_size)
        self.channels = channels
        self.mode = mode
        self.align_corners = align_corners

    def __call__(self, img, mode: str | None = None, channels: int | None = None, align_corners=None):
        """Slice ``img``; ``mode``/``channels``/``align_corners`` override the constructor's values."""
        mode = self.mode if mode is None else mode
        channels = self.channels if channels is None else channels
        align_corners = self.align_corners if align_corners is None else align_corners
        stack = volume_to_slices(img, self.spatial_size, channels, mode, align_corners)
        if not get_track_meta():
            return stack
        if isinstance(img, MetaTensor):
            out = MetaTensor(stack, meta=copy.deepcopy(img.meta), applied_operations=list(img.applied_operations))
            affine = img.affine.clone()
        else:
            out = MetaTensor(stack)
            affine = out.affine.clone()
        extra = {
            "mode": str(mode),
            "align_corners": TraceKeys.NONE if align_corners is None else align_corners,
            "original_affine": affine,
            "in_channels": int(img.shape[0]),
        }
        return self.push_transform(out, orig_size=tuple(int(s) for s in img.shape[1:]), extra_info=extra)

    def inverse(self, data):
        transform = self.pop_transform(data)
        return self.inverse_transform(data, transform)

    def inverse_transform(self, data, transform) -> MetaTensor:
        spatial = tuple(int(s) for s in transform[TraceKeys.ORIG_SIZE])
        extra = transform[TraceKeys.EXTRA_INFO]
        align_corners = extra["align_corners"]
        align_corners = None if align_corners == TraceKeys.NONE else align_corners
        stack = _plain(data)
        if stack.ndim != 4 or stack.shape[0] != spatial[2]:
            raise GeometryMismatchError(
                source_of(data),
                f"slice stack of shape {tuple(stack.shape)} does not fit a volume with {spatial[2]} slices",
            )
        vol = _unslice(stack, spatial[:2], extra["mode"], align_corners)
        if isinstance(data, MetaTensor):
            out = MetaTensor(vol, meta=copy.deepcopy(data.meta), applied_operations=list(data.applied_operations))
        else:
            out = MetaTensor(vol)
        out.affine = torch.as_tensor(extra["original_affine"], dtype=torch.float64)
        return out


class VolumeToSlicesd(MapTransform, InvertibleTransform):
    """Dictionary version of :class:`VolumeToSlices`; ``channels``, ``mode`` and ``align_corners`` may be per key.

    Example::

        VolumeToSlicesd(keys=("image", "label"), spatial_size=256, channels=(3, 1), mode=("bilinear", "nearest"))
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: int | Sequence[int] | None = 256,
        channels: int | None | Sequence[int | None] = 3,
        mode: str | Sequence[str] = "bilinear",
        align_corners: bool | None | Sequence[bool | None] = None,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.channels = ensure_tuple_rep(channels, len(self.keys))
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.align_corners = ensure_tuple_rep(align_corners, len(self.keys))
        self.slicer = VolumeToSlices(spatial_size=spatial_size, channels=None)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key, channels, mode, align_corners in self.key_iterator(d, self.channels, self.mode, self.align_corners):
            d[key] = self.slicer(d[key], mode=mode, channels=channels, align_corners=align_corners)
        return d

    def inverse(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.slicer.inverse(d[key])
        return d
