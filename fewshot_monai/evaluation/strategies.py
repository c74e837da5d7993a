"""Registry of inference-time refinement strategies (``--pseudo-label``) for :class:`FewShotVolumeInferer`.

A strategy name resolves to a *stage* plugged into ``FewShotVolumeInferer(refinement=stage)``: a callable
``(network, protocol, context) -> (Z, 2, H, W)`` probabilities (see :mod:`fewshot_monai.inferers`). ``"none"``
resolves to ``None`` (the plain prediction). Pseudo-labelling modules register their strategies here::

    from fewshot_monai.evaluation.strategies import register_refinement
    register_refinement("self_training", lambda **kw: SelfTrainingStage(**kw))
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["register_refinement", "get_refinement", "available_refinements"]

#: strategy name -> factory(**kwargs) returning a refinement stage (or None for no refinement)
_REFINEMENTS: dict[str, Callable] = {"none": lambda **kwargs: None}


def register_refinement(name: str, factory: Callable, *, overwrite: bool = False) -> None:
    """Register ``factory(**kwargs) -> stage`` under ``name`` (lower-case); refuses to replace a name silently."""
    key = str(name).strip().lower()
    if not key:
        raise ValueError("strategy name must not be empty")
    if key in _REFINEMENTS and not overwrite:
        raise ValueError(f"refinement strategy {key!r} is already registered")
    _REFINEMENTS[key] = factory


def available_refinements() -> list[str]:
    """Registered strategy names, sorted."""
    return sorted(_REFINEMENTS)


def get_refinement(name: str | None, **kwargs):
    """The refinement stage for strategy ``name`` (``None``/``"none"`` -> ``None``), built with ``kwargs``.

    Raises:
        ValueError: unknown name; the message lists the valid names.
    """
    key = "none" if name is None else str(name).strip().lower()
    if key not in _REFINEMENTS:
        raise ValueError(f"unknown pseudo-label strategy {name!r}; valid names: {', '.join(available_refinements())}")
    return _REFINEMENTS[key](**kwargs)
