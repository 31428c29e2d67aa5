"""Learning without Forgetting (Li & Hoiem, ECCV 2016; TPAMI 2017), class-incremental, on the backbone.

At task t > 0 the model after task t-1 is frozen; on every training clip the old-class logits of each head
are distilled towards it: ``kd = lwf.weight * (KL_T(audio) + KL_T(visual))`` with
``KL_T = KL(softmax(z_old / T) || softmax(z[:, old] / T))`` (batch mean). The paper's L_old is the
cross-entropy of the same softened distributions, which differs from this KL by the old model's entropy,
a constant: the gradient is the same. Defaults from the paper: T = 2 (``lwf.temperature``), lambda_o = 1
(``lwf.weight``), no T^2 factor. The new-task term is the softmax cross-entropy over all classes seen
(one head per modality, no task id: the class-incremental form, not the paper's multi-head one); the
paper's warm-up of the new head alone is not done.

Predictions as fine-tuning's (late fusion, :mod:`cign_fast.methods.backbone`).
"""

from __future__ import annotations

from torch import Tensor, nn

from cign_fast.methods.backbone import BackboneMethod, BackboneOutput, classification_loss, distill_old_classes
from cign_fast.methods.registry import register_method


@register_method
class LwF(BackboneMethod):
    """Cross-entropy plus distillation of the old classes' logits from the previous model (module docstring)."""

    name = "lwf"
    loss_terms = ("ce_audio", "ce_visual", "kd")
    memory_use = "optional"
    config_sections = ("lwf",)
    uses_teacher = True

    def loss(
        self, model: nn.Module, out: BackboneOutput, labels: Tensor, teacher_out: BackboneOutput | None
    ) -> dict[str, Tensor]:
        terms = classification_loss(out, labels)
        settings = self.config.lwf
        if teacher_out is None:
            kd = out.audio_logits.new_zeros(())
        else:
            temperature, backend = settings.temperature, self.model_config.backend
            # token_distill_kl returns T^2 * KL; LwF's term has no T^2
            kd = (
                settings.weight
                / temperature**2
                * (
                    distill_old_classes(out.audio_logits, teacher_out.audio_logits, temperature, backend)
                    + distill_old_classes(out.visual_logits, teacher_out.visual_logits, temperature, backend)
                )
            )
        return {**terms, "kd": kd, "total": terms["ce_audio"] + terms["ce_visual"] + kd}
