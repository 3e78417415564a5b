import os
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from audiovit import audio
from helpers import sine

FORMATS = [  # (suffix, format, subtype, sample rate)
    (".wav", "WAV", "PCM_U8", 8000),
    (".wav", "WAV", "PCM_16", 16000),
    (".wav", "WAV", "PCM_24", 44100),
    (".wav", "WAV", "PCM_32", 22050),
    (".wav", "WAV", "FLOAT", 48000),
    (".wav", "WAV", "DOUBLE", 96000),
    (".flac", "FLAC", "PCM_16", 44100),
    (".flac", "FLAC", "PCM_24", 32000),
    (".ogg", "OGG", "VORBIS", 22050),
    (".opus", "OGG", "OPUS", 48000),
    (".mp3", "MP3", "MPEG_LAYER_III", 44100),
    (".au", "AU", "PCM_16", 11025),
    (".aiff", "AIFF", "PCM_24", 44100),
]


@pytest.mark.parametrize(
    "suffix,fmt,subtype,sr_in", FORMATS, ids=[f"{f[1]}-{f[2]}" for f in FORMATS]
)
@pytest.mark.parametrize("channels", [1, 2])
def test_decode_formats_to_mono_at_target_rate(tmp_path, suffix, fmt, subtype, sr_in, channels):
    x = sine(1.0, sr_in, 440.0)
    frames = np.stack([x] * channels, axis=1) if channels > 1 else x
    path = tmp_path / f"a{suffix}"
    sf.write(path, frames, sr_in, format=fmt, subtype=subtype)
    y = audio.load(path, sr=16000)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 16000) < 16000 * 0.08, len(y)  # lossy codecs add a little padding
    spectrum = np.abs(np.fft.rfft(y))
    peak_hz = np.argmax(spectrum) * 16000 / len(y)
    assert abs(peak_hz - 440) < 10, peak_hz
    assert 0.1 < np.abs(y).max() < 0.5


def test_stream_equals_whole_file_and_is_bounded(tmp_path):
    x = np.random.default_rng(0).standard_normal(44100 * 5).astype(np.float32) * 0.1
    path = tmp_path / "long.wav"
    sf.write(path, x, 44100, subtype="FLOAT")
    blocks = list(audio.stream(path, sr=16000, block_s=0.7))
    assert len(blocks) > 5 and max(map(len, blocks)) <= 0.7 * 16000 * 1.1
    whole = np.concatenate(blocks)
    assert abs(len(whole) - 80000) <= 2
    # a file that fits in one block is resampled in one call: the same samples as the stream
    (one,) = audio.stream(path, sr=16000, block_s=10.0)
    assert len(one) == len(whole)
    np.testing.assert_allclose(one, whole, atol=1e-6)


def test_six_channels_are_averaged(tmp_path):
    x = np.zeros((1600, 6), np.float32)
    x[:, 2] = 0.6
    sf.write(tmp_path / "film.wav", x, 16000)
    assert np.allclose(audio.load(tmp_path / "film.wav", sr=16000), 0.1, atol=1e-4)


def test_non_finite_samples_become_zero(tmp_path):
    x = sine(0.5)
    x[10], x[20], x[30] = np.nan, np.inf, -np.inf
    sf.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    y = audio.load(tmp_path / "nan.wav", sr=16000)
    assert np.isfinite(y).all() and y[10] == 0


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(os.urandom(3000)), "not a readable audio file"),
        (lambda p: p.write_text("hello, I am text\n" * 50), "not a readable audio file"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: None, "no such file"),
    ],
    ids=["empty", "random-bytes", "text", "directory", "missing"],
)
def test_bad_files_raise_one_line_naming_the_file(tmp_path, make, reason):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(audio.AudioError) as e:
        audio.load(path, sr=16000)
    msg = str(e.value)
    assert msg.startswith(str(path)) and reason in msg and "\n" not in msg


def test_zero_length_audio_is_an_error(tmp_path):
    sf.write(tmp_path / "zero.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(audio.AudioError, match="no audio samples"):
        audio.load(tmp_path / "zero.wav", sr=16000)


def test_truncated_wav_decodes_what_is_there(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, sine(1.0), 16000, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[: 44 + 16000])  # half the data chunk
    y = audio.load(path, sr=16000)
    assert 7000 < len(y) <= 8000


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="no ffmpeg executable installed")
def test_ffmpeg_fallback_reads_m4a(tmp_path):
    sf.write(tmp_path / "a.wav", sine(1.0, 44100, 440.0), 44100)
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", tmp_path / "a.wav", "-c:a", "aac", tmp_path / "a.m4a"],
        check=True,
    )
    y = audio.load(tmp_path / "a.m4a", sr=16000)
    assert abs(len(y) - 16000) < 1600
    peak_hz = np.argmax(np.abs(np.fft.rfft(y))) * 16000 / len(y)
    assert abs(peak_hz - 440) < 10
    (tmp_path / "bad.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A " + b"\x07" * 500)
    with pytest.raises(audio.AudioError) as e:
        audio.load(tmp_path / "bad.m4a", sr=16000)
    assert "ffmpeg" in str(e.value) and str(e.value).count(str(tmp_path)) == 1
