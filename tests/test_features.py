import librosa
import numpy as np
import pytest
import torch

from audiovit import features as F
from audiovit.features import FeatureConfig, LogMel


@pytest.mark.parametrize(
    "cfg",
    [
        FeatureConfig(),
        FeatureConfig(sr=22050, n_fft=2048, win_length=2048, hop_length=512, n_mels=128),
        FeatureConfig(
            sr=8000, n_fft=256, win_length=200, hop_length=80, n_mels=40, fmin=50.0, fmax=3500.0
        ),
    ],
    ids=["default", "librosa-defaults", "8k"],
)
def test_log_mel_matches_librosa(cfg):
    x = np.random.default_rng(0).standard_normal(cfg.sr * 2 + 123).astype(np.float32) * 0.1
    ours = LogMel(cfg)(torch.from_numpy(x)).numpy()
    S = librosa.feature.melspectrogram(
        y=x,
        sr=cfg.sr,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        n_mels=cfg.n_mels,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
        power=2.0,
    )
    ref = librosa.power_to_db(S, ref=1.0, amin=1e-10, top_db=None)
    assert ours.shape == ref.shape == (cfg.n_mels, cfg.n_frames(len(x) / cfg.sr))
    assert np.abs(ours - ref).max() < 1e-3


def test_filterbank_matches_librosa():
    ours = F.mel_filterbank(sr=16000, n_fft=512, n_mels=64, fmin=20.0, fmax=7600.0)
    ref = librosa.filters.mel(sr=16000, n_fft=512, n_mels=64, fmin=20.0, fmax=7600.0)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)


def test_batched_equals_one_by_one_and_runs_under_autocast():
    lm = LogMel(FeatureConfig(n_mels=64))
    x = torch.randn(3, 8000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        batched = lm(x)
    assert batched.dtype == torch.float32 and batched.shape == (3, 64, 51)
    for i in range(3):
        torch.testing.assert_close(batched[i], lm(x[i]))


@pytest.mark.parametrize("sizes", [[16000], [1, 511, 2, 10000, 5486], [300] * 40, [100]])
def test_streaming_equals_whole_signal(sizes):
    lm = LogMel(FeatureConfig())
    x = np.random.default_rng(1).standard_normal(sum(sizes)).astype(np.float32)
    blocks = np.split(x, np.cumsum(sizes)[:-1])
    streamed = torch.cat(list(F.stream_log_mel(blocks, lm)), dim=1)
    whole = lm(torch.from_numpy(x))
    assert streamed.shape == whole.shape
    torch.testing.assert_close(streamed, whole, atol=1e-3, rtol=1e-4)


def test_silence_gives_finite_floor():
    db = LogMel(FeatureConfig())(torch.zeros(16000))
    assert torch.isfinite(db).all() and torch.allclose(db, torch.tensor(-100.0))


def test_spec_augment_masks_stripes_with_the_mean():
    x = torch.randn(4, 64, 100)
    g = torch.Generator().manual_seed(0)
    y = F.spec_augment(x, freq_mask=10, time_mask=20, n_masks=2, generator=g)
    changed = y != x
    assert changed.any()
    for b in range(4):  # masked cells hold that example's mean
        assert torch.allclose(y[b][changed[b]], x[b].mean().expand(int(changed[b].sum())))
    g2 = torch.Generator().manual_seed(0)
    assert torch.equal(F.spec_augment(x, freq_mask=10, time_mask=20, n_masks=2, generator=g2), y)


def test_cache_computes_once_and_rebuilds_damaged_entries(tmp_path, monkeypatch):
    import soundfile as sf

    from helpers import sine

    wav = tmp_path / "a.wav"
    sf.write(wav, sine(1.0), 16000)
    cache = F.FeatureCache(tmp_path / "cache", LogMel(FeatureConfig(n_mels=32)))
    first = cache.get(wav)
    assert first.shape == (32, 101) and first.dtype == np.float16
    entry = cache._entry(wav)
    calls = []
    monkeypatch.setattr(F, "file_log_mel", lambda *a: calls.append(1) or torch.zeros(32, 101))
    np.testing.assert_array_equal(cache.get(wav), first)
    assert calls == []  # served from disk
    entry.write_bytes(entry.read_bytes()[:60])  # a torn write
    rebuilt = cache.get(wav)
    assert calls == [1] and rebuilt.shape == (32, 101)
    other = F.FeatureCache(tmp_path / "cache", LogMel(FeatureConfig(n_mels=64)))
    assert other._entry(wav) != entry  # other settings, other entry


def test_cache_fills_in_parallel_in_order_with_errors_in_place(tmp_path):
    import soundfile as sf

    from audiovit.audio import AudioError
    from helpers import sine

    paths = []
    for i, f in enumerate((220.0, 440.0, None, 880.0, 1760.0)):
        p = tmp_path / f"{i}.wav"
        if f is None:
            p.write_bytes(b"RIFF0000WAVE")  # not audio
        else:
            sf.write(p, sine(0.5 + 0.25 * i, sr=22050, hz=f), 22050)
        paths.append(p)
    cache = F.FeatureCache(tmp_path / "cache", LogMel(FeatureConfig(n_mels=32)))
    threads = torch.get_num_threads()
    got = list(cache.get_many(paths, workers=2))
    assert torch.get_num_threads() == threads  # torch's pool restored after the fill
    assert isinstance(got[2], AudioError) and "2.wav" in str(got[2])
    fresh = F.FeatureCache(tmp_path / "fresh", LogMel(FeatureConfig(n_mels=32)))
    for p, g in zip(paths, got):
        if p.name != "2.wav":  # each file's own features, in input order
            np.testing.assert_array_equal(g, fresh.get(p))


def test_cache_fill_decodes_only_a_few_files_ahead_of_its_consumer(tmp_path):
    """A folder of long files is scored as it is decoded, never held in memory all at once."""
    import soundfile as sf

    from helpers import sine

    paths = []
    for i in range(12):
        sf.write(tmp_path / f"{i}.wav", sine(0.3, sr=16000, hz=200.0 + 50 * i), 16000)
        paths.append(tmp_path / f"{i}.wav")
    pulled = []

    def listing():
        for p in paths:
            pulled.append(p)
            yield p

    cache = F.FeatureCache(tmp_path / "cache", LogMel(FeatureConfig(n_mels=32)))
    feats = cache.get_many(listing(), workers=2)
    first = next(feats)
    assert len(pulled) <= 5  # 2 × workers in flight, not all 12
    rest = list(feats)
    assert len(rest) == 11 and len(pulled) == 12
    for p, g in zip(paths, [first, *rest]):
        np.testing.assert_array_equal(g, cache.get(p))


def test_a_cache_that_cannot_be_written_warns_once_and_still_gives_features(tmp_path):
    import soundfile as sf

    from helpers import sine

    for i in range(2):
        sf.write(tmp_path / f"{i}.wav", sine(0.3, sr=16000, hz=300.0 + 100 * i), 16000)
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    logmel = LogMel(FeatureConfig(n_mels=32))
    cache = F.FeatureCache(tmp_path / "cache", logmel)
    with pytest.warns(UserWarning, match="cannot write") as caught:
        got = [cache.get(tmp_path / f"{i}.wav") for i in range(2)]
    assert len(caught) == 1
    fresh = F.FeatureCache(tmp_path / "fresh", logmel)
    for i, g in enumerate(got):
        np.testing.assert_array_equal(g, fresh.get(tmp_path / f"{i}.wav"))


def test_the_first_frames_of_a_file_stop_decoding_there(tmp_path, monkeypatch):
    import soundfile as sf

    from helpers import sine

    sf.write(tmp_path / "long.wav", sine(100.0, sr=16000, hz=440.0), 16000)
    logmel = LogMel(FeatureConfig(n_mels=32))
    whole = F.file_log_mel(tmp_path / "long.wav", logmel)
    pulled, stream = [], F.audio.stream

    def counting(*args, **kwargs):
        for block in stream(*args, **kwargs):
            pulled.append(len(block))
            yield block

    monkeypatch.setattr(F.audio, "stream", counting)
    first = F.file_log_mel(tmp_path / "long.wav", logmel, max_frames=150)  # 1.5 s
    torch.testing.assert_close(first, whole[:, :150])
    assert sum(pulled) <= F.audio.BLOCK_SECONDS * 16000  # one block, not all 100 s
    pulled.clear()
    late = F.file_log_mel(tmp_path / "long.wav", logmel, max_frames=300, start_frame=6000)
    torch.testing.assert_close(late, whole[:, 6000:6300])  # across a block border
    assert sum(pulled) < 100 * 16000  # decoding stopped at the span's end
    assert F.file_log_mel(tmp_path / "long.wav", logmel, start_frame=20_000).shape == (32, 0)
