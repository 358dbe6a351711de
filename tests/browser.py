"""Open a report in headless Chromium over the DevTools protocol, with the standard library only.

Used to check that a written report renders: console errors and uncaught exceptions are collected, any
JavaScript dialog (``alert``) is recorded and dismissed, expressions can be evaluated in the page, and a
screenshot taken. The websocket client is the minimum the protocol needs (RFC 6455 text frames, ping,
close) so that checking a report needs no extra dependency.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Chromium", "find_chromium"]

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
)

_DIALOG_PROBE = """
window.__ns_dialogs = [];
for (const name of ["alert", "confirm", "prompt"]) {
  const original = window[name];
  window[name] = function (...args) { window.__ns_dialogs.push(name + ": " + String(args[0])); };
  window[name].original = original;
}
"""


def find_chromium() -> str | None:
    """Path of a Chromium binary: ``$NEURONSCAN_CHROMIUM``, then ``chromium`` on PATH, else None."""
    override = os.environ.get("NEURONSCAN_CHROMIUM")
    if override:
        return override if os.access(override, os.X_OK) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


class Chromium:
    """A headless Chromium with one page, driven over the DevTools protocol.

    Args:
        binary: Chromium executable; default `find_chromium`.
        width, height: viewport size in CSS pixels.
        timeout: seconds to wait for start-up, each protocol call and each navigation.

    Attributes:
        errors: console errors, uncaught exceptions and error log entries (CSP violations, failed loads).
        dialogs: JavaScript dialogs the page tried to open.

    Example:
        >>> with Chromium() as browser:  # doctest: +SKIP
        ...     browser.open(Path("report/index.html"))
        ...     browser.evaluate("document.title")
        'neuronscan · run-1'
    """

    def __init__(
        self, binary: str | None = None, *, width: int = 1280, height: int = 900, timeout: float = 30.0
    ) -> None:
        self.binary = binary or find_chromium()
        if self.binary is None:
            raise FileNotFoundError("no Chromium found; install it (Debian: apt-get install -y chromium)")
        self.width, self.height, self.timeout = width, height, timeout
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self._events: list[dict[str, Any]] = []
        self._next_id = 0
        self._proc: subprocess.Popen | None = None
        self._profile: str | None = None
        self._ws: _WebSocket | None = None
        self._session: str | None = None

    def __enter__(self) -> Chromium:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Launch the browser and attach to a fresh page."""
        self._profile = tempfile.mkdtemp(prefix="neuronscan-chromium-")
        args = [self.binary, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}", "--remote-debugging-port=0",
                f"--window-size={self.width},{self.height}", "about:blank"]
        log = open(os.path.join(self._profile, "chromium.log"), "wb")  # noqa: SIM115 - closed with the process
        try:
            self._proc = subprocess.Popen(
                args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        finally:
            log.close()
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = Path(self._profile, "chromium.log").read_text(errors="replace")[-2000:]
                self.close()
                raise RuntimeError(f"Chromium did not start ({self.binary}); its log ends with:\n{tail}")
            time.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self._ws = _WebSocket(f"ws://127.0.0.1:{port}{path}", self.timeout)
        target = self._call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        attached = self._call("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)
        self._session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self._call(f"{domain}.enable")
        self._call("Page.addScriptToEvaluateOnNewDocument", {"source": _DIALOG_PROBE})
        # Headless pages may not hold focus; keyboard input needs a focused page.
        self._call("Page.bringToFront")
        self._call("Emulation.setFocusEmulationEnabled", {"enabled": True})
        self._call(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
        )

    def open(self, target: str | Path) -> None:
        """Navigate to a URL or local file and wait for the load event."""
        url = target.resolve().as_uri() if isinstance(target, Path) else str(target)
        mark = len(self._events)
        result = self._call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise RuntimeError(f"could not open {url}: {result['errorText']}")
        self._wait_event("Page.loadEventFired", mark)

    def evaluate(self, expression: str, *, await_promise: bool = False) -> Any:
        """Value of a JavaScript expression in the page (JSON-serialisable values only)."""
        result = self._call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": await_promise},
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise RuntimeError(f"evaluating {expression[:80]!r} failed: {text}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float | None = None) -> Any:
        """Poll ``expression`` until it is truthy and return its value; raise TimeoutError otherwise."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} still falsy after {timeout or self.timeout:.0f} s")
            self._pump(0.05)

    def click(self, selector: str) -> None:
        """Click the centre of the first element matching ``selector`` with real mouse events."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        if box is None:
            raise LookupError(f"no element matches {selector!r}")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            params = {"type": kind, "x": box[0], "y": box[1], "button": "left", "clickCount": 1}
            self._call("Input.dispatchMouseEvent", params)

    def type_text(self, selector: str, text: str) -> None:
        """Focus ``selector``, clear it and type ``text`` as keyboard input would (fires ``input`` events)."""
        found = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return false;"
            " e.focus(); e.select(); return document.activeElement === e ? true : 'unfocusable'; })()"
        )
        if not found:
            raise LookupError(f"no element matches {selector!r}")
        if found == "unfocusable":
            raise RuntimeError(f"{selector!r} cannot take keyboard focus (hidden or disabled?)")
        if text:
            self._call("Input.insertText", {"text": text})  # replaces the selection
        else:
            for kind in ("keyDown", "keyUp"):
                key = {"type": kind, "key": "Backspace", "code": "Backspace", "windowsVirtualKeyCode": 8}
                self._call("Input.dispatchKeyEvent", key)
        value = self.evaluate(f"document.querySelector({json.dumps(selector)}).value")
        if value != text:
            raise RuntimeError(f"typing into {selector!r} gave {value!r}, not {text!r}")

    def screenshot(self, path: str | Path, *, full_page: bool = False) -> bytes:
        """Write a PNG screenshot of the viewport (or the whole page) to ``path`` and return its bytes."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": size[0], "height": min(size[1], 8000), "scale": 1}
        data = base64.b64decode(self._call("Page.captureScreenshot", params)["data"])
        Path(path).write_bytes(data)
        return data

    def close(self) -> None:
        """Close the browser and remove its temporary profile."""
        if self._ws is not None:
            try:
                self._ws.send_text(json.dumps({"id": 0, "method": "Browser.close"}))
            except OSError:
                pass
            self._ws.close()
            self._ws = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=5)
            self._proc = None
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None

    # ------------------------------------------------------------------------------------ protocol

    def _call(self, method: str, params: dict[str, Any] | None = None, *, session: bool = True) -> dict[str, Any]:
        """Send one command and return its result, handling the events that arrive meanwhile."""
        if self._ws is None:
            raise RuntimeError("the browser is not running; call start() first")
        self._next_id += 1
        call_id = self._next_id
        message: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self._session
        self._ws.send_text(json.dumps(message))
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._receive(deadline, method)
            if reply.get("id") == call_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})

    def _receive(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        """Next message (events are recorded as they pass); TimeoutError at ``deadline``."""
        assert self._ws is not None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer from Chromium for {waiting_for} within {self.timeout:.0f} s")
            text = self._ws.recv(remaining)
            if text is None:
                continue
            message = json.loads(text)
            if "method" in message:
                self._on_event(message)
            return message

    def _pump(self, seconds: float) -> None:
        """Process incoming events for ``seconds``."""
        assert self._ws is not None
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            text = self._ws.recv(remaining)
            if text is not None:
                message = json.loads(text)
                if "method" in message:
                    self._on_event(message)

    def _wait_event(self, name: str, since: int) -> dict[str, Any]:
        """First event called ``name`` recorded after index ``since``."""
        deadline = time.monotonic() + self.timeout
        while True:
            for event in self._events[since:]:
                if event["method"] == name:
                    return event
            self._receive(deadline, name)

    def _on_event(self, event: dict[str, Any]) -> None:
        """Record an event; collect errors and dismiss dialogs."""
        self._events.append(event)
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.errors.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = [str(a.get("value", a.get("description", ""))) for a in params.get("args", [])]
            self.errors.append(f"console.{params['type']}: {' '.join(args)}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Page.javascriptDialogOpening":
            self.dialogs.append(f"{params.get('type')}: {params.get('message')}")
            self._next_id += 1
            self._ws.send_text(json.dumps({"id": self._next_id, "method": "Page.handleJavaScriptDialog",
                                           "params": {"accept": False}, "sessionId": self._session}))


class _WebSocket:
    """Blocking RFC 6455 client: masked text frames out, text frames in, pings answered."""

    _GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        self._sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        request = (
            f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self._sock.sendall(request.encode("ascii"))
        self._buf = b""
        while b"\r\n\r\n" not in self._buf:
            chunk = self._sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the websocket handshake")
            self._buf += chunk
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        expected = base64.b64encode(hashlib.sha1((key + self._GUID).encode("ascii")).digest()).decode("ascii")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if " 101 " not in lines[0] + " " or headers.get("sec-websocket-accept") != expected:
            raise ConnectionError(f"websocket handshake refused: {lines[0]}")
        self._fragments: list[bytes] = []

    def send_text(self, text: str) -> None:
        """Send one masked text frame."""
        self._send(0x1, text.encode("utf-8"))

    def recv(self, timeout: float) -> str | None:
        """Next complete text message, or None if none arrived within ``timeout`` seconds."""
        self._sock.settimeout(max(timeout, 0.001))
        try:
            while True:
                fin, opcode, payload = self._read_frame()
                if opcode == 0x9:
                    self._send(0xA, payload)
                elif opcode == 0x8:
                    raise ConnectionError("DevTools closed the websocket")
                elif opcode in (0x1, 0x2, 0x0):
                    self._fragments.append(payload)
                    if fin:
                        data, self._fragments = b"".join(self._fragments), []
                        return data.decode("utf-8")
        except TimeoutError:
            return None

    def close(self) -> None:
        """Close the socket."""
        try:
            self._sock.close()
        except OSError:
            pass

    def _send(self, opcode: int, payload: bytes) -> None:
        """One frame with FIN set, masked as clients must."""
        n = len(payload)
        if n < 126:
            header = bytes([0x80 | opcode, 0x80 | n])
        elif n < 1 << 16:
            header = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
        else:
            header = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        repeated = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big") if n else b""
        self._sock.sendall(header + mask + masked)

    def _read_frame(self) -> tuple[bool, int, bytes]:
        """``(fin, opcode, payload)`` of the next frame; bytes stay buffered until the frame is whole."""
        self._fill(2)
        first, second = self._buf[0], self._buf[1]
        n, offset = second & 0x7F, 2
        if n == 126:
            self._fill(4)
            n, offset = int.from_bytes(self._buf[2:4], "big"), 4
        elif n == 127:
            self._fill(10)
            n, offset = int.from_bytes(self._buf[2:10], "big"), 10
        masked = bool(second & 0x80)
        self._fill(offset + 4 * masked + n)
        mask = self._buf[offset : offset + 4] if masked else b""
        offset += 4 * masked
        payload, self._buf = self._buf[offset : offset + n], self._buf[offset + n :]
        if masked:
            repeated = (mask * (n // 4 + 1))[:n]
            payload = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")
        return bool(first & 0x80), first & 0x0F, payload

    def _fill(self, n: int) -> None:
        """Read until at least ``n`` bytes are buffered (a timeout leaves the buffer intact)."""
        while len(self._buf) < n:
            chunk = self._sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise ConnectionError("DevTools closed the websocket")
            self._buf += chunk
