"""Figures of a run: learning curves and episode GIFs.

matplotlib is an optional extra (``pip install 'mbm-agent[plots]'``), imported
only when a figure is drawn. Figures are built on the Agg canvas directly, with
no pyplot, so drawing never opens a window or changes a notebook's backend.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mbm_agent.training.storage import atomic_write_bytes

#: Columns :func:`learning_curve` needs in ``metrics.csv``.
REQUIRED_COLUMNS = ("timesteps", "mean_return", "success_rate")


def new_figure(width: float, height: float, ncols: int = 1) -> tuple[Any, Any]:
    """A matplotlib Figure on an Agg canvas and its axes (1 row of ``ncols``).

    Raises:
        ImportError: When matplotlib (the ``plots`` extra) is missing.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "Plots need matplotlib: pip install 'mbm-agent[plots]' (or pip install matplotlib)."
        ) from exc
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _float(text: str | None) -> float:
    """A CSV cell as a float; blank cells (metrics not logged that row) are NaN."""
    if text is None or not text.strip():
        return math.nan
    return float(text)


def read_metrics(metrics_csv: str | Path) -> dict[str, NDArray[np.float64]]:
    """Columns of a training ``metrics.csv`` as float arrays (blank cells are NaN).

    Args:
        metrics_csv: The CSV file, with a header row.

    Returns:
        ``{column: values}``.

    Raises:
        FileNotFoundError: When the file is missing.
        ValueError: When required columns are missing or a cell is not a number.
    """
    path = Path(metrics_csv)
    if not path.is_file():
        raise FileNotFoundError(f"No metrics file at {path}; training writes metrics.csv.")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ValueError(
                f"{path} lacks the column(s) {missing}; a learning curve needs "
                f"{list(REQUIRED_COLUMNS)}, found {columns}."
            )
        rows = list(reader)
    out: dict[str, NDArray[np.float64]] = {}
    for col in columns:
        try:
            out[col] = np.array([_float(row.get(col)) for row in rows], dtype=np.float64)
        except ValueError as exc:
            raise ValueError(f"{path}: column {col!r} holds a value that is not a number.") from exc
    return out


def _line(ax: Any, x: NDArray[np.float64], y: NDArray[np.float64], **kwargs: Any) -> bool:
    keep = np.isfinite(x) & np.isfinite(y)
    if not keep.any():
        return False
    ax.plot(x[keep], y[keep], **kwargs)
    return True


def learning_curve(metrics_csv: str | Path, out_png: str | Path) -> Path:
    """Plot return and success rate against environment steps.

    Training curves come from ``mean_return`` and ``success_rate``; the
    optional ``eval_return`` and ``eval_success`` columns (filled on evaluation
    rows only) are drawn as markers on top.

    Args:
        metrics_csv: A CSV with at least ``timesteps, mean_return, success_rate``.
        out_png: Where to write the PNG (parent folders are created).

    Returns:
        The PNG path.

    Raises:
        ValueError: When the CSV lacks the columns or has no rows.
        ImportError: When matplotlib (the ``plots`` extra) is missing.
    """
    data = read_metrics(metrics_csv)
    steps = data["timesteps"]
    if steps.size == 0:
        raise ValueError(f"{metrics_csv} has no rows yet; train for a while before plotting.")
    fig, (ax_ret, ax_succ) = new_figure(10, 3.8, ncols=2)
    panels = (
        (ax_ret, "mean_return", "eval_return", "episode return"),
        (ax_succ, "success_rate", "eval_success", "success rate"),
    )
    for ax, train_col, eval_col, label in panels:
        _line(ax, steps, data[train_col], label="training", color="tab:blue")
        if eval_col in data:
            _line(ax, steps, data[eval_col], label="evaluation", color="tab:orange", marker="o")
        ax.set_xlabel("environment steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    ax_succ.set_ylim(-0.02, 1.02)
    fig.suptitle(Path(metrics_csv).parent.name or "learning curve")
    return save_figure(fig, out_png)


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Save a Matplotlib figure (its format by the file's suffix; PNG without one) atomically.

    A crash never leaves half a picture, and a symbolic link at ``path`` is replaced,
    not written through (as every file mbm-agent writes in a run folder).
    """
    out = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=out.suffix[1:].lower() or "png", dpi=dpi)
    atomic_write_bytes(out, buffer.getvalue())
    return out


def save_gif(frames: Sequence[NDArray[np.uint8]], path: str | Path, fps: int = 6) -> Path:
    """Write RGB frames as an animated GIF (the bytes of :func:`envs.play.gif_bytes`).

    Written through a temporary file and a rename (a symbolic link at ``path`` is
    replaced, not written through), as every file of a run folder.

    Args:
        frames: ``(H, W, 3)`` uint8 frames, e.g. from ``env.render()``.
        path: Output file (parent folders are created).
        fps: Frames per second.

    Returns:
        The GIF path.
    """
    from envs import play

    out = Path(path)
    atomic_write_bytes(out, play.gif_bytes(list(frames), fps))
    return out


__all__ = ["learning_curve", "new_figure", "read_metrics", "save_figure", "save_gif"]
