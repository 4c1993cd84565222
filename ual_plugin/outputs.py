"""The UAL forward's outputs: the model's own output class, with what trainers read from it as declared fields.

Wrappers rebuild a model's output from its keys (accelerate's ``convert_outputs_to_fp32`` under
mixed precision; pytree flattening under FSDP, DDP's static graph and ``torch.compile``), so an
attribute set on an output object is lost on the way to the trainer. ``with_fields`` returns a copy
whose type is a subclass of the model's own output type that declares each extra name as a field,
as TRL's loss heads declare theirs: every such rebuild keeps them, and ``isinstance`` still holds.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

_SUBCLASSES: dict[tuple[type, tuple[str, ...]], type] = {}


def _declaring(base: type, names: tuple[str, ...]) -> type:
    """``base``, or a dataclass subclass of it declaring the ``names`` it lacks (made once per pair, then reused)."""
    declared = {f.name for f in dataclasses.fields(base)}
    missing = tuple(n for n in names if n not in declared)
    if not missing:
        return base
    key = (base, missing)
    cls = _SUBCLASSES.get(key)
    if cls is None:
        cls = dataclasses.make_dataclass(
            f"UAL{base.__name__}", [(n, torch.Tensor | None, dataclasses.field(default=None)) for n in missing],
            bases=(base,), namespace={"__module__": __name__},
        )
        cls.__doc__ = f"{base.__name__} plus UAL's answers to the trainer: {', '.join(missing)}."
        _SUBCLASSES[key] = cls
    return cls


def with_fields(outputs: Any, **values: torch.Tensor | None) -> Any:
    """``outputs`` with ``values`` set as declared fields (a copy of a new type when the model's type lacks them)."""
    from transformers.utils import ModelOutput

    if not isinstance(outputs, ModelOutput):
        raise TypeError(
            f"UAL needs the model to return a transformers ModelOutput (got {type(outputs).__name__}); "
            "do not pass return_dict=False"
        )
    cls = _declaring(type(outputs), tuple(values))
    if cls is type(outputs):
        for name, value in values.items():
            setattr(outputs, name, value)  # a declared field: ModelOutput keeps it as a key too
        return outputs
    return cls(**dict(outputs.items()), **values)


__all__ = ["with_fields"]
