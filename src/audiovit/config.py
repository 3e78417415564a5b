"""Config fields that carry their help text and allowed values beside their default.

``FeatureConfig``, ``ModelConfig``, ``TrainConfig`` and ``ServeConfig`` declare each field with
:func:`option`; :func:`check` validates an instance against those declarations and the CLI turns
them into flags, so a default, its check and its ``--help`` line are each written once.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def option(
    default: Any,
    help: str,
    *,
    choices: tuple | None = None,
    low: float | None = None,
    high: float | None = None,
) -> Any:
    """A dataclass field: ``default``; ``help`` (one line, its unit or meaning); the allowed
    ``choices`` or the closed range [``low``, ``high``] (``None`` is always allowed where it is
    the default's type)."""
    return dataclasses.field(
        default=default, metadata={"help": help, "choices": choices, "low": low, "high": high}
    )


def same_as(cls: type, name: str) -> Any:
    """The field ``name`` of the dataclass ``cls`` again — default, help and checks — for a
    config that passes the value on (TrainConfig's model and feature settings)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return dataclasses.field(default=f.default, metadata=f.metadata)


def check(cfg: Any) -> None:
    """Raise ValueError, naming the field, for a value outside its declared choices or range."""
    for f in dataclasses.fields(cfg):
        v, m = getattr(cfg, f.name), f.metadata
        if v is None or not m:
            continue
        if m["choices"] is not None and v not in m["choices"]:
            allowed = ", ".join(map(str, m["choices"]))
            raise ValueError(f"{f.name} must be one of {allowed}; got {v!r}")
        lo, hi = m["low"], m["high"]
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            bound = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in [{lo}, {hi}]"
            raise ValueError(f"{f.name} must be {bound}; got {v}")


def help_text(f: dataclasses.Field) -> str:
    """A field's help line with its default, for ``--help`` (an unset default says itself)."""
    text = f.metadata.get("help", f.name.replace("_", " "))
    text += "" if f.default is None else f" (default: {f.default})"
    return text.replace("%", "%%")  # argparse formats help with %
