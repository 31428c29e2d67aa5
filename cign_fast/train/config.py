"""Training configuration: a YAML file plus ``key=value`` overrides, checked key by key.

The config has the sections ``data``, ``model``, ``optim``, ``distill``, ``memory``, ``run``, the top-level
key ``method`` (a name of :mod:`cign_fast.methods`, default ``cign``) and one section per baseline with
hyper-parameters (``ewc``, ``lwf``, ``icarl``, ``ssil``, ``bic``, ``podnet``, ``afc``, ``l2p``, ``avcil``; ``distill``
is CIGN's).
``model`` holds any field of :class:`cign_fast.model.ModelConfig` except ``input_mode`` (taken from
``data.input_mode``) and the feature widths (read from the data in features mode).
Every error names the offending key (and the file it came from) and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cign_fast.files import write_atomically
from cign_fast.methods import method_class, method_names
from cign_fast.methods.icarl import CLASSIFIERS
from cign_fast.model import ModelConfig
from cign_fast.model.config import INPUT_MODES

MODEL_KEYS_SET_BY_TRAINER = ("input_mode", "audio_feature_dim", "visual_feature_dim")
# A config as plain values, as YAML holds it: {"method": name, section: {key: value}}
Settings = dict[str, Any]


@dataclass
class DataConfig:
    """Where the clips are and how the classes are split into tasks."""

    root: str | None = None  # dataset root (labels.csv + frames/ + audio/) or feature cache
    input_mode: str = "raw"  # "raw" clips or pre-extracted "features"
    benchmark: str | None = None  # a preset of cign_fast.data.benchmarks, or None for the dataset's labels
    tasks: int | None = None  # number of tasks (custom split; picks among a preset's splits)
    class_order: str | None = None  # file with one class name per line (custom split)
    shuffle_classes: bool = False  # shuffle the class order with run.seed (custom split)
    eval_split: str = "test"  # split the accuracy matrix is measured on
    image_size: int = 224
    sample_rate: int = 16000
    num_workers: int = 2

    def root_path(self) -> Path:
        """``root`` as a path; ValueError when it is not set."""
        if self.root is None:
            raise ValueError("data.root: the dataset folder is required (--data ROOT)")
        return Path(self.root)


@dataclass
class OptimConfig:
    """Adam, the learning-rate schedule (restarted at every task) and the batch sizes."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    schedule: str = "constant"  # "constant" or "cosine" (both after the warm-up)
    warmup_epochs: float = 0.0
    grad_clip: float = 0.0  # max gradient norm; 0 turns clipping off
    batch_size: int = 128  # global: per-rank batch = batch_size / world size
    eval_batch_size: int = 128  # global, like batch_size
    epochs: int = 20  # per task
    precise_bn_batches: int = 0  # re-estimate BatchNorm statistics on this many batches after each task


@dataclass
class DistillConfig:
    """Class-token distillation from the frozen teacher (the model after the previous task), and the
    CIGN loss terms that decide what the old classes see (see ``cign_fast.model.losses.cign_loss``)."""

    enabled: bool = True
    temperature: float = 2.0
    weight: float = 1.0
    form: str = "bernoulli"  # "bernoulli" (per-class sigmoid KL) or "softmax" (softmax KL over the old classes)
    classification: str = "cross_entropy"  # per-modality class loss: softmax cross-entropy, or "bce" (the authors')
    old_class_negatives: bool = (
        True  # every clip scored on all classes (the authors'); False: new clips on new classes only
    )
    token_weight: float = 1.0  # token-head cross-entropy and its distillation; 0 turns both off
    token_replay: float = 1.0  # weight of the old classes' replayed token maps (cign_fast.model.token_replay); 0: off
    freeze_encoders: bool = True  # after the first task the encoders stop training (weights and BatchNorm statistics)
    replay_kd: bool = False  # also distil the teacher's heads on the replayed token maps (weight distill.weight)
    replay_spread: float = 1.0  # replayed token maps: class mean + replay_spread x std x N(0, 1), entry by entry


@dataclass
class MemoryConfig:
    """Exemplar memory: ``budget`` clips in total shared evenly by the classes seen, or ``per_class`` clips
    for every class; both 0 turns it off."""

    budget: int = 0
    per_class: int = 0  # exemplars per class (instead of a total budget)
    selection: str = "herding"  # "herding" or "random"


@dataclass
class RunConfig:
    """Output directory, seeds, device and bookkeeping."""

    out: str | None = None
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # "auto" (cuda when visible), "cpu" or "cuda"
    precision: str = "auto"  # "auto" (bf16 autocast on cuda, fp32 on cpu), "bf16" or "fp32"
    keep_checkpoints: int = 3
    epoch_checkpoints: bool = True  # checkpoint after every epoch (else only after every task)
    progress: bool = True
    tensorboard: bool = True
    divergence_factor: float = 100.0  # stop when a step's loss exceeds this times the task's first (0: NaN/inf only)
    plots: bool = True  # rewrite the PNG plots after every task

    def out_path(self) -> Path:
        """``out`` as a path; ValueError when it is not set."""
        if self.out is None:
            raise ValueError("run.out: the output directory is required (--out DIR)")
        return Path(self.out)


# ----- the methods' sections (cign_fast.methods; each method's docstring cites where the defaults come from) -----


@dataclass
class EWCConfig:
    """EWC (Kirkpatrick et al. 2017): ``weight / 2 * sum F (theta - theta*)^2``."""

    weight: float = 5000.0  # lambda
    fisher_decay: float = 1.0  # F <- decay * F + F_task (1: sum over tasks; < 1: online EWC)


@dataclass
class LwFConfig:
    """LwF (Li & Hoiem 2016): distillation of the old classes' logits from the previous model."""

    temperature: float = 2.0
    weight: float = 1.0  # lambda_o


@dataclass
class ICaRLConfig:
    """iCaRL (Rebuffi et al. 2017)."""

    classifier: str = "nme"  # "nme" (nearest mean of exemplars) or "cnn" (the sigmoid heads)


@dataclass
class SSILConfig:
    """SS-IL (Ahn et al. 2021): separated softmax plus task-wise distillation."""

    temperature: float = 2.0
    weight: float = 1.0


@dataclass
class BiCConfig:
    """BiC (Wu et al. 2019): distillation, then a bias layer on the new classes fit on held-out clips."""

    val_fraction: float = 0.1  # held-out clips per class, as a fraction of an old class's exemplars
    temperature: float = 2.0


@dataclass
class PODNetConfig:
    """PODNet (Douillard et al. 2020): POD-spatial and POD-flat distillation, local-similarity classifier."""

    spatial_weight: float = 3.0  # lambda_c (times sqrt(classes seen / new classes))
    flat_weight: float = 1.0  # lambda_f (likewise)
    proxies: int = 10  # K proxies per class
    margin: float = 0.6  # delta of the NCA loss


@dataclass
class AFCConfig:
    """AFC (Kang et al. 2022): importance-weighted feature distillation, PODNet's classifier, balanced fine-tuning."""

    weight: float = 4.0  # lambda_disc (times sqrt(classes seen / new classes))
    proxies: int = 10  # K per class
    margin: float = 0.6  # delta of the NCA loss
    finetune_epochs: int = 20  # class-balanced fine-tuning of the heads after each task t > 0 (0: none)
    finetune_lr: float = 0.05  # its SGD learning rate


@dataclass
class L2PConfig:
    """L2P (Wang et al. 2022): a prompt pool with key-query selection over frozen features."""

    pool_size: int = 10  # M
    prompt_length: int = 5  # L_p
    top_k: int = 5  # N prompts selected per clip
    pull_weight: float = 0.5  # lambda of the key-query surrogate loss


@dataclass
class AVCILConfig:
    """AV-CIL (Pian et al. 2023): audio-guided visual attention, D-AVSC and visual attention distillation."""

    frames: int = 8  # temporal positions of the visual tokens (8 x 196 in AV-CIL's VideoMAE features)
    temperature: float = 2.0  # T of the task-wise logit distillation
    instance_weight: float = 0.1  # lambda_I (0.5 on AVE)
    instance_temperature: float = 0.05  # tau_I
    class_weight: float = 1.0  # lambda_C
    class_temperature: float = 0.05  # tau_C
    spatial_weight: float = 0.5  # of the spatial attention distillation (lambda)
    temporal_weight: float = 0.5  # of the temporal attention distillation (1 - lambda)


@dataclass
class TrainConfig:
    method: str = "cign"
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig's keyword arguments
    optim: OptimConfig = field(default_factory=OptimConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    run: RunConfig = field(default_factory=RunConfig)
    ewc: EWCConfig = field(default_factory=EWCConfig)
    lwf: LwFConfig = field(default_factory=LwFConfig)
    icarl: ICaRLConfig = field(default_factory=ICaRLConfig)
    ssil: SSILConfig = field(default_factory=SSILConfig)
    bic: BiCConfig = field(default_factory=BiCConfig)
    podnet: PODNetConfig = field(default_factory=PODNetConfig)
    afc: AFCConfig = field(default_factory=AFCConfig)
    l2p: L2PConfig = field(default_factory=L2PConfig)
    avcil: AVCILConfig = field(default_factory=AVCILConfig)

    def model_config(self, audio_feature_dim: int | None = None, visual_feature_dim: int | None = None) -> ModelConfig:
        """The :class:`ModelConfig` of this run (feature widths are required in features mode)."""
        return ModelConfig(
            input_mode=self.data.input_mode,
            audio_feature_dim=audio_feature_dim,
            visual_feature_dim=visual_feature_dim,
            **self.model,
        )

    def to_dict(self) -> Settings:
        return dataclasses.asdict(self)


TOP_LEVEL_KEYS = {"method": str}
SECTIONS = {f.name: f for f in dataclasses.fields(TrainConfig) if f.name not in TOP_LEVEL_KEYS}
CHOICES = {
    "method": method_names(),
    "icarl.classifier": CLASSIFIERS,
    "data.input_mode": INPUT_MODES,
    "data.eval_split": ("test", "val"),
    "optim.schedule": ("constant", "cosine"),
    "memory.selection": ("herding", "random"),
    "distill.form": ("bernoulli", "softmax"),
    "distill.classification": ("cross_entropy", "bce"),
    "run.device": ("auto", "cpu", "cuda"),
    "run.precision": ("auto", "bf16", "fp32"),
}
POSITIVE = {
    "data.tasks",
    "data.image_size",
    "data.sample_rate",
    "optim.lr",
    "optim.batch_size",
    "optim.eval_batch_size",
    "optim.epochs",
    "distill.temperature",
    "run.keep_checkpoints",
    "lwf.temperature",
    "ssil.temperature",
    "bic.temperature",
    "podnet.proxies",
    "l2p.pool_size",
    "l2p.prompt_length",
    "l2p.top_k",
    "afc.proxies",
    "afc.finetune_lr",
    "avcil.frames",
    "avcil.temperature",
    "avcil.instance_temperature",
    "avcil.class_temperature",
}
NON_NEGATIVE = {
    "data.num_workers",
    "optim.weight_decay",
    "optim.precise_bn_batches",
    "optim.warmup_epochs",
    "optim.grad_clip",
    "distill.weight",
    "distill.token_weight",
    "distill.token_replay",
    "distill.replay_spread",
    "memory.budget",
    "run.seed",
    "run.divergence_factor",
    "memory.per_class",
    "ewc.weight",
    "lwf.weight",
    "ssil.weight",
    "podnet.spatial_weight",
    "podnet.flat_weight",
    "podnet.margin",
    "l2p.pull_weight",
    "afc.weight",
    "afc.margin",
    "afc.finetune_epochs",
    "avcil.instance_weight",
    "avcil.class_weight",
    "avcil.spatial_weight",
    "avcil.temporal_weight",
}
UNIT_INTERVAL = {"ewc.fisher_decay"}
OPEN_UNIT_INTERVAL = {"bic.val_fraction"}


def model_field_types() -> dict[str, Any]:
    """The ``model`` keys a config may set, with their types (from ``ModelConfig``)."""
    hints = typing.get_type_hints(ModelConfig)
    return {
        name: hints[name]
        for name in (f.name for f in dataclasses.fields(ModelConfig))
        if name not in MODEL_KEYS_SET_BY_TRAINER
    }


def section_field_types(section: str) -> dict[str, Any]:
    if section == "model":
        return model_field_types()
    return typing.get_type_hints(typing.get_type_hints(TrainConfig)[section])


def coerce(key: str, value: object, expected: object) -> object:
    """``value`` converted to the annotated type ``expected`` (strings from ``--set`` are parsed)."""
    options = typing.get_args(expected) if isinstance(expected, types.UnionType) else (expected,)
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
        if type(None) in options:
            return None
        raise ValueError(f"config {key}: expected a value of type {_type_name(expected)}, got null")
    for option in options:
        if option is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
                return value.lower() in ("true", "yes", "on", "1")
        elif option is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, str):
                try:
                    return int(value)
                except ValueError:
                    pass
        elif option is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
        elif option is str and isinstance(value, (str, Path)):
            return str(value)
    raise ValueError(f"config {key}: expected {_type_name(expected)}, got {value!r}")


def _type_name(expected: object) -> str:
    options = typing.get_args(expected) if isinstance(expected, types.UnionType) else (expected,)
    return " or ".join("null" if o is type(None) else getattr(o, "__name__", str(o)) for o in options)


def check_value(key: str, value: object) -> None:
    """Range and choice constraints of one ``section.name`` key."""
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"config {key}: expected a finite number, got {value!r}")
    if key in CHOICES and value not in CHOICES[key]:
        raise ValueError(f"config {key}: expected one of {', '.join(map(repr, CHOICES[key]))}, got {value!r}")
    if key in POSITIVE and not (isinstance(value, (int, float)) and value > 0):
        raise ValueError(f"config {key}: expected a number > 0, got {value!r}")
    if key in NON_NEGATIVE and not (isinstance(value, (int, float)) and value >= 0):
        raise ValueError(f"config {key}: expected a number >= 0, got {value!r}")
    if key in UNIT_INTERVAL and not (isinstance(value, (int, float)) and 0 <= value <= 1):
        raise ValueError(f"config {key}: expected a number in [0, 1], got {value!r}")
    if key in OPEN_UNIT_INTERVAL and not (isinstance(value, (int, float)) and 0 < value < 1):
        raise ValueError(f"config {key}: expected a number between 0 and 1 (both excluded), got {value!r}")


def merge_mapping(target: Settings, mapping: object, source: str) -> None:
    """Merge a nested ``{section: {key: value}}`` mapping into ``target``, refusing unknown keys."""
    if mapping is None:
        return
    if not isinstance(mapping, dict):
        raise ValueError(
            f"{source}: expected a mapping of sections ({', '.join(SECTIONS)}), got {type(mapping).__name__}"
        )
    for section, values in mapping.items():
        if section in TOP_LEVEL_KEYS:
            set_key(target, section, values, source)
            continue
        if section not in SECTIONS:
            raise ValueError(
                f"{source}: config key {section!r} is unknown; expected one of "
                f"{', '.join([*TOP_LEVEL_KEYS, *SECTIONS])}"
            )
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ValueError(f"{source}: config section {section!r} must be a mapping of keys, got {values!r}")
        for key, value in values.items():
            set_key(target, f"{section}.{key}", value, source)


def set_key(target: Settings, dotted: str, value: object, source: str) -> None:
    """Set ``section.key`` (or a top-level key) in ``target`` after checking the key exists and coercing the value."""
    if dotted in TOP_LEVEL_KEYS:
        try:
            coerced = coerce(dotted, value, TOP_LEVEL_KEYS[dotted])
            check_value(dotted, coerced)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
        target[dotted] = coerced
        return
    section, _, key = dotted.partition(".")
    if section not in SECTIONS or not key:
        raise ValueError(
            f"{source}: config key {dotted!r} is unknown; expected {', '.join(TOP_LEVEL_KEYS)} or "
            f"section.key with section one of {', '.join(SECTIONS)}"
        )
    types_by_key = section_field_types(section)
    if key not in types_by_key:
        hint = " (set by the trainer from the data)" if section == "model" and key in MODEL_KEYS_SET_BY_TRAINER else ""
        raise ValueError(
            f"{source}: config key {dotted!r} is unknown{hint}; expected one of "
            f"{', '.join(f'{section}.{k}' for k in types_by_key)}"
        )
    try:
        coerced = coerce(dotted, value, types_by_key[key])
        check_value(dotted, coerced)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    target[section][key] = coerced


def load_yaml(text: str, source: str) -> object:
    """``yaml.safe_load(text)``; malformed YAML is a ValueError naming ``source`` and the line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"{source}: not valid YAML ({' '.join(str(error).split())})") from None


def parse_override(text: str) -> tuple[str, object]:
    """``"optim.lr=3e-4"`` -> ``("optim.lr", "3e-4")`` (the value is coerced by :func:`set_key`)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set: expected section.key=value, got {text!r}")
    return key.strip(), load_yaml(value, f"--set {text}") if value.strip() else ""


def build_config(
    config_file: str | Path | Sequence[str | Path] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: Mapping[str, Any] | None = None,
    flags: Mapping[str, object] | None = None,
    base_source: str = "defaults",
) -> TrainConfig:
    """Defaults < ``base`` (e.g. the demo's; errors name it ``base_source``) < ``config_file`` (one, or several:
    later files win) < ``flags`` ({"optim.lr": 1e-3}) < ``overrides`` ("optim.lr=1e-3" strings, values parsed
    as YAML)."""
    values: Settings = {name: {} for name in SECTIONS}
    merge_mapping(values, base, base_source)
    files = [] if config_file is None else [config_file] if isinstance(config_file, (str, Path)) else config_file
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"--config: no such file {path}")
        merge_mapping(values, load_yaml(path.read_text(encoding="utf-8"), f"--config {path}"), str(path))
    for key, value in (flags or {}).items():
        set_key(values, key, value, "command line")
    for text in overrides:
        key, value = parse_override(text)
        set_key(values, key, value, f"--set {text}")
    section_types = typing.get_type_hints(TrainConfig)
    top_level = {key: values[key] for key in TOP_LEVEL_KEYS if key in values}
    sections: dict[str, Any] = {
        name: _complete_model_section(values[name]) if name == "model" else section_types[name](**values[name])
        for name in SECTIONS
    }
    config = TrainConfig(**top_level, **sections)
    check_model_section(config)
    check_method_memory(config)
    check_method_settings(config)
    return config


def _complete_model_section(values: dict[str, Any]) -> dict[str, Any]:
    """Every ``model`` key, defaults filled in from ``ModelConfig`` (so the saved config is complete)."""
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig) if f.name not in MODEL_KEYS_SET_BY_TRAINER}
    return {**defaults, **values}


def check_model_section(config: TrainConfig) -> None:
    """Build a trial ``ModelConfig`` so bad model values are refused before any data is read."""
    widths = 1 if config.data.input_mode == "features" else None
    try:
        config.model_config(widths, widths)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config model.{err}") from None


def check_method_memory(config: TrainConfig) -> None:
    """The memory settings must suit the method: one of budget / per_class, present when the method needs one."""
    memory = config.memory
    if memory.budget > 0 and memory.per_class > 0:
        raise ValueError(
            f"config memory.budget, memory.per_class: set one of the two, got {memory.budget} and {memory.per_class}"
        )
    use = method_class(config.method).memory_use
    has_memory = memory.budget > 0 or memory.per_class > 0
    if use == "required" and not has_memory:
        raise ValueError(
            f"config memory.budget, memory.per_class: method {config.method!r} needs an exemplar memory; "
            "set one of them (e.g. memory.per_class=20)"
        )
    if use == "none" and has_memory:
        raise ValueError(
            f"config memory.budget, memory.per_class: method {config.method!r} keeps no exemplars "
            "(it trains on every clip seen); set both to 0"
        )


def check_method_settings(config: TrainConfig) -> None:
    """The method runs on ``data.input_mode``, and its settings agree with each other."""
    modes = method_class(config.method).input_modes
    if config.data.input_mode not in modes:
        raise ValueError(
            f"config data.input_mode: method {config.method!r} runs on {' or '.join(map(repr, modes))} "
            f"inputs, got {config.data.input_mode!r}"
        )
    if config.method == "l2p" and config.l2p.top_k > config.l2p.pool_size:
        raise ValueError(
            f"config l2p.top_k: expected at most l2p.pool_size = {config.l2p.pool_size}, got {config.l2p.top_k}"
        )


def config_from_dict(values: Mapping[str, Any], source: str = "saved config") -> TrainConfig:
    """Rebuild a saved config (``TrainConfig.to_dict()``), checking it like a file (errors name ``source``)."""
    return build_config(base=values, base_source=source)


def save_config(config: TrainConfig, path: Path) -> None:
    write_atomically(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False).encode("utf-8"))
