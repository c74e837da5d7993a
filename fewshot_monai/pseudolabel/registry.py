"""Named pseudo-labelling strategies: what ``--pseudo-label NAME`` and ``pseudo_label: NAME`` resolve to.

A name resolves to a *stage* for ``FewShotSegmenter(..., pseudo_label=stage)`` (or the same argument of
``FewShotVolumeInferer``): a callable ``(network, protocol, context) -> (Z, 2, H, W)`` probabilities.
``"none"`` resolves to ``None`` (the plain prediction). Registered here:

- ``slice``: :class:`~fewshot_monai.pseudolabel.SupportExpansion` with
  :class:`~fewshot_monai.pseudolabel.SliceSelection` (per-slice threshold, k slices per chunk);
- ``window``: the same with :class:`~fewshot_monai.pseudolabel.WindowSelection` (windowed transfer);
- ``reference``: ``window`` whose pseudo-labels come from the support's nearest pixels in feature space instead of
  the plain prediction (``source="reference"``, :mod:`fewshot_monai.pseudolabel.reference`).

Options (``--pseudo-label-option KEY=VALUE``) go to the stage (``source``, ``weight``, ``rounds``, ``temperature``,
``noise_std``, ``seed``) or else to the selection (``threshold``, ``k_per_chunk``, ``neighbourhood``, ...). Other
modules add strategies with :func:`register_pseudo_label` (a reference-guided one plugs in the same way)::

    register_pseudo_label("my_strategy", lambda **options: MyStage(**options))
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

__all__ = ["register_pseudo_label", "get_pseudo_label", "available_pseudo_labels", "support_expansion_factory"]

#: strategy name -> factory(**options) returning a pseudo-labelling stage (or None: none)
_PSEUDO_LABELS: dict[str, Callable] = {"none": lambda **options: None}


def register_pseudo_label(name: str, factory: Callable, *, overwrite: bool = False) -> None:
    """Register ``factory(**options) -> stage`` under ``name`` (lower-case); refuses to replace a name silently."""
    key = str(name).strip().lower()
    if not key:
        raise ValueError("strategy name must not be empty")
    if key in _PSEUDO_LABELS and not overwrite:
        raise ValueError(f"pseudo-label strategy {key!r} is already registered")
    _PSEUDO_LABELS[key] = factory


def available_pseudo_labels() -> list[str]:
    """Registered strategy names, sorted."""
    return sorted(_PSEUDO_LABELS)


def get_pseudo_label(name: str | None, **options):
    """The pseudo-labelling stage for strategy ``name`` (``None``/``"none"`` -> ``None``), built with ``options``.

    Raises:
        ValueError: unknown name (the message lists the valid names) or options the strategy does not take.
    """
    key = "none" if name is None else str(name).strip().lower()
    if key not in _PSEUDO_LABELS:
        raise ValueError(f"unknown pseudo-label strategy {name!r}; valid names: {', '.join(available_pseudo_labels())}")
    if key == "none" and options:
        raise ValueError(f"pseudo-label strategy 'none' takes no options, got {sorted(options)}")
    return _PSEUDO_LABELS[key](**options)


def support_expansion_factory(selection_class) -> Callable:
    """A factory ``(**options) -> SupportExpansion(selection_class(**selection options), **stage options)``."""
    from fewshot_monai.pseudolabel.stage import SupportExpansion

    stage_keys = set(inspect.signature(SupportExpansion).parameters) - {"selection"}
    selection_keys = {  # the class's own options and those it passes on to its bases (``**options``)
        name
        for cls in selection_class.__mro__
        if "__init__" in vars(cls)
        for name, p in inspect.signature(vars(cls)["__init__"]).parameters.items()
        if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }

    def factory(**options):
        unknown = sorted(set(options) - stage_keys - selection_keys)
        if unknown:
            valid = ", ".join(sorted(stage_keys | selection_keys))
            raise ValueError(f"unknown option(s) {unknown} for {selection_class.__name__}; valid: {valid}")
        selection = selection_class(**{k: v for k, v in options.items() if k in selection_keys})
        return SupportExpansion(selection, **{k: v for k, v in options.items() if k in stage_keys})

    return factory
