"""``ModelConfig``: every hyper-parameter of the CIGN model, checked when it is built."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from cign_fast.contract import MODES
from cign_fast.model.encoders import TOKEN_NORMS
from cign_fast.ops.backends import BACKEND_NAMES
from cign_fast.ops.checks import check_choice

INPUT_MODES = ("raw", "features")
AUDIO_TOKEN_MODES = ("map", "pooled")
CLASS_TOKEN_INITS = ("trunc_normal", "zero")
GROUPING_NORMS = ("pre_and_post", "authors")


def _check_int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")


def _as_optional_path(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, Path)) or not str(value):
        raise TypeError(f"{name}: expected None or a path to a local .pth file, got {value!r}")
    return str(value)


@dataclass
class ModelConfig:
    """Hyper-parameters of :class:`cign_fast.model.CIGN` (defaults follow the authors' code).

    ``dataclasses.asdict(cfg)`` gives plain values (paths as ``str``) and ``ModelConfig(**d)``
    rebuilds the same config, so a checkpoint can store it.
    """

    input_mode: str = "raw"
    dim: int = 512
    depth: int = 3
    num_heads: int = 8
    mlp_ratio: float = 4.0
    drop_path: float = 0.1
    audio_tokens: str = "map"
    audio_feature_dim: int | None = None
    visual_feature_dim: int | None = None
    class_token_init: str = "trunc_normal"
    assign_mode: str = "gumbel"
    eval_assign_mode: str | None = None  # None: "hard" after hard/gumbel training, "soft" after soft training
    token_norm: str = "standardise_l2"  # raw mode; "l2" is the authors' recipe (see ResNetTokenEncoder)
    grouping_norms: str = "pre_and_post"  # "authors": GroupViT's post-norm cross-attention (see GroupingBlock)
    backend: str = "auto"
    visual_weights: str | None = None
    audio_weights: str | None = None

    def __post_init__(self) -> None:
        check_choice("input_mode", self.input_mode, INPUT_MODES)
        check_choice("audio_tokens", self.audio_tokens, AUDIO_TOKEN_MODES)
        check_choice("class_token_init", self.class_token_init, CLASS_TOKEN_INITS)
        check_choice("assign_mode", self.assign_mode, MODES)
        if self.eval_assign_mode is None:
            self.eval_assign_mode = "soft" if self.assign_mode == "soft" else "hard"
        check_choice("eval_assign_mode", self.eval_assign_mode, ("soft", "hard"))
        check_choice("token_norm", self.token_norm, TOKEN_NORMS)
        check_choice("grouping_norms", self.grouping_norms, GROUPING_NORMS)
        check_choice("backend", self.backend, ("auto",) + BACKEND_NAMES)
        _check_int("dim", self.dim, 1)
        _check_int("depth", self.depth, 0)
        _check_int("num_heads", self.num_heads, 1)
        if self.dim % self.num_heads:
            raise ValueError(f"num_heads: expected a divisor of dim={self.dim}, got {self.num_heads}")
        if not isinstance(self.mlp_ratio, (int, float)) or not math.isfinite(self.mlp_ratio) or self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio: expected a finite number > 0, got {self.mlp_ratio!r}")
        if not isinstance(self.drop_path, (int, float)) or not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path: expected a number in [0, 1), got {self.drop_path!r}")
        self.visual_weights = _as_optional_path("visual_weights", self.visual_weights)
        self.audio_weights = _as_optional_path("audio_weights", self.audio_weights)
        if self.input_mode == "features":
            for name in ("audio_feature_dim", "visual_feature_dim"):
                value = getattr(self, name)
                if value is None:
                    raise ValueError(f"{name}: required when input_mode='features' (the pre-extracted token width)")
                _check_int(name, value, 1)
            for name in ("visual_weights", "audio_weights"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: only used when input_mode='raw' (features mode has no CNN encoder)")

    def feature_dims(self) -> tuple[int, int]:
        """``(audio_feature_dim, visual_feature_dim)``: the token widths D_a, D_v of features mode."""
        if self.audio_feature_dim is None or self.visual_feature_dim is None:
            raise ValueError(
                f"audio_feature_dim, visual_feature_dim: set only in features mode (input_mode is {self.input_mode!r})"
            )
        return self.audio_feature_dim, self.visual_feature_dim
