"""Per-clip embeddings (for herding and for the t-SNE plot of ``cign-fast embed``): the method's ``embed``
of the model's output, e.g. CIGN's class embeddings, the backbone's normalised pooled features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from cign_fast.data import SkipReport
from cign_fast.plots import plot_embedding
from cign_fast.train.distributed import resolve_device
from cign_fast.train.evaluate import eval_loader, load_checkpoint_data, run_inference


def embed_clips(
    model: nn.Module,
    embed: Callable[[NamedTuple, Tensor], Tensor],
    dataset: Dataset,
    indices: Sequence[int],
    *,
    batch_size: int,
    device: torch.device,
    precision: str = "auto",
    num_workers: int = 0,
    skips: SkipReport | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(embeddings [n, E], labels [n], dataset indices [n])`` on the CPU, skipped clips left out;
    ``embed``: (model output, labels) -> [B, E] (the method's ``embed``)."""
    loader = eval_loader(dataset, indices, batch_size, num_workers)
    parts = [
        (embed(out, labels).cpu(), labels.cpu(), kept)
        for out, labels, kept in run_inference(model, loader, device, precision, skips)
    ]
    if not parts:
        raise ValueError("indices: no clip could be decoded, nothing to embed")
    embeddings, labels, kept = (torch.cat(column) for column in zip(*parts, strict=True))
    return embeddings, labels, kept


def embed_checkpoint(
    checkpoint: str | Path,
    data_root: str | Path,
    out_png: str | Path,
    *,
    split: str = "test",
    batch_size: int = 64,
    device: str = "auto",
    perplexity: float = 30.0,
    seed: int = 0,
    num_workers: int = 0,
) -> Path:
    """t-SNE (sklearn) of the method's embeddings of ``split``'s clips, coloured by class, as a PNG."""
    from sklearn.manifold import TSNE

    target = resolve_device(device, 0)
    loaded = load_checkpoint_data(checkpoint, data_root, split, target)
    embeddings, labels, _ = embed_clips(
        loaded.model,
        loaded.method.embed,
        loaded.dataset,
        range(len(loaded.dataset)),
        batch_size=batch_size,
        device=target,
        num_workers=num_workers,
    )
    if embeddings.shape[0] < 3:
        raise ValueError(f"--data: t-SNE needs at least 3 clips, {split!r} has {embeddings.shape[0]} usable")
    tsne = TSNE(n_components=2, perplexity=min(perplexity, embeddings.shape[0] - 1), init="pca", random_state=seed)
    points = tsne.fit_transform(embeddings.numpy())
    title = f"t-SNE of {loaded.method.name} clip embeddings ({split}, {len(loaded.class_names)} classes)"
    return plot_embedding(points, labels.tolist(), loaded.class_names, Path(out_png), title)
