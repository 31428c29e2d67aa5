"""cign_fast: CIGN (ICCV 2023) continual audio-visual learning with fused kernels.

The ops load on first use (``cign_fast.assign_attention``): ``import cign_fast`` alone loads no torch.
"""

from typing import TYPE_CHECKING

from cign_fast.lazy import lazy_exports

__version__ = "0.1.0"
EXPORTS = {
    "cign_fast.ops": ("assign_attention", "bernoulli_distill_kl", "token_distill_kl"),
    "cign_fast.ops.reference": (
        "assign_attention_reference",
        "bernoulli_distill_kl_reference",
        "token_distill_kl_reference",
    ),
}
__all__ = [*(name for names in EXPORTS.values() for name in names), "__version__"]
__getattr__, __dir__ = lazy_exports(globals(), EXPORTS)

if TYPE_CHECKING:  # the same names, imported for type checkers only (tests/test_install.py holds the two equal)
    from cign_fast.ops import assign_attention, bernoulli_distill_kl, token_distill_kl
    from cign_fast.ops.reference import (
        assign_attention_reference,
        bernoulli_distill_kl_reference,
        token_distill_kl_reference,
    )
