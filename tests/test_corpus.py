"""Messy real-world input at every entry point: odd-but-valid audio is processed, invalid input
gets one line naming the file and the reason — never a traceback, never NaN."""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import audiovit
from audiovit import audio
from helpers import fast_flags, run, sine


@dataclass
class Case:
    name: str
    path: Path
    valid: bool
    reason: str = ""  # a word the error must contain, for invalid cases


def _wav_header(n_bytes: int, sr: int = 16000) -> bytes:
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, sr, sr * 2, 2, 16)  # PCM, mono, 16-bit
    return (
        b"RIFF"
        + struct.pack("<I", 36 + n_bytes)
        + b"WAVEfmt "
        + fmt
        + b"data"
        + struct.pack("<I", n_bytes)
    )


def make_corpus(root: Path, long: bool = False) -> list[Case]:
    root.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def good(name, data, sr, **kw):
        sf.write(root / name, data, sr, **kw)
        cases.append(Case(name, root / name, True))

    def bad(name, reason, write=None):
        path = root / name
        if write is not None:
            write(path)
        cases.append(Case(name, path, False, reason))

    x = sine(1.0)
    for sub in ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"):
        good(f"{sub.lower()}.wav", x, 16000, subtype=sub)
    for ch in range(2, 9):
        good(f"ch{ch}.wav", np.stack([x * (i + 1) / ch for i in range(ch)], axis=1), 16000)
    for sr in (8000, 11025, 22050, 32000, 44100, 48000, 96000):
        good(f"sr{sr}.flac" if sr <= 48000 else f"sr{sr}.wav", sine(0.5, sr), sr)
    good("ten-ms.wav", sine(0.01), 16000)
    good("all-zero.wav", np.zeros(16000, np.float32), 16000)
    nan = sine(1.0)
    nan[::97], nan[1::89], nan[2::83] = np.nan, np.inf, -np.inf
    good("nan-inf.wav", nan, 16000, subtype="FLOAT")
    good("huge-float.wav", sine(0.5) * 1e6, 16000, subtype="FLOAT")
    good("with spaces.wav", x, 16000)
    good("ünïcødé 音.wav", x, 16000)
    good("-leading-dash.wav", x, 16000)
    good("vorbis.ogg", x, 16000)
    good("opus.opus", sine(1.0, 48000), 48000, format="OGG", subtype="OPUS")
    good("mpeg.mp3", sine(1.0, 44100), 44100)
    good("aiff.aiff", x, 16000)
    good("sun.au", x, 16000)
    good("wav-named.flac", x, 16000, format="WAV")  # mislabelled extension, real audio
    (root / "link.wav").symlink_to(root / "pcm_16.wav")
    cases.append(Case("link.wav", root / "link.wav", True))
    full = (root / "pcm_16.wav").read_bytes()
    (root / "truncated-data.wav").write_bytes(full[: 44 + 9000])
    cases.append(Case("truncated-data.wav", root / "truncated-data.wav", True))
    if long:
        with sf.SoundFile(root / "one-hour.flac", "w", 16000, 1) as f:
            for _ in range(60):
                f.write(
                    np.random.default_rng(0).standard_normal(16000 * 60).astype(np.float32) * 0.05
                )
        cases.append(Case("one-hour.flac", root / "one-hour.flac", True))

    bad("empty.wav", "empty", lambda p: p.write_bytes(b""))
    bad("header-only.wav", "no audio", lambda p: p.write_bytes(_wav_header(0)))
    bad("cut-header.wav", "not a readable", lambda p: p.write_bytes(full[:20]))
    bad(
        "zero-length.wav",
        "no audio",
        lambda p: sf.write(p, np.zeros(0, np.float32), 16000, subtype="FLOAT"),
    )
    rng = np.random.default_rng(0)
    for ext in ("wav", "mp3", "flac", "ogg"):
        data = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
        bad(f"random.{ext}", "not a readable", lambda p, d=data: p.write_bytes(d))
    for magic, ext in (
        (b"fLaC", "flac"),
        (b"OggS", "ogg"),
        (b"ID3\x03\x00\x00\x00\x00\x00\x00", "mp3"),
    ):
        data = magic + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
        bad(f"magic-then-garbage.{ext}", "not a readable", lambda p, d=data: p.write_bytes(d))
    bad("text.wav", "not a readable", lambda p: p.write_text("just some text\n" * 40))
    bad("dir.wav", "directory", lambda p: p.mkdir())
    bad("dangling.wav", "no such file", lambda p: p.symlink_to(root / "nowhere.wav"))
    if os.geteuid() != 0:  # root reads everything
        bad("unreadable.wav", "permission", lambda p: (sf.write(p, x, 16000), p.chmod(0)))
    return cases


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Case]:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def test_corpus_is_broad(corpus):
    assert (
        len(corpus) >= 40
        and sum(c.valid for c in corpus) >= 25
        and sum(not c.valid for c in corpus) >= 12
    )


def test_python_api(corpus, trained):
    clf = audiovit.load_model(trained / "model.pt", device="cpu")
    for case in corpus:
        if case.valid:
            p = clf.predict(case.path)
            assert np.isfinite(p.probs).all() and p.label in clf.labels, case.name
            assert p.duration_s > 0, case.name
        else:
            with pytest.raises(audio.AudioError) as e:
                clf.predict(case.path)
            msg = str(e.value)
            assert msg.startswith(str(case.path)) and case.reason in msg and "\n" not in msg, (
                case.name,
                msg,
            )


def test_predict_cli_json(corpus, trained):
    r = run("predict", trained / "model.pt", *[c.path for c in corpus], "--json", check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["path"] for x in lines] == [str(c.path) for c in corpus]
    for case, line in zip(corpus, lines):
        assert ("error" in line) != case.valid, (case.name, line)
        if not case.valid:
            assert case.reason in line["error"] and str(case.path) not in line["error"]


def test_train_and_evaluate_skip_bad_files(corpus, synth_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    bad = [c for c in corpus if not c.valid and not c.path.is_dir()]
    for i, case in enumerate(bad):
        shutil.copy(case.path, root / classes[i % len(classes)] / case.name, follow_symlinks=False)
    out = tmp_path / "run"
    r = run("train", root, "--out", out, *fast_flags(epochs=1))
    skipped = [ln for ln in r.stdout.splitlines() if ln.startswith("skipped:")]
    assert len(skipped) == len(bad) and "Traceback" not in r.stderr
    for case in bad:
        assert any(case.name in ln and case.reason in ln for ln in skipped), case.name
    r = run("evaluate", out / "model.pt", root)
    assert sum(ln.startswith("skipped:") for ln in r.stdout.splitlines()) == len(bad)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    blob=st.binary(min_size=0, max_size=3000),
    ext=st.sampled_from([".wav", ".mp3", ".flac", ".ogg", ".aiff", ".bin"]),
)
def test_decoder_never_crashes_on_arbitrary_bytes(tmp_path, blob, ext):
    path = tmp_path / f"blob{ext}"
    path.write_bytes(blob)
    try:
        y = audio.load(path, sr=16000)
    except audio.AudioError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e)
    else:
        assert y.dtype == np.float32 and np.isfinite(y).all() and len(y) > 0


def test_prefixed_garbage_wav_header(tmp_path):
    """A WAV header that promises more data than the file holds decodes what is there."""
    path = tmp_path / "liar.wav"
    path.write_bytes(_wav_header(10_000_000) + (np.ones(800, np.int16) * 1000).tobytes())
    y = audio.load(path, sr=16000)
    assert len(y) == 800 and np.allclose(y, 1000 / 32768, atol=1e-4)


@pytest.mark.slow
def test_one_hour_file(tmp_path, trained):
    cases = make_corpus(tmp_path / "c", long=True)
    clf = audiovit.load_model(trained / "model.pt", device="cpu")
    p = clf.predict(next(c for c in cases if c.name == "one-hour.flac").path, hop_s=10)
    assert abs(p.duration_s - 3600) < 1 and np.isfinite(p.probs).all()


def test_service(corpus, server):
    import httpx

    url, clf = server
    for case in corpus:
        if case.path.is_dir() or not case.path.exists():
            continue  # nothing to upload
        r = httpx.post(
            url + "/predict", files={"file": (case.name, case.path.read_bytes())}, timeout=60
        )
        if case.valid:
            assert r.status_code == 200 and r.json()["label"] in clf.labels, (case.name, r.text)
        else:
            assert 400 <= r.status_code < 500 and r.json()["error"], (case.name, r.status_code)
            assert str(case.path.parent) not in r.text
