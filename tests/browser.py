"""Headless Chromium driven over the DevTools protocol (a websocket, with aiohttp).

Nothing is downloaded: the browser is the system's (Debian's ``chromium``). It runs with
every host name but 127.0.0.1 and localhost unresolvable, so a page that reaches for the
network outside the service under test shows it as a failed request, which the tests
read from ``Page.requests``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
ARTIFACTS = Path(__file__).parent / "artifacts"


def find_chromium() -> str | None:
    """The browser to drive: FLASHSALE_CHROMIUM, else the first candidate on PATH."""
    configured = os.environ.get("FLASHSALE_CHROMIUM")
    if configured:
        return shutil.which(configured)
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    pass


class Browser:
    """One headless Chromium process and its DevTools websocket."""

    def __init__(self, executable: str, *, start_timeout: float = 60.0) -> None:
        self.executable = executable
        self.start_timeout = start_timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._listeners: dict[str, list[Callable[[dict], None]]] = {}
        self._profile = tempfile.TemporaryDirectory(prefix="flashsale-chromium-")
        self._process: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task | None = None

    async def start(self) -> Browser:
        profile = Path(self._profile.name)
        args = [
            "--headless=new", "--remote-debugging-port=0", f"--user-data-dir={profile}",
            "--no-first-run", "--no-default-browser-check", "--disable-gpu",
            "--disable-dev-shm-usage", "--disable-extensions", "--disable-sync",
            "--disable-background-networking", "--disable-component-update",
            "--metrics-recording-only", "--mute-audio", "--hide-scrollbars",
            # Offline except for the service under test.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
            "--window-size=1280,900", "about:blank",
        ]
        if os.geteuid() == 0:  # Chromium refuses to run as root with its sandbox
            args.insert(0, "--no-sandbox")
        self._process = await asyncio.create_subprocess_exec(
            self.executable, *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self._process.returncode is not None or loop.time() > deadline:
                err = b""
                if self._process.returncode is not None:
                    err = await self._process.stderr.read()
                await self.close()
                raise BrowserError(f"Chromium did not start: {err.decode(errors='replace')[-800:]}")
            await asyncio.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    if "error" in data:
                        future.set_exception(BrowserError(f"{data['error']}"))
                    else:
                        future.set_result(data.get("result", {}))
            else:
                for listener in self._listeners.get(data.get("sessionId", ""), []):
                    listener(data)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BrowserError("the DevTools connection closed"))

    async def send(self, method: str, params: dict | None = None, *,
                   session_id: str | None = None, timeout: float = 60.0) -> dict:
        assert self._ws is not None, "Browser.start() first"
        message: dict[str, Any] = {"id": next(self._ids), "method": method,
                                   "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        future = asyncio.get_running_loop().create_future()
        self._pending[message["id"]] = future
        await self._ws.send_str(json.dumps(message))
        return await asyncio.wait_for(future, timeout)

    async def new_page(self, *, width: int = 1280, height: int = 900) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget",
                                   {"targetId": target["targetId"], "flatten": True})
        page = Page(self, target["targetId"], attached["sessionId"])
        self._listeners[page.session_id] = [page._on_event]
        for domain in ("Page", "Runtime", "Network", "Log"):
            await page.send(f"{domain}.enable")
        await page.send("Emulation.setDeviceMetricsOverride",
                        {"width": width, "height": height, "deviceScaleFactor": 1,
                         "mobile": False})
        return page

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self._process.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._process.pid, signal.SIGKILL)
                await self._process.wait()
        self._profile.cleanup()


class Page:
    """One tab: navigate, evaluate, wait for a condition, screenshot; it records every
    request it made, every failed one, and every console error or uncaught exception."""

    def __init__(self, browser: Browser, target_id: str, session_id: str) -> None:
        self.browser = browser
        self.target_id = target_id
        self.session_id = session_id
        self.requests: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self._urls: dict[str, str] = {}
        self._loaded = asyncio.Event()

    def _on_event(self, event: dict) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            self.requests.append(url)
            self._urls[params["requestId"]] = url
        elif method == "Network.loadingFailed":
            self.failed.append((self._urls.get(params["requestId"], "?"),
                                params.get("errorText", "")))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description")
                               or details.get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                        for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.errors.append(params["entry"].get("text", ""))
        elif method == "Page.loadEventFired":
            self._loaded.set()

    async def send(self, method: str, params: dict | None = None) -> dict:
        return await self.browser.send(method, params, session_id=self.session_id)

    async def goto(self, url: str, *, timeout: float = 60.0) -> None:
        self._loaded.clear()
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"navigation to {url} failed: {result['errorText']}")
        await asyncio.wait_for(self._loaded.wait(), timeout)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, *, timeout: float = 30.0,
                       interval: float = 0.2) -> Any:
        """Poll ``expression`` until it is truthy; its value, or BrowserError with the
        last value seen. A readiness wait for a loaded machine, not a timing check. While
        a navigation is under way the expression may throw (the old document is gone):
        that counts as not yet."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        value: Any = None
        while loop.time() < deadline:
            try:
                value = await self.evaluate(expression)
            except BrowserError as exc:
                value = exc
            if value and not isinstance(value, BrowserError):
                return value
            await asyncio.sleep(interval)
        raise BrowserError(f"still false after {timeout}s: {expression} (last: {value!r})")

    async def click(self, selector: str) -> None:
        found = await self.evaluate(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            f" if (!el) return false; el.click(); return true; }})()")
        if not found:
            raise BrowserError(f"nothing matches {selector}")

    async def fill(self, selector: str, text: str) -> None:
        found = await self.evaluate(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            f" if (!el) return false; el.value = {json.dumps(text)};"
            f" el.dispatchEvent(new Event('input', {{bubbles: true}})); return true; }})()")
        if not found:
            raise BrowserError(f"nothing matches {selector}")

    async def text(self, selector: str = "body") -> str:
        return await self.evaluate(
            f"(document.querySelector({json.dumps(selector)}) || {{}}).innerText || ''")

    async def screenshot(self, name: str) -> Path:
        """A full-page PNG under tests/artifacts/ (gitignored); its path."""
        shot = await self.send("Page.captureScreenshot",
                               {"format": "png", "captureBeyondViewport": True})
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    async def close(self) -> None:
        self.browser._listeners.pop(self.session_id, None)
        with contextlib.suppress(BrowserError, TimeoutError):
            await self.browser.send("Target.closeTarget", {"targetId": self.target_id})
