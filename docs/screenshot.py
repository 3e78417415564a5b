"""Screenshot of the service's page after a file is classified, as a person would see it.

    python docs/screenshot.py MODEL AUDIO OUT.png

Starts `audiovit serve MODEL` on a free loopback port, opens the page in Debian's headless
chromium (chromium + chromium-driver), uploads AUDIO and saves the window to OUT.png.
"""

import socket
import subprocess
import sys
import tempfile
import time

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def main(model: str, audio: str, out: str) -> None:
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
                     "--disable-sync", "--window-size=1000,1100",
                     f"--user-data-dir={tempfile.mkdtemp()}"):  # fmt: skip
            opts.add_argument(flag)
        browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
        try:
            browser.get(url)
            model_text = lambda b: b.find_element(By.ID, "model").text
            WebDriverWait(browser, 30).until(lambda b: "classes" in model_text(b))
            browser.find_element(By.ID, "file").send_keys(audio)
            WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "label").text.strip())
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
