import numpy as np
import pytest
import soundfile as sf
import torch

import audiovit
from audiovit.inference import _Windower, frame_windows, window_starts
from helpers import sine


@pytest.mark.parametrize(
    "T,win,hop", [(10, 16, 8), (16, 16, 8), (17, 16, 8), (100, 16, 8), (100, 16, 16), (101, 30, 7)]
)
def test_windows_cover_the_clip(T, win, hop):
    starts = window_starts(T, win, hop)
    covered = np.zeros(max(T, win), bool)
    for s in starts:
        covered[s : s + win] = True
    assert covered[:T].all() and starts[-1] + win == max(T, win) and starts == sorted(set(starts))


@pytest.mark.parametrize("T,chunk", [(10, 3), (16, 16), (17, 5), (203, 7), (203, 500), (50, 1)])
def test_streaming_windows_equal_whole_clip_windows(T, chunk):
    feats = torch.randn(4, T)
    whole, starts = frame_windows(feats, 16, 6)
    w = _Windower(16, 6)
    got = [pair for i in range(0, T, chunk) for pair in w.push(feats[:, i : i + chunk])] + list(
        w.finish()
    )
    assert [s for s, _ in got] == starts
    torch.testing.assert_close(torch.stack([x for _, x in got]), whole)


def test_predict_file_waveform_and_features_agree(trained, synth_root):
    clf = audiovit.load_model(trained / "model.pt", device="cpu")
    path = sorted((synth_root / "chirp").glob("*.wav"))[0]
    from_file = clf.predict(path, top_k=2)
    x, sr = sf.read(path, dtype="float32")
    from_wave = clf.predict(x, sr=sr, top_k=2)
    assert from_file.label == from_wave.label
    np.testing.assert_allclose(from_file.probs, from_wave.probs, atol=1e-5)
    assert len(from_file.top_k) == 2 and from_file.top_k[0] == (
        from_file.label,
        pytest.approx(from_file.score),
    )
    assert abs(from_file.duration_s - 1.0) < 1e-3
    assert from_file.segments[0].start_s == 0 and from_file.segments[-1].end_s == pytest.approx(1.0)
    d = from_file.to_dict(timeline=True)
    assert set(d) == {"path", "label", "score", "top_k", "duration_s", "time_shares", "segments",
                      "timeline"}  # fmt: skip
    assert [w["label"] for w in d["timeline"]] == [w.label for w in from_file.timeline()]


@pytest.mark.parametrize("hop_s", [None, 0.25])
def test_clips_scored_together_equal_clips_scored_alone(trained, hop_s):
    # fp32, a batch of 1 and the clips twice: the flush at 8 windows falls between clips.
    clf = audiovit.load_model(trained / "model.pt", device="cpu", precision="fp32", batch_size=1)
    g = torch.Generator().manual_seed(0)
    n_mels = clf.feature_cfg.n_mels
    clips = [
        torch.randn(n_mels, T, generator=g) * 10 - 40
        for T in (5, clf.win, 3 * clf.win + 7, 40, 1) * 2
    ]
    together = clf.predict_clips([c.numpy().astype(np.float16) for c in clips], hop_s)
    alone = []
    for c in clips:  # by hand: the clip's windows, each scored, then their mean
        windows, _ = frame_windows(c.half().float(), clf.win, clf.hop_frames(hop_s))
        alone.append(torch.stack([clf.window_probs(w[None])[0] for w in windows]).mean(dim=0))
    assert together.shape == (len(clips), len(clf.labels))
    torch.testing.assert_close(together, torch.stack(alone), atol=1e-5, rtol=1e-5)
    assert clf.predict_clips([]).shape == (0, len(clf.labels))


def test_long_file_is_streamed_in_blocks(trained, tmp_path, monkeypatch):
    from audiovit import audio

    clf = audiovit.load_model(trained / "model.pt", device="cpu")
    x = np.concatenate(
        [
            sine(20.0, hz=300),
            np.random.default_rng(0).standard_normal(16000 * 20).astype(np.float32) * 0.05,
        ]
    )
    sf.write(tmp_path / "long.flac", x, 16000)
    whole = clf.predict(tmp_path / "long.flac", hop_s=1.0)
    monkeypatch.setattr(audio, "BLOCK_SECONDS", 0.37)
    sizes = []
    real = audio.stream

    def small_blocks(path, sr, block_s=0.37):
        for b in real(path, sr=sr, block_s=0.37):
            sizes.append(len(b))
            yield b

    monkeypatch.setattr(audio, "stream", small_blocks)
    streamed = clf.predict(tmp_path / "long.flac", hop_s=1.0)
    assert max(sizes) <= 0.37 * 16000 + 1 and len(sizes) > 100
    np.testing.assert_allclose(streamed.probs, whole.probs, atol=2e-4)
    assert len(streamed.segments) == len(whole.segments) >= 39
    assert streamed.segments[-1].end_s == pytest.approx(40.0)


@pytest.mark.parametrize("seconds", [0.01, 0.1, 0.3])
def test_very_short_clips_are_padded(trained, seconds):
    clf = audiovit.load_model(trained / "model.pt", device="cpu")
    p = clf.predict(sine(seconds), sr=16000)
    assert len(p.segments) == 1 and np.isfinite(p.probs).all() and p.label in clf.labels


def test_silence_gives_finite_probabilities(trained):
    clf = audiovit.load_model(trained / "model.pt", device="cpu")
    p = clf.predict(np.zeros(16000 * 3, np.float32), sr=16000)
    assert np.isfinite(p.probs).all() and abs(p.probs.sum(axis=1) - 1).max() < 1e-5


def test_waveform_needs_a_sample_rate(trained):
    clf = audiovit.load_model(trained / "model.pt", device="cpu")
    with pytest.raises(ValueError, match="sample rate"):
        clf.predict(sine(1.0))


def _mixed(labels, winners, seconds=10.0):
    """A Prediction whose windows (1 s each) are won by ``winners`` in turn, at 0.6."""
    from audiovit.prediction import Prediction, Window

    probs = np.full((len(winners), len(labels)), 0.4 / (len(labels) - 1), np.float32)
    for i, w in enumerate(winners):
        probs[i, labels.index(w)] = 0.6
    segs = [Window(float(i), float(i + 1), w, 0.6) for i, w in enumerate(winners)]
    mean = probs.mean(0)
    top = [(labels[i], float(mean[i])) for i in np.argsort(-mean)[:3]]
    return Prediction(top[0][0], top[0][1], top, segs, probs, seconds, "mix.wav",
                      overview=np.zeros((8, 50), np.float32), labels=labels)  # fmt: skip


def test_a_mixed_recording_is_headed_by_how_its_time_divides_and_every_winner_is_drawn(tmp_path):
    from audiovit import plots

    labels = [f"c{i}" for i in range(12)]
    p = _mixed(labels, ["c0"] * 4 + ["c1"] * 3 + ["c2"] * 2 + ["c11"])  # c11 wins one window
    assert p.time_shares() == [("c0", 0.4), ("c1", 0.3), ("c2", 0.2), ("c11", 0.1)]
    assert "over time: c0 40%, c1 30%, c2 20%, c11 10%" in p.to_text()
    assert p.to_dict()["time_shares"][3] == {"label": "c11", "share": 0.1}
    assert plots.timeline_classes(p) == ([0, 1, 2, 11], [])
    many = _mixed(labels, labels[:11] + ["c0"], seconds=12.0)  # 11 winners: the last as "other"
    drawn, rest = plots.timeline_classes(many, max_lines=10)
    assert (
        drawn[0] == 0 and len(drawn) == 9 and len(rest) == 2 and set(drawn + rest) == set(range(11))
    )
    plots.timeline(p, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 10_000
    steady = _mixed(labels, ["c3"] * 10)
    assert "over time" not in steady.to_text() and steady.time_shares() == [("c3", 1.0)]


def test_int8_scores_like_fp32(trained, synth_root, tmp_path):
    """Every synthetic clip of the test set: the same label, probabilities within 0.05, from the
    torch backend's int8 and from an int8 ONNX export."""
    from audiovit.export import export_onnx, load_onnx

    files = sorted(synth_root.rglob("*.wav"))[::4]
    fp32 = audiovit.load_model(trained / "model.pt", device="cpu", precision="fp32")
    int8 = audiovit.load_model(trained / "model.pt", device="cpu", precision="int8")
    onnx8 = load_onnx(export_onnx(trained / "model.pt", tmp_path / "m.onnx", int8=True))
    assert int8.model is not fp32.model and onnx8.precision == "int8"
    ref = [fp32.predict(f) for f in files]
    for clf in (int8, onnx8):
        got = [clf.predict(f) for f in files]
        assert [p.label for p in got] == [p.label for p in ref]
        assert max(np.abs(g.probs - r.probs).max() for g, r in zip(got, ref)) < 0.05
    modules = list(int8.model.blocks.modules())  # the transformer's linear layers are int8
    assert not any(type(m) is torch.nn.Linear for m in modules)
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized.dynamic") for m in modules)
    assert type(int8.model.head) is torch.nn.Linear and fp32.model.blocks is not int8.model.blocks


def test_auto_precision_follows_what_the_cpu_runs_fast(trained, monkeypatch):
    from audiovit import device as D

    for faster, want in ((True, "bf16"), (False, "int8")):
        monkeypatch.setattr(D, "cpu_bf16_is_faster", lambda faster=faster: faster)
        clf = audiovit.load_model(trained / "model.pt", device="cpu")
        assert clf.precision == want and (clf.amp is not None) == (want == "bf16")
    assert D.float_precision(torch.device("cpu"), amp=True) == "fp32"  # training: never int8
    with pytest.raises(ValueError, match="int8 runs on the CPU"):
        D.inference_precision("int8", torch.device("cuda"))
    with pytest.raises(ValueError, match="choose one of"):
        D.inference_precision("fp8", torch.device("cpu"))
