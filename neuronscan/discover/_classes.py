"""Which model outputs are classes, under which names, and which outputs each class competes with."""

from __future__ import annotations

__all__ = ["output_names", "competing_outputs"]


def output_names(spec, setting: str | list[str] = "auto") -> list[str]:
    """Class names of the model's outputs, in output order; ``[]`` when unknown.

    ``setting``: a list is taken as is; ``"auto"``: the built-in ``shapesnet``'s head concepts, or a
    torchvision model's ``weights.meta["categories"]``.
    """
    if isinstance(setting, list):
        return list(setting)
    if getattr(spec, "name", "") == "shapesnet" and getattr(spec, "source", "") == "builtin":
        from neuronscan.demo.model import HEAD_CONCEPTS

        return list(HEAD_CONCEPTS)
    if getattr(spec, "source", "") == "torchvision" and spec.weights not in (None, "random"):
        try:
            import torchvision

            return list(torchvision.models.get_weight(str(spec.weights)).meta.get("categories") or [])
        except Exception:  # noqa: BLE001 - unknown weights name: no names
            return []
    return []


def competing_outputs(spec, names: list[str], index: int) -> list[int]:
    """The outputs the class at ``index`` competes with when the model classifies: the class's own head for
    shapesnet (its four attribute heads are separate softmaxes), every output otherwise."""
    if getattr(spec, "name", "") == "shapesnet" and getattr(spec, "source", "") == "builtin":
        from neuronscan.demo.model import HEAD_SLICES

        for sl in HEAD_SLICES.values():
            if sl.start <= index < sl.stop:
                return list(range(sl.start, sl.stop))
    return list(range(len(names)))
