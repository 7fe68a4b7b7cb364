"""Write docs/img/view.png: ``mbm-agent view`` on two reference agents, in headless Chromium.

Run from the repository root: ``python docs/make_view_picture.py`` (needs
``pip install 'mbm-agent[view]'`` and Chromium at /usr/bin/chromium, as ``make install`` sets up).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from mbm_agent.view.app import prepare, server_config, url_of

ROOT = Path(__file__).resolve().parents[1]
AGENTS = ROOT / "runs" / "reference" / "agents"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main(out: Path = ROOT / "docs" / "img" / "view.png", steps: int = 2) -> None:
    """Serve SoundMaze beside GoToObject, take ``steps`` steps, and screenshot the page."""
    import uvicorn

    app, sock = prepare([AGENTS / "SoundMaze", AGENTS / "GoToObject"], port=0, seed=3)
    server = uvicorn.Server(server_config(app))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url_of(sock))
            page.wait_for_function("window.mbmView && window.mbmView.ready")
            for i in range(steps):
                page.click("#step")
                page.wait_for_function(f"window.mbmView.steps > {i + 1}")
            page.screenshot(path=str(out))
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
