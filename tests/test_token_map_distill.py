"""``distill.token_map_weight``: the distillation of the encoders' token maps (1 - cosine to the teacher's),
for runs whose encoders keep training (``distill.freeze_encoders=false``)."""

from __future__ import annotations

import pytest
import torch

from cign_fast.methods.base import TaskInfo
from cign_fast.methods.cign import CIGNMethod, token_map_distance

from helpers import tiny_config, write_feature_dataset


def method_at_task_one(tmp_path, *settings: str) -> tuple[CIGNMethod, torch.nn.Module]:
    data = write_feature_dataset(tmp_path / "data")
    config = tiny_config(data, tmp_path / "run", *(arg for setting in settings for arg in ("--set", setting)))
    method = CIGNMethod(config, config.model_config(8, 6))
    torch.manual_seed(0)
    model = method.begin_task(method.build_model(), TaskInfo(0, (2,)))
    return method, method.begin_task(model, TaskInfo(1, (2, 2))).train()


def test_the_distance_is_zero_for_the_teacher_itself_and_grows_as_the_encoders_move(tmp_path):
    method, model = method_at_task_one(
        tmp_path, "distill.freeze_encoders=false", "distill.token_map_weight=3.0", "distill.token_replay=0"
    )
    audio, visual = torch.randn(6, 3, 8), torch.randn(6, 4, 6)
    labels = torch.tensor([2, 3, 2, 3, 2, 3])
    out = model(audio, visual)
    teacher_out = method.teacher_forward(audio, visual, out)
    assert float(token_map_distance(out, teacher_out, labels).detach()) == pytest.approx(0.0, abs=1e-6)
    distances = []
    for step in (0.05, 0.2):
        with torch.no_grad():
            for p in model.audio_encoder.parameters():
                p.add_(step * torch.randn_like(p))
        distances.append(float(token_map_distance(model(audio, visual), teacher_out, labels).detach()))
    assert 0 < distances[0] < distances[1]
    out = model(audio, visual)
    losses = method.loss(model, out, labels, teacher_out)
    assert float(losses["token_map_kd"].detach()) == pytest.approx(3.0 * distances[1], rel=1e-5)
    losses["token_map_kd"].backward()
    assert model.audio_encoder.weight.grad is not None and model.audio_encoder.weight.grad.abs().sum() > 0
    assert float(token_map_distance(out, None, labels)) == 0.0  # the first task has no teacher


def test_behind_frozen_encoders_the_term_is_zero(tmp_path):
    method, model = method_at_task_one(tmp_path, "distill.token_map_weight=3.0", "distill.token_replay=0")
    audio, visual = torch.randn(4, 3, 8), torch.randn(4, 4, 6)
    labels = torch.tensor([2, 3, 2, 3])
    out = model(audio, visual)
    losses = method.loss(model, out, labels, method.teacher_forward(audio, visual, out))
    assert float(losses["token_map_kd"].detach()) == pytest.approx(0.0, abs=1e-6)


def test_a_negative_weight_is_refused(tmp_path):
    data = write_feature_dataset(tmp_path / "data")
    with pytest.raises(ValueError, match="distill.token_map_weight"):
        tiny_config(data, tmp_path / "run", "--set", "distill.token_map_weight=-1")
