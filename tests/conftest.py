"""Shared fixtures: synthetic datasets in temporary folders and one small trained model."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from audiovit import data, synth
from audiovit.train import TrainConfig, train
from helpers import FAST

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AUDIOVIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """4 easy classes × 40 one-second clips, folder per class."""
    root = tmp_path_factory.mktemp("synth")
    return synth.make_dataset(
        root,
        n_per_class=40,
        classes=["tone", "noise_bursts", "click_train", "chirp"],
        duration=1.0,
        seed=1,
    )


@pytest.fixture(scope="session")
def trained(tmp_path_factory, synth_root) -> Path:
    """A run folder trained on ``synth_root``; returns the folder."""
    os.environ.setdefault("AUDIOVIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    out = tmp_path_factory.mktemp("run")
    ds = data.load_dataset(synth_root)
    splits = data.make_splits(ds, data.SplitOptions(seed=0, valid_frac=0.15, test_frac=0.15))
    train(ds, splits, TrainConfig(**FAST, cache_dir=str(out / "cache")), out, log=lambda *a: None)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(trained):
    """A real uvicorn server on 127.0.0.1 serving the ``trained`` model; yields (url, classifier)."""
    import httpx
    import uvicorn

    import audiovit
    from audiovit.serve import ServeConfig, create_app

    clf = audiovit.load_model(trained / "model.pt", device="cpu")
    cfg = ServeConfig(port=_free_port(), max_upload_mb=1.0, max_duration_s=20.0)
    srv = uvicorn.Server(
        uvicorn.Config(
            create_app(clf, cfg, "test-model"), host=cfg.host, port=cfg.port, log_level="error"
        )
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{cfg.port}"
    for _ in range(200):
        try:
            httpx.get(url + "/health", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield url, clf
    srv.should_exit = True
    thread.join(timeout=10)
