"""Headless Chromium for tests: load a page, wait until its text shows what is expected, read
the text and take a screenshot.

``chromium --headless --dump-dom`` returns as soon as the document has loaded; a Streamlit app
draws its content later, from messages on a websocket (which ``--virtual-time-budget`` does not
wait for). So the browser is driven through the DevTools protocol (``--remote-debugging-port``,
the ``websockets`` client): navigate, poll ``document.body.innerText`` until every expected
string is there (or a timeout), then ``Page.captureScreenshot``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium process with one page (use as a context manager)."""

    def __init__(self, profile: Path, width: int = 1440, height: int = 1000) -> None:
        if CHROMIUM is None:
            raise RuntimeError("chromium is not installed")
        profile.mkdir(parents=True, exist_ok=True)
        (profile / "DevToolsActivePort").unlink(missing_ok=True)  # a previous browser's
        self.ws: Any = None
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-dev-shm-usage", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            self._attach(profile, width, height)
        except BaseException:
            self.close()
            raise

    def _attach(self, profile: Path, width: int, height: int) -> None:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list",
                                                  timeout=10).read())
        target = next(p for p in pages if p.get("type") == "page")
        from websockets.sync.client import connect

        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(connect(target["webSocketDebuggerUrl"],
                                                    max_size=None, open_timeout=20))
        self._id = 0
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events in between are skipped)."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def text(self) -> str:
        """The page's visible text."""
        res = self.call("Runtime.evaluate", expression="document.body ? "
                        "document.body.innerText : ''", returnByValue=True)
        return str(res.get("result", {}).get("value", ""))

    def load(self, url: str, expect: Sequence[str], timeout: float = 90.0,
             absent: Sequence[str] = ("Running...",)) -> str:
        """Navigate to ``url`` and wait until its text holds every ``expect`` string (and
        none of ``absent``); returns the text. Raises TimeoutError with the last text."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if all(e in text for e in expect) and not any(a in text for a in absent):
                return text
            time.sleep(0.5)
        raise TimeoutError(f"{url}: {list(expect)} not rendered in {timeout:g} s; the page "
                           f"shows: {text[:2000]!r}")

    def screenshot(self, path: Path) -> Path:
        """Save the viewport as PNG."""
        res = self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(res["data"]))
        return path

    def close(self) -> None:
        """Close the connection and end the browser (its own process group: the launcher
        script and the browser processes it started)."""
        if self.ws is not None:
            self._stack.close()
            self.ws = None
        try:  # the group outlives the launcher when the launcher has exited already
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
