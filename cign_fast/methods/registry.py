"""The methods by name: each method module registers its class with :func:`register_method`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cign_fast.methods.base import MEMORY_USES, ContinualMethod
from cign_fast.model import ModelConfig

if TYPE_CHECKING:
    from cign_fast.train.config import TrainConfig

METHODS: dict[str, type[ContinualMethod]] = {}


def register_method(cls: type[ContinualMethod]) -> type[ContinualMethod]:
    """Class decorator: make ``cls`` available as ``method: <cls.name>``."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"name: expected a new, non-empty method name, got {cls.name!r}")
    if cls.memory_use not in MEMORY_USES:
        raise ValueError(f"memory_use: expected one of {', '.join(MEMORY_USES)}, got {cls.memory_use!r}")
    METHODS[cls.name] = cls
    return cls


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def method_class(name: str) -> type[ContinualMethod]:
    """The registered class of ``name``; the error lists the known names."""
    if name not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {name!r}")
    return METHODS[name]


def build_method(config: TrainConfig, model_config: ModelConfig) -> ContinualMethod:
    """The method named by ``config.method``, built for ``model_config``."""
    return method_class(config.method)(config, model_config)
