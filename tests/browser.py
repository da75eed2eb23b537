"""A page checked in a real headless browser (Debian's chromium) over the DevTools protocol:
it loads, what it logged to the console, the exceptions it threw, and whether its images
decoded. ``scripts/install_browser.sh`` (run by ``scripts/setup.sh``) installs chromium;
without it the tests skip, except under ``FEDPEFT_REQUIRE_BROWSER=1`` (set by ``.ci/run``),
where they fail: CI must not pass with the browser check skipped."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
]
PROBE = """JSON.stringify({
  url: location.href,
  ready: document.readyState,
  title: document.title,
  images: document.images.length,
  decoded: Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length,
  tables: document.querySelectorAll('table').length,
  external: Array.from(document.querySelectorAll('[src],[href]'))
    .map(e => e.getAttribute('src') || e.getAttribute('href'))
    .filter(u => u && !u.startsWith('data:') && !u.startsWith('#')).length,
})"""


def find_browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browser_or_skip() -> None:
    """Skips the calling test where the browser or the DevTools client is missing, or
    fails it where ``FEDPEFT_REQUIRE_BROWSER=1``."""
    missing = []
    if find_browser() is None:
        missing.append("Debian's chromium (scripts/install_browser.sh installs it)")
    if importlib.util.find_spec("websockets") is None:
        missing.append("the websockets package (in the dev extra)")
    if not missing:
        return
    reason = "the browser check needs " + " and ".join(missing)
    if os.environ.get("FEDPEFT_REQUIRE_BROWSER") == "1":
        pytest.fail(reason + "; FEDPEFT_REQUIRE_BROWSER=1 forbids skipping it")
    pytest.skip(reason)


@dataclass
class PageCheck:
    facts: dict[str, Any]
    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)


def check_page(path: Path, timeout: float = 60.0) -> PageCheck:
    from websockets.sync.client import connect

    browser = find_browser()
    assert browser is not None
    # chromium's helper processes may still write into the profile as it exits
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen(
            [browser, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            port = _port(Path(profile) / "DevToolsActivePort", proc, timeout)
            url = _page_socket(port, timeout)
            with connect(url, max_size=None, open_timeout=timeout) as ws:
                return _load_and_probe(ws, path, timeout)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _port(file: Path, proc: subprocess.Popen[bytes], timeout: float) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if file.is_file() and file.read_text().strip():
            return int(file.read_text().splitlines()[0])
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with code {proc.returncode} before it listened")
        time.sleep(0.1)
    raise TimeoutError("chromium did not open its DevTools port")


def _page_socket(port: int, timeout: float) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        if pages:
            return str(pages[0]["webSocketDebuggerUrl"])
        time.sleep(0.1)
    raise TimeoutError("chromium opened no page")


def _load_and_probe(ws: Any, path: Path, timeout: float) -> PageCheck:
    check = PageCheck({})
    ids = iter(range(1, 1_000_000))

    def send(method: str, **params: Any) -> int:
        i = next(ids)
        ws.send(json.dumps({"id": i, "method": method, "params": params}))
        return i

    def pump(until: Any) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            msg = json.loads(ws.recv(timeout=max(0.1, end - time.monotonic())))
            method = msg.get("method")
            if method == "Runtime.consoleAPICalled" and msg["params"]["type"] in (
                "error",
                "assert",
            ):
                check.console_errors.append(json.dumps(msg["params"]["args"])[:300])
            elif method == "Log.entryAdded" and msg["params"]["entry"]["level"] == "error":
                check.console_errors.append(msg["params"]["entry"]["text"][:300])
            elif method == "Runtime.exceptionThrown":
                check.exceptions.append(json.dumps(msg["params"]["exceptionDetails"])[:300])
            if until(msg):
                return dict(msg)
        raise TimeoutError("the page did not finish loading")

    for method in ("Runtime.enable", "Log.enable", "Page.enable"):
        i = send(method)
        pump(lambda m, i=i: m.get("id") == i)
    uri = path.resolve().as_uri()
    send("Page.navigate", url=uri)
    # a busy machine can deliver about:blank's own load event after the navigation was
    # sent: probe until the page is ours and loaded, waiting for the next load event
    end = time.monotonic() + timeout
    while True:
        pump(lambda m: m.get("method") == "Page.loadEventFired")
        i = send("Runtime.evaluate", expression=PROBE, returnByValue=True)
        reply = pump(lambda m, i=i: m.get("id") == i)
        check.facts = json.loads(reply["result"]["result"]["value"])
        if check.facts["url"] == uri and check.facts["ready"] == "complete":
            return check
        if time.monotonic() > end:
            raise TimeoutError(f"the page never loaded: {check.facts}")
