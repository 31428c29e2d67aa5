"""Host reads of tensor values in the hot path: the ops make none (on a GPU each would stall the launch queue).

A host read is an ``aten::_local_scalar_dense`` call (``.item()``, ``bool()``, ``int()``, ``float()`` of
a tensor, in Python or C++), counted with the profiler. Each assignment op call reads its seed once,
a 0-d CPU tensor by design (never a device sync): those reads are subtracted. Adam's step counters
are CPU tensors too, so the counted step is forward, loss and backward.
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import cign_fast
from cign_fast.model import CIGN, ModelConfig

from helpers import require_backend

SEED_READERS = ("cign_fast::assign_attention_fwd", "cign_fast::assign_attention_bwd")
pytestmark = pytest.mark.filterwarnings("ignore:Warning. Profiler clears events")


def device_reads(fn) -> tuple[int, int]:
    """``(host reads of values other than the ops' seeds, assignment op calls)`` while ``fn()`` runs."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = [event.name for event in prof.events()]
    seeds = sum(names.count(name) for name in SEED_READERS)
    return names.count("aten::_local_scalar_dense") - seeds, seeds


@pytest.fixture
def no_value_checks(monkeypatch):
    monkeypatch.delenv("CIGN_FAST_CHECKS", raising=False)


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_the_ops_read_no_values(no_value_checks, backend):
    device = require_backend(backend, "assign_attention_forward")
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 8, generator=generator).to(device).requires_grad_() for n in (5, 7, 7))
    student, teacher = (torch.randn(6, 9, generator=generator).to(device) for _ in range(2))
    student.requires_grad_()

    def step() -> None:
        out = cign_fast.assign_attention(q, k, v, mode="gumbel", backend=backend)
        loss = cign_fast.token_distill_kl(student, teacher, columns=(0, 6), backend=backend)
        (out.square().sum() + loss).backward()

    step()  # the first call of a backend may run its self-check
    assert device_reads(step) == (0, 2)


def test_value_checks_are_what_reads_values(monkeypatch):
    monkeypatch.setenv("CIGN_FAST_CHECKS", "1")
    q, k, v = (torch.randn(2, n, 8) for n in (5, 7, 7))
    reads, _ = device_reads(lambda: cign_fast.assign_attention(q, k, v, backend="reference"))
    assert reads == 3  # one finite check of each input


def test_a_model_step_reads_no_values(no_value_checks):
    """Student and teacher forward (two grouping blocks each, gumbel and hard assignment), the distillation of
    the old classes' logits and the backward: no host read but the ops' seeds. (The model's loss adds its
    own: ``cign_fast/model/losses.py`` checks the label range and calls ``one_hot``, a read each.)"""
    torch.manual_seed(0)
    config = ModelConfig(
        input_mode="features", dim=16, depth=1, num_heads=2, audio_feature_dim=8, visual_feature_dim=6, drop_path=0.0
    )
    model = CIGN(config)
    model.add_task(3)
    teacher = model.frozen_copy()
    model.add_task(2)
    audio, visual = torch.randn(4, 5, 8), torch.randn(4, 3, 6)

    def step() -> None:
        out = model(audio, visual)
        with torch.no_grad():
            teacher_out = teacher(audio, visual)
        old = model.num_old_classes
        loss = sum(
            cign_fast.token_distill_kl(getattr(out, name)[:, :old], getattr(teacher_out, name))
            for name in ("audio_logits", "visual_logits")
        )
        (loss + out.audio_groups.square().mean() + out.visual_groups.square().mean()).backward()

    step()
    assert device_reads(step) == (0, 6)  # seeds: two grouping blocks, student forward and backward, teacher forward
