"""ResNet-18 token encoders for raw inputs (image and log spectrogram).

Weights are never downloaded: the trunk starts random (``weights=None``) unless the user names a
local torchvision ResNet-18 state-dict file (e.g. ``resnet18-f37072fd.pth``).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models import resnet18

TRUNK_LAYERS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
TRUNK_CHANNELS = 512


def load_trunk_weights(trunk: nn.Sequential, path: str, argument: str) -> None:
    """Load a torchvision ResNet-18 state dict from ``path`` into ``trunk`` (the classifier ``fc.*`` is dropped).

    A 3-channel ``conv1.weight`` loaded into a 1-channel stem is summed over its input channels,
    which equals feeding the 1-channel input replicated on 3 channels.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{argument}: weights file {str(file)!r} does not exist (weights are never downloaded)")
    state = torch.load(file, map_location="cpu")
    if not isinstance(state, dict):
        raise ValueError(
            f"{argument}: expected {str(file)!r} to hold a ResNet-18 state dict, got a {type(state).__name__}"
        )
    state = {key: value for key, value in state.items() if not key.startswith("fc.")}
    stem, conv1 = state.get("conv1.weight"), trunk.conv1
    if (
        isinstance(conv1, nn.Conv2d)
        and conv1.in_channels == 1
        and isinstance(stem, Tensor)
        and stem.dim() == 4
        and stem.shape[1] == 3
    ):
        state["conv1.weight"] = stem.sum(dim=1, keepdim=True)
    try:
        trunk.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{argument}: {str(file)!r} is not a torchvision ResNet-18 state dict ({err})") from err


TOKEN_NORMS = ("l2", "standardise_l2")


class ResNetTokenEncoder(nn.Module):
    """ResNet-18 trunk -> 1x1 conv to ``dim`` -> (standardise) -> L2 normalisation over channels -> tokens.

    ``x`` [B, in_channels, H, W] -> [B, S, dim] with S = ceil(H/32) * ceil(W/32) (49 at 224 px);
    ``pooled=True`` max-pools the 512-channel map first and gives one token, [B, 1, dim].

    ``token_norm="l2"`` is the authors' recipe. ``"standardise_l2"`` (the default) first centres and
    scales every channel by its batch statistics (a BatchNorm without learned affine), so tokens of
    different clips differ in direction before the L2 norm: from a random-init trunk the L2-normalised
    projections are nearly collinear across clips (cosine 0.98-0.998), which starves the grouping.
    """

    def __init__(
        self,
        in_channels: int,
        dim: int,
        pooled: bool,
        weights: str | None,
        argument: str,
        token_norm: str = "standardise_l2",
    ) -> None:
        super().__init__()
        if token_norm not in TOKEN_NORMS:
            raise ValueError(f"token_norm: expected one of {', '.join(map(repr, TOKEN_NORMS))}, got {token_norm!r}")
        backbone = resnet18(weights=None)
        if in_channels != 3:
            backbone.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(backbone.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.trunk = nn.Sequential(OrderedDict((name, getattr(backbone, name)) for name in TRUNK_LAYERS))
        if weights is not None:
            load_trunk_weights(self.trunk, weights, argument)
        self.pooled = pooled
        self.projection = nn.Conv2d(TRUNK_CHANNELS, dim, kernel_size=1)
        self.standardise = nn.BatchNorm2d(dim, affine=False) if token_norm == "standardise_l2" else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        feature_map = self.trunk(x)
        if self.pooled:
            feature_map = F.adaptive_max_pool2d(feature_map, 1)
        tokens = F.normalize(self.standardise(self.projection(feature_map)), dim=1)
        return tokens.flatten(2).transpose(1, 2)
