"""The CIGN training loss: per-modality BCE, token-head cross-entropy and class-token distillation.

Shapes: B clips, N classes seen (student), N_old classes of the earlier tasks (teacher).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

import cign_fast
from cign_fast.model.cign import CIGNOutput
from cign_fast.ops.checks import check_choice, check_non_negative, check_positive


def check_labels(labels: Tensor, batch: int, num_classes: int) -> None:
    """``labels`` must be an integer tensor [B] with values in [0, N)."""
    if not isinstance(labels, Tensor) or labels.dtype not in (torch.int64, torch.int32):
        got = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
        raise TypeError(f"labels: expected an int64 tensor [B] of class indices, got {got}")
    if labels.shape != (batch,):
        raise ValueError(f"labels: expected shape ({batch},) to match the batch, got {tuple(labels.shape)}")
    if not torch.compiler.is_compiling() and bool(((labels < 0) | (labels >= num_classes)).any()):
        raise ValueError(f"labels: expected class indices in [0, {num_classes}), got values outside it")


def token_cross_entropy(token_logits: Tensor) -> Tensor:
    """Cross-entropy of the token head [B, N, N] with token i labelled class i, mean over the B * N tokens."""
    batch, num_tokens, _ = token_logits.shape
    targets = torch.arange(num_tokens, device=token_logits.device).repeat(batch)
    return F.cross_entropy(token_logits.flatten(0, 1), targets)


DISTILL_FORMS = ("bernoulli", "softmax")


def class_token_distillation(
    student: CIGNOutput,
    teacher: CIGNOutput,
    num_old_classes: int,
    temperature: float,
    backend: str,
    form: str = "bernoulli",
    token_heads: bool = True,
) -> Tensor:
    """Sum of the KL terms on the old classes (unweighted), each T^2-scaled.

    Audio and visual logits: rows B, the student's first N_old columns against the teacher's [B, N_old].
    Token heads (with ``token_heads``): rows B * N_old (the old class tokens), columns the N_old old classes.
    ``form="bernoulli"``: per-class sigmoid KL summed over the old columns and averaged over rows (the heads
    are per-class sigmoids; this KL sees a uniform shift of the old logits). ``form="softmax"``: softmax KL
    over the old columns, averaged over rows (blind to a uniform shift). The token heads are
    softmax classifiers (trained with cross-entropy), so they always use the softmax form.
    """
    batch = student.audio_logits.shape[0]
    expected = {"logits": (batch, num_old_classes), "token_logits": (batch, num_old_classes, num_old_classes)}
    for modality in ("audio", "visual"):
        for kind, shape in expected.items():
            got = tuple(getattr(teacher, f"{modality}_{kind}").shape)
            if got != shape:
                raise ValueError(
                    f"teacher_out: expected {modality}_{kind} of shape {shape} "
                    f"(num_old_classes={num_old_classes}), got {got}"
                )
    old = num_old_classes
    head_pairs = (
        (student.audio_logits[:, :old], teacher.audio_logits),
        (student.visual_logits[:, :old], teacher.visual_logits),
    )
    token_pairs = (
        (student.audio_token_logits[:, :old, :old].reshape(-1, old), teacher.audio_token_logits.reshape(-1, old)),
        (student.visual_token_logits[:, :old, :old].reshape(-1, old), teacher.visual_token_logits.reshape(-1, old)),
    )
    head_kl = cign_fast.bernoulli_distill_kl if form == "bernoulli" else cign_fast.token_distill_kl
    total = student.audio_logits.new_zeros((), dtype=torch.float32)
    for student_rows, teacher_rows in head_pairs:
        total = total + head_kl(student_rows, teacher_rows, temperature=temperature, backend=backend)
    if token_heads:
        for student_rows, teacher_rows in token_pairs:
            total = total + cign_fast.token_distill_kl(
                student_rows, teacher_rows, temperature=temperature, backend=backend
            )
    return total


def classification_mask(labels: Tensor, num_classes: int, num_old_classes: int) -> Tensor:
    """[B, N] bool mask of the classes a clip is scored on when old classes are not negatives of new clips:
    a clip of a new class on the new classes only; a clip of an old class (an exemplar) on all."""
    mask = torch.ones(labels.shape[0], num_classes, dtype=torch.bool, device=labels.device)
    mask[:, :num_old_classes] = (labels < num_old_classes).unsqueeze(1)
    return mask


CLASSIFICATION_LOSSES = ("cross_entropy", "bce")


def classification_loss(
    logits: Tensor, labels: Tensor, num_old_classes: int, loss: str, old_class_negatives: bool
) -> Tensor:
    """One modality's classification term on its class logits [B, N].

    ``"cross_entropy"``: softmax cross-entropy over the classes a clip is scored on, mean over clips.
    ``"bce"`` (the authors'): per-class sigmoid BCE against the one-hot, mean over the scored B x N terms.
    Every clip is scored on all N classes, or, with ``old_class_negatives=False``, a new clip on the new
    classes only (:func:`classification_mask`).
    """
    num_classes = logits.shape[1]
    mask = (
        None
        if old_class_negatives or num_old_classes == 0
        else classification_mask(labels, num_classes, num_old_classes)
    )
    if loss == "cross_entropy":
        scored = logits if mask is None else logits.masked_fill(~mask, float("-inf"))
        return F.cross_entropy(scored, labels.long())
    onehot = F.one_hot(labels.long(), num_classes).to(logits.dtype)
    if mask is None:
        return F.binary_cross_entropy_with_logits(logits, onehot)
    terms = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    return (terms * mask).sum() / mask.sum()


def cign_loss(
    out: CIGNOutput,
    labels: Tensor,
    teacher_out: CIGNOutput | None,
    num_old_classes: int,
    temperature: float = 2.0,
    kd_weight: float = 1.0,
    backend: str = "auto",
    *,
    distill_form: str = "bernoulli",
    classification: str = "cross_entropy",
    old_class_negatives: bool = True,
    token_weight: float = 1.0,
) -> dict[str, Tensor]:
    """The loss at task t: ``L_cls(audio) + L_cls(visual) + token_weight * CE(token heads) + kd_weight * KD``.

    Args:
        out: the student's output (N classes). labels: [B] class indices in [0, N).
        teacher_out: the frozen teacher's output on the same batch (N_old = ``num_old_classes`` classes),
            or ``None`` at the first task (then ``"kd"`` is 0).
        num_old_classes: N_old, the classes of the earlier tasks (distilled, and excluded from the BCE of new
            clips unless ``old_class_negatives``).
        temperature: distillation temperature T. kd_weight: lambda. backend: for the fused distillation ops.
        distill_form: ``"bernoulli"`` (per-class sigmoid KL on the heads) or ``"softmax"`` (softmax KL over the
            old columns), see :func:`class_token_distillation`.
        classification: the per-modality classification term L_cls, ``"cross_entropy"`` (softmax over the
            class logits; the default) or ``"bce"`` (the authors' per-class sigmoid BCE), see
            :func:`classification_loss` and docs/model.md for the measurements behind the default.
        old_class_negatives: every clip is scored on all N classes (old classes compete on new clips; the
            default and the authors'). ``False``: a new clip is scored on the new classes only, and the old
            classes' outputs on it are left to the distillation.
        token_weight: weight of the token-head cross-entropy and of its distillation (0 turns both off).

    Returns:
        Scalars ``"cls_audio"``, ``"cls_visual"`` (L_cls per modality), ``"token_ce"`` (audio +
        visual, already weighted), ``"kd"`` (already multiplied by ``kd_weight``) and ``"total"`` (their sum).
    """
    if not isinstance(out, CIGNOutput):
        raise TypeError(f"out: expected a CIGNOutput, got {type(out).__name__}")
    check_positive("temperature", temperature)
    check_non_negative("kd_weight", kd_weight)
    check_non_negative("token_weight", token_weight)
    check_choice("distill_form", distill_form, DISTILL_FORMS)
    check_choice("classification", classification, CLASSIFICATION_LOSSES)
    batch, num_classes = out.audio_logits.shape
    check_labels(labels, batch, num_classes)
    if teacher_out is not None or not old_class_negatives:
        valid_int = isinstance(num_old_classes, int) and not isinstance(num_old_classes, bool)
        lowest = 1 if teacher_out is not None else 0
        if not valid_int or not lowest <= num_old_classes <= num_classes:
            raise ValueError(
                f"num_old_classes: expected an int in [{lowest}, {num_classes}]"
                f"{' when teacher_out is given' if teacher_out is not None else ''}, got {num_old_classes!r}"
            )
    losses = {
        f"cls_{modality}": classification_loss(logits, labels, num_old_classes, classification, old_class_negatives)
        for modality, logits in (("audio", out.audio_logits), ("visual", out.visual_logits))
    }
    losses["token_ce"] = token_weight * (
        token_cross_entropy(out.audio_token_logits) + token_cross_entropy(out.visual_token_logits)
    )
    if teacher_out is None:
        losses["kd"] = out.audio_logits.new_zeros((), dtype=torch.float32)
    else:
        if not isinstance(teacher_out, CIGNOutput):
            raise TypeError(f"teacher_out: expected a CIGNOutput or None, got {type(teacher_out).__name__}")
        losses["kd"] = kd_weight * class_token_distillation(
            out, teacher_out, num_old_classes, temperature, backend, distill_form, token_heads=token_weight > 0
        )
    losses["total"] = losses["cls_audio"] + losses["cls_visual"] + losses["token_ce"] + losses["kd"]
    return losses
