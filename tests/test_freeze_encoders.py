"""``distill.freeze_encoders``: from the second task on CIGN's encoders keep their weights and BatchNorm statistics,
through training steps, precise-BatchNorm recalibration and a checkpoint rebuild."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from cign_fast.methods.base import TaskInfo
from cign_fast.methods.cign import CIGNMethod
from cign_fast.model import CIGN, ModelConfig
from cign_fast.train.batchnorm import recalibrate_batchnorm
from cign_fast.train.distributed import DistContext

from helpers import tiny_config, write_feature_dataset


def raw_model() -> CIGN:
    model = CIGN(ModelConfig(input_mode="raw", dim=16, depth=1, num_heads=2, drop_path=0.0))
    model.add_task(2)
    return model


class RawClips(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict:
        generator = torch.Generator().manual_seed(index)
        return {
            "audio": torch.randn(1, 64, 64, generator=generator),
            "visual": torch.randn(3, 64, 64, generator=generator),
            "label": index % 2,
            "id": str(index),
        }


def encoder_state(model: CIGN) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.audio_encoder.state_dict().items()}


def test_frozen_encoders_keep_weights_and_statistics_through_training_and_recalibration():
    torch.manual_seed(0)
    model = raw_model()
    model.freeze_encoders()
    before = encoder_state(model)
    assert not any(p.requires_grad for p in model.audio_encoder.parameters())
    model.train()
    assert model.training and not model.audio_encoder.training and model.audio_branch.training
    out = model(torch.randn(4, 1, 64, 64), torch.randn(4, 3, 64, 64))
    out.audio_logits.sum().backward()
    context = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    used = recalibrate_batchnorm(
        model, RawClips(), list(range(8)), max_batches=2, batch_size=4, context=context, seed=0
    )
    assert used == 0  # CIGN's BatchNorms are all in its encoders: nothing left to recalibrate
    after = encoder_state(model)
    for name, value in before.items():
        assert torch.equal(after[name], value), name  # weights and running statistics untouched
    assert any("running_mean" in name for name in before)  # the trunk's BatchNorms and the standardisation


def test_recalibration_still_re_estimates_what_trains():
    torch.manual_seed(0)
    model = raw_model()
    before = encoder_state(model)
    context = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    used = recalibrate_batchnorm(
        model, RawClips(), list(range(8)), max_batches=2, batch_size=4, context=context, seed=0
    )
    assert used == 2
    after = encoder_state(model)
    changed = [name for name in before if "running_mean" in name and not torch.equal(before[name], after[name])]
    assert changed  # without freezing, the encoders' BatchNorm statistics are re-estimated


def test_the_method_freezes_from_the_second_task_and_on_rebuild(tmp_path):
    data = write_feature_dataset(tmp_path / "data")
    config = tiny_config(data, tmp_path / "run", "--set", "distill.freeze_encoders=true")
    method = CIGNMethod(config, config.model_config(8, 6))
    model = method.begin_task(method.build_model(), TaskInfo(0, (2,)))
    assert not model.encoders_frozen and model.audio_encoder.weight in method.trainable_parameters(model)
    model = method.begin_task(model, TaskInfo(1, (2, 2)))
    assert model.encoders_frozen
    trainable = {id(p) for p in method.trainable_parameters(model)}
    assert id(model.audio_encoder.weight) not in trainable and id(model.visual_encoder.bias) not in trainable
    rebuilt = method.rebuild_model([2, 2], model.state_dict(), "cpu")
    assert rebuilt.encoders_frozen  # a resumed run trains what the uninterrupted one did
    off = tiny_config(data, tmp_path / "off", "--set", "distill.freeze_encoders=false")
    plain = CIGNMethod(off, off.model_config(8, 6))
    grown = plain.begin_task(plain.begin_task(plain.build_model(), TaskInfo(0, (2,))), TaskInfo(1, (2, 2)))
    assert not grown.encoders_frozen


def test_the_teacher_behind_frozen_encoders_reads_the_models_token_maps(tmp_path):
    data = write_feature_dataset(tmp_path / "data")
    config = tiny_config(data, tmp_path / "run", "--set", "distill.freeze_encoders=true")
    method = CIGNMethod(config, config.model_config(8, 6))
    torch.manual_seed(0)
    model = method.begin_task(method.build_model(), TaskInfo(0, (2,)))
    audio, visual = torch.randn(5, 3, 8), torch.randn(5, 4, 6)
    model.train()
    model(audio, visual).audio_logits.sum().backward()  # task 0 trains the encoders (and their statistics)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = method.begin_task(model, TaskInfo(1, (2, 2))).train()
    with torch.no_grad():
        out = model(audio, visual)
        shared = method.teacher_forward(audio, visual, out)
        assert method.teacher is not None
        full = method.teacher(audio, visual)
        for field, tensor in zip(full._fields, full, strict=True):
            assert torch.equal(getattr(shared, field), tensor), field  # the same output, one encoder pass less
        # it does read the given token maps, and only behind frozen encoders
        moved = out._replace(audio_tokens=out.audio_tokens + 1.0)
        assert not torch.equal(method.teacher_forward(audio, visual, moved).audio_logits, full.audio_logits)
        method.config.distill.freeze_encoders = False
        assert torch.equal(method.teacher_forward(audio, visual, moved).audio_logits, full.audio_logits)
