"""A live viewer (uvicorn in a thread of the test process) and Debian's headless Chromium.

Playwright cannot download its own browser here; it drives the system's
``/usr/bin/chromium`` (``make install`` / ``.ci/run`` install it). Without it the
browser tests skip and say why; CI installs it, so there they run.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
AGENTS = ROOT / "runs" / "reference" / "agents"
CHROMIUM = os.environ.get("MBM_CHROMIUM", "/usr/bin/chromium")
#: Flags Chromium needs on a machine with no network but the package registries.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]

pytest.importorskip("starlette", reason="the viewer needs pip install 'mbm-agent[view]'")
pytest.importorskip("uvicorn", reason="the viewer needs pip install 'mbm-agent[view]'")


@dataclass
class Viewer:
    """A running viewer: its URL and the server to stop."""

    url: str
    server: Any
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_viewer(run_dirs: Sequence[Path], seed: int = 0) -> Viewer:
    """``mbm-agent view`` on a free loopback port, served from a thread of this process."""
    import uvicorn

    from mbm_agent.view.app import prepare, server_config, url_of

    app, sock = prepare(list(run_dirs), port=0, seed=seed)
    server = uvicorn.Server(server_config(app))
    # The server runs in a thread: signal handlers can only be installed by the main one.
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the viewer did not start")
        time.sleep(0.02)
    return Viewer(url_of(sock), server, thread)


@pytest.fixture(scope="module")
def viewer() -> Iterator[Viewer]:
    """The viewer on two reference agents side by side: GoToObject (image + text) and
    FindSound (image + audio)."""
    v = start_viewer([AGENTS / "GoToObject", AGENTS / "FindSound"])
    yield v
    v.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright (skips with the reason when absent)."""
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(
            f"Chromium is not installed at {CHROMIUM} (apt-get install chromium; "
            "`make install` does it)"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="pip install 'mbm-agent[view]' brings Playwright"
    )
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()
