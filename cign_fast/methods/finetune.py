"""Fine-tuning: the lower bound. Each task trains the backbone on its own clips (plus the exemplars, when
``memory.*`` gives some) with softmax cross-entropy over all classes seen; nothing protects the old classes.

Predictions: audio / visual ``argmax`` of the head's softmax, audio-visual ``argmax p_a * p_v`` (late fusion,
:mod:`cign_fast.methods.backbone`).
"""

from __future__ import annotations

from cign_fast.methods.backbone import BackboneMethod
from cign_fast.methods.registry import register_method


@register_method
class FineTuning(BackboneMethod):
    """Plain cross-entropy training task after task (module docstring)."""

    name = "finetune"
    memory_use = "optional"
