"""cign_loss: the classification (cross-entropy or BCE), token-CE and distillation terms, their gradients,
bad input, and a tiny overfit run."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from cign_fast.model import CIGN, CIGNOutput, ModelConfig, cign_loss

AUDIO_DIM, VISUAL_DIM = 12, 20


def tiny_model(*task_sizes: int, **overrides) -> CIGN:
    settings = dict(
        input_mode="features", dim=32, depth=1, num_heads=2, audio_feature_dim=AUDIO_DIM, visual_feature_dim=VISUAL_DIM
    )
    model = CIGN(ModelConfig(**{**settings, **overrides}))
    for size in task_sizes:
        model.add_task(size)
    return model


def random_output(batch: int, num_classes: int, dim: int = 4, requires_grad: bool = False) -> CIGNOutput:
    shapes = [(batch, num_classes)] * 2 + [(batch, num_classes, num_classes)] * 2 + [(batch, num_classes, dim)] * 4
    return CIGNOutput(*(torch.randn(shape, requires_grad=requires_grad) for shape in shapes))


def kl_on_old(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * mean over rows of KL(softmax(teacher/T) || softmax(student/T)), written out."""
    log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)
    log_p_student = F.log_softmax(student / temperature, dim=-1)
    return temperature**2 * (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1).mean()


def test_first_task_terms_match_their_formulas():
    torch.manual_seed(0)
    out = random_output(batch=4, num_classes=3)
    labels = torch.tensor([0, 2, 1, 2])
    losses = cign_loss(out, labels, None, 0)
    assert set(losses) == {"cls_audio", "cls_visual", "token_ce", "kd", "total"}
    expected_ce = -F.log_softmax(out.audio_logits, dim=-1)[torch.arange(4), labels].mean()
    torch.testing.assert_close(losses["cls_audio"], expected_ce)
    onehot = F.one_hot(labels, 3).float()
    p_audio = torch.sigmoid(out.audio_logits)
    expected_bce = -(onehot * p_audio.log() + (1 - onehot) * (1 - p_audio).log()).mean()
    torch.testing.assert_close(cign_loss(out, labels, None, 0, classification="bce")["cls_audio"], expected_bce)
    token_targets = torch.tensor([0, 1, 2] * 4)
    expected_token_ce = sum(
        -F.log_softmax(logits.reshape(12, 3), dim=-1)[torch.arange(12), token_targets].mean()
        for logits in (out.audio_token_logits, out.visual_token_logits)
    )
    torch.testing.assert_close(losses["token_ce"], expected_token_ce)
    assert float(losses["kd"]) == 0.0
    torch.testing.assert_close(losses["total"], losses["cls_audio"] + losses["cls_visual"] + losses["token_ce"])


def bernoulli_kl_on_old(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * mean over rows of the sum over columns of KL(Bern(sigmoid(teacher/T)) || Bern(sigmoid(student/T)))."""
    p_t, p_s = torch.sigmoid(teacher / temperature), torch.sigmoid(student / temperature)
    kl = p_t * (p_t.log() - p_s.log()) + (1 - p_t) * ((1 - p_t).log() - (1 - p_s).log())
    return temperature**2 * kl.sum(-1).mean()


@pytest.mark.parametrize("form, head_kl", [("bernoulli", bernoulli_kl_on_old), ("softmax", kl_on_old)])
def test_distillation_matches_the_formula_on_the_old_slice_only(form, head_kl):
    torch.manual_seed(0)
    batch, num_old, num_new, temperature, weight = 3, 4, 2, 2.0, 0.7
    student = random_output(batch, num_old + num_new, requires_grad=True)
    teacher = random_output(batch, num_old)
    losses = cign_loss(
        student, torch.tensor([0, 5, 4]), teacher, num_old, temperature=temperature, kd_weight=weight, distill_form=form
    )
    expected = weight * (
        head_kl(student.audio_logits[:, :num_old], teacher.audio_logits, temperature)
        + head_kl(student.visual_logits[:, :num_old], teacher.visual_logits, temperature)
        + kl_on_old(
            student.audio_token_logits[:, :num_old, :num_old].reshape(-1, num_old),
            teacher.audio_token_logits.reshape(-1, num_old),
            temperature,
        )
        + kl_on_old(
            student.visual_token_logits[:, :num_old, :num_old].reshape(-1, num_old),
            teacher.visual_token_logits.reshape(-1, num_old),
            temperature,
        )
    )
    torch.testing.assert_close(losses["kd"], expected.detach())
    losses["kd"].backward()
    for name in ("audio_token_logits", "visual_logits"):
        (expected_grad,) = torch.autograd.grad(expected, getattr(student, name), retain_graph=True)
        torch.testing.assert_close(getattr(student, name).grad, expected_grad)
    assert not student.audio_token_logits.grad[:, num_old:].any()  # new class tokens are not distilled
    assert not student.audio_token_logits.grad[:, :, num_old:].any()  # nor the new classes' columns
    assert not student.visual_logits.grad[:, num_old:].any()
    assert student.visual_logits.grad[:, :num_old].abs().sum() > 0


@pytest.mark.parametrize("form, shift_changes_loss", [("bernoulli", True), ("softmax", False)])
def test_only_the_bernoulli_form_sees_a_uniform_shift_of_the_old_logits(form, shift_changes_loss):
    torch.manual_seed(0)
    student, teacher = random_output(4, 5), random_output(4, 3)
    labels = torch.tensor([3, 4, 3, 4])
    kd = [
        float(
            cign_loss(
                student._replace(
                    audio_logits=student.audio_logits - shift, visual_logits=student.visual_logits - shift
                ),
                labels,
                teacher,
                3,
                distill_form=form,
                token_weight=0.0,
            )["kd"]
        )
        for shift in (0.0, 5.0)
    ]
    assert (abs(kd[1] - kd[0]) > 0.1) == shift_changes_loss, kd


def test_old_classes_are_negatives_of_new_clips_only_when_asked():
    torch.manual_seed(0)
    out = random_output(batch=4, num_classes=5, requires_grad=True)
    labels = torch.tensor([0, 3, 4, 1])  # two exemplars of old classes (0, 1), two new clips
    kept = torch.ones(4, 5)
    kept[1:3, :3] = 0
    for classification in ("cross_entropy", "bce"):
        out.audio_logits.grad = None
        loss = cign_loss(out, labels, None, 3, classification=classification, old_class_negatives=False)["cls_audio"]
        loss.backward()
        grad = out.audio_logits.grad
        assert not grad[1:3, :3].any()  # new clips: no term on the old classes
        assert grad[1:3, 3:].abs().min() > 0 and grad[[0, 3]].abs().min() > 0  # exemplars: every class
        out.audio_logits.grad = None
        cign_loss(out, labels, None, 3, classification=classification)["cls_audio"].backward()
        assert out.audio_logits.grad.abs().min() > 0  # the authors' scoring: every class
    logits = out.audio_logits.detach()
    p = torch.sigmoid(logits)
    onehot = F.one_hot(labels, 5).float()
    terms = -(onehot * p.log() + (1 - onehot) * (1 - p).log())
    torch.testing.assert_close(
        cign_loss(out, labels, None, 3, classification="bce", old_class_negatives=False)["cls_audio"],
        (terms * kept).sum() / kept.sum(),
    )
    masked = logits.masked_fill(kept == 0, float("-inf"))
    torch.testing.assert_close(
        cign_loss(out, labels, None, 3, old_class_negatives=False)["cls_audio"],
        -F.log_softmax(masked, dim=-1)[torch.arange(4), labels].mean(),
    )


def test_token_weight_scales_the_token_terms_and_zero_drops_their_distillation():
    torch.manual_seed(0)
    student, teacher = random_output(3, 5), random_output(3, 3)
    labels = torch.tensor([3, 4, 3])
    full = cign_loss(student, labels, teacher, 3)
    half = cign_loss(student, labels, teacher, 3, token_weight=0.5)
    off = cign_loss(student, labels, teacher, 3, token_weight=0.0)
    torch.testing.assert_close(half["token_ce"], 0.5 * full["token_ce"])
    assert float(off["token_ce"]) == 0.0
    heads_only = cign_loss(student, labels, teacher, 3, token_weight=0.0)["kd"]
    torch.testing.assert_close(
        heads_only,
        bernoulli_kl_on_old(student.audio_logits[:, :3], teacher.audio_logits, 2.0)
        + bernoulli_kl_on_old(student.visual_logits[:, :3], teacher.visual_logits, 2.0),
    )


def test_distillation_is_zero_for_an_identical_teacher_and_positive_after_a_new_task():
    torch.manual_seed(0)
    model = tiny_model(3, 2)
    teacher = model.frozen_copy()
    inputs = torch.randn(4, 5, AUDIO_DIM), torch.randn(4, 6, VISUAL_DIM)
    labels = torch.tensor([0, 1, 3, 4])
    model.eval()
    with torch.no_grad():
        teacher_out = teacher(*inputs)
        same = cign_loss(model(*inputs), labels, teacher_out, 5)
    assert abs(float(same["kd"])) < 1e-6
    model.add_task(2)
    with torch.no_grad():
        grown = cign_loss(model(*inputs), labels, teacher_out, model.num_old_classes)
        unweighted = cign_loss(model(*inputs), labels, teacher_out, model.num_old_classes, kd_weight=0.0)
    assert float(grown["kd"]) > 1e-4
    assert float(unweighted["kd"]) == 0.0


def test_training_step_with_a_teacher_reaches_only_trainable_parameters():
    torch.manual_seed(0)
    model = tiny_model(3)
    teacher = model.frozen_copy()
    model.add_task(2)
    inputs = torch.randn(4, 5, AUDIO_DIM), torch.randn(4, 6, VISUAL_DIM)
    with torch.no_grad():
        teacher_out = teacher(*inputs)
    losses = cign_loss(model(*inputs), torch.tensor([0, 3, 4, 1]), teacher_out, model.num_old_classes)
    losses["total"].backward()
    assert float(losses["kd"].detach()) > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert model.audio_branch.class_tokens[0].grad is None
    assert model.audio_branch.class_tokens[1].grad.abs().sum() > 0


def test_bad_arguments_are_named():
    out = random_output(batch=2, num_classes=3)
    teacher = random_output(batch=2, num_classes=2)
    labels = torch.tensor([0, 2])
    with pytest.raises(ValueError, match="labels"):
        cign_loss(out, torch.tensor([0, 3]), None, 0)
    with pytest.raises(ValueError, match="labels"):
        cign_loss(out, torch.tensor([0, 1, 2]), None, 0)
    with pytest.raises(TypeError, match="labels"):
        cign_loss(out, labels.float(), None, 0)
    with pytest.raises(ValueError, match="num_old_classes"):
        cign_loss(out, labels, teacher, 0)
    with pytest.raises(ValueError, match="teacher_out"):
        cign_loss(out, labels, teacher, 1)
    with pytest.raises(ValueError, match="temperature"):
        cign_loss(out, labels, teacher, 2, temperature=0.0)
    with pytest.raises(ValueError, match="kd_weight"):
        cign_loss(out, labels, teacher, 2, kd_weight=-1.0)
    with pytest.raises(TypeError, match="out"):
        cign_loss(tuple(out), labels, None, 0)


def test_loss_falls_on_a_tiny_batch():
    torch.manual_seed(0)
    model = tiny_model(4, drop_path=0.0)
    labels = torch.arange(8) % 4
    audio = torch.randn(8, 5, AUDIO_DIM) + 2.0 * F.one_hot(labels, AUDIO_DIM)[:, None, :]
    visual = torch.randn(8, 6, VISUAL_DIM)

    def eval_losses() -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            losses = cign_loss(model(audio, visual), labels, None, 0)
        model.train()
        return {k: float(v) for k, v in losses.items()}

    before = eval_losses()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(60):
        optimizer.zero_grad()
        cign_loss(model(audio, visual), labels, None, 0)["total"].backward()
        optimizer.step()
    after = eval_losses()
    assert after["total"] < 0.4 * before["total"]
    assert after["cls_audio"] + after["cls_visual"] < 0.7 * (before["cls_audio"] + before["cls_visual"])
