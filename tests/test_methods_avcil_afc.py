"""The defining mechanisms of AV-CIL (audio-guided visual attention, the audio-visual similarity constraints,
attention distillation on the exemplars) and AFC (channel importances from the old model's loss gradient,
importance-weighted distillation, balanced fine-tuning), their extra state round trip, and a tiny CLI run
of each."""

from __future__ import annotations

import copy
import csv
import io
import json
import math

import pytest
import torch
from test_methods import AUDIO_DIM, DIM, VISUAL_DIM, clips, make_method, resources
from test_methods_more import after_two_tasks, assert_same
from torch.nn import functional as F

from cign_fast.cli import main
from cign_fast.methods import TaskInfo
from cign_fast.methods.afc import channel_profiles, importance_weighted_distillation
from cign_fast.methods.avcil import attention_distillation, class_similarity_loss, instance_similarity_loss
from cign_fast.methods.podnet import nca_loss
from cign_fast.methods.ssil import separated_cross_entropy, task_wise_distillation
from cign_fast.train.config import build_config

from helpers import KILLING_RUNNER, one_thread, read_run_results, run_runner, tiny_train_args, write_feature_dataset

FRAMES, PATCHES = 2, 3  # AV-CIL's visual tokens in these tests: 2 frames of 3 patches


def av_clips(count: int, num_classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    audio = torch.randn(count, 3, AUDIO_DIM, generator=generator)
    visual = torch.randn(count, FRAMES * PATCHES, VISUAL_DIM, generator=generator)
    return audio, visual, torch.arange(count) % num_classes


def avcil_at_task_one(*overrides: str):
    """AV-CIL after task 0 (2 classes), begun on task 1 (2 more): the old model is kept."""
    torch.manual_seed(0)
    method = make_method("avcil", f"avcil.frames={FRAMES}", *overrides)
    model = method.begin_task(method.build_model(), TaskInfo(0, (2,)))
    return method, method.begin_task(model, TaskInfo(1, (2, 2)))


# ----- AV-CIL ------------------------------------------------------------------------------------------------


def test_avcil_attention_is_guided_by_the_audio():
    torch.manual_seed(0)
    method = make_method("avcil", f"avcil.frames={FRAMES}")
    model = method.begin_task(method.build_model(), TaskInfo(0, (3,)))
    audio, visual, _ = av_clips(4, 3)
    out = model(audio, visual)
    attention = model.attention
    query = torch.tanh(attention.audio_query(audio.mean(dim=1)))
    frames = visual.view(4, FRAMES, PATCHES, VISUAL_DIM)  # time-major
    keys = torch.tanh(attention.visual_key(frames))
    spatial = keys * query[:, None, None, :]
    torch.testing.assert_close(out.spatial_scores, spatial)
    alpha = F.softmax(spatial, dim=2)
    temporal = (alpha * keys).sum(dim=2) * query[:, None, :]
    torch.testing.assert_close(out.temporal_scores, temporal)
    pooled = (F.softmax(temporal, dim=1) * (alpha * frames).sum(dim=2)).sum(dim=1)
    torch.testing.assert_close(out.visual_features, F.relu(model.visual_proj(pooled)))
    torch.testing.assert_close(out.audio_features, F.relu(model.audio_proj(audio.mean(dim=1))))
    torch.testing.assert_close(alpha.sum(dim=2), torch.ones(4, FRAMES, VISUAL_DIM))
    # another sound over the same pictures: the model looks elsewhere, and sees another visual feature
    other = model(3.0 * torch.randn_like(audio), visual)
    assert (F.softmax(other.spatial_scores, dim=2) - alpha).abs().max() > 1e-3
    assert (F.softmax(other.temporal_scores, dim=1) - F.softmax(temporal, dim=1)).abs().max() > 1e-3
    assert not torch.allclose(other.visual_features, out.visual_features)
    # the frames are equal runs of tokens: swapping them swaps the scores and leaves the pooled feature
    swapped = model(audio, torch.cat([visual[:, PATCHES:], visual[:, :PATCHES]], dim=1))
    torch.testing.assert_close(swapped.spatial_scores, out.spatial_scores.flip(1))
    torch.testing.assert_close(swapped.visual_features, out.visual_features)
    with pytest.raises(ValueError, match=r"avcil\.frames: the visual features have 5 tokens, not a multiple of 2"):
        model(audio, visual[:, :5])


def test_avcil_predictions_read_its_one_classifier():
    method, model = avcil_at_task_one()
    audio, visual, _ = av_clips(6, 4)
    out = model(audio, visual)
    head = model.head.linear
    assert out.logits.shape == (6, 4)
    torch.testing.assert_close(out.audio_logits, head(out.audio_features))
    torch.testing.assert_close(out.visual_logits, head(out.visual_features))
    torch.testing.assert_close(out.logits, head(out.audio_features + out.visual_features))
    torch.testing.assert_close(out.logits, out.audio_logits + out.visual_logits - head.bias)
    predicted = method.predict(out)
    assert torch.equal(predicted["audio_visual"], out.logits.argmax(-1))
    assert torch.equal(predicted["audio"], out.audio_logits.argmax(-1))
    assert torch.equal(predicted["visual"], out.visual_logits.argmax(-1))


def test_avcil_similarity_constraints_are_instance_and_class_aware():
    torch.manual_seed(0)
    audio, visual = torch.randn(6, 5), torch.randn(6, 5)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    scores = F.normalize(audio, dim=-1) @ F.normalize(visual, dim=-1).t() / 0.05
    log_probs = F.log_softmax(scores, dim=-1)
    instance = instance_similarity_loss(audio, visual, 0.05)
    torch.testing.assert_close(instance, -log_probs.diag().mean())
    same_class = (labels[:, None] == labels[None, :]).float()
    torch.testing.assert_close(class_similarity_loss(audio, visual, labels, 0.05), -(log_probs * same_class).sum() / 36)
    # each clip its own class: only the clip's own visual feature is a positive
    torch.testing.assert_close(class_similarity_loss(audio, visual, torch.arange(6), 0.05), instance / 6)
    # matching pairs cost less than mismatched ones
    aligned = audio + 0.05 * torch.randn_like(audio)
    assert float(instance_similarity_loss(audio, aligned, 0.05)) < float(
        instance_similarity_loss(audio, aligned[[1, 2, 3, 4, 5, 0]], 0.05)
    )
    # swapping two visual features of one class: the instance term sees it, the class term does not
    swapped = visual[[1, 0, 2, 3, 4, 5]]
    torch.testing.assert_close(
        class_similarity_loss(audio, swapped, labels, 0.05), class_similarity_loss(audio, visual, labels, 0.05)
    )
    assert abs(float(instance_similarity_loss(audio, swapped, 0.05)) - float(instance)) > 1e-3


def test_avcil_loss_distils_the_attention_of_the_exemplars_only():
    method, model = avcil_at_task_one()
    audio, visual, labels = av_clips(8, 4)  # classes 0 and 1 are old: those clips are exemplars
    old = labels < 2
    teacher_out = method.teacher_forward(audio, visual)
    losses = method.loss(model, model(audio, visual), labels, teacher_out)
    assert float(losses["attention"]) == pytest.approx(0.0, abs=1e-6)  # the model is still the old one
    assert float(losses["kd"]) == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        model.attention.visual_key.weight.add_(0.5 * torch.randn_like(model.attention.visual_key.weight))
    out = model(audio, visual)
    losses = method.loss(model, out, labels, teacher_out)

    def kl(scores, old_scores, dim):
        return F.kl_div(F.log_softmax(scores[old], dim), F.softmax(old_scores[old], dim), reduction="sum") / 4

    spatial = kl(out.spatial_scores, teacher_out.spatial_scores, 2)
    temporal = kl(out.temporal_scores, teacher_out.temporal_scores, 1)
    torch.testing.assert_close(losses["attention"], 0.5 * spatial + 0.5 * temporal)
    assert float(spatial) > 0 and float(temporal) > 0
    # what the new classes' clips attend to is not distilled
    scrambled = out.spatial_scores.clone()
    scrambled[~old] = torch.randn_like(scrambled[~old])
    torch.testing.assert_close(
        attention_distillation(scrambled, teacher_out.spatial_scores, 2, old),
        attention_distillation(out.spatial_scores, teacher_out.spatial_scores, 2, old),
    )
    assert float(attention_distillation(out.spatial_scores, teacher_out.spatial_scores, 2, ~old & old)) == 0.0
    # the other terms: separated softmax, task-wise KD, the two similarity constraints with their weights
    torch.testing.assert_close(losses["ce"], separated_cross_entropy(out.logits, labels, 2))
    torch.testing.assert_close(
        losses["kd"],
        task_wise_distillation(out.logits, teacher_out.logits, method.task, 2.0, method.model_config.backend),
    )
    torch.testing.assert_close(
        losses["instance"], 0.1 * instance_similarity_loss(out.audio_features, out.visual_features, 0.05)
    )
    torch.testing.assert_close(
        losses["class"], class_similarity_loss(out.audio_features, out.visual_features, labels, 0.05)
    )
    torch.testing.assert_close(losses["total"], sum(v for k, v in losses.items() if k != "total"))
    # task 0 has no old model: the cross-entropy alone
    first = make_method("avcil", f"avcil.frames={FRAMES}")
    first_model = first.begin_task(first.build_model(), TaskInfo(0, (4,)))
    first_losses = first.loss(first_model, first_model(audio, visual), labels, None)
    torch.testing.assert_close(first_losses["total"], F.cross_entropy(first_model(audio, visual).logits, labels))


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["method=avcil", "memory.per_class=2"], r"data\.input_mode: method 'avcil' runs on 'features' inputs"),
        (["method=avcil", "data.input_mode=features"], r"method 'avcil' needs an exemplar memory"),
        (["method=afc"], r"method 'afc' needs an exemplar memory"),
        (["avcil.frames=0"], r"avcil\.frames: expected a number > 0"),
        (["avcil.class_temperature=0"], r"avcil\.class_temperature: expected a number > 0"),
        (["avcil.spatial_weight=-1"], r"avcil\.spatial_weight: expected a number >= 0"),
        (["afc.finetune_epochs=-1"], r"afc\.finetune_epochs: expected a number >= 0"),
        (["afc.finetune_lr=0"], r"afc\.finetune_lr: expected a number > 0"),
        (["afc.weight=-0.5"], r"afc\.weight: expected a number >= 0"),
    ],
)
def test_avcil_and_afc_settings_are_checked_naming_the_key(overrides, named):
    with pytest.raises(ValueError, match=named):
        build_config(overrides=overrides)


# ----- AFC ---------------------------------------------------------------------------------------------------


def test_afc_distillation_is_weighted_channel_by_channel():
    torch.manual_seed(0)
    tokens = torch.randn(3, 5, 4)
    importance = torch.tensor([2.0, 0.0, 1.0, 0.5])
    assert float(importance_weighted_distillation(tokens, tokens.clone(), importance)) == 0.0
    moved = tokens.clone()
    moved[:, :, 1] += torch.randn(3, 5)  # a channel of no importance: not distilled
    assert float(importance_weighted_distillation(moved, tokens, importance)) == 0.0
    moved[:, :, 0] += 0.5 * torch.randn(3, 5)
    loss = importance_weighted_distillation(moved, tokens, importance)
    profiles = F.normalize(moved.pow(2), dim=1), F.normalize(tokens.pow(2), dim=1)  # per channel, over the tokens
    torch.testing.assert_close(loss, (importance * (profiles[0] - profiles[1]).norm(dim=1)).mean())
    assert float(loss) > 0
    torch.testing.assert_close(importance_weighted_distillation(moved, tokens, 3 * importance), 3 * loss)
    # one token: its channels are normalised together (a one-token profile would always be 1)
    single = tokens[:, :1]
    torch.testing.assert_close(channel_profiles(single), F.normalize(single.pow(2), dim=2))
    assert (
        float(importance_weighted_distillation(single * torch.tensor([1.0, 2.0, 1.0, 1.0]), single, torch.ones(4))) > 0
    )
    with pytest.raises(ValueError, match=r"importance: expected \[4\] \(one per channel\)"):
        importance_weighted_distillation(moved, tokens, torch.ones(5))
    with pytest.raises(ValueError, match=r"old_tokens: expected the new map's shape"):
        importance_weighted_distillation(moved, tokens[:, :4], importance)


def afc_after_task_zero(*overrides: str):
    torch.manual_seed(0)
    method = make_method("afc", *overrides)
    model = method.begin_task(method.build_model(), TaskInfo(0, (2,)))
    audio, visual, labels = clips(8, 2)
    method.end_task(model, resources(TaskInfo(0, (2,)), model, method, audio, visual, labels, {0: [0, 2], 1: [1, 3]}))
    return method, model, (audio, visual, labels)


def hand_importance(model, modality: str, audio, visual, labels) -> torch.Tensor:
    """Clip by clip: the squared gradient of the clip's NCA loss with respect to its token map, summed over the
    tokens, averaged over the clips, divided by its channel mean (the model may be frozen)."""
    branch = getattr(model, f"{modality}_branch")
    inputs = audio if modality == "audio" else visual
    total = torch.zeros(DIM)
    for row in range(labels.shape[0]):
        tokens = branch.norm(branch.transformer(branch.encoder(inputs[row : row + 1]))).detach().requires_grad_()
        loss = nca_loss(branch.head(tokens.mean(dim=1)), labels[row : row + 1], branch.head.scale, 0.6)
        (gradient,) = torch.autograd.grad(loss, tokens)
        total += gradient.pow(2).sum(dim=(0, 1))
    mean = total / labels.shape[0]
    return mean / mean.mean()


def test_afc_importance_is_the_old_models_squared_loss_gradient():
    method, model, (audio, visual, labels) = afc_after_task_zero()
    kept = {modality: tensor.clone() for modality, tensor in method.importance.items()}
    for modality in ("audio", "visual"):
        assert kept[modality].shape == (DIM,) and bool((kept[modality] >= 0).all())
        assert float(kept[modality].mean()) == pytest.approx(1.0, rel=1e-5)
        assert float(kept[modality].max() - kept[modality].min()) > 0  # channels differ
    model = method.begin_task(model, TaskInfo(1, (2, 2)))
    with torch.no_grad():  # training the new model moves it away from the old one
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    for modality in ("audio", "visual"):
        torch.testing.assert_close(method.importance[modality], kept[modality])
        torch.testing.assert_close(
            kept[modality], hand_importance(method.teacher, modality, audio, visual, labels), rtol=1e-4, atol=1e-6
        )
        moved = hand_importance(model, modality, audio, visual, labels)
        assert (moved - kept[modality]).abs().max() > 1e-3  # it is the old model's, not the new one's
    # the distillation uses them: 4 * sqrt(N / N_new) * (audio + visual)
    audio, visual, labels = clips(6, 4, seed=1)
    teacher_out = method.teacher_forward(audio, visual)
    out = model(audio, visual)
    losses = method.loss(model, out, labels, teacher_out)
    expected = sum(
        importance_weighted_distillation(getattr(out, f"{m}_tokens"), getattr(teacher_out, f"{m}_tokens"), kept[m])
        for m in ("audio", "visual")
    )
    torch.testing.assert_close(losses["afc"], 4.0 * math.sqrt(4 / 2) * expected)
    assert float(losses["afc"]) > 0
    torch.testing.assert_close(losses["total"], losses["nca_audio"] + losses["nca_visual"] + losses["afc"])
    method.importance = {m: torch.zeros(DIM) for m in kept}  # nothing matters: nothing is distilled
    assert float(method.loss(model, out, labels, teacher_out)["afc"]) == 0.0


def test_afc_balanced_finetuning_fits_only_the_proxies_on_the_memory():
    method, model, _ = afc_after_task_zero("afc.finetune_epochs=5")
    model = method.begin_task(model, TaskInfo(1, (2, 2)))
    audio, visual, labels = clips(16, 4, seed=1)
    exemplars = {0: [0, 4], 1: [1, 5], 2: [2, 6], 3: [3, 7]}
    memory = torch.tensor([0, 4, 1, 5, 2, 6, 3, 7])

    def memory_loss(model):
        with torch.no_grad():
            out = model.eval()(audio[memory], visual[memory])
            return sum(
                float(
                    nca_loss(getattr(out, f"{m}_logits"), labels[memory], getattr(model, f"{m}_branch").head.scale, 0.6)
                )
                for m in ("audio", "visual")
            )

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss_before = memory_loss(model)
    twin_method, twin_model = copy.deepcopy(method), copy.deepcopy(model)
    method.end_task(model, resources(TaskInfo(1, (2, 2)), model, method, audio, visual, labels, exemplars))
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {"audio_branch.head.weight", "visual_branch.head.weight"}  # the scales stay
    assert all(p.grad is None for p in model.parameters())
    assert memory_loss(model) < loss_before
    # the same state fine-tunes to the same heads (seeded by run.seed and the task)
    twin_method.end_task(
        twin_model, resources(TaskInfo(1, (2, 2)), twin_model, twin_method, audio, visual, labels, exemplars)
    )
    for name, param in model.named_parameters():
        assert torch.equal(param, dict(twin_model.named_parameters())[name]), name
    # the importances are then those of the fine-tuned model, over the task's clips and the old exemplars
    rows = torch.tensor(list(range(16)) + [0, 4, 1, 5])
    torch.testing.assert_close(
        method.importance["audio"],
        hand_importance(model, "audio", audio[rows], visual[rows], labels[rows]),
        rtol=1e-4,
        atol=1e-6,
    )
    # without the stage the heads stay as trained
    method, model, _ = afc_after_task_zero("afc.finetune_epochs=0")
    model = method.begin_task(model, TaskInfo(1, (2, 2)))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    method.end_task(model, resources(TaskInfo(1, (2, 2)), model, method, audio, visual, labels, exemplars))
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


# ----- extra state and the CLI -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["avcil", "afc"])
def test_extra_state_after_a_second_task_round_trips_exactly(name):
    overrides = ("memory.per_class=2", "avcil.frames=2", "afc.finetune_epochs=2")
    method, model = after_two_tasks(name, *overrides)
    audio, visual, labels = clips(16, 4, seed=1)
    exemplars = {0: [0, 4], 1: [1, 5], 2: [2, 6], 3: [3, 7]}
    method.end_task(model, resources(TaskInfo(1, (2, 2)), model, method, audio, visual, labels, exemplars))
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    restored = make_method(name, *overrides)
    restored.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert_same(restored.state_dict(), method.state_dict())
    if name == "afc":
        assert set(restored.importance) == {"audio", "visual"}
    with torch.no_grad():
        out = model.eval()(audio, visual)
        old, again = method.teacher_forward(audio, visual), restored.teacher_forward(audio, visual)
    for field, tensor in zip(old._fields, old, strict=True):
        assert torch.equal(getattr(again, field), tensor), field
    losses, restored_losses = method.loss(model, out, labels, old), restored.loss(model, out, labels, again)
    for term, value in losses.items():
        assert torch.equal(restored_losses[term], value), term
    for modality, predicted in method.predict(out).items():
        assert torch.equal(restored.predict(out)[modality], predicted)


@pytest.mark.parametrize("name, distilled", [("avcil", ("instance", "class", "attention")), ("afc", ("afc",))])
def test_a_tiny_run_of_each_through_the_cli(tmp_path, name, distilled):
    data = write_feature_dataset(
        tmp_path / "data", num_classes=4, train_per_class=8, test_per_class=4, visual_shape=(FRAMES * PATCHES, 6)
    )
    out = tmp_path / name
    args = ["--method", name, "--tasks", "2", "--epochs", "2", "--memory-per-class", "3"]
    with one_thread():
        assert main(["train", *tiny_train_args(data, out, *args, "--set", f"avcil.frames={FRAMES}")]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for modality in ("audio", "visual", "audio_visual"):
        assert len(metrics[modality]["matrix"]) == 2
    with (out / "epochs.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["task"]) for row in rows] == [0, 0, 1, 1]
    for row in rows:
        for term in distilled:
            assert (float(row[term]) > 0) == (int(row["task"]) == 1), (term, row)


def test_a_run_of_afc_killed_after_its_fine_tuning_resumes_to_the_uninterrupted_metrics(tmp_path):
    """AFC changes the model in end_task: a run killed between that and the task's checkpoint redoes it
    from the last epoch's checkpoint and ends where the uninterrupted run does."""
    data = write_feature_dataset(tmp_path / "data", num_classes=4, train_per_class=8, test_per_class=4)
    extra = ("--method", "afc", "--tasks", "2", "--epochs", "2", "--memory-per-class", "3")
    with one_thread():
        assert main(["train", *tiny_train_args(data, tmp_path / "reference", *extra)]) == 0
    args = tiny_train_args(data, tmp_path / "killed", *extra)
    killed = run_runner(KILLING_RUNNER, ["afc", "evaluate", "2", "train", *args], timeout=600)
    assert killed.returncode == -9, killed.stderr
    assert "after task 1/2" in killed.stdout and "after task 2/2" not in killed.stdout
    with one_thread():
        assert main(["train", *args, "--resume"]) == 0
    expected_metrics, expected_losses = read_run_results(tmp_path / "reference")
    metrics, losses = read_run_results(tmp_path / "killed")
    for modality in ("audio", "visual", "audio_visual"):
        assert metrics[modality] == expected_metrics[modality]
    assert losses == pytest.approx(expected_losses, rel=1e-6, abs=1e-9)
