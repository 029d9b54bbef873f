"""Dataclass configs shared by the models, and their strict (de)serialisation to JSON dicts."""

from __future__ import annotations

import dataclasses
from typing import Any, Type, TypeVar

from imgen_jax.errors import ImgenError

T = TypeVar("T")


def config_to_dict(cfg: Any) -> dict:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(cfg)


def config_from_dict(cls: Type[T], d: dict, source: str) -> T:
    """Build `cls` from `d`; unknown or missing fields are one ImgenError naming them and `source`."""
    if not isinstance(d, dict):
        raise ImgenError(f"{source}: expected a JSON object for {cls.__name__}, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ImgenError(f"{source}: unknown {cls.__name__} fields {unknown}")
    required = [
        n for n, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and n not in d
    ]
    if required:
        raise ImgenError(f"{source}: missing {cls.__name__} fields {required}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ImgenError(f"{source}: invalid {cls.__name__}: {e}") from None
