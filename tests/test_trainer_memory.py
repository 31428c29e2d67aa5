"""Exemplar memory (herding, random, the shared budget) and the learning-rate schedule."""

import math

import pytest
import torch

from cign_fast.train.loop import lr_multiplier
from cign_fast.train.memory import ExemplarMemory, herding_order


def test_herding_first_picks_the_point_nearest_the_mean_then_balances_it():
    # unit vectors at -60, -10, 0 and +70 degrees: their mean points at about -2 degrees
    angles = torch.tensor([-60.0, -10.0, 0.0, 70.0]) * math.pi / 180
    features = torch.stack([angles.cos(), angles.sin()], dim=1)
    order = herding_order(features, 4)
    assert order[0] == 2
    assert sorted(order) == [0, 1, 2, 3]
    # after one pick near the mean the next must pull toward the far side it is missing
    assert herding_order(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), 2) == [0, 2]


def test_budget_is_shared_evenly_and_old_classes_keep_their_best():
    memory = ExemplarMemory(budget=12, selection="random", seed=3)
    memory.update({0: list(range(0, 20)), 1: list(range(20, 40))})
    assert [len(memory.exemplars[c]) for c in (0, 1)] == [6, 6]
    first_choice = list(memory.exemplars[0])
    memory.update({2: list(range(40, 60)), 3: list(range(60, 80))})
    assert [len(memory.exemplars[c]) for c in range(4)] == [3, 3, 3, 3]
    assert memory.exemplars[0] == first_choice[:3]
    assert all(40 <= i < 60 for i in memory.exemplars[2])
    assert len(memory.indices()) == 12


def test_per_class_memory_keeps_the_same_number_for_every_class_and_selected_leaves_the_memory_alone():
    memory = ExemplarMemory(budget=0, selection="random", seed=3, per_class=4)
    memory.update({0: list(range(0, 20)), 1: list(range(20, 40))})
    first_choice = dict(memory.exemplars)
    proposal = memory.selected({2: list(range(40, 60)), 3: list(range(60, 63))})
    assert memory.exemplars == first_choice  # a proposal, not an update
    assert [len(proposal[c]) for c in range(4)] == [4, 4, 4, 3]  # class 3 has only 3 clips
    assert proposal[0] == first_choice[0]
    with pytest.raises(ValueError, match=r"memory\.budget, memory\.per_class: set one of the two"):
        ExemplarMemory(budget=8, per_class=2)


def test_random_selection_depends_only_on_seed_and_class():
    picks = [ExemplarMemory(8, "random", seed=1) for _ in range(2)]
    for memory in picks:
        memory.update({5: list(range(100))})
    assert picks[0].exemplars == picks[1].exemplars
    other = ExemplarMemory(8, "random", seed=2)
    other.update({5: list(range(100))})
    assert other.exemplars != picks[0].exemplars


def test_herding_uses_the_indices_that_could_be_embedded():
    memory = ExemplarMemory(budget=2, selection="herding")
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    memory.update({0: [10, 11, 12, 13]}, embed=lambda indices: (features, [10, 12, 13]))  # 11 failed to decode
    assert memory.exemplars[0] == [13, 10]  # nearest the mean first; then a tie, broken by position


def test_memory_state_round_trips():
    memory = ExemplarMemory(budget=4, selection="random", seed=7)
    memory.update({0: [1, 2, 3], 1: [4, 5, 6]})
    restored = ExemplarMemory(budget=0)
    restored.load_state_dict(memory.state_dict())
    assert restored.exemplars == memory.exemplars and restored.budget == 4


@pytest.mark.parametrize("step, expected", [(0, 0.25), (3, 1.0), (4, 1.0), (9, 0.5 * (1 + math.cos(math.pi * 5 / 8)))])
def test_warmup_then_cosine(step, expected):
    assert lr_multiplier(step, warmup_steps=4, total_steps=12, schedule="cosine") == pytest.approx(expected)


def test_constant_schedule_after_warmup():
    assert [lr_multiplier(s, 2, 10, "constant") for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
