"""Log-mel spectrograms in PyTorch, streamed over long files, SpecAugment, and an on-disk cache.

The maths is librosa's (``melspectrogram`` with a Slaney mel filterbank, then ``power_to_db``
with ``ref=1``), checked against librosa in the tests. The filterbank is built once per module
and kept as a non-persistent buffer; the STFT and the mel product always run in fp32.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import audio
from .config import check, option

AMIN = 1e-10  # power floor before the log (librosa's default): silence is -100 dB, never -inf
SILENCE_DB = 10.0 * math.log10(AMIN)  # what zero padding looks like in the log-mel


@dataclass(frozen=True)
class FeatureConfig:
    sr: int = option(16000, "sample rate in Hz; every input is resampled to this", low=1000)
    n_fft: int = option(512, "samples per FFT (32 ms at 16 kHz)", low=16)
    win_length: int = option(400, "samples per Hann window (25 ms), centred in n_fft", low=16)
    hop_length: int = option(160, "samples between frames (10 ms): 100 frames per second", low=1)
    # 64 bands halve the tokens of 128 (2x faster) on a CPU budget
    n_mels: int = option(64, "mel bands", low=1)
    fmin: float = option(0.0, "Hz, bottom of the lowest mel band", low=0)
    fmax: float | None = option(
        None, "Hz, top of the highest mel band; unset: half the sample rate", low=1
    )

    def __post_init__(self):
        check(self)
        if self.fmax is not None and self.fmax > self.sr / 2:
            raise ValueError(f"fmax must be at most sr / 2 = {self.sr / 2:g} Hz; got {self.fmax:g}")
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length ({self.win_length}) must be <= n_fft ({self.n_fft})")

    def n_frames(self, seconds: float) -> int:
        """Frames a centred STFT gives for ``seconds`` of audio."""
        return 1 + int(round(seconds * self.sr)) // self.hop_length

    def seconds(self, n_frames: int) -> float:
        return n_frames * self.hop_length / self.sr

    def to_dict(self) -> dict:
        return asdict(self)


def hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa's htk=False)."""
    f = np.asarray(f, dtype=np.float64)
    mel = f / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log_part, mel)


def mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * 200.0 / 3)


def mel_filterbank(
    *, sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None
) -> np.ndarray:
    """Slaney-normalised triangular filters, (n_mels, n_fft // 2 + 1) float32."""
    fmax = sr / 2 if fmax is None else fmax
    fft_hz = np.fft.rfftfreq(n_fft, d=1.0 / sr)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    ramps = edges[:, None] - fft_hz[None, :]  # (n_mels + 2, K)
    widths = np.diff(edges)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # equal area per band
    return weights.astype(np.float32)


def power_to_db(power: torch.Tensor) -> torch.Tensor:
    return 10.0 * torch.log10(torch.clamp(power, min=AMIN))


class LogMel(nn.Module):
    """Waveform (B, S) or (S,) → log-mel power in dB, (B, F, T) or (F, T).

    T = 1 + S // hop_length (a centred STFT with zero padding, as librosa ≥ 0.10 does).
    """

    def __init__(self, cfg: FeatureConfig):
        super().__init__()
        self.cfg = cfg
        fb = mel_filterbank(
            sr=cfg.sr, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax
        )
        self.register_buffer("mel_basis", torch.from_numpy(fb), persistent=False)  # (F, K)
        window = torch.hann_window(cfg.win_length, periodic=True)
        self.register_buffer("window", window, persistent=False)

    def spectrogram(self, wave: torch.Tensor, center: bool = True) -> torch.Tensor:
        """(B, S) → power spectrogram (B, K, T), fp32."""
        c = self.cfg
        spec = torch.stft(
            wave.float(),
            c.n_fft,
            c.hop_length,
            c.win_length,
            self.window,
            center=center,
            pad_mode="constant",
            return_complex=True,
        )
        return spec.real.square() + spec.imag.square()

    def forward(self, wave: torch.Tensor, center: bool = True) -> torch.Tensor:
        squeeze = wave.dim() == 1
        wave = wave[None] if squeeze else wave
        with torch.autocast(wave.device.type, enabled=False):
            mel = torch.matmul(self.mel_basis, self.spectrogram(wave, center))  # (B, F, T)
            db = power_to_db(mel)
        return db[0] if squeeze else db


class StreamingLogMel:
    """Feed waveform blocks, get log-mel frames identical to ``LogMel`` on the whole signal.

    Keeps only the n_fft - hop_length samples that straddle two blocks, so an hour-long file
    needs no more memory than one block.
    """

    def __init__(self, logmel: LogMel):
        self.logmel = logmel
        c = logmel.cfg
        self._buf = np.zeros(c.n_fft // 2, np.float32)  # the centred STFT's left zero padding

    def _frames(self, final: bool) -> torch.Tensor | None:
        c = self.logmel.cfg
        if final:
            self._buf = np.concatenate([self._buf, np.zeros(c.n_fft // 2, np.float32)])
        n = 1 + (len(self._buf) - c.n_fft) // c.hop_length if len(self._buf) >= c.n_fft else 0
        if n <= 0:
            return None
        used = (n - 1) * c.hop_length + c.n_fft
        x = torch.from_numpy(self._buf[:used]).to(self.logmel.mel_basis.device)
        self._buf = self._buf[n * c.hop_length :]
        return self.logmel(x, center=False)  # (F, n)

    def push(self, block: np.ndarray) -> torch.Tensor | None:
        """Add samples (S,); return the frames (F, n) now complete, or None."""
        self._buf = np.concatenate([self._buf, block.astype(np.float32, copy=False)])
        return self._frames(final=False)

    def finish(self) -> torch.Tensor | None:
        return self._frames(final=True)


def stream_log_mel(blocks: Iterable[np.ndarray], logmel: LogMel) -> Iterator[torch.Tensor]:
    """Blocks of samples → chunks of log-mel frames (F, n); concatenated over time they equal
    ``logmel`` of the concatenated samples."""
    s = StreamingLogMel(logmel)
    for block in blocks:
        if (frames := s.push(block)) is not None:
            yield frames
    if (frames := s.finish()) is not None:
        yield frames


def file_log_mel(
    path: str | os.PathLike, logmel: LogMel, max_frames: int | None = None, start_frame: int = 0
) -> torch.Tensor:
    """A file's log-mel, (F, T): the whole file, or ``max_frames`` frames from ``start_frame``
    (decoding stops there; frames before the start are dropped as they come, so a span late in
    an hour-long file needs no more memory than the span). Raises audio.AudioError."""
    chunks, n = [], 0  # n: frames decoded so far
    end = None if max_frames is None else start_frame + max_frames
    frames = stream_log_mel(audio.stream(path, sr=logmel.cfg.sr), logmel)
    for chunk in frames:
        if n + chunk.shape[1] > start_frame:
            chunks.append(chunk[:, max(0, start_frame - n) :])
        n += chunk.shape[1]
        if end is not None and n >= end:
            frames.close()
            break
    if not chunks:
        return torch.zeros(logmel.cfg.n_mels, 0)
    return torch.cat(chunks, dim=1)[:, :max_frames]


def spec_augment(
    x: torch.Tensor, *, freq_mask: int, time_mask: int, n_masks: int, generator: torch.Generator
) -> torch.Tensor:
    """Mask random frequency and time stripes of each example (Park et al., 2019).

    x: (B, F, T). Each of ``n_masks`` masks per axis has a width drawn from [0, max]; masked
    cells take the example's mean, so the per-example normalisation downstream is unaffected.
    """
    B, F, T = x.shape
    fill = x.mean(dim=(1, 2), keepdim=True).expand_as(x)
    keep = torch.ones_like(x, dtype=torch.bool)
    for axis, size, width in ((1, F, freq_mask), (2, T, time_mask)):
        if width <= 0:
            continue
        for _ in range(n_masks):
            w = torch.randint(0, width + 1, (B, 1), generator=generator)
            start = (torch.rand((B, 1), generator=generator) * (size - w).clamp(min=0)).long()
            idx = torch.arange(size)[None]
            band = ((idx >= start) & (idx < start + w)).to(x.device)  # (B, size)
            keep &= ~(band[:, :, None] if axis == 1 else band[:, None, :])
    return torch.where(keep, x, fill)


# np.load parses each .npy header with ast.literal_eval. On CPython 3.11 two threads building
# ASTs at once can fail with "SystemError: AST constructor recursion depth mismatch" (cf.
# python/cpython#106905); it happened here once, to an entry read in a thread of get_many, during
# `make test`. Reading an entry is quick, so reads are serialised; decoding stays parallel.
_READ_LOCK = threading.Lock()


class FeatureCache:
    """Whole-file log-mels on disk, keyed by the file's identity and the feature settings.

    An entry is written to a temporary name and renamed into place, so an interrupted write is
    never read as data; an unreadable entry is recomputed.
    """

    def __init__(self, root: str | os.PathLike, logmel: LogMel):
        self.logmel = logmel
        cfg_key = hashlib.sha1(
            json.dumps(logmel.cfg.to_dict(), sort_keys=True).encode()
        ).hexdigest()
        self.root = Path(root) / cfg_key[:12]
        self._warned = False  # a cache that cannot be written is said once

    def _entry(self, path: Path) -> Path:
        st = path.stat()
        ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        return self.root / (hashlib.sha1(ident.encode()).hexdigest() + ".npy")

    def get(self, path: str | os.PathLike) -> np.ndarray:
        """Log-mel (F, T) float16 of ``path``, computed once. Raises audio.AudioError."""
        path = Path(path)
        audio.check_file(path)
        entry = self._entry(path)
        try:
            with _READ_LOCK:
                return np.load(entry, allow_pickle=False)
        except FileNotFoundError:
            pass
        except (ValueError, OSError, EOFError):
            with contextlib.suppress(OSError):  # a damaged entry: rebuild it
                entry.unlink(missing_ok=True)
        with torch.inference_mode():
            feats = file_log_mel(path, self.logmel).cpu().numpy().astype(np.float16)
        tmp = entry.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                np.save(f, feats, allow_pickle=False)
            os.replace(tmp, entry)
        except OSError as e:  # a read-only or full cache: the features are still good
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"feature cache {self.root}: cannot write ({e.strerror or e}); "
                    "features are computed without it",
                    stacklevel=2,
                )
        return feats

    def get_many(
        self, paths: Iterable[str | os.PathLike], workers: int = 2
    ) -> Iterator[np.ndarray | audio.AudioError]:
        """``get`` of each path in order, ``workers`` files at a time (decoding, resampling and
        the FFTs release the GIL); a file that cannot be read yields its AudioError.

        While the workers run, torch's own thread pool is shrunk to share its threads among them
        (no more workers than torch has threads); consume the generator to its end, or close
        it, to give the threads back. On the 2-core machine of benchmarks/speed.py, 2 workers
        × 1 thread took the log-mels of 30 s files 1.25-1.4× faster than one file at a time
        with 2 threads."""

        def one(path):
            try:
                return self.get(path)
            except audio.AudioError as e:
                return e

        threads = torch.get_num_threads()
        workers = min(workers, threads)
        if workers <= 1:
            yield from map(one, paths)
            return
        torch.set_num_threads(threads // workers)
        try:
            with ThreadPoolExecutor(workers) as pool:
                # at most 2 × workers files ahead of the consumer (Executor.map would decode
                # every file at once and hold all their features until they are taken)
                ahead: deque = deque()
                for path in paths:
                    ahead.append(pool.submit(one, path))
                    if len(ahead) >= 2 * workers:
                        yield ahead.popleft().result()
                while ahead:
                    yield ahead.popleft().result()
        finally:
            torch.set_num_threads(threads)


def default_cache_dir() -> Path:
    env = os.environ.get("AUDIOVIT_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "audiovit"
