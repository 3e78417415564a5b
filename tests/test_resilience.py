"""Interruptions lose nothing: SIGKILL at any point then --resume reproduces the uninterrupted
run; Ctrl-C saves and exits cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from audiovit import checkpoint
from audiovit.train import TIMINGS
from helpers import fast_flags, run


def _start(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "audiovit", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_epochs(proc: subprocess.Popen, log, n: int, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= n:
            return
        time.sleep(0.02)


def _comparable(path) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


def test_sigkill_at_several_points_then_resume(synth_root, tmp_path):
    flags = fast_flags(epochs=6)
    ref = tmp_path / "ref"
    run("train", synth_root, "--out", ref, *flags)
    out = tmp_path / "killed"
    kills = 0
    for after_epochs, delay in ((1, 0.0), (2, 0.2), (4, 0.05), (4, 0.35)):
        proc = _start("train", synth_root, "--out", out, "--resume", *flags)
        _wait_for_epochs(proc, out / "log.jsonl", after_epochs)
        time.sleep(delay)
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.communicate()
        checkpoint.safe_load(out / "last.pt")  # whatever the instant, the state file is whole
    assert kills >= 3
    run("train", synth_root, "--out", out, "--resume", *flags)
    a = json.loads((ref / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    assert (b["accuracy"], b["confusion_matrix"], b["best_epoch"]) == (
        a["accuracy"],
        a["confusion_matrix"],
        a["best_epoch"],
    )
    assert _comparable(out / "log.jsonl") == _comparable(ref / "log.jsonl")


def test_ctrl_c_saves_and_exits_cleanly(synth_root, tmp_path):
    out = tmp_path / "run"
    proc = _start("train", synth_root, "--out", out, *fast_flags(epochs=200))
    _wait_for_epochs(proc, out / "log.jsonl", 1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "--resume" in stderr
    state = checkpoint.safe_load(out / "last.pt")
    assert state["epoch"] == len((out / "log.jsonl").read_text().splitlines()) >= 1
    checkpoint.load_model(out / "model.pt")
