"""Decode audio files to mono float32 at a chosen sample rate, whole or in blocks.

soundfile (libsndfile) reads WAV, FLAC, Ogg Vorbis, Opus, MP3, AU, AIFF and more; an ``ffmpeg``
executable, when one is installed, reads everything else (m4a, aac, webm, ...). Resampling is
soxr's. Every failure is an :class:`AudioError` whose message is one line naming the file.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

AUDIO_EXTENSIONS = frozenset(
    ".wav .wave .flac .ogg .oga .opus .mp3 .au .snd .aif .aiff .aifc .caf .w64 .rf64 "
    ".m4a .mp4 .aac .wma .webm .mka".split()
)
BLOCK_SECONDS = 30.0  # decode granularity for streaming; bounds memory on hour-long files


class AudioError(Exception):
    """Audio that cannot be used. ``str(err)`` is one line: ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # always one line
        super().__init__(f"{self.path}: {self.reason}")


def is_audio_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


def check_file(path: Path) -> None:
    """Raise AudioError unless ``path`` is a readable, non-empty file."""
    if not path.exists():
        raise AudioError(path, "no such file")
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    if not os.access(path, os.R_OK):
        raise AudioError(path, "permission denied")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")


def to_mono(x: np.ndarray) -> np.ndarray:
    """(S,) or (S, C) samples → (S,) float32 mono; non-finite samples become 0."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2:  # one channel: a view, not a pass over the samples
        x = x[:, 0] if x.shape[1] == 1 else x.mean(axis=1, dtype=np.float32)
    elif x.ndim != 1:
        raise ValueError(f"expected samples of shape (S,) or (S, C), got {x.shape}")
    if not np.isfinite(x).all():
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return x


def resample(x: np.ndarray, sr_in: int, sr: int) -> np.ndarray:
    """Resample mono float32 samples (S,) from ``sr_in`` to ``sr`` Hz."""
    if sr_in == sr:
        return x
    return soxr.resample(x, sr_in, sr).astype(np.float32, copy=False)


# fd 2 is process-wide: one redirection at a time. The lock also serialises opening files, which
# guards libsndfile's and mpg123's global state when the feature cache decodes in threads.
_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet_stderr():
    """Silence C libraries that print to fd 2 while probing (mpg123's "Note: ..." lines), so a
    bad file yields our one-line error and nothing else."""
    with _STDERR_LOCK:
        try:
            saved = os.dup(2)
        except OSError:
            yield
            return
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)


def _soundfile_blocks(f: sf.SoundFile, block_s: float) -> Iterator[tuple[np.ndarray, int]]:
    with f:
        frames = max(1, int(block_s * f.samplerate))
        while True:
            data = f.read(frames, dtype="float32", always_2d=True)
            if len(data) == 0:
                return
            yield data, f.samplerate


def _ffmpeg_blocks(
    path: Path, sr: int, block_s: float, sf_reason: str
) -> Iterator[tuple[np.ndarray, int]]:
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path)]
    cmd += ["-f", "f32le", "-ac", "1", "-ar", str(sr), "-"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        n_bytes = 4 * int(block_s * sr)
        while chunk := proc.stdout.read(n_bytes):
            chunk = chunk[: len(chunk) // 4 * 4]
            yield np.frombuffer(chunk, dtype="<f4")[:, None], sr
        err = proc.stderr.read().decode(errors="replace").strip()
        if proc.wait() != 0:
            last = err.splitlines()[-1] if err else f"exit status {proc.returncode}"
            last = last.replace(f"{path}: ", "").replace(
                str(path), "<file>"
            )  # the path is ours to show
            raise AudioError(
                path, f"not a readable audio file (soundfile: {sf_reason}; ffmpeg: {last})"
            )
    finally:
        proc.kill()
        proc.wait()


def stream(
    path: str | os.PathLike, *, sr: int, block_s: float = BLOCK_SECONDS
) -> Iterator[np.ndarray]:
    """Yield successive blocks of a file as mono float32 (S_block,) at ``sr`` Hz.

    Memory stays bounded by two blocks of ``block_s`` (the first two are read together)
    whatever the file's length. Raises :class:`AudioError`.
    """
    path = Path(path)
    check_file(path)
    try:
        with _quiet_stderr():
            f = sf.SoundFile(str(path))
        if f.samplerate <= 0 or f.channels <= 0:
            f.close()
            raise AudioError(path, f"invalid header ({f.samplerate} Hz, {f.channels} channels)")
        blocks = _soundfile_blocks(f, block_s)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        if shutil.which("ffmpeg") is None:
            raise AudioError(path, f"not a readable audio file ({_sf_reason(e)})") from None
        blocks = _ffmpeg_blocks(path, sr, block_s, _sf_reason(e))

    resampler, n_out = None, 0
    try:
        blocks = iter(blocks)
        head = list(itertools.islice(blocks, 2))  # is the whole file one block?
        # then soxr's one-shot call gives the stream's samples, ~15 % sooner on a 30 s file
        one_shot = len(head) == 1
        for data, sr_in in itertools.chain(head, blocks):
            x = to_mono(data)
            if sr_in != sr and one_shot:
                x = soxr.resample(x, sr_in, sr, quality="HQ")
            elif sr_in != sr:
                if resampler is None:
                    resampler = soxr.ResampleStream(sr_in, sr, 1, dtype="float32", quality="HQ")
                x = resampler.resample_chunk(x)
            n_out += len(x)
            if len(x):
                yield x
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            n_out += len(tail)
            if len(tail):
                yield tail
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError, MemoryError) as e:
        raise AudioError(path, f"decoding failed ({_sf_reason(e)})") from None
    if n_out == 0:
        raise AudioError(path, "contains no audio samples")


def load(path: str | os.PathLike, *, sr: int) -> np.ndarray:
    """Decode a whole file to mono float32 (S,) at ``sr`` Hz. Raises :class:`AudioError`."""
    return np.concatenate(list(stream(path, sr=sr)))


def duration(path: str | os.PathLike) -> float | None:
    """Duration in seconds from the header, or None when the header does not say."""
    try:
        with _quiet_stderr():
            info = sf.info(str(path))
        return info.frames / info.samplerate if info.samplerate > 0 else None
    except Exception:
        return None


def _sf_reason(e: Exception) -> str:
    msg = str(e).strip()
    # libsndfile prefixes "Error opening '<path>': "; the path is already in AudioError.
    if ": " in msg and msg.startswith("Error"):
        msg = msg.split(": ", 1)[1]
    return msg.rstrip(".") or type(e).__name__
