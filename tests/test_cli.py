"""The command line end to end, as a user runs it (subprocesses, real files)."""

import json
import os
import subprocess
import sys

import soundfile as sf

from conftest import FAST, sine


def run(*args, check=True):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run(
        [sys.executable, "-m", "audiovit", *map(str, args)], capture_output=True, text=True, env=env
    )
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r


def fast_flags(**over):
    cfg = {**FAST, **over}
    flags = []
    for k, v in cfg.items():
        flag = "--" + k.replace("_", "-")
        flags += (
            [flag if v else f"--no-{k.replace('_', '-')}"] if isinstance(v, bool) else [flag, v]
        )
    return flags


def test_every_subcommand_has_help():
    for cmd in ("train", "evaluate", "predict", "demo", "info"):
        assert "usage: audiovit " + cmd in run(cmd, "--help").stdout


def test_train_on_manifest_with_folds_then_evaluate_and_info(synth_root, tmp_path):
    rows = ["path,label,fold"]
    for i, f in enumerate(sorted(synth_root.rglob("*.wav"))):
        rows.append(f"{f.relative_to(synth_root).as_posix()},{f.parent.name},{i % 4}")
    (synth_root / "manifest.csv").write_text("\n".join(rows))
    out = tmp_path / "run"
    r = run(
        "train", synth_root / "manifest.csv", "--out", out, "--test-fold", 3, *fast_flags(epochs=3)
    )
    assert "total" in r.stdout and "accuracy" in r.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert {
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "per_class",
        "confusion_matrix",
        "labels",
        "n",
    } <= set(m)
    assert m["n"] == 40  # fold 3 of 160 clips
    r = run(
        "evaluate",
        out / "model.pt",
        synth_root / "manifest.csv",
        "--test-fold",
        3,
        "--out",
        tmp_path / "ev",
    )
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["accuracy"] == m["accuracy"]
    info = json.loads(run("info", out / "model.pt").stdout)
    assert info["labels"] == m["labels"] and info["n_parameters"] > 1e6
    assert info["meta"]["metrics"]["accuracy"] == m["accuracy"]


def test_predict_json_lines_and_error_lines(trained, tmp_path):
    good = tmp_path / "ok dir"
    good.mkdir()
    sf.write(good / "a tone.wav", sine(2.5), 16000)
    sf.write(good / "b.flac", sine(0.2, 44100), 44100)
    bad = tmp_path / "broken.mp3"
    bad.write_bytes(b"\x00" * 10)
    r = run("predict", trained / "model.pt", good, bad, "--json", "--top-k", 2, check=False)
    assert r.returncode == 1
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == 3
    ok = [x for x in lines if "error" not in x]
    assert {os.path.basename(x["path"]) for x in ok} == {"a tone.wav", "b.flac"}
    for x in ok:
        assert set(x) == {"path", "label", "score", "top_k", "duration_s"} and len(x["top_k"]) == 2
    err = [x for x in lines if "error" in x][0]
    assert err["path"] == str(bad) and err["error"]
    assert "Traceback" not in r.stderr


def test_predict_plain_text_and_timeline(trained, tmp_path):
    sf.write(tmp_path / "x.wav", sine(3.0), 16000)
    r = run("predict", trained / "model.pt", tmp_path / "x.wav", "--timeline", "--hop", 0.5)
    assert r.stdout.splitlines()[0].startswith(str(tmp_path / "x.wav"))
    assert len(r.stdout.splitlines()) > 3


def test_corrupt_inputs_give_one_line_not_a_traceback(trained, tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF0000WAVEfmt garbage")
    r = run("predict", trained / "model.pt", tmp_path / "bad.wav", check=False)
    assert (
        r.returncode == 1
        and r.stderr.count("\n") == 1
        and "bad.wav" in r.stderr
        and "Traceback" not in r.stderr
    )
    (tmp_path / "model.pt").write_bytes(b"not a model")
    r = run("predict", tmp_path / "model.pt", tmp_path / "bad.wav", check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "model.pt" in r.stderr
    r = run("train", tmp_path / "nowhere", "--out", tmp_path / "r", check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "nowhere" in r.stderr
