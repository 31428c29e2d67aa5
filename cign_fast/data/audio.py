"""Audio: read a file (soundfile), mono, resample, 3 s centre crop / tiling, log spectrogram.

Spec: 3 s of mono audio, power spectrogram with n_fft 512 and hop 238, ``log(x + 1e-7) / 12``.
At 16 kHz this gives a [1, 257, 202] input.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

from cign_fast.data.skips import CORRUPT_AUDIO, EMPTY_AUDIO, MISSING_AUDIO, ClipDecodeError

CLIP_SECONDS = 3.0
N_FFT = 512
HOP_LENGTH = 238
LOG_OFFSET = 1e-7
LOG_SCALE = 12.0
FREQUENCY_BINS = N_FFT // 2 + 1


def read_mono(path: str | Path) -> tuple[np.ndarray, int]:
    """Samples [L] float32 (channels averaged) and the file's sample rate.

    Raises :class:`ClipDecodeError` with reason ``empty_audio`` (no samples), ``corrupt_audio``
    (unreadable, or NaN / inf samples) or ``missing_audio`` (the file is gone).
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ClipDecodeError(EMPTY_AUDIO, path, "audio file has zero bytes")
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except FileNotFoundError as error:
        raise ClipDecodeError(MISSING_AUDIO, path, "audio file disappeared") from error
    except (RuntimeError, OSError) as error:  # soundfile.LibsndfileError is a RuntimeError
        raise ClipDecodeError(CORRUPT_AUDIO, path, f"unreadable audio ({error})") from error
    if samples.shape[0] == 0:
        raise ClipDecodeError(EMPTY_AUDIO, path, "audio file holds no samples")
    mono = samples.mean(axis=1)
    if not np.isfinite(mono).all():
        raise ClipDecodeError(CORRUPT_AUDIO, path, "audio holds NaN or inf samples")
    return mono, int(rate)


def centre_crop_or_tile(waveform: torch.Tensor, num_samples: int) -> torch.Tensor:
    """[L] -> [num_samples]: the centre ``num_samples`` of a longer clip, a shorter one repeated end to end."""
    length = waveform.shape[-1]
    if length >= num_samples:
        start = (length - num_samples) // 2
        return waveform[..., start:start + num_samples]
    return waveform.repeat(math.ceil(num_samples / length))[:num_samples]


def load_clip_waveform(path: str | Path, sample_rate: int, seconds: float = CLIP_SECONDS) -> torch.Tensor:
    """The file's centre ``seconds`` as mono float32 [round(seconds * sample_rate)] at ``sample_rate``."""
    samples, file_rate = read_mono(path)
    waveform = torch.from_numpy(samples)
    # Crop before resampling (with one sample of slack) so long clips are not resampled whole.
    waveform = centre_crop_or_tile(waveform, min(waveform.shape[0], math.ceil(seconds * file_rate) + 1))
    if file_rate != sample_rate:
        waveform = torchaudio.functional.resample(waveform, file_rate, sample_rate)
    return centre_crop_or_tile(waveform, round(seconds * sample_rate))


class LogSpectrogram(torch.nn.Module):
    """Waveform [..., L] -> ``log(|STFT|^2 + 1e-7) / 12`` [..., 257, 1 + L // 238]."""

    def __init__(self) -> None:
        super().__init__()
        self.spectrogram = torchaudio.transforms.Spectrogram(n_fft=N_FFT, hop_length=HOP_LENGTH, power=2.0)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return torch.log(self.spectrogram(waveform) + LOG_OFFSET) / LOG_SCALE


def spectrogram_frames(sample_rate: int, seconds: float = CLIP_SECONDS) -> int:
    """T of the [1, 257, T] input for a clip of ``seconds`` at ``sample_rate``."""
    return 1 + round(seconds * sample_rate) // HOP_LENGTH
