"""The service against a real uvicorn server on 127.0.0.1: API, abuse under load, and the page in
a real headless browser."""

from __future__ import annotations

import io
import random
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf


def _wav_bytes(x: np.ndarray, sr: int = 16000, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt)
    return buf.getvalue()


def test_health(server):
    url, clf = server
    h = httpx.get(url + "/health").json()
    assert (
        h["status"] == "ok"
        and h["labels"] == clf.labels
        and h["model"] == "test-model"
        and h["version"]
    )


def test_predict_multipart_and_raw_match_the_api(server, synth_root):
    url, clf = server
    path = sorted((synth_root / "click_train").glob("*.wav"))[3]
    expected = clf.predict(path, top_k=3)
    r = httpx.post(
        url + "/predict?top_k=3", files={"file": ("clip.wav", path.read_bytes(), "audio/wav")}
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["label"] == expected.label and out["score"] == pytest.approx(
        expected.score, abs=1e-5
    )
    assert out["path"] == "clip.wav" and len(out["top_k"]) == 3
    assert (
        out["segments"]
        and out["timeline"]
        and len(out["spectrogram"]["db"]) == clf.feature_cfg.n_mels
    )
    raw = httpx.post(
        url + "/predict", content=path.read_bytes(), headers={"x-filename": "raw.wav"}
    ).json()
    assert raw["label"] == expected.label and raw["path"] == "raw.wav"


@pytest.mark.parametrize(
    "body,status",
    [
        (b"this is not audio at all" * 20, 415),
        (b"", 400),
        (b"\x00" * (2 * 1024 * 1024), 413),
    ],
    ids=["text", "empty", "oversized"],
)
def test_bad_uploads_get_clear_4xx_json(server, body, status):
    url, _ = server
    r = httpx.post(url + "/predict", files={"file": ("x.wav", body, "audio/wav")})
    assert r.status_code == status and r.json()["error"]
    assert "/tmp" not in r.text and "audiovit-upload" not in r.text  # no server-side paths


def test_too_long_audio_is_413(server):
    url, _ = server
    r = httpx.post(
        url + "/predict", content=_wav_bytes(np.zeros(8000 * 30, np.float32), 8000, "FLAC")
    )
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_truncated_multipart_is_400(server):
    url, _ = server
    body = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF'
    r = httpx.post(
        url + "/predict",
        content=body,
        headers={"content-type": "multipart/form-data; boundary=XyZ"},
    )
    assert r.status_code == 400 and r.json()["error"]


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_load_and_abuse(server, synth_root):
    """200 requests from 16 clients: valid files, non-audio, oversized and cut-off bodies."""
    url, clf = server
    files = sorted(synth_root.rglob("*.wav"))[::8]
    expected = {f.name: clf.predict(f).label for f in files}
    rng = random.Random(0)
    uploads_before = set(Path(tempfile.gettempdir()).glob("audiovit-upload-*"))
    rss0 = _rss_mb()

    def one(i: int) -> tuple[str, int, bool]:
        kind = rng.choice(["valid"] * 5 + ["text", "oversized", "truncated"])
        with httpx.Client(timeout=60) as c:
            if kind == "valid":
                f = files[i % len(files)]
                r = c.post(url + "/predict", files={"file": (f.name, f.read_bytes(), "audio/wav")})
                return (
                    kind,
                    r.status_code,
                    r.status_code == 200 and r.json()["label"] == expected[f.name],
                )
            if kind == "text":
                r = c.post(
                    url + "/predict",
                    files={"file": ("notes.mp3", b"<html>nope</html>" * 30, "audio/mpeg")},
                )
                return kind, r.status_code, r.status_code == 415
            if kind == "oversized":
                r = c.post(url + "/predict", content=b"\x01" * (3 * 1024 * 1024))
                return kind, r.status_code, r.status_code == 413
            body = (
                b'--B\r\nContent-Disposition: form-data; name="file"; filename="t.wav"\r\n\r\n'
                + b"RIFF" * 10
            )
            r = c.post(
                url + "/predict",
                content=body,
                headers={"content-type": "multipart/form-data; boundary=B"},
            )
            return kind, r.status_code, r.status_code == 400

    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(200)))
    elapsed = time.perf_counter() - t0
    assert len(results) == 200 and not [r for r in results if r[1] >= 500]
    wrong = [r for r in results if not r[2]]
    assert wrong == [], wrong[:5]
    assert {k for k, _, _ in results} == {"valid", "text", "oversized", "truncated"}
    assert set(Path(tempfile.gettempdir()).glob("audiovit-upload-*")) == uploads_before
    assert _rss_mb() - rss0 < 300, (rss0, _rss_mb())
    print(f"\n200 requests in {elapsed:.1f} s; RSS {rss0:.0f} -> {_rss_mb():.0f} MB")


def _browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("Debian chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1000,1200",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='audiovit-chromium-')}"):  # fmt: skip
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def test_page_in_a_real_browser(server, synth_root, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, clf = server
    path = tmp_path / "chirp sample.wav"
    shutil.copy(sorted((synth_root / "chirp").glob("*.wav"))[1], path)
    expected = clf.predict(path).label
    browser = _browser()
    try:
        browser.get(url + "/")
        WebDriverWait(browser, 20).until(lambda b: "classes" in b.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "file").send_keys(str(path))
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "label").text.strip())
        assert browser.find_element(By.ID, "label").text == expected
        assert len(browser.find_elements(By.CSS_SELECTOR, "#bars .bar")) == min(5, len(clf.labels))
        lit = browser.execute_script(
            "const c = document.getElementById('spec'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
            "for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 30) n++; return [n, c.width, c.height];"
        )
        assert lit[2] == clf.feature_cfg.n_mels and lit[0] > 0.05 * lit[1] * lit[2], lit
        assert browser.find_elements(By.CSS_SELECTOR, "#timeline div")
        _check_time_axis_playback_and_colours(browser, clf, path)
        browser.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 20_000
        bad = tmp_path / "x.txt"
        bad.write_text("not audio")
        browser.find_element(By.ID, "file").send_keys(str(bad))
        WebDriverWait(browser, 20).until(lambda b: b.find_element(By.ID, "error").text)
        assert "x.txt" in browser.find_element(By.ID, "error").text
    finally:
        browser.quit()


def _check_time_axis_playback_and_colours(browser, clf, path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from audiovit.plots import class_colour

    seconds = sf.info(str(path)).duration
    for axis in ("spec-axis", "timeline-axis"):  # a time axis under both views, 0 to the end
        ticks = browser.find_elements(By.CSS_SELECTOR, f"#{axis} span")
        assert len(ticks) >= 3 and ticks[0].text == "0.0 s", [t.text for t in ticks]
        assert float(ticks[-1].text.split()[0]) == pytest.approx(seconds, abs=0.21)
    player = browser.find_element(By.ID, "player")  # playback of the uploaded file
    assert player.get_attribute("src").startswith("blob:")
    WebDriverWait(browser, 20).until(
        lambda b: b.execute_script("return arguments[0].readyState", player) >= 1
    )
    assert browser.execute_script("return arguments[0].duration", player) == pytest.approx(
        seconds, abs=0.05
    )

    def cursors():
        return [
            float(c.value_of_css_property("left").rstrip("px"))
            / c.find_element(By.XPATH, "..").size["width"]
            for c in browser.find_elements(By.CSS_SELECTOR, ".cursor")
        ]

    browser.execute_script("arguments[0].currentTime = arguments[1]", player, 0.5 * seconds)
    WebDriverWait(browser, 10).until(lambda b: all(abs(x - 0.5) < 0.02 for x in cursors()))
    spec = browser.find_element(By.ID, "spec")  # a click on the spectrogram seeks there
    ActionChains(browser).move_to_element_with_offset(
        spec, spec.size["width"] // 4, 0
    ).click().perform()
    WebDriverWait(browser, 10).until(lambda b: all(abs(x - 0.75) < 0.02 for x in cursors()))
    assert browser.execute_script("return arguments[0].currentTime", player) == pytest.approx(
        0.75 * seconds, abs=0.03
    )
    # one colour per class for any number of classes, the plots' colours
    for n in (len(clf.labels), 10, 25):
        names = [f"class {i}" for i in range(n)]
        got = browser.execute_script(
            "const saved = labels; labels = arguments[0]; const el = document.createElement('i');"
            "document.body.appendChild(el); const out = labels.map((lb) => {"
            "el.style.color = colour(lb); return getComputedStyle(el).color; });"
            "el.remove(); labels = saved; return out;",
            names,
        )
        assert len(set(got)) == n, got
        want = [tuple(round(255 * v) for v in class_colour(names, lb)[:3]) for lb in names]
        rgb = [tuple(int(v) for v in c[c.index("(") + 1 : -1].split(",")[:3]) for c in got]
        assert all(max(abs(a - b) for a, b in zip(x, y)) <= 1 for x, y in zip(rgb, want)), (
            rgb,
            want,
        )


def test_duration_limit_holds_without_a_header_duration(server, monkeypatch):
    """A stream whose header gives no length (as with some containers) is cut off while decoding."""
    from audiovit import audio

    url, _ = server
    monkeypatch.setattr(audio, "duration", lambda path: None)
    r = httpx.post(
        url + "/predict", content=_wav_bytes(np.zeros(8000 * 30, np.float32), 8000, "FLAC")
    )
    assert r.status_code == 413 and "20 s limit" in r.json()["error"]
