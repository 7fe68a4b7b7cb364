"""The viewer's server: what it serves, what it refuses, and how ``mbm-agent view`` fails."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import AGENTS, ROOT, Viewer

from mbm_agent.cli import main


def get(viewer: Viewer, raw_path: str) -> tuple[int, bytes]:
    """GET a path sent exactly as written (http.client does not normalise dot segments)."""
    parts = urlsplit(viewer.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", raw_path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_serves_its_page_assets_and_the_named_runs_files(viewer: Viewer) -> None:
    status, body = get(viewer, "/")
    assert status == 200 and b"mbm-agent view" in body
    for asset in ("/static/view.js", "/static/view.css"):
        assert get(viewer, asset)[0] == 200
    status, body = get(viewer, "/api/runs")
    runs = json.loads(body)["runs"]
    assert [r["name"] for r in runs] == ["GoToObject", "FindSound"]
    assert runs[0]["senses"] == {"image": "image", "text": "text"}
    assert runs[0]["actions"] == ["left", "right", "forward"]
    assert runs[0]["keys"]["forward"] == ["ArrowUp", "w"]
    status, body = get(viewer, "/runs/1/eval.json")
    assert status == 200 and json.loads(body)["meta"]["env_id"] == "mbm/FindSound-v0"


@pytest.mark.parametrize(
    "path",
    [
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2f..%2f..%2fpyproject.toml",
        "/static/../app.py",
        "/static/%2e%2e/app.py",
        "/runs/0/../../../../etc/passwd",
        "/runs/0/%2e%2e/%2e%2e/%2e%2e/pyproject.toml",
        "/runs/0/..%2fFindSound%2fmodel.json",
        "/runs/0//etc/passwd",
        "/runs/2/model.json",
        "/runs/0/no-such-file",
        "/../pyproject.toml",
        "/etc/passwd",
    ],
)
def test_path_traversal_and_unknown_paths_get_404(viewer: Viewer, path: str) -> None:
    status, body = get(viewer, path)
    assert status == 404, (path, body[:200])
    assert b"root:" not in body and b"[project]" not in body


def test_a_websocket_command_it_does_not_know_gets_an_error_not_a_crash(viewer: Viewer) -> None:
    from websockets.sync.client import connect

    with connect(viewer.url.replace("http", "ws") + "ws") as ws:
        ws.send(json.dumps({"op": "fly"}))
        assert "unknown op" in json.loads(ws.recv())["error"]
        ws.send("not json")
        assert "error" in json.loads(ws.recv())
        ws.send(json.dumps({"op": "step", "action": 7}))
        assert "not one of" in json.loads(ws.recv())["error"]
        ws.send(json.dumps({"op": "step", "action": 2}))
        state = json.loads(ws.recv())
        assert state["panels"][0]["t"] == 1


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_non_loopback_bind_is_refused_without_allow_remote(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, text = run_main(["view", str(AGENTS / "GoToObject"), "--host", "0.0.0.0"], capsys)
    assert code == 2
    assert "not a loopback address" in text and "--allow-remote" in text


def test_a_port_in_use_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        code, text = run_main(["view", str(AGENTS / "GoToObject"), "--port", str(port)], capsys)
    finally:
        busy.close()
    assert code == 2
    assert f"port {port} on 127.0.0.1 is in use" in text and "--port 0" in text


def test_missing_unreadable_and_uninstalled_runs_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = run_main(["view", str(tmp_path / "nope")], capsys)
    assert code == 2 and "does not exist" in text

    empty = tmp_path / "empty"
    empty.mkdir()
    code, text = run_main(["view", str(empty)], capsys)
    assert code == 2 and "holds no saved policy" in text

    corrupt = tmp_path / "corrupt"
    shutil.copytree(AGENTS / "GoToObject", corrupt)
    (corrupt / "model.json").write_text("{not json")
    code, text = run_main(["view", str(corrupt)], capsys)
    assert code == 2 and "model.json" in text

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(AGENTS / "GoToObject", elsewhere)
    spec = json.loads((elsewhere / "model.json").read_text())
    spec["env_id"] = "no_such_package_mbm:Thing-v0"
    (elsewhere / "model.json").write_text(json.dumps(spec))
    code, text = run_main(["view", str(elsewhere)], capsys)
    assert code == 2 and "no_such_package_mbm" in text and "cannot be made" in text

    code, text = run_main(
        ["view", str(AGENTS / "GoToObject"), str(AGENTS / "FindSound"), "--port", "70000"],
        capsys,
    )
    assert code == 2 and "--port must be in" in text


def test_the_command_prints_its_url_and_serves_until_stopped() -> None:
    """The real ``mbm-agent view`` process: URL on stdout, page served, SIGINT stops it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "mbm_agent.cli", "view", str(AGENTS / "FindSound"), "--port", "0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("mbm-agent view: serving at http://127.0.0.1:"), line
        url = line.split("serving at ")[1].split()[0]
        viewer = Viewer(url, None, None)  # type: ignore[arg-type]
        deadline = time.monotonic() + 20
        while True:
            try:
                status, body = get(viewer, "/")
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert status == 200 and b"mbm-agent view" in body
        proc.send_signal(2)  # Ctrl-C
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_without_the_web_stack_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    code, text = run_main(["view", str(AGENTS / "GoToObject")], capsys)
    assert code == 2 and "pip install 'mbm-agent[view]'" in text
