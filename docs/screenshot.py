"""Screenshot of the service's page after a file is classified, as a person would see it.

    python docs/screenshot.py MODEL AUDIO OUT.png
    python docs/screenshot.py runs/demo/model.pt runs/demo/data docs/page.png   # docs/page.png

Starts `audiovit serve MODEL` on a free loopback port, opens the page in Debian's headless
chromium (chromium + chromium-driver), uploads AUDIO, moves the player's cursor to 40 % of the
file and saves the window to OUT.png. AUDIO may be a dataset folder (one sub-folder per class):
the last clip of each class, in class order, joined with half a second of silence between them,
is then the recording, so that the timeline changes label.
"""

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def mix(folder: Path, out: Path) -> Path:
    """The last clip of each class sub-folder, joined with 0.5 s gaps, written to ``out``."""
    parts, sr = [], None
    for cls in sorted(d for d in folder.iterdir() if d.is_dir()):
        x, sr = sf.read(sorted(cls.glob("*.wav"))[-1], dtype="float32", always_2d=False)
        parts += [x, np.zeros(sr // 2, np.float32)]
    sf.write(out, np.concatenate(parts[:-1]), sr)
    return out


def main(model: str, audio: str, out: str) -> None:
    if Path(audio).is_dir():
        audio = str(mix(Path(audio), Path(tempfile.mkdtemp()) / "mix.wav"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "audiovit", "serve", model, "--port", str(port)]
    server = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(300):
            try:
                httpx.get(url + "health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--window-size=1000,1250",
                     f"--user-data-dir={tempfile.mkdtemp()}"):  # fmt: skip
            opts.add_argument(flag)
        browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
        try:
            browser.get(url)
            model_text = lambda b: b.find_element(By.ID, "model").text
            WebDriverWait(browser, 30).until(lambda b: "classes" in model_text(b))
            browser.find_element(By.ID, "file").send_keys(audio)
            WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "label").text.strip())
            player = browser.find_element(By.ID, "player")
            ready = "return arguments[0].readyState"
            WebDriverWait(browser, 30).until(lambda b: b.execute_script(ready, player) >= 1)
            browser.execute_script("arguments[0].currentTime = 0.4 * arguments[0].duration", player)
            time.sleep(0.5)
            browser.save_screenshot(out)
            print(f"{audio}: {browser.find_element(By.ID, 'label').text}; wrote {out}")
        finally:
            browser.quit()
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main(*sys.argv[1:4])
