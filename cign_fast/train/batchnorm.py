"""Precise BatchNorm: re-estimate the running statistics of every BatchNorm layer being trained, after training.

With few optimiser steps (the demo, small tasks) the exponential running averages lag far behind the
weights, and the eval-mode model (and the frozen teacher copied from it) sees wrong statistics.
Recomputing them as plain averages over a fixed sample of training batches removes the lag.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from cign_fast.train.distributed import DistContext, all_reduce_sum
from cign_fast.train.evaluate import autocast_context, eval_loader


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    dataset: Dataset,
    indices: Sequence[int],
    *,
    max_batches: int,
    batch_size: int,
    context: DistContext,
    seed: int,
    precision: str = "auto",
    num_workers: int = 0,
) -> int:
    """Reset the BatchNorm statistics and average them over up to ``max_batches`` batches per rank.

    The clips are a permutation of ``indices`` drawn from a private generator seeded with ``seed``,
    each rank takes its own shard, and the per-rank statistics are averaged over the ranks.
    Returns the number of batches used on this rank.
    """
    was_training = model.training
    model.train()  # a frozen part stays in eval mode (CIGN.freeze_encoders): its statistics are kept
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    if not layers or max_batches == 0 or not indices:
        model.train(was_training)
        return 0
    order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed)).tolist()
    shard = [indices[p] for p in order][context.rank :: context.world_size][: max_batches * batch_size]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the batches below
    used = 0
    for batch in eval_loader(dataset, shard, batch_size, num_workers):
        if batch["label"].numel() < 2:
            continue
        with autocast_context(context.device, precision):
            model(batch["audio"].to(context.device), batch["visual"].to(context.device))
        used += 1
    model.train(was_training)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
        if context.is_distributed:
            for stat in (layer.running_mean, layer.running_var):
                if stat is None:  # a layer without running statistics has none to average
                    continue
                stat.div_(context.world_size)
                all_reduce_sum(stat, context)
    return used
