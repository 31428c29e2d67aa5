"""Training configuration: YAML + overrides, refusals that name the key, the saved effective config."""

import argparse

import pytest
import yaml

from cign_fast.cli import train as train_cli
from cign_fast.methods import METHODS
from cign_fast.train.config import build_config, config_from_dict, save_config

from helpers import REPO


def test_file_then_flags_then_set_overrides(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("optim:\n  lr: 0.01\n  epochs: 7\nmodel:\n  dim: 64\n")
    config = build_config(config_file, ["optim.lr=3e-4", "model.depth=2"], flags={"optim.epochs": 5})
    assert config.optim.lr == pytest.approx(3e-4)  # "3e-4" is a string to YAML: parsed as a float
    assert config.optim.epochs == 5
    assert config.model["dim"] == 64 and config.model["depth"] == 2
    assert config.model["num_heads"] == 8  # untouched defaults are filled in from ModelConfig
    assert config.optim.batch_size == 128


@pytest.mark.parametrize(
    "override, named",
    [
        ("optim.lrr=0.1", "optim.lrr"),
        ("optimizer.lr=0.1", "optimizer.lr"),
        ("model.input_mode=features", "model.input_mode"),
        ("optim.lr=-1", "optim.lr"),
        ("optim.schedule=linear", "optim.schedule"),
        ("optim.epochs=many", "optim.epochs"),
        ("model.dim=12", "model.num_heads"),  # ModelConfig: heads must divide dim
        ("run.deterministic=maybe", "run.deterministic"),
    ],
)
def test_bad_override_is_refused_naming_the_key(override, named):
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        build_config(overrides=[override])


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text("data:\n  tasks: 4\n  shuffle_clases: true\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*data\.shuffle_clases"):
        build_config(config_file)


def test_cli_prints_the_refusal_and_fails(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    args = parser.parse_args(["--data", str(tmp_path), "--out", str(tmp_path / "out"), "--set", "memory.budgett=5"])
    assert train_cli.main(args) == 2
    assert "memory.budgett" in capsys.readouterr().err


def test_saved_config_round_trips(tmp_path):
    config = build_config(overrides=["data.tasks=3", "memory.budget=20", "distill.enabled=false"])
    save_config(config, tmp_path / "config.yaml")
    reloaded = config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert reloaded == config


@pytest.mark.parametrize("config_file", sorted((REPO / "configs").glob("*.yaml")), ids=lambda path: path.name)
def test_shipped_configs_load(config_file):
    config = build_config(config_file)
    assert config.optim.lr > 0


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_has_a_config_layered_over_a_dataset_config(name):
    config = build_config(
        [REPO / "configs" / "vggsound-instruments.yaml", REPO / "configs" / "methods" / f"{name}.yaml"]
    )
    assert config.method == name
    assert config.data.benchmark == build_config(REPO / "configs" / "vggsound-instruments.yaml").data.benchmark
    has_memory = config.memory.per_class > 0 or config.memory.budget > 0  # AV-CIL's is a total budget
    assert has_memory == (METHODS[name].memory_use == "required")


def test_method_flag_and_top_level_key(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("method: lwf\nlwf:\n  weight: 0.5\n")
    assert build_config(config_file).method == "lwf" and build_config(config_file).lwf.weight == 0.5
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    args = parser.parse_args(["--method", "ewc", "--config", str(config_file), "--set", "ewc.weight=10"])
    config = build_config(args.config, args.overrides, flags=train_cli.settings_from_flags(args))
    assert config.method == "ewc" and config.ewc.weight == 10.0 and config.lwf.weight == 0.5
    config_file.write_text("method: [ewc]\n")
    with pytest.raises(ValueError, match=r"run\.yaml: config method: expected str"):
        build_config(config_file)


def test_default_config_file_lists_every_default():
    assert build_config(REPO / "configs" / "default.yaml") == build_config()
