"""Audio-visual class embeddings of clips (for herding and for the t-SNE plot of ``cign-fast embed``).

A clip's embedding is the grouping output of its own class token in both modalities:
``concat(normalize(audio_groups[b, y_b]), normalize(visual_groups[b, y_b]))`` [2D].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from cign_fast.data import SkipReport
from cign_fast.model import CIGNOutput
from cign_fast.plots import plot_embedding
from cign_fast.train.distributed import resolve_device
from cign_fast.train.evaluate import eval_loader, load_checkpoint_data, run_inference


def class_embeddings(out: CIGNOutput, labels: Tensor) -> Tensor:
    """[B, 2D] float32: each clip's audio and visual group vectors of class ``labels[b]``, L2-normalised."""
    rows = torch.arange(labels.shape[0], device=labels.device)
    audio = nn.functional.normalize(out.audio_groups[rows, labels].float(), dim=-1)
    visual = nn.functional.normalize(out.visual_groups[rows, labels].float(), dim=-1)
    return torch.cat([audio, visual], dim=-1)


def embed_clips(
    model: nn.Module,
    dataset: Dataset,
    indices: Sequence[int],
    *,
    batch_size: int,
    device: torch.device,
    precision: str = "auto",
    num_workers: int = 0,
    skips: SkipReport | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(embeddings [n, 2D], labels [n], dataset indices [n])`` on the CPU, skipped clips left out."""
    loader = eval_loader(dataset, indices, batch_size, num_workers)
    parts = [(class_embeddings(out, labels).cpu(), labels.cpu(), kept)
             for out, labels, kept in run_inference(model, loader, device, precision, skips)]
    if not parts:
        raise ValueError("indices: no clip could be decoded, nothing to embed")
    embeddings, labels, kept = (torch.cat(column) for column in zip(*parts))
    return embeddings, labels, kept


def embed_checkpoint(checkpoint: str | Path, data_root: str | Path, out_png: str | Path, *, split: str = "test",
                     batch_size: int = 64, device: str = "auto", perplexity: float = 30.0, seed: int = 0,
                     num_workers: int = 0) -> Path:
    """t-SNE (sklearn) of the audio-visual class embeddings of ``split``'s clips, coloured by class, as a PNG."""
    from sklearn.manifold import TSNE

    target = resolve_device(device, 0)
    loaded = load_checkpoint_data(checkpoint, data_root, split, target)
    embeddings, labels, _ = embed_clips(loaded.model, loaded.dataset, range(len(loaded.dataset)),
                                        batch_size=batch_size, device=target, num_workers=num_workers)
    if embeddings.shape[0] < 3:
        raise ValueError(f"--data: t-SNE needs at least 3 clips, {split!r} has {embeddings.shape[0]} usable")
    tsne = TSNE(n_components=2, perplexity=min(perplexity, embeddings.shape[0] - 1), init="pca", random_state=seed)
    points = tsne.fit_transform(embeddings.numpy())
    title = f"t-SNE of audio-visual class embeddings ({split}, {len(loaded.class_names)} classes)"
    return plot_embedding(points, labels.tolist(), loaded.class_names, Path(out_png), title)
