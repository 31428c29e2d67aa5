"""The methods' defining mechanisms on small data: EWC's Fisher and penalty, LwF's distillation target,
iCaRL's distilled BCE and nearest-mean classifier, SS-IL's separated softmax and task-wise KD, the
shared backbone, the registry and config rules, and every method's extra state round trip."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch.nn import functional as F

from cign_fast.methods import METHODS, TaskInfo, TaskResources, build_method
from cign_fast.methods.backbone import Backbone, BackboneOutput, distill_old_classes, late_fusion_predict
from cign_fast.methods.icarl import class_means, distilled_bce, nearest_mean_predict
from cign_fast.methods.ssil import separated_cross_entropy, task_wise_distillation
from cign_fast.model import cign_loss
from cign_fast.model import predict as cign_predict
from cign_fast.train.config import build_config
from cign_fast.train.distributed import DistContext

AUDIO_DIM, VISUAL_DIM, DIM = 6, 5, 8


def make_method(name: str, *overrides: str):
    memory = ["memory.per_class=2"] if METHODS[name].memory_use == "required" else []
    config = build_config(
        overrides=[
            "data.input_mode=features",
            f"method={name}",
            f"model.dim={DIM}",
            "model.depth=1",
            "model.num_heads=2",
            "model.drop_path=0.0",
            *memory,
            *overrides,
        ]
    )
    return build_method(config, config.model_config(AUDIO_DIM, VISUAL_DIM))


def clips(count: int, num_classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    audio = torch.randn(count, 3, AUDIO_DIM, generator=generator)
    visual = torch.randn(count, 2, VISUAL_DIM, generator=generator)
    return audio, visual, torch.arange(count) % num_classes


def resources(task: TaskInfo, model, method, audio, visual, labels, exemplars=None) -> TaskResources:
    """What the trainer hands ``end_task``, over in-memory clips (indices = rows)."""

    def batches(indices):
        for chunk in torch.tensor(list(indices), dtype=torch.long).split(4):
            yield audio[chunk], visual[chunk], labels[chunk]

    def embed(indices):
        rows = torch.tensor(list(indices), dtype=torch.long)
        with torch.no_grad():
            return method.embed(model.eval()(audio[rows], visual[rows]), labels[rows]), list(indices)

    return TaskResources(
        task=task,
        task_indices=list(range(len(labels))),
        exemplars=exemplars or {},
        context=DistContext(0, 1, 0, torch.device("cpu")),
        batches=batches,
        embed=embed,
        all_reduce_sum=lambda tensor: tensor,
    )


def backbone_output(audio_logits: torch.Tensor, visual_logits: torch.Tensor) -> BackboneOutput:
    batch = audio_logits.shape[0]
    return BackboneOutput(
        audio_logits,
        visual_logits,
        torch.randn(batch, DIM),
        torch.randn(batch, DIM),
        torch.randn(batch, 3, DIM),
        torch.randn(batch, 2, DIM),
    )


# ----- registry, config, backbone ----------------------------------------------------------------------------


def test_every_method_is_registered_and_unknown_names_are_refused():
    assert tuple(METHODS) == (
        "cign",
        "finetune",
        "joint",
        "ewc",
        "lwf",
        "icarl",
        "ssil",
        "il2m",
        "bic",
        "podnet",
        "afc",
        "l2p",
        "avcil",
    )
    with pytest.raises(ValueError, match=r"config method: expected one of .*'ssil'.*got 'ewcc'"):
        build_config(overrides=["method=ewcc"])


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["method=icarl"], r"memory\.budget, memory\.per_class: method 'icarl' needs an exemplar memory"),
        (["method=ssil"], r"method 'ssil' needs an exemplar memory"),
        (["method=joint", "memory.per_class=5"], r"method 'joint' keeps no exemplars"),
        (["memory.budget=10", "memory.per_class=5"], r"set one of the two"),
        (["ewc.fisher_decay=1.5"], r"ewc\.fisher_decay: expected a number in \[0, 1\]"),
        (["icarl.classifier=knn"], r"icarl\.classifier: expected one of 'nme', 'cnn'"),
        (["lwf.temperature=0"], r"lwf\.temperature: expected a number > 0"),
    ],
)
def test_method_settings_are_checked_naming_the_key(overrides, named):
    with pytest.raises(ValueError, match=named):
        build_config(overrides=overrides)


def test_backbone_heads_grow_keeping_the_old_rows():
    torch.manual_seed(0)
    model = Backbone(make_method("finetune").model_config)
    model.add_task(2)
    old_weight = model.audio_branch.head.linear.weight.detach().clone()
    old_bias = model.visual_branch.head.linear.bias.detach().clone()
    model.add_task(3)
    assert model.task_sizes == [2, 3]
    torch.testing.assert_close(model.audio_branch.head.linear.weight[:2], old_weight)
    torch.testing.assert_close(model.visual_branch.head.linear.bias[:2], old_bias)
    audio, visual, _ = clips(4, 5)
    out = model(audio, visual)
    assert out.audio_logits.shape == out.visual_logits.shape == (4, 5)
    assert out.audio_features.shape == (4, DIM) and out.visual_tokens.shape == (4, 2, DIM)
    torch.testing.assert_close(out.audio_features, out.audio_tokens.mean(dim=1))
    with pytest.raises(ValueError, match=r"audio: expected a non-empty \[B, S_a, audio_feature_dim\]"):
        model(torch.randn(4, 3, AUDIO_DIM + 1), visual)


def test_late_fusion_is_the_product_of_the_two_posteriors():
    # audio prefers class 0 weakly, visual prefers class 2 weakly; both find class 1 nearly as likely
    audio = torch.tensor([[0.50, 0.45, 0.05]]).log()
    visual = torch.tensor([[0.05, 0.45, 0.50]]).log()
    predictions = late_fusion_predict(audio, visual)
    assert predictions["audio"].tolist() == [0] and predictions["visual"].tolist() == [2]
    assert predictions["audio_visual"].tolist() == [1]  # 0.45 * 0.45 > 0.5 * 0.05


def test_default_and_joint_training_clips():
    task = TaskInfo(2, (2, 2, 2))
    clips_of_task = {0: [0, 1], 1: [2, 3], 2: [4, 5]}.get
    assert make_method("finetune").train_indices(task, clips_of_task, [9]) == [4, 5, 9]
    assert make_method("joint").train_indices(task, clips_of_task, []) == [0, 1, 2, 3, 4, 5]


def test_cign_method_is_cign_loss_and_predict():
    torch.manual_seed(0)
    method = make_method("cign", "distill.temperature=3.0", "distill.weight=0.5", "distill.token_replay=0")
    model = method.begin_task(method.build_model(), TaskInfo(0, (2,)))
    model = method.begin_task(model, TaskInfo(1, (2, 2)))
    audio, visual, labels = clips(4, 4)
    out, teacher_out = model(audio, visual), method.teacher_forward(audio, visual)
    expected = cign_loss(out, labels, teacher_out, 2, temperature=3.0, kd_weight=0.5)
    losses = method.loss(model, out, labels, teacher_out)
    assert set(losses) == {"total", *method.loss_terms}
    for key, value in expected.items():
        torch.testing.assert_close(losses[key], value)
    assert float(losses["kd"].detach()) > 0
    for key, value in cign_predict(out).items():
        assert torch.equal(method.predict(out)[key], value)
    assert make_method("cign", "distill.enabled=false").uses_teacher is False


# ----- EWC ---------------------------------------------------------------------------------------------------


def fisher_by_loop(model, audio, visual, labels) -> dict[str, torch.Tensor]:
    """The diagonal empirical Fisher written out: one backward per clip."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    sums = {name: torch.zeros_like(p) for name, p in params.items()}
    model.eval()
    for row in range(labels.shape[0]):
        out = model(audio[row : row + 1], visual[row : row + 1])
        loss = F.cross_entropy(out.audio_logits, labels[row : row + 1]) + F.cross_entropy(
            out.visual_logits, labels[row : row + 1]
        )
        for (name, _), gradient in zip(params.items(), torch.autograd.grad(loss, list(params.values())), strict=True):
            sums[name] += gradient.pow(2)
    return {name: total / labels.shape[0] for name, total in sums.items()}


def ewc_after_first_task(*overrides: str):
    """An EWC method and model after task 0 (2 classes) and its Fisher, and the task's clips."""
    torch.manual_seed(0)
    method = make_method("ewc", *overrides)
    model = method.begin_task(method.build_model(), TaskInfo(0, (2,)))
    audio, visual, labels = clips(10, 2)
    method.end_task(model, resources(TaskInfo(0, (2,)), model, method, audio, visual, labels))
    return method, model, (audio, visual, labels)


def test_ewc_fisher_is_the_mean_squared_per_clip_gradient_and_accumulates():
    method, model, (audio, visual, labels) = ewc_after_first_task("ewc.fisher_decay=0.5")
    expected = fisher_by_loop(model, audio, visual, labels)
    assert set(method.fisher) == set(expected)
    for name, fisher in method.fisher.items():
        torch.testing.assert_close(fisher, expected[name], rtol=1e-4, atol=1e-8)
        assert bool((fisher >= 0).all())
    assert sum(float(f.sum()) for f in method.fisher.values()) > 0
    first = {name: fisher.clone() for name, fisher in method.fisher.items()}

    model = method.begin_task(model, TaskInfo(1, (2, 2)))
    audio, visual, labels = clips(8, 2, seed=1)
    labels = labels + 2
    method.end_task(model, resources(TaskInfo(1, (2, 2)), model, method, audio, visual, labels))
    second = fisher_by_loop(model, audio, visual, labels)
    head = "audio_branch.head.linear.weight"
    assert method.fisher[head].shape == (4, DIM)
    torch.testing.assert_close(method.fisher[head][:2], second[head][:2] + 0.5 * first[head], rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(method.fisher[head][2:], second[head][2:], rtol=1e-4, atol=1e-8)
    for name, anchor in method.anchor.items():
        assert torch.equal(anchor, dict(model.named_parameters())[name].detach())


def test_ewc_penalty_is_zero_at_the_anchor_and_quadratic_in_the_distance():
    method, model, (audio, visual, labels) = ewc_after_first_task("ewc.weight=100.0")
    model = method.begin_task(model, TaskInfo(1, (2, 2)))  # the heads grow: new rows are not penalised
    assert float(method.penalty(model).detach()) == 0.0
    directions = {name: torch.randn_like(p) for name, p in model.named_parameters()}
    anchor_state = copy.deepcopy(model.state_dict())

    def penalty_at(step: float) -> float:
        model.load_state_dict(anchor_state)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.add_(step * directions[name])
        return float(method.penalty(model).detach())

    expected = (
        0.5
        * 100.0
        * sum(
            float((method.fisher[n] * directions[n][tuple(slice(0, s) for s in a.shape)] ** 2).sum())
            for n, a in method.anchor.items()
        )
    )
    assert penalty_at(1e-2) == pytest.approx(expected * 1e-4, rel=1e-3)
    assert penalty_at(2e-2) == pytest.approx(4 * penalty_at(1e-2), rel=1e-3)
    model.load_state_dict(anchor_state)
    with torch.no_grad():
        model.audio_branch.head.linear.weight[2:] += 5.0  # a new class's row: free to move
    assert float(method.penalty(model).detach()) == 0.0
    losses = method.loss(model, model(audio, visual), labels, None)
    torch.testing.assert_close(losses["total"], losses["ce_audio"] + losses["ce_visual"] + losses["ewc"])


# ----- LwF ---------------------------------------------------------------------------------------------------


def test_lwf_distils_towards_the_model_of_the_previous_task():
    torch.manual_seed(0)
    method = make_method("lwf", "lwf.temperature=2.0", "lwf.weight=0.5")
    model = method.begin_task(method.build_model(), TaskInfo(0, (3,)))
    audio, visual, labels = clips(5, 5)
    before = copy.deepcopy(model).eval()
    model = method.begin_task(model, TaskInfo(1, (3, 2)))
    with torch.no_grad():  # "training" moves the student away
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    teacher_out = method.teacher_forward(audio, visual)
    torch.testing.assert_close(teacher_out.audio_logits, before(audio, visual).audio_logits)
    out = model(audio, visual)
    losses = method.loss(model, out, labels, teacher_out)

    def kl(student, teacher):  # LwF's term without T^2, written out
        p_teacher = F.softmax(teacher / 2.0, dim=-1)
        return (p_teacher * (p_teacher.log() - F.log_softmax(student[:, :3] / 2.0, dim=-1))).sum(-1).mean()

    expected = 0.5 * (kl(out.audio_logits, teacher_out.audio_logits) + kl(out.visual_logits, teacher_out.visual_logits))
    torch.testing.assert_close(losses["kd"], expected)
    same = backbone_output(
        torch.cat([teacher_out.audio_logits, torch.randn(5, 2)], 1),
        torch.cat([teacher_out.visual_logits, torch.randn(5, 2)], 1),
    )
    assert float(method.loss(model, same, labels, teacher_out)["kd"]) == pytest.approx(0.0, abs=1e-6)


# ----- iCaRL -------------------------------------------------------------------------------------------------


def test_icarl_bce_targets_are_the_label_on_new_columns_and_the_old_sigmoids_on_old_ones():
    torch.manual_seed(0)
    logits = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 3)
    labels = torch.tensor([3, 4, 0, 2])
    new, old = distilled_bce(logits, labels, teacher)
    targets = F.one_hot(labels, 5).float()
    targets[:, :3] = torch.sigmoid(teacher)
    torch.testing.assert_close(new + old, F.binary_cross_entropy_with_logits(logits, targets))
    (gradient,) = torch.autograd.grad(new + old, logits)
    torch.testing.assert_close(gradient[:, :3], (torch.sigmoid(logits[:, :3]) - torch.sigmoid(teacher)).detach() / 20)
    same = torch.cat([teacher, torch.randn(4, 2)], dim=1).requires_grad_()
    (gradient,) = torch.autograd.grad(sum(distilled_bce(same, labels, teacher)), same)
    assert gradient[:, :3].abs().max() < 1e-7  # matching the old model costs nothing


def test_icarl_nearest_mean_classifier_is_the_nearest_normalised_exemplar_mean():
    torch.manual_seed(0)
    width = 4
    embeddings = torch.cat(
        [F.normalize(torch.randn(12, width), dim=-1), F.normalize(torch.randn(12, width), dim=-1)], 1
    )
    labels = torch.arange(12) % 3
    means = class_means(embeddings, labels, 3, width)
    for cls in range(3):
        for half in (slice(0, width), slice(width, 2 * width)):
            torch.testing.assert_close(means[cls, half], F.normalize(embeddings[labels == cls, half].mean(0), dim=0))
    queries = torch.cat([F.normalize(torch.randn(7, width), dim=-1), F.normalize(torch.randn(7, width), dim=-1)], 1)
    predictions = nearest_mean_predict(queries, means, width)
    for row in range(7):
        audio = [float((queries[row, :width] - means[c, :width]).norm()) for c in range(3)]
        visual = [float((queries[row, width:] - means[c, width:]).norm()) for c in range(3)]
        both = [float((queries[row] - means[c]).norm()) for c in range(3)]
        assert predictions["audio"][row] == min(range(3), key=audio.__getitem__)
        assert predictions["visual"][row] == min(range(3), key=visual.__getitem__)
        assert predictions["audio_visual"][row] == min(range(3), key=both.__getitem__)
    with pytest.raises(ValueError, match=r"exemplars: .* none for class\(es\) \[2\]"):
        class_means(embeddings[labels < 2], labels[labels < 2], 3, width)


def test_icarl_means_come_from_the_exemplars_and_drive_predict():
    torch.manual_seed(0)
    method = make_method("icarl")
    model = method.begin_task(method.build_model(), TaskInfo(0, (2,)))
    audio, visual, labels = clips(8, 2)
    with pytest.raises(ValueError, match=r"icarl\.classifier: the nearest-mean classifier has class means for 0"):
        method.predict(model(audio, visual))
    exemplars = {0: [4, 0], 1: [3]}
    method.end_task(model, resources(TaskInfo(0, (2,)), model, method, audio, visual, labels, exemplars))
    with torch.no_grad():
        out = model.eval()(audio, visual)
    embedded = method.embed(out, labels)
    expected = class_means(embedded[[4, 0, 3]], torch.tensor([0, 0, 1]), 2, DIM)
    torch.testing.assert_close(method.means, expected)
    assert torch.equal(
        method.predict(out)["audio_visual"], nearest_mean_predict(embedded, expected, DIM)["audio_visual"]
    )


# ----- SS-IL -------------------------------------------------------------------------------------------------


def test_ssil_softmax_is_separated_between_old_and_new_classes():
    torch.manual_seed(0)
    logits = torch.randn(4, 5, requires_grad=True)
    labels = torch.tensor([0, 2, 3, 4])  # two old-class clips (exemplars), two new-class clips
    loss = separated_cross_entropy(logits, labels, num_old=3)
    expected = (
        F.cross_entropy(logits[:2, :3], labels[:2], reduction="sum")
        + F.cross_entropy(logits[2:, 3:], labels[2:] - 3, reduction="sum")
    ) / 4
    torch.testing.assert_close(loss, expected)
    (gradient,) = torch.autograd.grad(loss, logits)
    assert not gradient[:2, 3:].any() and not gradient[2:, :3].any()  # no push across the groups
    assert gradient[:2, :3].abs().sum() > 0 and gradient[2:, 3:].abs().sum() > 0
    torch.testing.assert_close(separated_cross_entropy(logits, labels, 0), F.cross_entropy(logits, labels))


def test_ssil_distillation_is_task_wise():
    torch.manual_seed(0)
    task = TaskInfo(2, (2, 3, 2))  # old tasks: classes 0-1 and 2-4
    student, teacher = torch.randn(6, 7), torch.randn(6, 5)

    def kl(s, t):
        p = F.softmax(t / 2.0, dim=-1)
        return 4.0 * (p * (p.log() - F.log_softmax(s / 2.0, dim=-1))).sum(-1).mean()

    expected = kl(student[:, 0:2], teacher[:, 0:2]) + kl(student[:, 2:5], teacher[:, 2:5])
    torch.testing.assert_close(task_wise_distillation(student, teacher, task, 2.0, "reference"), expected)
    shifted = student.clone()
    shifted[:, 2:5] += 3.0  # one old task's logits all shifted together
    torch.testing.assert_close(task_wise_distillation(shifted, teacher, task, 2.0, "reference"), expected)
    # a single softmax over all old classes is not blind to that shift
    assert float(distill_old_classes(shifted, teacher, 2.0, "reference")) != pytest.approx(
        float(distill_old_classes(student, teacher, 2.0, "reference")), rel=1e-3
    )


def test_ssil_loss_terms():
    torch.manual_seed(0)
    method = make_method("ssil", "ssil.weight=0.5")
    model = method.begin_task(method.build_model(), TaskInfo(0, (2,)))
    model = method.begin_task(model, TaskInfo(1, (2, 2)))
    audio, visual, labels = clips(6, 4)
    out, teacher_out = model(audio, visual), method.teacher_forward(audio, visual)
    losses = method.loss(model, out, labels, teacher_out)
    torch.testing.assert_close(losses["ce_audio"], separated_cross_entropy(out.audio_logits, labels, 2))
    expected_kd = 0.5 * sum(
        task_wise_distillation(getattr(out, key), getattr(teacher_out, key), method.task, 2.0, "auto")
        for key in ("audio_logits", "visual_logits")
    )
    torch.testing.assert_close(losses["kd"], expected_kd)
    torch.testing.assert_close(losses["total"], losses["ce_audio"] + losses["ce_visual"] + losses["kd"])


# ----- extra state -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(METHODS))
def test_extra_state_round_trips_through_a_weights_only_checkpoint(name):
    torch.manual_seed(0)
    method = make_method(name)
    model = method.begin_task(method.build_model(), TaskInfo(0, (2,)))
    audio, visual, labels = clips(6, 2)
    method.end_task(model, resources(TaskInfo(0, (2,)), model, method, audio, visual, labels, {0: [0, 2], 1: [1]}))
    model = method.begin_task(model, TaskInfo(1, (2, 2)))
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    restored = make_method(name)
    restored.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert restored.task == method.task == TaskInfo(1, (2, 2))
    assert (restored.teacher is None) == (method.teacher is None) == (not method.uses_teacher)
    if method.teacher is not None:
        assert not any(p.requires_grad for p in restored.teacher.parameters()) and not restored.teacher.training
        for key, value in method.teacher.state_dict().items():
            assert torch.equal(restored.teacher.state_dict()[key], value)
    for attribute in ("fisher", "anchor"):
        for key, value in getattr(method, attribute, {}).items():
            assert torch.equal(getattr(restored, attribute)[key], value)
    if name == "icarl":
        assert torch.equal(restored.means, method.means)
