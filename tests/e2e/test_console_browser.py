"""The console in a real browser: ``streamlit run ui/console.py`` in a child process,
opened in headless Chromium (Debian's ``chromium``; ``.ci/run`` installs it), logged in
through the form, every page opened from the sidebar; no page may show a Streamlit
exception. A screenshot of each page is saved to ``$MLOPS_TEST_ARTIFACTS/console-browser``
(default: the test's temporary folder); the test prints where.

Chromium is driven over the Chrome DevTools Protocol (its ``--remote-debugging-port``)
with the ``websockets`` client the project already installs (``uvicorn[standard]``):
a few CDP calls (navigate, evaluate, insert text, press Enter, screenshot) are all the
test needs, so no WebDriver server or browser-automation package is involved.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlops.cli.server import free_port
from mlops.processes import terminate
from mlops.registry import configure_mlflow
from mlops.settings import Settings
from tests.integration._registry import register_version

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_api")]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("MLOPS_TEST_CHROMIUM", "/usr/bin/chromium")
PASSWORD = "browser-test-password"
TOKEN = "browser-test-token"
# (url path, title): the console's pages, in the order of its menu
PAGES = [
    ("", "Overview"),
    ("datasets", "Datasets"),
    ("features", "Features"),
    ("training", "Training"),
    ("models", "Models"),
    ("experiments", "Experiments"),
    ("monitoring", "Monitoring"),
    ("retraining", "Retraining"),
]
PAGE_TIMEOUT_S = 90.0

STATE_JS = """(() => {
  const app = document.querySelector('[data-testid="stApp"]');
  const h1 = document.querySelector('[data-testid="stMain"] h1');
  return {
    state: app ? app.getAttribute('data-test-script-state') : null,
    title: h1 ? h1.innerText.trim() : null,
    exceptions: [...document.querySelectorAll('[data-testid="stException"]')]
      .map(e => e.innerText.slice(0, 500)),
    errors: [...document.querySelectorAll('[data-testid="stAlertContentError"]')]
      .map(e => e.innerText.slice(0, 300)),
    password: !!document.querySelector('input[type="password"]'),
    path: location.pathname,
  };
})()"""


class DevTools:
    """The few Chrome DevTools Protocol calls the test makes, over one websocket."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self._ws = connect(ws_url, max_size=None, open_timeout=30)
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:  # events arrive in between; the answer carries the id
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"CDP {method} failed: {message['error']}")
                return dict(message.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        found = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in found:
            raise RuntimeError(f"JavaScript failed: {found['exceptionDetails']}")
        return found["result"].get("value")

    def press_enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            self.call(
                "Input.dispatchKeyEvent",
                type=kind,
                key="Enter",
                code="Enter",
                windowsVirtualKeyCode=13,
                nativeVirtualKeyCode=13,
                text="\r" if kind == "keyDown" else "",
            )

    def screenshot(self, path: Path) -> None:
        shot = self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        self._ws.close()


@dataclass
class Console:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def wait_for(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last})")


def stop(process: subprocess.Popen[bytes]) -> None:
    terminate(process, timeout_s=20)


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    base = os.environ.get("MLOPS_TEST_ARTIFACTS")
    folder = (Path(base) if base else tmp_path) / "console-browser"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"\nconsole screenshots: {folder}")  # noqa: T201  (where the artifacts are)
    return folder


@pytest.fixture
def console(mlops_home: Path, tmp_path: Path) -> Iterator[Console]:
    """The console on a free port, on a home with one registered champion."""
    from prefect.settings import PREFECT_API_URL

    settings = Settings()
    settings.ensure_home()
    experiment_id = configure_mlflow(settings)
    register_version(
        tracking_uri=settings.tracking_uri, experiment_id=experiment_id, name="fraud_detector"
    )
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")},
        "MLOPS_HOME": str(mlops_home),
        "MLOPS_CONSOLE__PASSWORD": PASSWORD,
        "MLOPS_SERVING__API_TOKEN": TOKEN,
        "MLOPS_PREFECT__API_URL": str(PREFECT_API_URL.value()),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    log = tmp_path / "console.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                str(ROOT / "ui" / "console.py"),
                "--server.headless",
                "true",
                "--server.address",
                "127.0.0.1",
                "--server.port",
                str(port),
                "--server.fileWatcherType",
                "none",
                "--browser.gatherUsageStats",
                "false",
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, f"the console exited:\n{log.read_text()}"
        try:
            return httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, 90, "the console's /_stcore/health")
        yield Console(url, process, log)
    finally:
        stop(process)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    """Headless Chromium with a fresh profile; the DevTools session of its first tab."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install Debian's `chromium` package "
            "(`apt-get install -y chromium`, as .ci/run does) or set MLOPS_TEST_CHROMIUM"
        )
    profile = tmp_path / "chromium-profile"
    process = subprocess.Popen(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",  # root in CI containers
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--window-size=1440,1000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        wait_for(port_file.exists, 60, "Chromium's DevTools port")
        port = wait_for(lambda: port_file.read_text().split("\n")[0].strip(), 10, "the port")
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(t for t in targets if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        tools.call("Page.enable")
        tools.call("Runtime.enable")
        try:
            yield tools
        finally:
            tools.close()
    finally:
        stop(process)


def settled(tools: DevTools, title: str | None) -> dict[str, Any] | None:
    """The page's state once its script has finished and (when given) shows ``title``."""
    state = tools.evaluate(STATE_JS)
    if state["state"] != "notRunning" or (title is not None and state["title"] != title):
        return None
    return dict(state)


def test_every_page_opens_without_a_streamlit_exception(
    console: Console, browser: DevTools, artifacts: Path
) -> None:
    browser.call("Page.navigate", url=console.url)
    login = wait_for(
        lambda: (s := settled(browser, "mlops console")) and s["password"] and s,
        PAGE_TIMEOUT_S,
        "the login form",
    )
    assert not login["exceptions"], login
    browser.screenshot(artifacts / "00-login.png")

    # a wrong password: still the login page, an error, no menu
    browser.evaluate("document.querySelector('input[type=\"password\"]').focus()")
    browser.call("Input.insertText", text="not-the-password")
    browser.press_enter()
    refused = wait_for(
        lambda: (s := settled(browser, "mlops console")) and s["errors"] and s,
        PAGE_TIMEOUT_S,
        "the refusal of a wrong password",
    )
    assert "Wrong password or token" in refused["errors"][0]
    assert not browser.evaluate("!!document.querySelector('[data-testid=\"stSidebarNav\"]')")

    browser.evaluate(
        "(() => { const i = document.querySelector('input[type=\"password\"]');"
        " i.focus(); i.select(); })()"
    )
    browser.call("Input.insertText", text=TOKEN)
    browser.press_enter()

    problems: dict[str, list[str]] = {}
    for index, (path, title) in enumerate(PAGES):
        if index:  # the default page comes first, right after the login
            link = f'a[data-testid="stSidebarNavLink"][href$="/{path}"]'
            wait_for(
                lambda link=link: browser.evaluate(f"!!document.querySelector('{link}')"),
                30,
                f"the menu link of {title}",
            )
            browser.evaluate(f"document.querySelector('{link}').click()")
        state = wait_for(
            lambda title=title: settled(browser, title), PAGE_TIMEOUT_S, f"the {title} page"
        )
        time.sleep(1.0)  # anything still drawing (charts, fragments) lands
        state = settled(browser, title) or state
        browser.screenshot(artifacts / f"{index + 1:02d}-{title.lower()}.png")
        assert state["path"].rstrip("/").endswith(path), state
        if state["exceptions"]:
            problems[title] = state["exceptions"]

    shots = sorted(p.name for p in artifacts.glob("*.png"))
    assert len(shots) == len(PAGES) + 1, shots
    assert not problems, f"Streamlit exceptions on pages: {json.dumps(problems, indent=2)}"
