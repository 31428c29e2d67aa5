"""Token replay (``distill.token_replay``): per-class token statistics, samples from them, and the replay term."""

from __future__ import annotations

import pytest
import torch

from cign_fast.methods.base import TaskInfo
from cign_fast.methods.cign import CIGNMethod
from cign_fast.model.token_replay import TokenStatistics
from cign_fast.train.config import build_config

from helpers import tiny_config, write_feature_dataset


def token_batches(
    labels: list[int], seed: int = 0
) -> tuple[list[tuple[torch.Tensor, ...]], torch.Tensor, torch.Tensor]:
    """Two batches of audio [n, 3, 4] / visual [n, 2, 4] tokens whose class c is centred on c; all tokens too."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.tensor(labels)
    audio = targets.view(-1, 1, 1) + torch.randn(len(labels), 3, 4, generator=generator)
    visual = -targets.view(-1, 1, 1) + 0.5 * torch.randn(len(labels), 2, 4, generator=generator)
    half = len(labels) // 2
    batches = [(audio[:half], visual[:half], targets[:half]), (audio[half:], visual[half:], targets[half:])]
    return batches, audio, visual


def test_statistics_are_each_classes_mean_and_std_and_grow_task_by_task():
    statistics = TokenStatistics()
    labels = [0, 1, 1, 0, 0, 1, 1, 0, 0]
    batches, audio, visual = token_batches(labels)
    statistics.add_classes(batches, 0, 2)
    targets = torch.tensor(labels)
    for cls in (0, 1):
        for modality, tokens in (("audio", audio), ("visual", visual)):
            own = tokens[targets == cls]
            torch.testing.assert_close(statistics.mean[modality][cls], own.mean(0), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(statistics.std[modality][cls], own.std(0), rtol=1e-5, atol=1e-6)
    later, _, _ = token_batches([2, 3, 2, 3], seed=1)
    statistics.add_classes(later, 2, 4)
    assert statistics.num_classes == 4 and statistics.mean["visual"].shape == (4, 2, 4)
    with pytest.raises(ValueError, match="first: expected 4"):
        statistics.add_classes(later, 2, 4)  # the same classes again


def test_bad_batches_are_refused():
    statistics = TokenStatistics()
    with pytest.raises(ValueError, match="labels: expected classes in \\[0, 2\\)"):
        statistics.add_classes(token_batches([0, 2])[0], 0, 2)
    with pytest.raises(ValueError, match="two training clips, class\\(es\\) \\[1\\]"):
        statistics.add_classes(token_batches([0, 0, 1, 0])[0], 0, 2)
    with pytest.raises(ValueError, match="at least one batch"):
        statistics.add_classes([], 0, 2)


def test_samples_follow_each_classes_statistics_and_their_generator():
    statistics = TokenStatistics()
    statistics.add_classes(token_batches([0, 1] * 20)[0], 0, 2)
    labels = torch.tensor([1] * 4000)
    audio, visual = statistics.sample(labels, torch.Generator().manual_seed(3))
    assert audio.shape == (4000, 3, 4) and visual.shape == (4000, 2, 4) and audio.dtype == torch.float32
    torch.testing.assert_close(audio.mean(0), statistics.mean["audio"][1], atol=0.1, rtol=0)
    torch.testing.assert_close(visual.std(0), statistics.std["visual"][1], atol=0.05, rtol=0.1)
    again, _ = statistics.sample(labels, torch.Generator().manual_seed(3))
    assert torch.equal(audio, again)  # the same seed draws the same clips: ranks and resumed runs agree


def test_state_dict_round_trip():
    statistics = TokenStatistics()
    statistics.add_classes(token_batches([0, 1, 0, 1])[0], 0, 2)
    restored = TokenStatistics()
    restored.load_state_dict(statistics.state_dict())
    for modality in ("audio", "visual"):
        assert torch.equal(restored.mean[modality], statistics.mean[modality])
        assert torch.equal(restored.std[modality], statistics.std[modality])


def test_the_replay_term_trains_the_old_classes_on_replayed_tokens(tmp_path):
    data = write_feature_dataset(tmp_path / "data")
    config = tiny_config(data, tmp_path / "run", "--set", "distill.token_replay=2")
    method = CIGNMethod(config, config.model_config(8, 6))
    model = method.begin_task(method.build_model(), TaskInfo(0, (2,)))
    audio, visual, labels = torch.randn(6, 4, 8), torch.randn(6, 3, 6), torch.tensor([0, 1, 0, 1, 0, 1])
    out = model(audio, visual)
    assert float(method.loss(model, out, labels, None)["replay"]) == 0.0  # no old classes yet
    method.token_statistics.add_classes([(*model.encode(audio, visual), labels)], 0, 2)
    model = method.begin_task(model, TaskInfo(1, (2, 2)))
    new_labels = labels + 2
    terms = method.loss(model, model(audio, visual), new_labels, method.teacher_forward(audio, visual))
    assert float(terms["replay"].detach()) > 0
    torch.testing.assert_close(
        terms["total"], terms["cls_audio"] + terms["cls_visual"] + terms["token_ce"] + terms["kd"] + terms["replay"]
    )
    terms["replay"].backward()
    old_tokens = model.audio_branch.class_tokens[0]
    assert old_tokens.grad is None or not old_tokens.requires_grad  # the old class tokens stay frozen
    assert model.audio_branch.logit_head.weight.grad.abs().sum() > 0  # the shared head learns from the replay
    assert model.audio_encoder.weight.grad is None  # replayed tokens bypass the encoders
    state = method.state_dict()
    fresh = CIGNMethod(config, config.model_config(8, 6))
    fresh.load_state_dict(state)
    assert torch.equal(fresh.token_statistics.mean["audio"], method.token_statistics.mean["audio"])


def test_the_weight_is_checked():
    with pytest.raises(ValueError, match="distill.token_replay"):
        build_config(overrides=["distill.token_replay=-1"])


def test_the_spread_scales_each_draws_deviation_from_the_mean():
    statistics = TokenStatistics()
    statistics.add_classes(token_batches([0, 1] * 5)[0], 0, 2)
    labels = torch.tensor([0, 1, 1])
    mean = statistics.mean["audio"][labels]
    once, _ = statistics.sample(labels, torch.Generator().manual_seed(5))
    twice, _ = statistics.sample(labels, torch.Generator().manual_seed(5), spread=2.0)
    means, _ = statistics.sample(labels, torch.Generator().manual_seed(5), spread=0.0)
    torch.testing.assert_close(twice - mean, 2 * (once - mean))
    assert torch.equal(means, mean)


def test_replay_kd_distils_the_teachers_heads_on_the_replayed_tokens(tmp_path):
    from cign_fast.model.losses import class_token_distillation

    data = write_feature_dataset(tmp_path / "data")
    settings = ("distill.replay_kd=true", "distill.weight=2.0", "distill.replay_spread=0.5")
    config = tiny_config(data, tmp_path / "run", *(arg for setting in settings for arg in ("--set", setting)))
    method = CIGNMethod(config, config.model_config(8, 6))
    torch.manual_seed(0)
    model = method.begin_task(method.build_model(), TaskInfo(0, (2,)))
    audio, visual, labels = torch.randn(6, 4, 8), torch.randn(6, 3, 6), torch.tensor([0, 1, 0, 1, 0, 1])
    method.token_statistics.add_classes([(*model.encode(audio, visual), labels)], 0, 2)
    model = method.begin_task(model, TaskInfo(1, (2, 2))).eval()  # eval: the teacher's assignment mode, no noise
    new_labels = labels + 2
    with torch.no_grad():
        for p in model.audio_branch.parameters():
            p.add_(0.1 * torch.randn_like(p))
    draw = method.replay_draws
    terms = method.loss(model, model(audio, visual), new_labels, None)
    generator = torch.Generator().manual_seed((config.run.seed << 32) + draw)
    drawn = torch.randint(0, 2, (6,), generator=generator)
    replayed = method.token_statistics.sample(drawn, generator, spread=0.5)
    assert method.teacher is not None
    expected = 2.0 * class_token_distillation(
        model.forward_tokens(*replayed),
        method.teacher.forward_tokens(*replayed),
        2,
        config.distill.temperature,
        method.model_config.backend,
        config.distill.form,
        token_heads=False,
    )
    assert float(terms["replay_kd"].detach()) > 0
    torch.testing.assert_close(terms["replay_kd"], expected)
    torch.testing.assert_close(
        terms["total"],
        terms["cls_audio"]
        + terms["cls_visual"]
        + terms["token_ce"]
        + terms["kd"]
        + terms["replay"]
        + terms["replay_kd"],
    )
    off = CIGNMethod(tiny_config(data, tmp_path / "off"), config.model_config(8, 6))
    assert "replay_kd" in off.loss_terms and not off.config.distill.replay_kd  # off by default
