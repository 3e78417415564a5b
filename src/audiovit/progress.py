"""A small progress bar for long loops: on a terminal it redraws one line, elsewhere it is quiet.
AUDIOVIT_PROGRESS=0 turns it off (several processes sharing a terminal would overwrite each
other's line)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")


class Progress:
    """``for x in Progress(items, "caching"): ...``; ``bar.set(loss=0.3)`` adds figures."""

    def __init__(
        self, items: Iterable[T], desc: str, total: int | None = None, stream: TextIO | None = None
    ):
        self.items = items
        self.desc = desc
        self.total = (
            total if total is not None else (len(items) if hasattr(items, "__len__") else None)
        )
        self.stream = stream or sys.stderr
        self.enabled = (
            hasattr(self.stream, "isatty")
            and self.stream.isatty()
            and os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 alone draws
            and os.environ.get("AUDIOVIT_PROGRESS", "1") != "0"
        )
        self.fields: dict[str, str] = {}
        self.n = 0
        self._last = 0.0

    def set(self, **fields: float | str) -> None:
        self.fields = {k: f"{v:.4g}" if isinstance(v, float) else str(v) for k, v in fields.items()}

    def _draw(self, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self._last < 0.1):
            return
        self._last = now
        rate = self.n / max(now - self._t0, 1e-9)
        if self.total:
            filled = int(20 * self.n / self.total)
            head = f"{self.desc} [{'#' * filled}{'.' * (20 - filled)}] {self.n}/{self.total}"
        else:
            head = f"{self.desc} {self.n}"
        extra = " ".join(f"{k}={v}" for k, v in self.fields.items())
        self.stream.write(f"\r{head} {rate:.1f}/s {extra}\x1b[K" + ("\n" if final else ""))
        self.stream.flush()

    def __iter__(self) -> Iterator[T]:
        self._t0 = time.monotonic()
        for x in self.items:
            yield x
            self.n += 1
            self._draw()
        self._draw(final=True)
