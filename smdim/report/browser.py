"""Check a report page in headless Chromium: console errors, images decoded, audio playable; screenshot.

Talks to Chromium over the DevTools protocol on a pipe (`--remote-debugging-pipe`: commands on fd 3,
replies on fd 4, NUL-terminated JSON), so no port, no websocket library and nothing to clean up but
the process. `python -m smdim.report.browser results/report/index.html --screenshot shot.png`.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from smdim.errors import SmdimError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Runs in the page: waits (up to timeout_ms) for every <audio> to load its metadata, then reports
# each image's natural width and each audio's duration / error code.
PROBE = """
(async (timeoutMs) => {
  const audios = [...document.querySelectorAll('audio')];
  const wait = a => a.readyState >= 1 || a.error ? null : new Promise(done => {
    a.addEventListener('loadedmetadata', done, {once: true});
    a.addEventListener('error', done, {once: true});
    a.preload = 'metadata'; a.load();
  });
  await Promise.race([Promise.all(audios.map(wait)),
                      new Promise(done => setTimeout(done, timeoutMs))]);
  const root = document.documentElement;
  return {
    overflow_px: root.scrollWidth - root.clientWidth,  // > 0: the page scrolls sideways
    images: [...document.images].map(i => ({src: i.getAttribute('src'), width: i.naturalWidth})),
    audios: audios.map(a => ({src: a.getAttribute('src'), duration: a.duration,
                              error: a.error ? a.error.code : null})),
  };
})
"""


def find_browser() -> str | None:
    """A Chromium-family executable on PATH (the Debian package is `chromium`), or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class _Pipe:
    """The DevTools protocol over Chromium's debugging pipe: send commands, collect events."""

    def __init__(self, proc: subprocess.Popen, write_fd: int, read_fd: int):
        self.proc, self.w, self.r = proc, write_fd, read_fd
        self.next_id, self.buf, self.events = 0, b"", []

    def _read_message(self, deadline: float) -> dict:
        import select

        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SmdimError("chromium: no reply over the DevTools pipe in time")
            ready, _, _ = select.select([self.r], [], [], left)
            if ready:
                chunk = os.read(self.r, 1 << 20)
                if not chunk:
                    raise SmdimError(f"chromium exited (code {self.proc.poll()}) before replying")
                self.buf += chunk
        msg, _, self.buf = self.buf.partition(b"\0")
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout_s: float = 30.0) -> dict:
        """Send one command and return its result (events that arrive meanwhile are kept)."""
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise SmdimError(f"chromium {method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout_s: float) -> dict:
        """The first event `method` (already received or arriving within the timeout)."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            for e in self.events[seen:]:
                if e.get("method") == method:
                    return e
            seen = len(self.events)
            self.events.append(self._read_message(deadline))


def _console_errors(events: list[dict]) -> list[str]:
    """Error lines among the page's console messages, exceptions and browser log entries."""
    errors = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            errors.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            entry = p["entry"]
            errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
    return errors


def check_page(html_path: str | os.PathLike, screenshot: str | os.PathLike | None = None, *,
               browser: str | None = None, width: int = 1400, height: int = 2200,
               full_page: bool = False, timeout_s: float = 60.0) -> dict[str, Any]:
    """Open `html_path` in headless Chromium; returns {errors, images, audios, overflow_px}.

    `screenshot`: a PNG of the window (`full_page`: of the whole page, up to 16,000 px tall).
    """
    exe = browser or find_browser()
    if exe is None:
        raise SmdimError("no Chromium found on PATH; `apt-get install chromium`")
    url = Path(html_path).resolve().as_uri()
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()
    with tempfile.TemporaryDirectory(prefix="smdim-chromium-") as profile:
        args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--mute-audio", f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"]

        def child_fds() -> None:
            # The debugging pipe is fixed at fds 3 (in) and 4 (out). Copy both above 10 first, so
            # neither is overwritten by the other's dup2; dup2'd fds are inherited by the exec.
            r, w = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)
            os.dup2(w, 4)

        # close_fds=False: Popen would close fds 3 and 4 after preexec_fn; Python's own fds are
        # close-on-exec anyway.
        proc = subprocess.Popen(args, close_fds=False, preexec_fn=child_fds,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        cdp = _Pipe(proc, to_chrome_w, from_chrome_r)
        try:
            targets = cdp.call("Target.getTargets")["targetInfos"]
            page = next(t for t in targets if t["type"] == "page")
            s = cdp.call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                cdp.call(f"{domain}.enable", session=s)
            cdp.events.clear()  # about:blank's own events are not the report's
            cdp.call("Page.navigate", {"url": url}, session=s)
            cdp.wait_event("Page.loadEventFired", timeout_s)
            probe = cdp.call("Runtime.evaluate", {
                "expression": f"({PROBE})({int(timeout_s * 500)})", "awaitPromise": True, "returnByValue": True,
            }, session=s, timeout_s=timeout_s)["result"]["value"]
            if screenshot is not None:
                opts: dict[str, Any] = {"format": "png"}
                if full_page:
                    size = cdp.call("Page.getLayoutMetrics", session=s)["cssContentSize"]
                    opts.update(captureBeyondViewport=True, clip={
                        "x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 16000), "scale": 1})
                shot = cdp.call("Page.captureScreenshot", opts, session=s)
                Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
            time.sleep(0.2)  # late console messages
            cdp.call("Runtime.evaluate", {"expression": "1"}, session=s)  # flushes queued events
            errors = _console_errors(cdp.events)
            try:
                cdp.call("Browser.close", timeout_s=5)
            except SmdimError:
                pass
        finally:
            os.close(to_chrome_w)
            os.close(from_chrome_r)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
    return {"errors": errors, **probe}


def problems(result: dict[str, Any]) -> list[str]:
    """What is wrong with a check_page result: console errors, undecoded images, unplayable audio."""
    out = list(result["errors"])
    out += [f"image not decoded: {i['src']}" for i in result["images"] if not i["width"]]
    out += [f"audio without duration: {a['src']} (error {a['error']})" for a in result["audios"]
            if a["error"] is not None or not (a["duration"] or 0) > 0]
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI: check a page, print what is wrong (exit 1) or a one-line OK."""
    ap = argparse.ArgumentParser(prog="python -m smdim.report.browser", description=__doc__.splitlines()[0])
    ap.add_argument("html", type=Path)
    ap.add_argument("--screenshot", type=Path, help="save a PNG of the page")
    ap.add_argument("--full-page", action="store_true", help="the screenshot covers the whole page")
    args = ap.parse_args(argv)
    try:
        result = check_page(args.html, args.screenshot, full_page=args.full_page)
    except SmdimError as e:
        sys.exit(f"error: {e}")
    bad = problems(result)
    for line in bad:
        print(line)
    print(f"{len(result['images'])} images, {len(result['audios'])} audio clips, {len(bad)} problems")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
