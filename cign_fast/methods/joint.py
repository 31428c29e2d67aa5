"""Joint training: the upper bound. At task t the backbone trains on the training clips of every task
0..t (continuing from the model after task t-1), with softmax cross-entropy over all classes seen. It
keeps no exemplars: it has all the old clips.

Predictions as fine-tuning's (late fusion, :mod:`cign_fast.methods.backbone`).
"""

from __future__ import annotations

from collections.abc import Callable

from cign_fast.methods.backbone import BackboneMethod
from cign_fast.methods.base import TaskInfo
from cign_fast.methods.registry import register_method


@register_method
class JointTraining(BackboneMethod):
    """Cross-entropy on the clips of all tasks seen (module docstring)."""

    name = "joint"
    memory_use = "none"

    def train_indices(
        self, task: TaskInfo, clips_of_task: Callable[[int], list[int]], exemplar_indices: list[int], **by_class: object
    ) -> list[int]:
        return [index for seen in range(task.index + 1) for index in clips_of_task(seen)]
