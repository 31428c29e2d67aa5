"""cign_fast: CIGN (ICCV 2023) continual audio-visual learning with fused kernels.

The ops load on first use (``cign_fast.assign_attention``): ``import cign_fast`` alone loads no torch.
"""

from cign_fast.lazy import lazy_exports

__version__ = "0.1.0"
EXPORTS = {
    "cign_fast.ops": ("assign_attention", "bernoulli_distill_kl", "token_distill_kl"),
    "cign_fast.ops.reference": ("assign_attention_reference", "bernoulli_distill_kl_reference",
                                "token_distill_kl_reference"),
}
__all__ = [*(name for names in EXPORTS.values() for name in names), "__version__"]
__getattr__, __dir__ = lazy_exports(globals(), EXPORTS)
