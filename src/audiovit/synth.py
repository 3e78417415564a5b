"""Synthetic labelled audio: the demo's dataset and the tests' fixtures.

Seven classes of clearly different sounds, each clip with its own random pitch, timing, level
and background noise, so telling them apart takes real learning (a tone and a chord, or an AM
and an FM tone, share most of their spectrum).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

Generator = Callable[[np.random.Generator, np.ndarray, int], np.ndarray]


def _harmonic(f0: np.ndarray | float, t: np.ndarray, sr: int, n: int = 4) -> np.ndarray:
    """Sum of ``n`` harmonics with 1/k amplitudes; f0 may vary over time (Hz, shape of t)."""
    phase = 2 * np.pi * np.cumsum(np.broadcast_to(f0, t.shape)) / sr
    return sum(np.sin(k * phase) / k for k in range(1, n + 1))


def _envelope(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """A random onset and length inside the clip, with 10 ms ramps."""
    dur = t[-1]
    length = rng.uniform(0.4, 0.9) * dur
    start = rng.uniform(0, dur - length)
    ramp = 0.01
    return np.clip(np.minimum((t - start) / ramp, (start + length - t) / ramp), 0, 1)


def tone(rng, t, sr):
    return _harmonic(rng.uniform(150, 1200), t, sr) * _envelope(rng, t)


def chord(rng, t, sr):
    f0 = rng.uniform(150, 600)
    third = 4 if rng.random() < 0.5 else 3
    return (
        sum(_harmonic(f0 * 2 ** (s / 12), t, sr, 3) for s in (0, third, 7)) * _envelope(rng, t) / 2
    )


def chirp(rng, t, sr):
    f_lo, f_hi = rng.uniform(150, 600), rng.uniform(1500, 5000)
    env = _envelope(rng, t)
    on = env > 0
    frac = np.zeros_like(t)
    frac[on] = np.linspace(0, 1, on.sum())
    if rng.random() < 0.5:
        frac = 1 - frac
    return _harmonic(f_lo * (f_hi / f_lo) ** frac, t, sr, 2) * env


def am_tone(rng, t, sr):
    mod = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 8) * t + rng.uniform(0, 6.3))) ** 2
    return _harmonic(rng.uniform(200, 1000), t, sr) * mod * _envelope(rng, t)


def fm_tone(rng, t, sr):
    f0 = rng.uniform(200, 1000)
    vibrato = f0 * rng.uniform(0.12, 0.25) * np.sin(2 * np.pi * rng.uniform(3, 7) * t)
    return _harmonic(f0 + vibrato, t, sr) * _envelope(rng, t)


def noise_bursts(rng, t, sr):
    out = np.zeros_like(t)
    for _ in range(rng.integers(2, 5)):
        centre = rng.uniform(500, 6000)
        n = int(rng.uniform(0.05, 0.25) * sr)
        start = rng.integers(0, max(1, len(t) - n))
        spec = np.fft.rfft(rng.standard_normal(n))
        hz = np.fft.rfftfreq(n, 1 / sr)
        spec *= np.exp(-0.5 * ((hz - centre) / (0.3 * centre)) ** 2)
        out[start : start + n] += np.fft.irfft(spec, n) * np.hanning(n) * 8
    return out


def click_train(rng, t, sr):
    out = np.zeros_like(t)
    rate = rng.uniform(4, 25)
    env = _envelope(rng, t)
    idx = (np.arange(0, t[-1], 1 / rate) * sr).astype(int)
    click = np.exp(-np.arange(int(0.004 * sr)) / (0.0007 * sr)) * np.sign(
        rng.standard_normal(int(0.004 * sr))
    )
    for i in idx[env[idx] > 0]:
        seg = out[i : i + len(click)]
        seg += click[: len(seg)]
    return out * 2


CLASSES: dict[str, Generator] = {
    "tone": tone,
    "chord": chord,
    "chirp": chirp,
    "am_tone": am_tone,
    "fm_tone": fm_tone,
    "noise_bursts": noise_bursts,
    "click_train": click_train,
}


def make_clip(
    kind: str, rng: np.random.Generator, *, sr: int = 16000, duration: float = 2.0
) -> np.ndarray:
    """One clip (S,) float32 of class ``kind``, with random level and background noise."""
    t = np.arange(int(sr * duration)) / sr
    x = CLASSES[kind](rng, t, sr)
    x = x / (np.abs(x).max() + 1e-9) * 10 ** (rng.uniform(-24, -3) / 20)
    snr_db = rng.uniform(5, 30)
    noise = rng.standard_normal(len(t))
    if rng.random() < 0.5:  # pink-ish: integrate white noise a little
        noise = np.convolve(noise, np.ones(8) / 8, mode="same")
    noise *= np.sqrt(np.mean(x**2) / (np.mean(noise**2) + 1e-12) / 10 ** (snr_db / 10))
    return (x + noise).astype(np.float32)


def make_dataset(
    root: str | Path,
    *,
    n_per_class: int = 40,
    classes: list[str] | None = None,
    sr: int = 16000,
    duration: float = 2.0,
    seed: int = 0,
) -> Path:
    """Write ``root/<class>/<class>_NNN.wav`` (16-bit PCM) and return ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for kind in classes or list(CLASSES):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            sf.write(
                root / kind / f"{kind}_{i:03d}.wav",
                make_clip(kind, rng, sr=sr, duration=duration),
                sr,
                subtype="PCM_16",
            )
    return root
