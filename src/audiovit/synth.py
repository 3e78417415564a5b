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


# Unlabelled procedural audio for masked-spectrogram pretraining: clips of several overlapping
# events drawn from families of physically plausible sounds (harmonic stacks with k^-γ partial
# decay, FM, band-limited saw/square/pulse, damped modes of struck objects, filtered noise),
# each with its own ADSR envelope, pitch, glide or vibrato, timing and level, over background
# noise — after Ishikawa et al. (ICASSP 2025) and AudioPG: such audio teaches a spectrogram
# model what onsets, harmonics, formant-like bands and textures look like, with no download.


def _adsr(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Attack, decay, sustain, release over ``n`` samples: struck (short attack, no sustain)
    or bowed (slower attack, a sustain level)."""
    a = int(sr * rng.uniform(0.002, 0.02 if rng.random() < 0.5 else 0.3))
    d = int(sr * rng.uniform(0.02, 0.5))
    r = int(sr * rng.uniform(0.01, 0.4))
    s = rng.uniform(0.0, 0.3) if rng.random() < 0.4 else rng.uniform(0.4, 1.0)
    env = np.full(n, s, np.float32)
    a, d = min(a, n), min(d, max(0, n - a))
    env[:a] = np.linspace(0, 1, a, endpoint=False)
    env[a : a + d] = np.linspace(1, s, d, endpoint=False)
    r = min(r, n - a - d)
    if r > 0:
        env[n - r :] *= np.linspace(1, 0, r)
    return env


def _pitch(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A fundamental (Hz, per sample): log-uniform 50 Hz-2 kHz, steady, gliding or with
    vibrato."""
    f0 = float(np.exp(rng.uniform(np.log(50), np.log(2000))))
    t = np.arange(n, dtype=np.float32) / sr
    kind = rng.random()
    if kind < 0.25:  # a glide over the event, up to two octaves either way
        return f0 * 2 ** (rng.uniform(-2, 2) * t / max(t[-1], 1e-3))
    if kind < 0.5:  # vibrato
        depth = rng.uniform(0.005, 0.06)
        return f0 * (1 + depth * np.sin(2 * np.pi * rng.uniform(3, 8) * t))
    return np.full(n, f0, np.float32)


def _partials(rng, f0: np.ndarray, sr: int, gains: np.ndarray, stretch: float = 0.0):
    """Sum of partials k = 1..len(gains) at k·f0·(1 + stretch·k²) (stretch: stiff-string
    inharmonicity), each silenced above Nyquist."""
    phase = 2 * np.pi * np.cumsum(f0) / sr
    out = np.zeros_like(f0)
    for k, g in enumerate(gains, start=1):
        ratio = k * (1 + stretch * k * k)
        if ratio * f0.max() < sr / 2:
            out += g * np.sin(ratio * phase + rng.uniform(0, 2 * np.pi))
    return out


def harmonic_stack(rng, n, sr):
    """k^-γ partial decay: γ ≈ 1 is saw-like and bright, γ ≈ 2.5 nearly a sine; odd partials
    only for square- and clarinet-like tones."""
    k = np.arange(1, rng.integers(4, 24) + 1)
    gains = k ** -rng.uniform(0.6, 2.5)
    if rng.random() < 0.3:
        gains[1::2] = 0
    stretch = rng.uniform(0, 5e-4) if rng.random() < 0.3 else 0.0
    return _partials(rng, _pitch(rng, n, sr), sr, gains, stretch)


def fm(rng, n, sr):
    """Two-operator FM: a carrier with a modulator at a simple or inharmonic ratio."""
    fc = _pitch(rng, n, sr)
    ratio = rng.choice([0.5, 1, 2, 3, 1.41, 3.5])
    index = rng.uniform(0.5, 8) * np.linspace(1, rng.uniform(0, 1), n)
    mod = np.sin(2 * np.pi * np.cumsum(fc * ratio) / sr)
    return np.sin(2 * np.pi * np.cumsum(fc) / sr + index * mod)


def pulse(rng, n, sr):
    """A band-limited pulse wave of random duty cycle (0.5: square)."""
    duty = rng.uniform(0.1, 0.5)
    k = np.arange(1, rng.integers(6, 30) + 1)
    return _partials(rng, _pitch(rng, n, sr), sr, np.sin(np.pi * k * duty) / k)


def struck(rng, n, sr):
    """Damped modes of a struck object (bar, plate, membrane): inharmonic partials, each
    decaying at its own rate."""
    t = np.arange(n, dtype=np.float32) / sr
    f0 = np.exp(rng.uniform(np.log(80), np.log(3000)))
    out = np.zeros(n, np.float32)
    for _ in range(rng.integers(3, 10)):
        f = f0 * rng.uniform(1, 8)
        if f < sr / 2:
            tau = rng.uniform(0.01, 1.0)
            out += rng.uniform(0.2, 1) * np.exp(-t / tau) * np.sin(2 * np.pi * f * t)
    return out


def filtered_noise(rng, n, sr):
    """Noise in a band (a breath, a hiss, a rumble), its centre optionally sweeping."""
    spec = np.fft.rfft(rng.standard_normal(n))
    hz = np.fft.rfftfreq(n, 1 / sr)
    centre = np.exp(rng.uniform(np.log(100), np.log(sr / 2.5)))
    width = rng.uniform(0.05, 1.0) * centre
    spec *= np.exp(-0.5 * ((hz - centre) / width) ** 2)
    return np.fft.irfft(spec, n).astype(np.float32) * 10


FAMILIES: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "harmonic_stack": harmonic_stack,
    "fm": fm,
    "pulse": pulse,
    "struck": struck,
    "filtered_noise": filtered_noise,
}


def _background(rng: np.random.Generator, n: int) -> np.ndarray:
    """White, pink or brown noise (power ∝ f^0, f^-1, f^-2), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    spec[1:] /= np.arange(1, len(spec)) ** (rng.choice([0.0, 0.5, 1.0]))
    x = np.fft.irfft(spec, n)
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def procedural_clip(rng: np.random.Generator, seconds: float, sr: int = 16000) -> np.ndarray:
    """One unlabelled clip (S,) float32: 1-6 events of random families, onsets, lengths and
    levels (a 30 dB range), some repeated as a rhythm, over background noise 10-50 dB down."""
    n = int(seconds * sr)
    out = np.zeros(n, np.float32)
    for _ in range(rng.integers(1, 7)):
        family = FAMILIES[rng.choice(list(FAMILIES))]
        length = int(sr * rng.uniform(0.05, min(seconds, 2.5)))
        event = family(rng, length, sr).astype(np.float32) * _adsr(rng, length, sr)
        event /= np.abs(event).max() + 1e-9
        level = 10 ** (rng.uniform(-30, 0) / 20)
        repeats = rng.integers(2, 6) if rng.random() < 0.2 else 1
        period = int(sr * rng.uniform(0.1, 0.6))
        first = rng.integers(0, max(1, n - length // 2))
        for r in range(repeats):
            start = first + r * period
            if start >= n:
                break
            seg = out[start : start + length]
            seg += level * event[: len(seg)]
    out += _background(rng, n) * 10 ** (rng.uniform(-50, -10) / 20)
    return out / (np.abs(out).max() + 1e-9) * 10 ** (rng.uniform(-20, -1) / 20)
