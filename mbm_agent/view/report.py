"""``mbm-agent report RUN --html``: one self-contained HTML file to share without a server.

The file holds, inline: the learning curves of ``metrics.csv`` (SVG), every
evaluation of the folder (``eval*.json``) with its confidence intervals and
baselines, and a few episodes of the agent on the first held-out evaluation
seeds, each with its frames, the instruction (words shaded by how much the
decision relies on them), the action probabilities per step and what the agent
heard as a playable WAV. Images and sound are ``data:`` URIs; the small script
that scrubs through an episode is inline. Nothing is fetched when it is opened.
"""

from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mbm_agent.evaluation import EVAL_SEED_BASE
from mbm_agent.training.agent import policy_source
from mbm_agent.training.storage import atomic_write_text
from mbm_agent.view.session import LoadedRun, Panel, ViewError
from mbm_agent.view.sound import Sound

#: Seconds of sound kept per step in an episode's WAV.
STEP_SECONDS = 0.25
#: Most steps of one episode drawn in the report (longer episodes are cut, and say so).
MAX_STEPS = 80

_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #1c2024; max-width: 1100px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; } td, th { border: 1px solid #ccc; padding: 3px 8px; font-size: 13px; }
th { background: #f2f4f6; text-align: left; } .muted { color: #666; font-size: 13px; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; } .episode { border: 1px solid #ddd; border-radius: 6px; padding: 10px; margin: 12px 0; }
.strip { display: flex; gap: 4px; overflow-x: auto; padding-bottom: 4px; } .strip figure { margin: 0; text-align: center; font-size: 11px; }
.strip img { width: 72px; image-rendering: pixelated; border: 2px solid transparent; cursor: pointer; } .strip img.sel { border-color: #1f77b4; }
.big { display: flex; gap: 16px; align-items: flex-start; flex-wrap: wrap; } .big img { width: 256px; image-rendering: pixelated; }
.word { padding: 1px 4px; border-radius: 3px; } .ok { color: #1a7f37; font-weight: 600; } .fail { color: #c62828; font-weight: 600; }
.bar { display: inline-block; height: 10px; background: #1f77b4; vertical-align: middle; }
"""

_SCRIPT = """
for (const ep of document.querySelectorAll('.episode')) {
  const steps = JSON.parse(ep.querySelector('script.steps').textContent);
  const thumbs = ep.querySelectorAll('.strip img');
  const show = (i) => {
    const s = steps[i];
    ep.querySelector('.big-top').src = thumbs[i].src;
    const ego = ep.querySelector('.big-ego'); if (ego && s.ego) ego.src = s.ego;
    ep.querySelector('.step-info').innerHTML = s.info;
    thumbs.forEach((t, k) => t.classList.toggle('sel', k === i));
  };
  thumbs.forEach((t, i) => t.addEventListener('click', () => show(i)));
  if (thumbs.length) show(0);
}
"""


def _read_metrics(path: Path) -> tuple[list[str], list[dict[str, float | None]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = []
        for raw in reader:
            row: dict[str, float | None] = {}
            for key in columns:
                try:
                    value = float(raw.get(key) or "nan")
                except ValueError:
                    value = math.nan
                row[key] = value if math.isfinite(value) else None
            rows.append(row)
    return columns, rows


def _tick(x: float) -> str:
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def svg_chart(
    title: str,
    xs: Sequence[float],
    series: Mapping[str, Sequence[float | None]],
    *,
    x_label: str,
    width: int = 480,
    height: int = 240,
) -> str:
    """A small line chart as inline SVG (``None`` values are gaps)."""
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    left, right, top, bottom = 48, 12, 24, 36
    points = [
        (x, y) for ys in series.values() for x, y in zip(xs, ys, strict=False) if y is not None
    ]
    if not points:
        return ""
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(0.0, min(p[1] for p in points)), max(p[1] for p in points)
    y1 = y1 if y1 > y0 else y0 + 1.0
    x1 = x1 if x1 > x0 else x0 + 1.0

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(title)}">',
        f'<text x="{left}" y="16" font-size="13" font-weight="600">{html.escape(title)}</text>',
        f'<line x1="{left}" y1="{sy(y0):.1f}" x2="{width - right}" y2="{sy(y0):.1f}" stroke="#999"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#999"/>',
    ]
    for frac in (0.0, 0.5, 1.0):
        y = y0 + frac * (y1 - y0)
        parts.append(
            f'<text x="{left - 4}" y="{sy(y) + 4:.1f}" font-size="10" text-anchor="end">{y:.3g}</text>'
        )
        x = x0 + frac * (x1 - x0)
        parts.append(
            f'<text x="{sx(x):.1f}" y="{height - bottom + 14}" font-size="10" '
            f'text-anchor="middle">{_tick(x)}</text>'
        )
    parts.append(
        f'<text x="{(left + width - right) / 2:.0f}" y="{height - 6}" font-size="11" '
        f'text-anchor="middle">{html.escape(x_label)}</text>'
    )
    legend: list[str] = []
    for i, (name, ys) in enumerate(series.items()):
        colour = colours[i % len(colours)]
        pts = [(sx(x), sy(y)) for x, y in zip(xs, ys, strict=False) if y is not None]
        if not pts:
            continue
        sparse = len(pts) < max(2, len(xs) // 4)  # periodic evaluations: dots
        if sparse:
            parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in pts]
        else:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
            )
        legend.append(
            f'<tspan fill="{colour}">{"●" if sparse else "—"} {html.escape(name)}</tspan>'
        )
    parts.append(
        f'<text x="{width - right}" y="16" font-size="11" text-anchor="end">'
        f"{'  '.join(legend)}</text></svg>"
    )
    return "".join(parts)


def curves_html(run_dir: Path) -> str:
    """The learning curves of ``metrics.csv`` (or a note that there is none)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return '<p class="muted">No metrics.csv in this folder (a policy folder, not a run).</p>'
    columns, rows = _read_metrics(path)
    x_key = next((k for k in ("timesteps", "epoch") if k in columns), None)
    if x_key is None or not rows:
        return '<p class="muted">metrics.csv has no rows with timesteps or epochs.</p>'
    xs = [r[x_key] or 0.0 for r in rows]
    groups = {
        "return": {
            "training (mean per rollout)": "mean_return",
            "evaluation": "eval_return",
        },
        "success rate": {"training": "success_rate", "evaluation": "eval_success"},
        "loss": {"train loss": "train_loss", "validation loss": "val_loss"},
    }
    charts = []
    for title, wanted in groups.items():
        series = {
            name: [r.get(col) for r in rows] for name, col in wanted.items() if col in columns
        }
        chart = svg_chart(title, xs, series, x_label=x_key) if series else ""
        if chart:
            charts.append(chart)
    if not charts:
        return '<p class="muted">metrics.csv holds no curve this report knows how to draw.</p>'
    return f'<div class="charts">{"".join(charts)}</div>'


def _ci(ci: Sequence[float] | None) -> str:
    return "" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _env_label(meta: Mapping[str, Any]) -> str:
    """The env a report played: its id, and its arguments when it had any."""
    env = str(meta.get("env_id", "?"))
    kwargs = meta.get("env_kwargs") or {}
    if isinstance(kwargs, Mapping) and kwargs:
        env += " (" + ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items())) + ")"
    return env


def evaluations_html(run_dir: Path) -> str:
    """A table of every ``eval*.json`` of the folder, with intervals and baselines."""
    files = sorted(run_dir.glob("eval*.json"), key=lambda p: (p.stem != "eval", p.stem))
    if not files:
        return (
            '<p class="muted">No evaluation yet: <code>mbm-agent eval RUN</code> writes '
            "eval.json.</p>"
        )
    baselines: dict[tuple[str, str], Any]
    rows, baselines, level = [], {}, 95
    for path in files:
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
            success, returns, lengths = report["success"], report["returns"], report["lengths"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            rows.append(
                f"<tr><td>{html.escape(path.name)}</td><td colspan=6>unreadable: "
                f"{html.escape(str(exc))}</td></tr>"
            )
            continue
        meta = report.get("meta", {})
        level = round(100 * float(success.get("confidence", 0.95)))
        how = "greedy" if meta.get("deterministic", True) else "sampled"
        dropped = ", ".join(meta.get("drop_modalities") or []) or "none"
        env = _env_label(meta)
        rows.append(
            "<tr>"
            f"<td>{html.escape(path.stem)}</td><td>{html.escape(env)}</td><td>{how}</td>"
            f"<td>{html.escape(dropped)}</td>"
            f"<td>{success['successes']}/{success['n']}</td>"
            f"<td><b>{success['rate']:.3f}</b> {_ci(success.get('ci'))}</td>"
            f"<td>{returns['mean']:.3f} {_ci(returns.get('mean_ci'))}</td>"
            f"<td>{returns['iqm']:.3f} {_ci(returns.get('iqm_ci'))}</td>"
            f"<td>{lengths['mean']:.1f} {_ci(lengths.get('mean_ci'))}</td>"
            "</tr>"
        )
        # Each env (another version, other arguments) has its own baselines.
        for name, base in (report.get("baselines") or {}).items():
            baselines.setdefault((env, name), base)
    table = (
        "<table><tr><th>evaluation</th><th>env</th><th>actions</th><th>masked</th><th>episodes</th>"
        f"<th>success rate [{level}% CI, Wilson]</th><th>mean return [{level}% CI]</th>"
        f"<th>IQM return [{level}% CI]</th><th>mean length [{level}% CI]</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    if baselines:
        table += (
            "<table><tr><th>baseline (same seeds)</th><th>env</th><th>mean return</th>"
            "<th>success rate</th></tr>"
            + "".join(
                f"<tr><td>{html.escape(name)}</td><td>{html.escape(env)}</td>"
                f"<td>{b.get('mean_return', float('nan')):.3f}</td>"
                f"<td>{b.get('success_rate', float('nan')):.3f}</td></tr>"
                for (env, name), b in baselines.items()
            )
            + "</table>"
        )
    return table


def _words_html(words: Sequence[Mapping[str, Any]]) -> str:
    top = max([0.05, *(float(w["score"]) for w in words)])
    out = []
    for w in words:
        alpha = 0.85 * float(w["score"]) / top
        out.append(
            f'<span class="word" style="background: rgba(255,196,0,{alpha:.3f})" '
            f'title="replacing it by padding changes the action probabilities by '
            f'{float(w["score"]):.3f} (total variation)">{html.escape(str(w["word"]))}</span>'
        )
    return " ".join(out)


def _step_info(state: Mapping[str, Any], taken: str | None) -> str:
    probs = state["probs"]
    rows = "".join(
        f"<div>{html.escape(name)} <span class='bar' style='width:{int(80 * p)}px'></span> "
        f"{p:.3f}</div>"
        for name, p in zip(state["actions"], probs, strict=True)
    )
    senses = ", ".join(f"{s['key']} {s['shift']:.2f}" for s in state["senses"])
    action = f"<b>{html.escape(taken)}</b>" if taken else "(episode over)"
    return (
        f"step {state['t']}: action {action} · value {state['value']:.3f}"
        f"<div>{rows}</div><div class='muted'>shift when a sense is masked: {senses}</div>"
    )


def episode_html(run: LoadedRun, seed: int, index: int) -> str:
    """One episode of the agent on ``seed``: frames, instruction, probabilities, sound."""
    panel = Panel(run, seed)
    try:
        audio_key = next((k for k, m in panel.modalities.items() if m == "audio"), None)
        steps: list[dict[str, Any]] = []
        thumbs: list[str] = []
        sounds: list[Sound] = []
        first = panel.state()
        while True:
            state = panel.state() if steps else first
            thumb = state["topdown"] or next(iter(state["frames"].values()), None)
            ego = next(iter(state["frames"].values()), None)
            if audio_key is not None:
                sound = panel.sound(audio_key, STEP_SECONDS)
                if sound is not None:
                    sounds.append(sound)
            if state["done"] or len(steps) >= MAX_STEPS:
                steps.append({"ego": ego, "info": _step_info(state, None)})
                thumbs.append(thumb or "")
                break
            taken = state["actions"][panel.policy_action()]
            steps.append({"ego": ego, "info": _step_info(state, taken)})
            thumbs.append(thumb or "")
            panel.step()
        log = panel.log
    finally:
        panel.close()
    if log.done:
        outcome = (
            "<span class='ok'>success</span>"
            if log.success
            else "<span class='fail'>failure</span>"
            if log.success is not None
            else "ended"
        )
    else:
        outcome = f"cut after {MAX_STEPS} steps"
    text = "".join(
        f"<p>instruction: {_words_html(words)}</p>" for words in first["text"].values() if words
    )
    if not text and first.get("instruction"):
        text = f"<p>instruction: {html.escape(first['instruction'])}</p>"
    audio = ""
    if sounds:
        joined = Sound(
            np.concatenate([s.samples for s in sounds], axis=1),
            sounds[0].sample_rate,
            all(s.exact for s in sounds),
        )
        how = (
            "the game's waveform"
            if joined.exact
            else "resynthesised from the features (approximate)"
        )
        audio = (
            f"<p>what the agent heard, {STEP_SECONDS} s per step ({how}): "
            f'<audio controls src="{joined.wav_data_uri()}"></audio></p>'
        )
    strip = "".join(
        f'<figure><img src="{src}" alt="step {i}"><figcaption>{i}</figcaption></figure>'
        for i, src in enumerate(thumbs)
    )
    has_ego = any(s["ego"] for s in steps) and any(
        t != s["ego"] for t, s in zip(thumbs, steps, strict=True)
    )
    ego_img = '<img class="big-ego" alt="what the agent sees">' if has_ego else ""
    steps_json = json.dumps(steps).replace("</", "<\\/")
    return (
        f'<div class="episode"><h3>episode {index + 1}: seed {seed} · {log.steps} steps · '
        f"return {log.ret:.3f} · {outcome}</h3>{text}{audio}"
        f'<div class="big"><img class="big-top" alt="the room">{ego_img}'
        f'<div class="step-info"></div></div>'
        f'<div class="strip">{strip}</div>'
        f'<script type="application/json" class="steps">{steps_json}</script></div>'
    )


def _meta_html(run: LoadedRun | None, run_dir: Path) -> str:
    spec: dict[str, Any] = dict(run.agent.spec) if run is not None else {}
    if not spec and (run_dir / "config.json").is_file():
        try:
            spec = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            spec = {}
    items = []
    for key in ("env_id", "env_kwargs", "algo"):
        if key in spec:
            items.append(f"<li><b>{key}</b>: {html.escape(json.dumps(spec[key]))}</li>")
    encoder = spec.get("encoder") or {}
    for key in ("fusion", "image_encoder", "text_encoder"):
        if key in encoder:
            items.append(f"<li><b>{key}</b>: {html.escape(str(encoder[key]))}</li>")
    return f"<ul>{''.join(items)}</ul>"


def build_report(run_dir: str | Path, episodes: int = 3) -> str:
    """The HTML text of a run's report.

    Raises:
        ViewError: The folder is missing, or ``episodes > 0`` and its agent cannot
            be loaded or its env made.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise ViewError(f"{root} is not a folder: pass a run folder (runs/NAME).")
    if episodes < 0:
        raise ViewError(f"--episodes must be >= 0, got {episodes}.")
    run = None
    if episodes:
        try:
            run = LoadedRun.load(root)
        except ViewError as exc:
            raise ViewError(f"{exc} (pass --episodes 0 for a report without episodes)") from exc
    name = root.resolve().name
    body = [
        f"<h1>mbm-agent report: {html.escape(name)}</h1>",
        _meta_html(run, root),
        "<h2>Learning curves</h2>",
        curves_html(root),
        "<h2>Evaluation</h2>",
        evaluations_html(root),
    ]
    if run is not None:
        body += [
            "<h2>Episodes</h2>",
            f'<p class="muted">The agent (greedy actions) on the first {episodes} held-out '
            f"evaluation seeds ({EVAL_SEED_BASE}, ...). Click a frame to see that step's "
            "action probabilities. Instruction words are shaded by how much the first "
            "decision changes when that word is replaced by padding.</p>",
        ]
        body += [episode_html(run, EVAL_SEED_BASE + i, i) for i in range(episodes)]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>mbm-agent report: {html.escape(name)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}<script>{_SCRIPT}</script></body></html>"
    )


def report_path(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Where the report of ``run_dir`` goes.

    ``out`` (a ``.html`` file, or a folder for its ``report.html``); by default the run
    folder's ``report.html``, also for a run's ``best/`` or ``final/`` policy (a folder
    training replaces whole).

    Raises:
        ViewError: ``out`` is an existing file that is not an HTML page, or a name
            without the ``.html`` suffix (a report never overwrites a run's other files).
    """
    if out is None:
        try:
            source = policy_source(run_dir)
        except (OSError, ValueError):  # no policy: build_report says what is wrong
            return Path(run_dir) / "report.html"
        return source.home / f"report{source.suffix}.html"  # report-final.html for final/
    path = Path(out)
    if path.is_dir() and not path.is_symlink():
        return path / "report.html"
    if path.suffix.lower() not in (".html", ".htm"):
        raise ViewError(
            f"--out {path} does not end in .html; the report is one HTML page: give a file "
            f"name such as {path.with_suffix('.html').name}, or a folder for its report.html."
        )
    return path


def write_report(run_dir: str | Path, out: str | Path | None = None, episodes: int = 3) -> Path:
    """Write the report (default ``RUN/report.html``, see :func:`report_path`) atomically.

    Returns:
        Its path.

    Raises:
        ViewError: A missing folder, an agent or env that cannot be loaded, an
            ``out`` that is not an HTML file name, or a file that cannot be written.
    """
    path = report_path(run_dir, out)
    text = build_report(run_dir, episodes)
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise ViewError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path
