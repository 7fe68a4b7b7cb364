"""The viewer's web app (Starlette + uvicorn, a websocket per page) and :func:`serve`.

Routes:

- ``/``: the page (``static/index.html``); ``/static/...``: its script and style,
  nothing else (Starlette's ``StaticFiles`` answers 404 to any path outside the folder);
- ``/api/runs``: the runs shown (name, env, senses, actions);
- ``/runs/{i}/{file}``: a file of the i-th named run folder (its curves, eval
  report), resolved and refused (404) unless it lies inside that folder;
- ``/ws``: the page's websocket. Each message is a JSON command of
  :meth:`~mbm_agent.view.session.Session.handle`; each answer the new state.
  Every connection has its own envs, so two tabs do not disturb each other.

:func:`serve` checks everything before it prints the URL: the host is a loopback
address (unless ``allow_remote``), every run loads and its env can be made, the
port is free (it binds the socket itself, then hands it to uvicorn).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from starlette.applications import Starlette

from mbm_agent.view.session import ACTION_KEYS, LoadedRun, Session, ViewError

STATIC = Path(__file__).resolve().parent / "static"
_EXTRA = "pip install 'mbm-agent[view]'"


def _require_web_stack() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
        import websockets  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"mbm-agent view needs Starlette, uvicorn and websockets ({exc.name} is missing): "
            f"{_EXTRA}"
        ) from exc


def run_info(index: int, run: LoadedRun) -> dict[str, Any]:
    """What the page needs to know of a run before the first state."""
    env = run.make_env()
    try:
        from mbm_agent.view.session import action_names

        actions = action_names(env)
    finally:
        env.close()
    files = [
        name
        for name in ("learning_curve.png", "eval.md", "eval.json", "report.html")
        if (run.path / name).is_file()
    ]
    return {
        "index": index,
        "name": run.name,
        "env_id": run.env_id,
        "fusion": run.network.encoder.config.fusion,
        "senses": dict(run.network.encoder.modalities),
        "actions": actions,
        "keys": {a: ACTION_KEYS.get(a, []) for a in actions},
        "files": files,
    }


def create_app(runs: Sequence[LoadedRun], seed: int = 0) -> Starlette:
    """The Starlette app showing ``runs`` (one or two), first episode on ``seed``."""
    _require_web_stack()
    import anyio
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
    from starlette.routing import Mount, Route, WebSocketRoute
    from starlette.staticfiles import StaticFiles
    from starlette.websockets import WebSocket, WebSocketDisconnect

    infos = [run_info(i, run) for i, run in enumerate(runs)]
    no_cache = {"Cache-Control": "no-store"}

    async def index(_request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=no_cache)

    async def api_runs(_request: Request) -> Response:
        return JSONResponse({"runs": infos, "seed": seed})

    async def run_file(request: Request) -> Response:
        i = int(request.path_params["index"])
        rel = str(request.path_params["path"])
        if not 0 <= i < len(runs):
            return PlainTextResponse("Not Found", status_code=404)
        root = runs[i].path
        try:
            target = (root / rel).resolve()
        except (OSError, ValueError):
            return PlainTextResponse("Not Found", status_code=404)
        if not target.is_relative_to(root) or not target.is_file():
            return PlainTextResponse("Not Found", status_code=404)
        return FileResponse(target)

    async def ws_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        session = await anyio.to_thread.run_sync(Session, runs, seed)
        lock = anyio.Lock()
        try:
            while True:
                text = await websocket.receive_text()
                try:
                    message = json.loads(text)
                    if not isinstance(message, dict):
                        raise ValueError("a message must be a JSON object")
                    async with lock:
                        reply: dict[str, Any] = await anyio.to_thread.run_sync(
                            session.handle, message
                        )
                    reply["id"] = message.get("id")
                except (ValueError, TypeError, IndexError, KeyError) as exc:
                    reply = {"error": str(exc)}
                await websocket.send_text(json.dumps(reply))
        except WebSocketDisconnect:
            pass
        finally:
            await anyio.to_thread.run_sync(session.close)

    routes = [
        Route("/", index),
        Route("/api/runs", api_runs),
        Route("/runs/{index:int}/{path:path}", run_file),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        WebSocketRoute("/ws", ws_endpoint),
    ]
    return Starlette(routes=routes)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0 picks a free port).

    Raises:
        ViewError: The port is in use or the address cannot be bound.
    """
    if not 0 <= port <= 65535:
        raise ViewError(f"--port must be in [0, 65535], got {port}.")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ViewError(f"cannot resolve --host {host!r}: {exc}") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        import errno

        if exc.errno == errno.EADDRINUSE:
            raise ViewError(
                f"port {port} on {host} is in use (another mbm-agent view, or another "
                "server); pass another --port, or --port 0 to pick a free one."
            ) from exc
        raise ViewError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port/`` of a bound socket."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def prepare(
    run_dirs: Sequence[str | Path],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    allow_remote: bool = False,
    seed: int = 0,
) -> tuple[Starlette, socket.socket]:
    """Check everything and bind: the app and its listening socket, or a :class:`ViewError`.

    Nothing is left open when it raises.
    """
    _require_web_stack()
    if not 1 <= len(run_dirs) <= 2:
        raise ViewError(f"give one run, or two to compare side by side; got {len(run_dirs)}.")
    if not is_loopback(host) and not allow_remote:
        raise ViewError(
            f"--host {host} is not a loopback address: the viewer would be reachable from "
            "other machines, and it has no authentication. Pass --allow-remote as well if "
            "that is what you want."
        )
    runs = [LoadedRun.load(path) for path in run_dirs]
    app = create_app(runs, seed)
    return app, bind_socket(host, port)


def server_config(app: Starlette) -> Any:
    """The uvicorn settings of the viewer.

    Quiet, websockets by the ``websockets`` package (its sans-I/O implementation
    where this uvicorn has it), no lifespan events.
    """
    import uvicorn
    from uvicorn.config import WS_PROTOCOLS

    ws = "websockets-sansio" if "websockets-sansio" in WS_PROTOCOLS else "websockets"
    return uvicorn.Config(app, log_level="warning", ws=ws, lifespan="off")


def serve(
    run_dirs: Sequence[str | Path],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    allow_remote: bool = False,
    seed: int = 0,
    out: TextIO | None = None,
) -> int:
    """Run the viewer until interrupted (Ctrl-C); prints its URL first.

    Raises:
        ViewError: A bad host, run or port (before anything is started).
    """
    _require_web_stack()
    import uvicorn

    app, sock = prepare(run_dirs, host=host, port=port, allow_remote=allow_remote, seed=seed)
    stream = out if out is not None else sys.stdout
    print(f"mbm-agent view: serving at {url_of(sock)} (Ctrl-C to stop)", file=stream, flush=True)
    server = uvicorn.Server(server_config(app))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down, then re-raises the Ctrl-C it caught
        pass
    finally:
        sock.close()
    print("mbm-agent view: stopped", file=stream, flush=True)
    return 0
