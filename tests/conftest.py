"""Test hygiene for the whole suite: tests write under pytest's temp folders only.

- The session's temp dir (``TMPDIR`` and ``tempfile``, inherited by subprocesses)
  is a folder of the session's own, so nothing a test or a library writes "to
  the temp dir" lands in the system's, and what is left there is seen.
- After every test, a ``SB3-<date-time>`` folder there fails the test: SB3
  makes one for each ``learn`` of a model without a logger of its own. Give the
  model one under the test's ``tmp_path`` (the ``sb3_logger`` fixture of
  ``tests/mbm_agent``) or a ``tensorboard_log`` folder there.
- ``ray_temp_dir`` gives Ray a temp dir under ``tmp_path_factory``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

#: The system's temp dir, before the session points it at its own folder.
SYSTEM_TEMP = Path(tempfile.gettempdir())


@pytest.fixture(scope="session", autouse=True)
def session_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The temp dir of this session (and its subprocesses): a folder under pytest's basetemp."""
    private = tmp_path_factory.mktemp("tempdir")
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = str(private)
    tempfile.tempdir = str(private)
    try:
        yield private
    finally:
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env


@pytest.fixture(autouse=True)
def _no_sb3_folder_left(session_temp_dir: Path, request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    left = sorted(p.name for p in session_temp_dir.glob("SB3-*"))
    if left:
        for name in left:
            shutil.rmtree(session_temp_dir / name, ignore_errors=True)
        pytest.fail(
            f"{request.node.nodeid} left SB3 logger folder(s) {left} in the temp dir: give the "
            "model a logger under tmp_path before learn (model.set_logger(sb3_logger)) or a "
            "tensorboard_log folder there.",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def ray_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A temp dir for Ray (``ray.init(_temp_dir=...)``, ``RAY_TMPDIR``) under ``tmp_path_factory``.

    Ray puts Unix sockets in it, and a socket path may hold ~107 bytes, fewer than
    pytest's temp paths plus Ray's session folder take; so Ray gets a short link
    in the system temp dir that points into this session's folder, removed afterwards.
    """
    target = tmp_path_factory.mktemp("ray")
    link = SYSTEM_TEMP / f"mbm-ray-{uuid.uuid4().hex[:8]}"
    link.symlink_to(target, target_is_directory=True)
    try:
        yield link
    finally:
        link.unlink()
