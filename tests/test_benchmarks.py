"""The benchmarks' own arithmetic: the MFCC + SVM reference's features equal librosa's."""

import sys
from pathlib import Path

import numpy as np
import pytest

librosa = pytest.importorskip("librosa")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from accuracy import mfcc_stats  # noqa: E402


@pytest.mark.parametrize("frames", [2, 3, 8, 9, 301])
def test_mfcc_statistics_equal_librosas(frames):
    S = np.random.default_rng(frames).standard_normal((64, frames)).astype(np.float32) * 20 - 50
    mfcc = librosa.feature.mfcc(S=S, n_mfcc=20)
    width = min(9, frames - (frames % 2 == 0))
    delta = librosa.feature.delta(mfcc, width=width) if width >= 3 else np.zeros_like(mfcc)
    want = np.concatenate([mfcc.mean(1), mfcc.std(1), delta.mean(1), delta.std(1)])
    np.testing.assert_allclose(mfcc_stats(S), want, rtol=1e-5, atol=1e-4)
