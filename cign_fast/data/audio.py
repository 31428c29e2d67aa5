"""Audio: read a file (soundfile), mono, resample, 3 s centre crop / tiling, log spectrogram.

Spec: 3 s of mono audio, power spectrogram with n_fft 512 and hop 238, ``log(x + 1e-7) / 12``.
At 16 kHz this gives a [1, 257, 202] input.

Limits (a file outside them is skipped by name as ``corrupt_audio``, never fatal): the file's sample
rate must lie in [:data:`MIN_FILE_RATE`, :data:`MAX_FILE_RATE`] Hz and every sample must be finite
with magnitude at most :data:`MAX_ABS_SAMPLE` (float audio is nominally within +-1; integer PCM always
is). Resampling uses the rational ratio ``new / orig`` whose terms are at most
:data:`MAX_RESAMPLE_TERMS` (:func:`resampling_terms`): exact for every common rate pair (44.1 kHz to
16 kHz is 441:160), within 5e-5 of the true ratio otherwise, and so always a small polyphase filter
(a 44101 Hz file no longer builds a 44101-phase one).
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

from cign_fast.data.skips import CORRUPT_AUDIO, EMPTY_AUDIO, MISSING_AUDIO, ClipDecodeError

MIN_FILE_RATE = 1_000
MAX_FILE_RATE = 384_000
MAX_ABS_SAMPLE = 1_000.0
MAX_RESAMPLE_TERMS = 1_000

CLIP_SECONDS = 3.0
N_FFT = 512
HOP_LENGTH = 238
LOG_OFFSET = 1e-7
LOG_SCALE = 12.0
FREQUENCY_BINS = N_FFT // 2 + 1


def read_mono(path: str | Path) -> tuple[np.ndarray, int]:
    """Samples [L] float32 (channels averaged) and the file's sample rate.

    Raises :class:`ClipDecodeError` with reason ``empty_audio`` (no samples), ``corrupt_audio``
    (unreadable, a sample rate or sample outside the module's limits) or ``missing_audio`` (the file is gone).
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
    if not MIN_FILE_RATE <= rate <= MAX_FILE_RATE:
        raise ClipDecodeError(
            CORRUPT_AUDIO, path, f"sample rate {rate} Hz is outside the supported {MIN_FILE_RATE}..{MAX_FILE_RATE} Hz"
        )
    if not np.isfinite(samples).all():
        raise ClipDecodeError(CORRUPT_AUDIO, path, "audio holds NaN or inf samples")
    peak = float(np.abs(samples).max())
    if peak > MAX_ABS_SAMPLE:
        raise ClipDecodeError(
            CORRUPT_AUDIO,
            path,
            f"audio sample magnitude {peak:.3g} exceeds {MAX_ABS_SAMPLE:g} (float audio is nominally within +-1)",
        )
    return samples.mean(axis=1), int(rate)


def centre_crop_or_tile(waveform: torch.Tensor, num_samples: int) -> torch.Tensor:
    """[L] -> [num_samples]: the centre ``num_samples`` of a longer clip, a shorter one repeated end to end."""
    length = waveform.shape[-1]
    if length >= num_samples:
        start = (length - num_samples) // 2
        return waveform[..., start : start + num_samples]
    return waveform.repeat(math.ceil(num_samples / length))[:num_samples]


def resampling_terms(file_rate: int, sample_rate: int) -> tuple[int, int]:
    """``(orig, new)``, both at most :data:`MAX_RESAMPLE_TERMS`, with ``new / orig`` closest to
    ``sample_rate / file_rate`` (equal to it whenever its reduced terms are that small)."""
    if sample_rate <= file_rate:
        ratio = Fraction(sample_rate, file_rate).limit_denominator(MAX_RESAMPLE_TERMS)
        return ratio.denominator, ratio.numerator
    inverse = Fraction(file_rate, sample_rate).limit_denominator(MAX_RESAMPLE_TERMS)
    return inverse.numerator, inverse.denominator


def load_clip_waveform(path: str | Path, sample_rate: int, seconds: float = CLIP_SECONDS) -> torch.Tensor:
    """The file's centre ``seconds`` as mono float32 [round(seconds * sample_rate)] at ``sample_rate``."""
    samples, file_rate = read_mono(path)
    waveform = torch.from_numpy(samples)
    # Crop before resampling (with one sample of slack) so long clips are not resampled whole.
    waveform = centre_crop_or_tile(waveform, min(waveform.shape[0], math.ceil(seconds * file_rate) + 1))
    if file_rate != sample_rate:
        waveform = torchaudio.functional.resample(waveform, *resampling_terms(file_rate, sample_rate))
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
