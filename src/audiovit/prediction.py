"""What a prediction is and how it is written: one file's label, scores and timeline, as text,
JSON or a per-window CSV, and the writer that keeps results in input order (under torchrun, one
part per process, merged at the end)."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import distributed

TOP_K = 5  # classes a prediction lists by default, from the CLI, the API and the service


@dataclass
class Window:
    start_s: float
    end_s: float
    label: str
    score: float


@dataclass
class Prediction:
    label: str
    score: float
    top_k: list[tuple[str, float]]
    segments: list[Window]  # one per scored window, in time order
    probs: np.ndarray  # (W, C) per-window class probabilities
    duration_s: float
    path: str | None = None
    overview: np.ndarray | None = None  # (F, ≤ n) log-mel averaged over time, if asked for
    labels: list[str] = field(default_factory=list)  # the columns of probs

    def timeline(self) -> list[Window]:
        """Runs of consecutive windows with the same label, merged into contiguous segments.

        Each window is taken to cover from its start to the next window's start (the last one to
        its end), so segments neither overlap nor leave gaps; a segment's score is the mean of
        its windows' scores.
        """
        merged: list[Window] = []
        counts: list[int] = []
        for i, w in enumerate(self.segments):
            end = self.segments[i + 1].start_s if i + 1 < len(self.segments) else w.end_s
            if merged and merged[-1].label == w.label:
                m, n = merged[-1], counts[-1]
                merged[-1] = Window(m.start_s, end, m.label, (m.score * n + w.score) / (n + 1))
                counts[-1] += 1
            else:
                merged.append(Window(w.start_s, end, w.label, w.score))
                counts.append(1)
        return merged

    def time_shares(self) -> list[tuple[str, float]]:
        """Each label's share of the recording's time in :meth:`timeline`, largest first: the
        headline of a recording whose label changes, where the mean over windows may name a
        class that no segment shows."""
        total: dict[str, float] = {}
        for w in self.timeline():
            total[w.label] = total.get(w.label, 0.0) + w.end_s - w.start_s
        span = sum(total.values()) or 1.0
        return sorted(((lb, t / span) for lb, t in total.items()), key=lambda p: -p[1])

    def to_dict(self, timeline: bool = False) -> dict:
        d = {
            "path": self.path,
            "label": self.label,
            "score": round(self.score, 6),
            "top_k": [{"label": lb, "score": round(s, 6)} for lb, s in self.top_k],
            "duration_s": round(self.duration_s, 3),
            "time_shares": [{"label": lb, "share": round(s, 4)} for lb, s in self.time_shares()],
        }
        if timeline:  # every window ("segments") and runs of one label ("timeline")
            for key, windows in (("segments", self.segments), ("timeline", self.timeline())):
                d[key] = [
                    {
                        "start_s": round(w.start_s, 3),
                        "end_s": round(w.end_s, 3),
                        "label": w.label,
                        "score": round(w.score, 6),
                    }
                    for w in windows
                ]
        return d

    def to_text(self, timeline: bool = False) -> str:
        """One tab-separated line (path, label, score, duration and top-k); with ``timeline``,
        a line per run of one label below it."""
        top = "  ".join(f"{lb} {s:.3f}" for lb, s in self.top_k)
        lines = [f"{self.path}\t{self.label}\t{self.score:.3f}\t({self.duration_s:.1f} s; {top})"]
        shares = self.time_shares()
        if len(shares) > 1:  # the label changes over the recording: say how the time divides
            lines[0] += "\tover time: " + ", ".join(f"{lb} {s:.0%}" for lb, s in shares)
        if timeline:
            lines += [
                f"  {w.start_s:8.2f}-{w.end_s:8.2f} s  {w.label}  {w.score:.3f}"
                for w in self.timeline()
            ]
        return "\n".join(lines)

    def write_timeline(self, out: str | os.PathLike) -> None:
        """Per-window labels and probabilities as CSV (one row per window), or, for a .json
        ``out``, JSON with the same keys as the service: ``segments`` (every window, with its
        probabilities) and ``timeline`` (runs of one label)."""
        out = Path(out)
        if out.suffix.lower() == ".json":
            doc = self.to_dict(timeline=True)
            for w, pr in zip(doc["segments"], self.probs):
                w["probs"] = dict(zip(self.labels, map(float, pr)))
            out.write_text(json.dumps(doc, indent=1, ensure_ascii=False))
            return
        with open(out, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["start_s", "end_s", "label", "score", *self.labels])
            for seg, pr in zip(self.segments, self.probs):
                row = [f"{seg.start_s:.3f}", f"{seg.end_s:.3f}", seg.label, f"{seg.score:.4f}"]
                w.writerow(row + [f"{v:.4f}" for v in pr])


class ResultWriter:
    """Result lines to ``out`` (else stdout) in input order. Under torchrun each rank writes
    ``out.partN`` (JSON lines carrying the input index) and :meth:`close` merges them, in
    order, into ``out`` on rank 0."""

    def __init__(self, out: Path | None):
        if distributed.active() and out is None:
            raise ValueError("under torchrun, predict needs --out FILE for the merged results")
        self.out = out
        self.part = out.with_name(f"{out.name}.part{distributed.rank()}") if out else None
        if distributed.active():
            self.sink = open(self.part, "w", encoding="utf-8")
        else:
            self.sink = open(out, "w", encoding="utf-8") if out else sys.stdout

    def write(self, i: int, text: str) -> None:
        if distributed.active():
            text = json.dumps({"i": i, "text": text})
        print(text, file=self.sink, flush=True)

    def close(self, failed: int) -> int:
        """Finish; returns the count of ``failed`` inputs summed over the ranks."""
        if self.sink is not sys.stdout:
            self.sink.close()
        if not distributed.active():
            return failed
        failed = int(distributed.all_sum([failed])[0])  # also waits for every rank's part
        if distributed.is_main():
            parts = [
                self.out.with_name(f"{self.out.name}.part{r}")
                for r in range(distributed.world_size())
            ]
            records = [
                json.loads(ln) for f in parts for ln in f.read_text(encoding="utf-8").splitlines()
            ]
            tmp = self.out.with_name(self.out.name + ".tmp")
            lines = (r["text"] + "\n" for r in sorted(records, key=lambda r: r["i"]))
            tmp.write_text("".join(lines), encoding="utf-8")
            tmp.replace(self.out)
            for f in parts:
                f.unlink()
        return failed


OUTPUT_FORMATS = ("txt", "json", "csv")  # --output-format; "all" writes each


def output_stems(paths: list) -> list[str]:
    """A file-name stem per input, unique in one folder: ``a.wav`` → ``a``; a second ``a`` (from
    another folder, or ``a.mp3``) → ``a-2``. Depends only on the input list, so every torchrun
    rank names a file alike."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        stem = Path(p).stem or "audio"
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


class OutputFolder:
    """``predict --output-dir``: one result file per input and format (``STEM.txt`` as the text
    output with its timeline, ``STEM.json`` and ``STEM.csv`` as :meth:`Prediction.write_timeline`)
    and ``predictions.csv``, a row per input in input order with its clip probabilities, or its
    error."""

    def __init__(self, folder: Path, formats: list[str], paths: list, labels: list[str]):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.labels, self.stems = folder, labels, output_stems(paths)
        self.formats = OUTPUT_FORMATS if "all" in formats else tuple(dict.fromkeys(formats))
        self.summary = ResultWriter(folder / "predictions.csv")
        if distributed.is_main():
            header = ["path", "label", "score", "duration_s", "over_time", "error", "files"]
            self.summary.write(-1, _csv_line(header + labels))

    def write(self, i: int, p: Prediction) -> None:
        stem = self.folder / self.stems[i]
        for fmt in self.formats:
            out = stem.with_name(f"{stem.name}.{fmt}")
            if fmt == "txt":
                out.write_text(p.to_text(timeline=True) + "\n", encoding="utf-8")
            else:
                p.write_timeline(out)
        shares = "; ".join(f"{lb} {s:.0%}" for lb, s in p.time_shares())
        files = " ".join(f"{self.stems[i]}.{fmt}" for fmt in self.formats)
        row = [p.path, p.label, f"{p.score:.4f}", f"{p.duration_s:.3f}", shares, "", files]
        self.summary.write(i, _csv_line(row + [f"{v:.4f}" for v in p.probs.mean(axis=0)]))

    def error(self, i: int, path, reason: str) -> None:
        cells = [path, "", "", "", "", reason, ""] + [""] * len(self.labels)
        self.summary.write(i, _csv_line(cells))

    def close(self, failed: int) -> int:
        return self.summary.close(failed)


def _csv_line(cells: list) -> str:
    """One CSV row without its line end (ResultWriter adds it)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(cells)
    return buf.getvalue()
