"""Export the part of a few-shot network that has fixed inputs: the slice encoder.

MONAI's ``verify_net_in_out`` and ``ckpt_export`` need a network with one fixed input and output. ALPNet's forward
also takes the support slices and masks, whose prototypes are pooled at run time, so the whole network has no
fixed signature to export. The encoder does: ``(B, 3, H, W)`` slices -> ``(B, C, H/8, W/8)`` features, and
everything after it (prototype pooling and cosine scoring, :mod:`fewshot_monai.networks.prototypes`) is a few
tensor operations. :func:`export_encoder` writes it with ``torch.export`` (a ``.pt2`` program, batch size
dynamic), loadable without this package::

    program = torch.export.load("encoder.pt2").module()
    features = program(slices)              # the same features as network.encode(slices)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["export_encoder"]


def export_encoder(network, path: str | os.PathLike, spatial_size: int = 256, max_batch: int = 64) -> Path:
    """Write ``network.encoder`` (eval mode) as a ``torch.export`` program with a dynamic batch dimension.

    Args:
        network: an ALPNet (or a module with an ``encoder``), or a weights file / ``None`` (the shipped MRI model)
            for :func:`fewshot_monai.zoo.load_model`.
        path: output ``.pt2`` file, written atomically.
        spatial_size: in-plane size of the slices the program is exported for (the protocol's 256).
        max_batch: largest batch the program accepts.

    Returns:
        the written path.
    """
    from fewshot_monai.utils.files import atomic_path

    if network is None or isinstance(network, (str, os.PathLike)):
        from fewshot_monai.zoo import load_model

        network = load_model(network).network
    encoder = network.encoder.eval()
    example = torch.zeros(2, 3, int(spatial_size), int(spatial_size))
    batch = torch.export.Dim("batch", min=1, max=int(max_batch))
    with torch.no_grad():
        program = torch.export.export(encoder, (example,), dynamic_shapes=({0: batch},))
    with atomic_path(path) as tmp:
        torch.export.save(program, str(tmp))
    return Path(path)
