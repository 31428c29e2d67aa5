"""CIGN model: shapes, task growth, frozen class tokens, checkpoint round trip, encoders, bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torchvision.models import resnet18

from cign_fast.model import CIGN, CIGNOutput, ModelConfig, predict

AUDIO_DIM, VISUAL_DIM = 12, 20


def features_config(**overrides) -> ModelConfig:
    settings = dict(
        input_mode="features", dim=32, depth=1, num_heads=2, audio_feature_dim=AUDIO_DIM, visual_feature_dim=VISUAL_DIM
    )
    return ModelConfig(**{**settings, **overrides})


def raw_config(**overrides) -> ModelConfig:
    return ModelConfig(**{**dict(input_mode="raw", dim=32, depth=1, num_heads=2), **overrides})


def features_batch(batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, 5, AUDIO_DIM), torch.randn(batch, 7, VISUAL_DIM)


def model_with_tasks(cfg: ModelConfig, *task_sizes: int) -> CIGN:
    model = CIGN(cfg)
    for size in task_sizes:
        model.add_task(size)
    return model


def check_output_shapes(out: CIGNOutput, batch: int, num_classes: int, dim: int) -> None:
    assert out.audio_logits.shape == out.visual_logits.shape == (batch, num_classes)
    assert out.audio_token_logits.shape == out.visual_token_logits.shape == (batch, num_classes, num_classes)
    assert out.audio_groups.shape == out.visual_groups.shape == (batch, num_classes, dim)


def test_features_mode_forward_backward_shapes():
    torch.manual_seed(0)
    model = model_with_tasks(features_config(), 3, 2)
    out = model(*features_batch(4))
    check_output_shapes(out, 4, 5, 32)
    sum(t.sum() for t in out).backward()
    assert model.audio_encoder.weight.grad.abs().sum() > 0
    assert model.visual_encoder.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("audio_tokens, audio_token_count", [("map", 2 * 2), ("pooled", 1)])
def test_raw_mode_forward_backward_shapes(audio_tokens, audio_token_count):
    torch.manual_seed(0)
    model = model_with_tasks(raw_config(audio_tokens=audio_tokens), 3)
    audio, visual = torch.randn(2, 1, 64, 48), torch.randn(2, 3, 32, 64)
    assert model.audio_encoder(audio).shape == (2, audio_token_count, 32)
    visual_tokens = model.visual_encoder(visual)
    assert visual_tokens.shape == (2, 1 * 2, 32)
    torch.testing.assert_close(visual_tokens.norm(dim=-1), torch.ones(2, 2))  # L2-normalised over channels
    out = model(audio, visual)
    check_output_shapes(out, 2, 3, 32)
    sum(t.sum() for t in out).backward()
    assert model.audio_encoder.trunk.conv1.weight.grad.abs().sum() > 0
    assert model.visual_encoder.trunk.conv1.weight.grad.abs().sum() > 0


def mean_pairwise_cosine(tokens: torch.Tensor) -> float:
    """Mean cosine between the mean tokens [B, D] of different clips."""
    pooled = torch.nn.functional.normalize(tokens.mean(1), dim=-1)
    cosine = pooled @ pooled.T
    return float(cosine[~torch.eye(len(cosine), dtype=torch.bool)].mean())


def test_standardised_tokens_differ_across_clips_where_l2_tokens_do_not():
    torch.manual_seed(0)
    images = torch.rand(8, 3, 64, 64)
    cosines = {}
    for norm in ("l2", "standardise_l2"):
        torch.manual_seed(1)
        encoder = model_with_tasks(raw_config(token_norm=norm), 2).visual_encoder.train()
        tokens = encoder(images)
        torch.testing.assert_close(tokens.norm(dim=-1), torch.ones(8, 4))
        cosines[norm] = mean_pairwise_cosine(tokens.detach())
    assert cosines["l2"] > 0.5 and cosines["standardise_l2"] < cosines["l2"] - 0.5, cosines


@pytest.mark.parametrize("assign_mode, expected", [("soft", "soft"), ("hard", "hard"), ("gumbel", "hard")])
def test_eval_assignment_follows_the_training_mode_unless_set(assign_mode, expected, monkeypatch):
    assert features_config(assign_mode=assign_mode).eval_assign_mode == expected
    assert features_config(assign_mode=assign_mode, eval_assign_mode="soft").eval_assign_mode == "soft"
    seen = []
    import cign_fast.model.grouping as grouping

    original = grouping.cign_fast.assign_attention
    monkeypatch.setattr(
        grouping.cign_fast,
        "assign_attention",
        lambda *args, mode, **kwargs: seen.append(mode) or original(*args, mode=mode, **kwargs),
    )
    model = model_with_tasks(features_config(assign_mode=assign_mode), 2)
    model.train()(*features_batch(2))
    model.eval()(*features_batch(2))
    assert seen == [assign_mode] * 2 + [expected] * 2


def test_task_bookkeeping():
    model = CIGN(features_config())
    assert (model.task_sizes, model.num_classes, model.num_old_classes) == ([], 0, 0)
    model.add_task(3)
    assert (model.task_sizes, model.num_classes, model.num_old_classes) == ([3], 3, 0)
    model.add_task(4)
    assert (model.task_sizes, model.num_classes, model.num_old_classes) == ([3, 4], 7, 3)
    model.task_sizes.append(99)  # a copy: the model is unchanged
    assert model.task_sizes == [3, 4]


def test_add_task_keeps_old_parameters_and_grows_in_place():
    torch.manual_seed(0)
    model = model_with_tasks(features_config(), 3)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    model.add_task(2)
    after = model.state_dict()
    grown = {
        "grouping.token_mixer.fc1.weight": (slice(None), slice(0, 3)),
        "grouping.token_mixer.fc1.bias": (slice(None),),
        "grouping.token_mixer.fc2.weight": (slice(0, 3), slice(None)),
        "grouping.token_mixer.fc2.bias": (slice(0, 3),),
        "token_head.weight": (slice(0, 3), slice(None)),
        "token_head.bias": (slice(0, 3),),
    }
    grown_shapes = {
        "grouping.token_mixer.fc1.weight": (16, 5),
        "grouping.token_mixer.fc2.weight": (5, 16),
        "grouping.token_mixer.fc2.bias": (5,),
        "token_head.weight": (5, 32),
        "token_head.bias": (5,),
    }
    for name, old in before.items():
        local = name.split("_branch.", 1)[-1]
        if local in grown:
            expected_shape = grown_shapes.get(local, old.shape)
            assert after[name].shape == expected_shape, name
            torch.testing.assert_close(after[name][grown[local]], old, rtol=0, atol=0, msg=name)
        else:
            torch.testing.assert_close(after[name], old, rtol=0, atol=0, msg=name)
    for branch in (model.audio_branch, model.visual_branch):
        assert [tuple(block.shape) for block in branch.class_tokens] == [(3, 32), (2, 32)]
        assert branch.grouping.token_mixer.fc2.weight[3:].abs().sum() > 0  # new rows freshly initialised
        assert branch.token_head.weight[3:].abs().sum() > 0
    check_output_shapes(model(*features_batch(2)), 2, 5, 32)


def test_only_the_newest_class_token_block_trains():
    torch.manual_seed(0)
    model = model_with_tasks(features_config(), 3)
    sum(t.sum() for t in model(*features_batch())).backward()
    model.add_task(2)
    model.add_task(4)
    sum(t.square().sum() for t in model(*features_batch())).backward()
    for branch in (model.audio_branch, model.visual_branch):
        old_blocks, new_block = list(branch.class_tokens)[:-1], branch.class_tokens[-1]
        for block in old_blocks:
            assert not block.requires_grad
            assert block.grad is None or not block.grad.any()
        assert new_block.requires_grad and new_block.grad is not None and new_block.grad.abs().sum() > 0
    for name, parameter in model.named_parameters():
        if "class_tokens" not in name:
            assert parameter.requires_grad, name


def test_grown_layers_follow_the_model_dtype():
    model = model_with_tasks(features_config(), 2).double()
    model.add_task(3)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    out = model(*(x.double() for x in features_batch(2)))
    check_output_shapes(out, 2, 5, 32)
    assert out.audio_logits.dtype == torch.float64


def test_rebuild_from_task_sizes_round_trips_exactly():
    torch.manual_seed(0)
    model = model_with_tasks(features_config(drop_path=0.2), 3, 2)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    state = model.state_dict()
    rebuilt = model_with_tasks(features_config(drop_path=0.2), *model.task_sizes)
    rebuilt.load_state_dict(state)
    assert rebuilt.task_sizes == [3, 2]
    assert {n: p.requires_grad for n, p in rebuilt.named_parameters()} == {
        n: p.requires_grad for n, p in model.named_parameters()
    }
    inputs = features_batch()
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        for mine, theirs in zip(model(*inputs), rebuilt(*inputs), strict=True):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="size mismatch"):
        model_with_tasks(features_config(drop_path=0.2), 3, 3).load_state_dict(state)


def test_training_gumbel_assignment_follows_torch_seed_and_eval_is_deterministic():
    model = model_with_tasks(features_config(drop_path=0.0), 4)
    inputs = features_batch()
    torch.manual_seed(5)
    first = model(*inputs).audio_groups
    torch.manual_seed(5)
    torch.testing.assert_close(model(*inputs).audio_groups, first, rtol=0, atol=0)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(*inputs).audio_groups, model(*inputs).audio_groups, rtol=0, atol=0)


def test_frozen_copy_is_an_equal_gradient_free_eval_model():
    torch.manual_seed(0)
    model = model_with_tasks(features_config(), 3, 2)
    sum(t.sum() for t in model(*features_batch())).backward()
    teacher = model.frozen_copy()
    assert not teacher.training and model.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert model.visual_branch.class_tokens[-1].requires_grad
    assert teacher.task_sizes == model.task_sizes
    model.eval()
    inputs = features_batch()
    with torch.no_grad():
        torch.testing.assert_close(teacher(*inputs).visual_logits, model(*inputs).visual_logits, rtol=0, atol=0)


def test_zero_class_token_init():
    model = model_with_tasks(features_config(class_token_init="zero"), 3)
    assert not model.audio_branch.class_tokens[0].any()
    model = model_with_tasks(features_config(), 3)
    assert 0 < model.audio_branch.class_tokens[0].std() < 0.05


def test_predict_uses_the_product_of_probabilities():
    audio = torch.tensor([[2.0, 1.9, -5.0], [0.0, 3.0, 1.0]])
    visual = torch.tensor([[-4.0, 1.0, 0.5], [0.0, 3.0, 1.0]])
    out = CIGNOutput(audio, visual, *(torch.zeros(2, 3, 3),) * 2, *(torch.zeros(2, 3, 4),) * 4)
    preds = predict(out, "bce")
    assert preds["audio"].tolist() == [0, 1]
    assert preds["visual"].tolist() == [1, 1]
    assert preds["audio_visual"].tolist() == [1, 1]  # sigmoids: 0.87 * 0.73 > 0.88 * 0.02
    assert all(p.dtype == torch.long for p in preds.values())


def test_predict_fuses_softmax_posteriors_after_cross_entropy_training():
    audio = torch.tensor([[10.0, 8.0, 0.0]])
    visual = torch.tensor([[0.0, 1.0, 0.0]])
    out = CIGNOutput(audio, visual, *(torch.zeros(1, 3, 3),) * 2, *(torch.zeros(1, 3, 4),) * 4)
    assert predict(out)["audio_visual"].tolist() == [0]  # softmax: 0.88 * 0.21 > 0.12 * 0.58
    assert predict(out, "bce")["audio_visual"].tolist() == [1]  # sigmoids: 1.0 * 0.5 < 1.0 * 0.73


def test_pretrained_weights_load_from_a_local_file(tmp_path):
    torch.manual_seed(0)
    imagenet = resnet18(weights=None)
    with torch.no_grad():
        imagenet.layer2[0].bn1.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "resnet18.pth"
    torch.save(imagenet.state_dict(), path)
    model = CIGN(raw_config(visual_weights=str(path), audio_weights=path))
    torch.testing.assert_close(model.visual_encoder.trunk.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)
    torch.testing.assert_close(model.audio_encoder.trunk.layer2[0].bn1.running_var, imagenet.layer2[0].bn1.running_var)
    torch.testing.assert_close(model.audio_encoder.trunk.conv1.weight, imagenet.conv1.weight.sum(dim=1, keepdim=True))
    assert dataclasses.asdict(model.cfg)["audio_weights"] == str(path)


def test_bad_weights_files_are_named(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match="visual_weights.*nowhere.pth"):
        CIGN(raw_config(visual_weights=str(missing)))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, wrong)
    with pytest.raises(ValueError, match="audio_weights.*wrong.pth"):
        CIGN(raw_config(audio_weights=str(wrong)))


@pytest.mark.parametrize("task_size", [0, -2, 1.5, True])
def test_add_task_rejects_non_positive_sizes(task_size):
    with pytest.raises(ValueError, match="num_new_classes"):
        CIGN(features_config()).add_task(task_size)


@pytest.mark.parametrize(
    "overrides, argument",
    [
        (dict(audio_feature_dim=None), "audio_feature_dim"),
        (dict(visual_feature_dim=None), "visual_feature_dim"),
        (dict(visual_feature_dim=0), "visual_feature_dim"),
        (dict(audio_weights="x.pth"), "audio_weights"),
        (dict(num_heads=3), "num_heads"),
        (dict(drop_path=1.0), "drop_path"),
        (dict(assign_mode="sometimes"), "assign_mode"),
        (dict(input_mode="video"), "input_mode"),
        (dict(backend="gpu"), "backend"),
        (dict(audio_tokens="all"), "audio_tokens"),
        (dict(token_norm="batch"), "token_norm"),
        (dict(grouping_norms="post"), "grouping_norms"),
        (dict(eval_assign_mode="gumbel"), "eval_assign_mode"),
    ],
)
def test_bad_config_names_the_argument(overrides, argument):
    with pytest.raises(ValueError, match=argument):
        features_config(**overrides)


def test_bad_features_inputs_name_the_argument():
    model = model_with_tasks(features_config(), 3)
    audio, visual = features_batch(2)
    cases = [
        (audio[0], visual, "audio"),
        (audio, visual[..., :5], "visual"),
        (audio, visual.unsqueeze(1), "visual"),
        (audio[:1], visual, "audio, visual"),
        (audio[:, :0], visual, "audio"),
    ]
    for bad_audio, bad_visual, argument in cases:
        with pytest.raises(ValueError, match=f"^{argument}"):
            model(bad_audio, bad_visual)
    with pytest.raises(TypeError, match="audio"):
        model(audio.long(), visual)
    with pytest.raises(RuntimeError, match="add_task"):
        CIGN(features_config())(audio, visual)


def test_bad_raw_inputs_name_the_argument():
    model = model_with_tasks(raw_config(), 2)
    audio, visual = torch.randn(2, 1, 64, 48), torch.randn(2, 3, 32, 32)
    for bad_audio, bad_visual, argument in [
        (audio.squeeze(1), visual, "audio"),
        (audio.expand(2, 3, 64, 48), visual, "audio"),
        (audio, visual[:, :1], "visual"),
        (audio, visual.flatten(2), "visual"),
    ]:
        with pytest.raises(ValueError, match=f"^{argument}"):
            model(bad_audio, bad_visual)


def test_authors_grouping_norms_are_a_post_norm_cross_attention_block():
    """model.grouping_norms="authors" equals GroupViT's post-norm block written out on the same weights."""
    torch.manual_seed(0)
    block = model_with_tasks(features_config(grouping_norms="authors"), 3).audio_branch.grouping
    cross = block.cross_attn
    groups, tokens = torch.randn(2, 3, 32), torch.randn(2, 5, 32)
    attn = cross.attn

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], 2, 16).transpose(1, 2)

    q, k, v = heads(attn.q_proj(groups)), heads(attn.k_proj(tokens)), heads(attn.v_proj(tokens))
    weights = torch.softmax(q @ k.transpose(-1, -2) / 16**0.5, dim=-1)
    x = groups + attn.out_proj((weights @ v).transpose(1, 2).flatten(2))
    x = x + cross.mlp.fc2(torch.nn.functional.gelu(cross.mlp.fc1(cross.norm_mlp(x))))
    torch.testing.assert_close(block.norm_cross(cross(groups, tokens)), block.norm_cross(x))
    default = model_with_tasks(features_config(), 3).audio_branch.grouping.cross_attn
    assert isinstance(default.norm_query, torch.nn.LayerNorm) and isinstance(default.norm_context, torch.nn.LayerNorm)
    assert isinstance(cross.norm_query, torch.nn.Identity) and isinstance(cross.norm_context, torch.nn.Identity)
