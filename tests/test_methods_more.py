"""The defining mechanisms of IL2M, BiC, PODNet and L2P on small data, their extra state round trip, and a
comparison of the four SIGKILLed inside each run that resumes to the uninterrupted metrics."""

from __future__ import annotations

import io

import pytest
import torch
from test_methods import DIM, clips, make_method, resources
from torch.nn import functional as F

from cign_fast.cli import main
from cign_fast.methods import TaskInfo
from cign_fast.methods.backbone import BackboneMethod, modality_log_probs
from cign_fast.methods.bic import apply_bias, fit_bias
from cign_fast.methods.il2m import rectify
from cign_fast.methods.podnet import LocalSimilarityHead, nca_loss, pod_flat, pod_spatial, pooled_map
from cign_fast.train.config import build_config

from helpers import (
    COMPARE_RUNNER,
    KILLING_RUNNER,
    one_thread,
    read_run_results,
    run_runner,
    tiny_train_args,
    write_feature_dataset,
)

EXEMPLARS = {0: [0, 2, 4], 1: [1, 3, 5]}


def after_two_tasks(name: str, *overrides: str):
    """``name`` trained on nothing but grown through task 0 (2 classes, end_task run) into task 1 (2 more)."""
    torch.manual_seed(0)
    method = make_method(name, *overrides)
    model = method.begin_task(method.build_model(), TaskInfo(0, (2,)))
    audio, visual, labels = clips(8, 2)
    method.end_task(model, resources(TaskInfo(0, (2,)), model, method, audio, visual, labels, EXEMPLARS))
    model = method.begin_task(model, TaskInfo(1, (2, 2)))
    return method, model


# ----- IL2M --------------------------------------------------------------------------------------------------


def test_il2m_rectifies_old_scores_only_when_a_new_class_wins():
    scores = torch.tensor(
        [
            [0.30, 0.10, 0.40, 0.20],  # new class 2 wins narrowly: old scores scaled up
            [0.50, 0.10, 0.30, 0.10],  # old class 0 wins: left alone
            [0.05, 0.05, 0.80, 0.10],
        ]
    )  # new class wins by far: stays new
    initial = torch.tensor([0.8, 0.6, 0.7, 0.9], dtype=torch.float64)
    current = torch.tensor([0.4, 0.6, 0.7, 0.9], dtype=torch.float64)
    confidence = torch.tensor([0.9, 0.6], dtype=torch.float64)
    class_task = torch.tensor([0, 0, 1, 1])
    rectified = rectify(scores, initial, current, confidence, class_task)
    factor = torch.tensor([0.8 / 0.4 * 0.6 / 0.9, 0.6 / 0.6 * 0.6 / 0.9, 1.0, 1.0])
    torch.testing.assert_close(rectified[0], scores[0] * factor)
    torch.testing.assert_close(rectified[1:2], scores[1:2])
    torch.testing.assert_close(rectified[2], scores[2] * factor)
    assert rectified.argmax(dim=-1).tolist() == [0, 0, 2]  # the first clip's prediction moves to old class 0


def test_il2m_statistics_are_the_mean_scores_and_drive_predict():
    method, model = after_two_tasks("il2m")
    audio, visual, labels = clips(12, 4, seed=1)
    exemplars = {0: [0, 4], 1: [1], 2: [2, 6], 3: [3]}
    method.end_task(model, resources(TaskInfo(1, (2, 2)), model, method, audio, visual, labels, exemplars))
    with torch.no_grad():
        out = model.eval()(audio, visual)
    scores = {m: p.exp().double() for m, p in modality_log_probs(out.audio_logits, out.visual_logits).items()}
    for column, modality in enumerate(("audio", "visual", "audio_visual")):
        for cls in (2, 3):  # the new classes: their training clips' mean own-class score
            torch.testing.assert_close(method.initial[cls, column], scores[modality][labels == cls, cls].mean())
        for cls, members in exemplars.items():
            torch.testing.assert_close(method.current[cls, column], scores[modality][members, cls].mean())
        torch.testing.assert_close(method.confidence[1, column], scores[modality].amax(dim=1).mean())
    assert method.class_task.tolist() == [0, 0, 1, 1] and method.confidence.shape == (2, 3)
    plain = BackboneMethod.predict(method, out)
    rectified = method.predict(out)
    for column, modality in enumerate(("audio", "visual", "audio_visual")):
        expected = rectify(
            scores[modality].float(),
            method.initial[:, column],
            method.current[:, column],
            method.confidence[:, column],
            method.class_task,
        )
        assert torch.equal(rectified[modality], expected.argmax(dim=-1))
    # stored statistics that make every factor 1 give the plain prediction back
    method.current, method.confidence = method.initial.clone(), torch.ones_like(method.confidence)
    for modality in plain:
        assert torch.equal(method.predict(out)[modality], plain[modality])
    method.current[:2] = method.initial[:2] / 1e6  # old classes scored far below their initial means
    boosted = method.predict(out)["audio"]
    assert bool((boosted < 2).all())  # every clip predicted new is moved to an old class


# ----- BiC ---------------------------------------------------------------------------------------------------


def test_bic_holds_out_a_balanced_validation_set():
    method = make_method("bic", "memory.per_class=10", "bic.val_fraction=0.2")
    task = TaskInfo(1, (2, 2))
    clips_of_class = {2: list(range(100, 120)), 3: list(range(200, 220))}.get
    exemplars = {0: list(range(10)), 1: list(range(10, 20))}
    kept = method.train_indices(
        task,
        {1: list(range(100, 120)) + list(range(200, 220))}.get,
        list(range(20)),
        clips_of_class=clips_of_class,
        exemplars=exemplars,
    )
    validation = method.validation
    assert [i for i in validation if i < 20] == [8, 9, 18, 19]  # the last (lowest-priority) exemplars
    assert len([i for i in validation if 100 <= i < 120]) == 2 == len([i for i in validation if i >= 200])
    assert not set(kept) & set(validation) and len(kept) + len(validation) == 60
    assert (
        method.train_indices(TaskInfo(0, (2,)), {0: [1, 2]}.get, [], clips_of_class=clips_of_class, exemplars={})
        == [1, 2]
        and method.validation == []
    )


def test_bic_bias_layer_changes_only_its_tasks_logits():
    logits = torch.randn(3, 6)
    bias = torch.tensor([[1.0, 0.0], [2.0, -1.0], [0.5, 3.0]])
    corrected = apply_bias(logits, bias[:2], (2, 3, 1))
    torch.testing.assert_close(corrected[:, :2], logits[:, :2])
    torch.testing.assert_close(corrected[:, 2:5], 2.0 * logits[:, 2:5] - 1.0)
    torch.testing.assert_close(corrected[:, 5:], logits[:, 5:])  # task 2 has no layer yet


def test_bic_stage_two_fits_on_the_validation_clips_only_and_minimises_their_loss():
    method, model = after_two_tasks("bic", "memory.per_class=3")
    audio, visual, labels = clips(16, 4, seed=1)
    exemplars = {0: [0, 4, 8], 1: [1, 5, 9]}
    method.train_indices(
        TaskInfo(1, (2, 2)),
        {1: [2, 3, 6, 7, 10, 11, 14, 15]}.get,
        [0, 4, 8, 1, 5, 9],
        clips_of_class=lambda cls: [i for i in range(16) if i % 4 == cls],
        exemplars=exemplars,
    )
    seen: list[int] = []
    base = resources(TaskInfo(1, (2, 2)), model, method, audio, visual, labels, exemplars)

    def recording(indices):
        seen.extend(indices)
        return base.batches(indices)

    method.end_task(model, base.__class__(**{**base.__dict__, "batches": recording}))
    assert sorted(seen) == sorted(method.validation) and len(method.validation) == 4
    assert method.bias.shape == (2, 2, 2) and method.bias[:, 0].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    with torch.no_grad():
        out = model.eval()(audio, visual)
    corrected = method.corrected(out, (2, 2))
    torch.testing.assert_close(corrected.audio_logits[:, :2], out.audio_logits[:, :2])  # old classes untouched
    alpha, beta = method.bias[0, 1].float()
    torch.testing.assert_close(corrected.audio_logits[:, 2:], alpha * out.audio_logits[:, 2:] + beta)
    rows = torch.tensor(method.validation)
    raw = out.audio_logits[rows].double()
    params = method.bias[0, 1].clone().requires_grad_()
    loss = F.cross_entropy(torch.cat([raw[:, :2], raw[:, 2:] * params[0] + params[1]], 1), labels[rows])
    (gradient,) = torch.autograd.grad(loss, params)
    assert gradient.abs().max() < 1e-5  # a minimum of the validation loss
    assert float(loss.detach()) <= float(F.cross_entropy(raw, labels[rows])) + 1e-12
    torch.testing.assert_close(fit_bias(raw, labels[rows], 2), method.bias[0, 1])
    # the next task's teacher is corrected by the fitted layer
    model = method.begin_task(model, TaskInfo(2, (2, 2, 1)))
    teacher_out = method.teacher_forward(audio, visual)
    torch.testing.assert_close(teacher_out.audio_logits, corrected.audio_logits)


# ----- PODNet ------------------------------------------------------------------------------------------------


def test_pod_spatial_is_zero_for_identical_maps_and_the_pooled_distance_otherwise():
    torch.manual_seed(0)
    tokens = torch.randn(3, 5, 4)
    assert float(pod_spatial(tokens, tokens.clone())) == 0.0
    assert float(pod_flat(tokens.mean(1), tokens.mean(1).clone())) == 0.0
    pooled = pooled_map(tokens)
    torch.testing.assert_close(
        pooled[0], F.normalize(torch.cat([tokens[0].pow(2).sum(0), tokens[0].pow(2).sum(1)]), dim=0)
    )
    other = tokens + 0.3 * torch.randn_like(tokens)
    expected = torch.stack([(pooled_map(tokens)[b] - pooled_map(other)[b]).norm() for b in range(3)]).mean()
    torch.testing.assert_close(pod_spatial(other, tokens), expected)
    assert float(pod_spatial(other, tokens)) > 0
    assert float(pod_spatial(tokens, -tokens)) == pytest.approx(0.0, abs=1e-6)  # squared: sign-blind
    with pytest.raises(ValueError, match=r"old_tokens: expected the new map's shape"):
        pod_spatial(tokens, tokens[:, :4])


def test_podnet_local_similarity_classifier_and_nca_loss():
    torch.manual_seed(0)
    head = LocalSimilarityHead(4, proxies=3)
    head.add_classes(2, torch.zeros(1))
    head.add_classes(1, torch.zeros(1))
    assert head.weight.shape == (9, 4) and head.num_classes == 3
    with torch.no_grad():
        head.scale.fill_(2.5)
    features = torch.randn(5, 4)
    cosines = F.normalize(features, dim=-1) @ F.normalize(head.weight, dim=-1).t()
    expected = torch.stack(
        [(F.softmax(cosines[:, 3 * c : 3 * c + 3], -1) * cosines[:, 3 * c : 3 * c + 3]).sum(-1) for c in range(3)],
        dim=1,
    )
    torch.testing.assert_close(head(features), 2.5 * expected)
    logits, labels = head(features), torch.tensor([0, 1, 2, 0, 1])
    written = []
    for b in range(5):
        others = torch.cat([logits[b, : labels[b]], logits[b, labels[b] + 1 :]])
        written.append(F.relu(torch.logsumexp(others, 0) - (logits[b, labels[b]] - 2.5 * 0.6)))
    torch.testing.assert_close(nca_loss(logits, labels, head.scale, 0.6), torch.stack(written).mean())


def test_podnet_loss_distils_pooled_token_maps_with_the_adaptive_weight():
    method, model = after_two_tasks("podnet", "memory.per_class=2", "podnet.spatial_weight=2.0")
    audio, visual, labels = clips(6, 4)
    teacher_out = method.teacher_forward(audio, visual)
    losses = method.loss(model, model(audio, visual), labels, teacher_out)
    assert float(losses["pod_spatial"].detach()) == pytest.approx(0.0, abs=1e-6)  # the new model is still the old one
    with torch.no_grad():
        model.audio_branch.transformer.blocks[0].mlp.fc2.weight.add_(0.5)
    out = model(audio, visual)
    losses = method.loss(model, out, labels, teacher_out)
    adaptive = (4 / 2) ** 0.5
    torch.testing.assert_close(
        losses["pod_spatial"],
        2.0
        * adaptive
        * (
            pod_spatial(out.audio_tokens, teacher_out.audio_tokens)
            + pod_spatial(out.visual_tokens, teacher_out.visual_tokens)
        ),
    )
    torch.testing.assert_close(losses["pod_flat"], adaptive * pod_flat(out.audio_features, teacher_out.audio_features))
    assert float(losses["pod_spatial"]) > 0
    torch.testing.assert_close(losses["total"], sum(v for k, v in losses.items() if k != "total"))


# ----- L2P ---------------------------------------------------------------------------------------------------


def test_l2p_selects_prompts_by_key_similarity():
    method = make_method("l2p", "l2p.pool_size=4", "l2p.top_k=2", "l2p.prompt_length=3")
    model = method.begin_task(method.build_model(), TaskInfo(0, (2,)))
    audio, visual, _ = clips(3, 2)
    pool = model.audio_pool
    with torch.no_grad():
        pool.keys.copy_(torch.randn_like(pool.keys))
        pool.keys[3] = audio[0].mean(0) * 7.0  # the first clip's query, up to scale
    chosen, cosines = pool.select(audio.mean(1))
    similarity = F.normalize(audio.mean(1), dim=-1) @ F.normalize(pool.keys, dim=-1).t()
    assert chosen[0, 0] == 3 and float(cosines[0, 0]) == pytest.approx(1.0, abs=1e-6)
    for row in range(3):
        assert set(chosen[row].tolist()) == set(similarity[row].topk(2).indices.tolist())
    prompts, distance = pool(audio.mean(1))
    assert prompts.shape == (3, 2 * 3, DIM)
    torch.testing.assert_close(prompts[0, :3], pool.prompts[3])
    torch.testing.assert_close(distance, (1 - similarity.gather(1, chosen)).sum(1))


def test_l2p_trains_only_prompts_keys_and_heads():
    method = make_method("l2p", "l2p.pool_size=4", "l2p.top_k=1")
    model = method.begin_task(method.build_model(), TaskInfo(0, (2,)))
    trainable = {
        name for name, p in model.named_parameters() if any(p is q for q in method.trainable_parameters(model))
    }
    assert trainable == {
        "audio_pool.prompts",
        "audio_pool.keys",
        "visual_pool.prompts",
        "visual_pool.keys",
        "audio_branch.head.linear.weight",
        "audio_branch.head.linear.bias",
        "visual_branch.head.linear.weight",
        "visual_branch.head.linear.bias",
    }
    audio, visual, labels = clips(1, 2)
    out = model(audio, visual)
    method.loss(model, out, labels, None)["total"].backward()
    chosen, _ = model.audio_pool.select(audio.mean(1))
    used = model.audio_pool.prompts.grad.flatten(1).abs().sum(1) > 0
    assert used.tolist() == [index == int(chosen[0, 0]) for index in range(4)]  # only the selected prompt moves
    assert all(p.grad is None for name, p in model.named_parameters() if name not in trainable)
    model = method.begin_task(model, TaskInfo(1, (2, 2)))  # no memory: the old classes are masked
    out = model(audio, visual)
    losses = method.loss(model, out, labels + 2, None)
    torch.testing.assert_close(losses["ce_audio"], F.cross_entropy(out.audio_logits[:, 2:], labels))
    with pytest.raises(ValueError, match=r"config data\.input_mode: method 'l2p' runs on 'features' inputs"):
        build_config(overrides=["method=l2p"])


# ----- extra state -------------------------------------------------------------------------------------------


def assert_same(left, right, where="state"):
    if isinstance(left, torch.Tensor):
        assert isinstance(right, torch.Tensor) and torch.equal(left, right), where
    elif isinstance(left, dict):
        assert set(left) == set(right), where
        for key in left:
            assert_same(left[key], right[key], f"{where}.{key}")
    elif isinstance(left, (list, tuple)):
        assert len(left) == len(right), where
        for number, (a, b) in enumerate(zip(left, right, strict=True)):
            assert_same(a, b, f"{where}[{number}]")
    else:
        assert left == right, where


@pytest.mark.parametrize("name", ["il2m", "bic", "podnet", "l2p"])
def test_extra_state_after_a_second_task_round_trips_exactly(name):
    method, model = after_two_tasks(name, "memory.per_class=3")
    audio, visual, labels = clips(16, 4, seed=1)
    exemplars = {0: [0, 4], 1: [1, 5], 2: [2, 6], 3: [3, 7]}
    method.train_indices(
        TaskInfo(1, (2, 2)),
        {1: [2, 3, 6, 7, 10, 11, 14, 15]}.get,
        [0, 4, 1, 5],
        clips_of_class=lambda cls: [i for i in range(16) if i % 4 == cls],
        exemplars=EXEMPLARS,
    )
    method.end_task(model, resources(TaskInfo(1, (2, 2)), model, method, audio, visual, labels, exemplars))
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    restored = make_method(name, "memory.per_class=3")
    restored.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert_same(restored.state_dict(), method.state_dict())
    with torch.no_grad():
        out = model.eval()(audio, visual)
    for modality, predicted in method.predict(out).items():
        assert torch.equal(restored.predict(out)[modality], predicted)


# ----- the CLI: a killed comparison of the four resumes exactly ------------------------------------------------

KILL_POINTS = [
    ("il2m", "evaluate", 2),  # after task 1's statistics, before its evaluation
    ("bic", "evaluate", 2),  # after task 1's bias layer, before its evaluation
    ("podnet", "train_step", 11),  # inside task 1's second epoch, with the old model
    ("l2p", "train_step", 11),  # inside task 1's second epoch, prompts half-trained
]


def test_killed_comparison_of_the_four_resumes_to_the_uninterrupted_metrics(tmp_path):
    data = write_feature_dataset(tmp_path / "data")
    methods = ",".join(name for name, _, _ in KILL_POINTS)
    extra = ("--methods", methods, "--memory-per-class", "6", "--set", "run.keep_checkpoints=2")
    with one_thread():
        assert main(["compare", *tiny_train_args(data, tmp_path / "reference", *extra)]) == 0
    args = tiny_train_args(data, tmp_path / "killed", *extra)
    count = len(KILL_POINTS)
    for number, (name, hook, call) in enumerate(KILL_POINTS, start=1):
        killed = run_runner(KILLING_RUNNER, [name, hook, str(call), "compare", *args], timeout=600)
        assert killed.returncode == -9, killed.stderr
        segment = killed.stdout.split(f"[{number}/{count}]")[1]
        assert "task 2/3 epoch 1/3" in segment and "after task 2/3" not in segment
        if number > 1:
            assert f"[{number - 1}/{count}] {KILL_POINTS[number - 2][0]} seed 0: resuming" in killed.stdout
    resumed = run_runner(COMPARE_RUNNER, args, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"[{count}/{count}] l2p seed 0: resuming" in resumed.stdout
    for name, _, _ in KILL_POINTS:
        expected_metrics, expected_losses = read_run_results(tmp_path / "reference" / f"{name}-memory6" / "seed0")
        metrics, losses = read_run_results(tmp_path / "killed" / f"{name}-memory6" / "seed0")
        for modality in ("audio", "visual", "audio_visual"):
            assert metrics[modality] == expected_metrics[modality], name
        assert losses == pytest.approx(expected_losses, rel=1e-6, abs=1e-9), name
