"""Continual-learning methods behind one protocol (:class:`ContinualMethod`), registered by name.

Importing this package registers every method below; ``build_method(config, model_config)`` builds the
one named by ``config.method``.
"""

# registration, in the order the methods are listed: CIGN, the bounds, then the baselines by kind
from cign_fast.methods import cign, finetune, joint, ewc, lwf, icarl, ssil, il2m, bic, podnet, afc, l2p, avcil  # noqa: F401, I001
from cign_fast.methods.base import ContinualMethod, TaskInfo, TaskResources
from cign_fast.methods.registry import METHODS, build_method, method_class, method_names, register_method

__all__ = [
    "METHODS",
    "ContinualMethod",
    "TaskInfo",
    "TaskResources",
    "build_method",
    "method_class",
    "method_names",
    "register_method",
]
