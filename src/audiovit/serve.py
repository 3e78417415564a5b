"""The HTTP service: ``POST /predict``, ``GET /health`` and ``GET /`` (a page to try the model).

Uploads are streamed into memory up to a size limit (413 beyond), written to a private temporary
file that is removed after the request, decoded and scored in a worker thread so the event loop
never blocks; at most ``workers`` predictions run at once so requests don't fight for the cores.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from . import audio
from .config import check, option
from .inference import Classifier, TooLong
from .prediction import TOP_K
from .version import __version__

SPECTROGRAM_COLUMNS = 400  # the page's spectrogram is averaged down to at most this many frames


@dataclass(frozen=True)
class ServeConfig:
    host: str = option("127.0.0.1", "address to listen on; the loopback unless told otherwise")
    port: int = option(8000, "port to listen on", low=0, high=65535)
    max_upload_mb: float = option(50.0, "larger uploads get 413", low=0)
    max_duration_s: float = option(3600.0, "longer audio gets 413", low=0)
    top_k: int = option(TOP_K, "classes listed per prediction", low=1)
    workers: int = option(2, "predictions running at once", low=1)

    def __post_init__(self):
        check(self)


class _Reject(Exception):
    def __init__(self, status: int, message: str):
        self.status, self.message = status, message


def create_app(clf: Classifier, cfg: ServeConfig = ServeConfig(), name: str = "model") -> FastAPI:
    app = FastAPI(title="audiovit", version=__version__)
    slots = asyncio.Semaphore(cfg.workers)
    limit = int(cfg.max_upload_mb * 1024 * 1024)
    page = resources.files("audiovit").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": name,
            "labels": clf.labels,
            "version": __version__,
            "window_s": clf.window_s,
            "max_upload_mb": cfg.max_upload_mb,
            "max_duration_s": cfg.max_duration_s,
        }

    @app.post("/predict")
    async def predict(request: Request, top_k: int | None = None, hop: float | None = None):
        try:
            filename, data = await _read_upload(request, limit)
            async with slots:
                result = await run_in_threadpool(
                    _predict_bytes, clf, cfg, filename, data, top_k, hop
                )
            return JSONResponse(result)
        except _Reject as r:
            return JSONResponse({"error": r.message}, status_code=r.status)

    return app


async def _read_upload(request: Request, limit: int) -> tuple[str, bytes]:
    """The uploaded file's name and bytes, from a multipart form (field ``file``) or a raw body."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise _Reject(413, f"upload larger than the {limit // 2**20} MB limit")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit + 64 * 1024:  # allowance for multipart framing
                raise _Reject(413, f"upload larger than the {limit // 2**20} MB limit")
            chunks.append(chunk)
    except ClientDisconnect:
        raise _Reject(400, "the upload was cut off") from None
    body = b"".join(chunks)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        request._body = body  # starlette parses the form from the cached body
        try:
            form = await request.form(max_files=1, max_fields=10)
        except Exception:
            raise _Reject(400, "malformed multipart body") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise _Reject(400, "multipart upload needs a file field named 'file'")
        data = await upload.read()
        name = upload.filename or "upload"
        await form.close()
    else:
        data, name = body, request.headers.get("x-filename", "upload")
    if not data:
        raise _Reject(400, "empty upload")
    if len(data) > limit:
        raise _Reject(413, f"upload larger than the {limit // 2**20} MB limit")
    return os.path.basename(name)[:200], data


def _predict_bytes(
    clf: Classifier, cfg: ServeConfig, filename: str, data: bytes, top_k, hop
) -> dict:
    suffix = Path(filename).suffix.lower()
    suffix = suffix if audio.is_audio_path(f"x{suffix}") else ".bin"
    with tempfile.TemporaryDirectory(prefix="audiovit-upload-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        seconds = audio.duration(path)
        if seconds is not None and seconds > cfg.max_duration_s:
            raise _Reject(
                413, f"audio is {seconds:.0f} s long; the limit is {cfg.max_duration_s:.0f} s"
            )
        try:
            pred = clf.predict(
                path,
                top_k=top_k or cfg.top_k,
                hop_s=hop,
                overview=SPECTROGRAM_COLUMNS,
                max_seconds=cfg.max_duration_s,
            )
        except audio.AudioError as e:
            reason = e.reason.replace(str(path), filename).replace(tmp, "")  # no server paths
            raise _Reject(415, f"not usable audio: {reason}") from None
        except TooLong as e:  # headers that don't give a duration end up here
            raise _Reject(413, str(e)) from None
        except ValueError as e:
            raise _Reject(422, str(e)) from None
    out = pred.to_dict(timeline=True)
    out["path"] = filename  # never the server-side temporary path
    seconds_per_column = pred.duration_s / max(1, pred.overview.shape[1])
    out["spectrogram"] = {
        "db": np.round(pred.overview, 1).tolist(),
        "seconds_per_column": seconds_per_column,
    }
    return out


def check_port(host: str, port: int) -> None:
    """ValueError in one line if ``host``:``port`` cannot be listened on (in use, or not ours)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise ValueError(
            f"cannot serve on {host}:{port} ({e.strerror or e}): choose another --port or --host"
        ) from None


def serve(clf: Classifier, cfg: ServeConfig, name: str = "model") -> None:
    import uvicorn

    uvicorn.run(create_app(clf, cfg, name), host=cfg.host, port=cfg.port, log_level="warning")
