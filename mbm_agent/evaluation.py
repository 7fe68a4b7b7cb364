"""Evaluate a policy on held-out seeds and write the report.

The evaluator runs exactly the requested number of episodes, one per seed: each
vector-env slot is reset with its own seed, plays until its first episode ends,
and then waits for the rest of the batch. Counting the first ``episodes`` that
*finish* on a free-running vector env would over-represent short episodes (a
fast failure finishes before a slow success); one episode per seed does not.

Baselines for our games (a uniformly random policy and the shortest-path
expert) run on the same seeds, so a score normalised to ``random = 0``,
``expert = 1`` compares like with like.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import VectorEnv
from numpy.typing import NDArray

from mbm_agent.encoding.values import emitted_shapes
from mbm_agent.stats import normalized_score, success_interval, summarize
from mbm_agent.training.envs import is_our_game, make_eval_env
from mbm_agent.training.storage import atomic_write_text

if TYPE_CHECKING:
    from mbm_agent.training.agent import Agent

#: First evaluation seed. Training seeds are small integers (0, 1, 2, ...) and
#: the vector env gives slot ``i`` the seed ``seed + i``; this prime keeps the
#: evaluation seeds far away from both.
EVAL_SEED_BASE = 1_000_003

#: Steps after which an episode that never ends is reported as a bug.
STEP_LIMIT = 100_000

Act = Callable[[dict[str, np.ndarray]], np.ndarray]


def eval_seeds(n: int, base: int = EVAL_SEED_BASE) -> list[int]:
    """``n`` held-out evaluation seeds: ``base, base + 1, ...``.

    Args:
        n: Number of seeds (one per evaluation episode).
        base: First seed; keep it far from the training seeds.

    Returns:
        The seeds.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive integer (the number of episodes), got {n!r}.")
    return list(range(int(base), int(base) + int(n)))


@dataclass
class EpisodeResults:
    """Per-episode outcomes of an evaluation, in seed order.

    Attributes:
        returns: Undiscounted return of each episode.
        lengths: Steps in each episode.
        successes: Whether each episode succeeded.
        seeds: The reset seed of each episode.
        timed_out: Whether each episode was cut off by its step limit (truncated, not
            terminated); ``None`` where not recorded (reports from earlier versions).
            A failure that timed out usually means a policy that loops or wanders;
            one that did not ended the episode in a wrong way.
    """

    returns: NDArray[np.float64]
    lengths: NDArray[np.int64]
    successes: NDArray[np.bool_]
    seeds: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    timed_out: NDArray[np.bool_] | None = None

    def __post_init__(self) -> None:
        self.returns = np.asarray(self.returns, dtype=np.float64)
        self.lengths = np.asarray(self.lengths, dtype=np.int64)
        self.successes = np.asarray(self.successes, dtype=bool)
        self.seeds = np.asarray(self.seeds, dtype=np.int64)
        if self.timed_out is not None:
            self.timed_out = np.asarray(self.timed_out, dtype=bool)
        names: tuple[str, ...] = ("returns", "lengths", "successes", "seeds")
        names += ("timed_out",) if self.timed_out is not None else ()
        sizes = {name: getattr(self, name).shape for name in names}
        if len(set(sizes.values())) != 1 or self.returns.ndim != 1:
            raise ValueError(f"EpisodeResults needs 1-D arrays of one length each, got {sizes}.")

    def __len__(self) -> int:
        return int(self.returns.size)

    @property
    def success_rate(self) -> float:
        """Fraction of successful episodes."""
        return float(self.successes.mean()) if len(self) else 0.0

    @property
    def mean_return(self) -> float:
        """Mean episode return."""
        return float(self.returns.mean()) if len(self) else 0.0

    def failures_timed_out(self) -> int | None:
        """How many failed episodes were cut off by the step limit (None: not recorded)."""
        if self.timed_out is None:
            return None
        return int((self.timed_out & ~self.successes).sum())

    def to_dict(self) -> dict[str, list[Any]]:
        """Plain lists, ready for JSON (``timed_out`` only where recorded)."""
        out: dict[str, list[Any]] = {
            "seeds": [int(s) for s in self.seeds],
            "returns": [float(r) for r in self.returns],
            "lengths": [int(n) for n in self.lengths],
            "successes": [bool(s) for s in self.successes],
        }
        if self.timed_out is not None:
            out["timed_out"] = [bool(t) for t in self.timed_out]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[Any]]) -> EpisodeResults:
        """Rebuild from :meth:`to_dict` output (e.g. the ``episodes`` of an ``eval.json``)."""
        missing = {"returns", "lengths", "successes", "seeds"} - set(data)
        if missing:
            raise KeyError(f"Episode results need the keys {sorted(missing)}; got {sorted(data)}.")
        return cls(
            returns=np.asarray(data["returns"]),
            lengths=np.asarray(data["lengths"]),
            successes=np.asarray(data["successes"]),
            seeds=np.asarray(data["seeds"]),
            timed_out=np.asarray(data["timed_out"]) if "timed_out" in data else None,
        )


def _flag(info: Mapping[str, Any], key: str, i: int) -> bool | None:
    """``info[key][i]`` as a bool when present for slot ``i`` (Gymnasium's ``_key`` mask)."""
    if key not in info:
        return None
    mask = info.get(f"_{key}")
    if mask is not None and not bool(np.asarray(mask)[i]):
        return None
    return bool(np.asarray(info[key])[i])


def episode_success(info: Mapping[str, Any], i: int) -> bool | None:
    """Success of slot ``i``'s finished episode, if the env reports one.

    With same-step autoreset the step's ``info`` already belongs to the next
    episode, and the finished episode's info is in ``info["final_info"]``.
    """
    sources: list[Mapping[str, Any]] = []
    final, final_mask = info.get("final_info"), info.get("_final_info")
    if isinstance(final, Mapping) and (final_mask is None or bool(np.asarray(final_mask)[i])):
        sources.append(final)
    sources.append(info)
    for source in sources:
        for key in ("success", "is_success"):
            value = _flag(source, key, i)
            if value is not None:
                return value
    return None


def _check_seeds(seeds: Sequence[int], episodes: int) -> list[int]:
    if isinstance(episodes, bool) or not isinstance(episodes, int | np.integer) or episodes < 1:
        raise ValueError(f"episodes must be a positive integer, got {episodes!r}.")
    out = [int(s) for s in seeds]
    if len(out) != episodes:
        raise ValueError(
            f"Give one seed per episode: episodes={episodes} but {len(out)} seeds; "
            f"use seeds=eval_seeds({episodes})."
        )
    if len(set(out)) != len(out):
        raise ValueError(
            "Evaluation seeds must be distinct (a repeated seed replays the same episode); "
            f"use seeds=eval_seeds({episodes})."
        )
    return out


def evaluate_episodes(
    act: Act,
    venv: VectorEnv,
    *,
    episodes: int,
    seeds: Sequence[int],
    on_reset: Callable[[], None] | None = None,
) -> EpisodeResults:
    """Play exactly ``episodes`` episodes, episode ``k`` reset with ``seeds[k]``.

    Slots are filled batch by batch: ``venv.reset(seed=[...])`` gives every slot
    its own seed, every slot plays until its first episode ends (later episodes
    after an autoreset are ignored), and then the next batch starts. The last
    batch repeats its seeds in the spare slots and ignores them. Works with
    either autoreset mode, with our games' vector envs and with
    ``gymnasium.vector.SyncVectorEnv``.

    Args:
        act: Maps a batched observation (a dict of arrays for Dict spaces) to one
            action per slot. Modality dropping and deterministic or stochastic
            action selection belong here.
        venv: The vector env; it is reset by this function.
        episodes: Number of episodes.
        seeds: One distinct seed per episode, e.g. :func:`eval_seeds`.
        on_reset: Called after each batch reset (recurrent policies clear their state).

    Returns:
        The episodes' returns, lengths, successes, seeds and whether each was cut
        off by its step limit (``truncated`` without ``terminated``), in seed order.
        Success is read from ``info["success"]`` or ``info["is_success"]``
        (``info["final_info"]`` with same-step autoreset); envs that report
        neither count a positive return as success.

    Raises:
        ValueError: For a wrong number of seeds or repeated seeds.
        RuntimeError: When an episode runs past :data:`STEP_LIMIT` steps.
    """
    seed_list = _check_seeds(seeds, episodes)
    n = int(venv.num_envs)
    returns = np.zeros(episodes, dtype=np.float64)
    lengths = np.zeros(episodes, dtype=np.int64)
    successes = np.zeros(episodes, dtype=bool)
    timed_out = np.zeros(episodes, dtype=bool)
    for start in range(0, episodes, n):
        batch = seed_list[start : start + n]
        k = len(batch)
        padded = [batch[i % k] for i in range(n)]
        # VectorEnv annotates seed as one int; vector envs take one seed per slot.
        obs, _ = venv.reset(seed=padded)  # type: ignore[arg-type]
        if on_reset is not None:
            on_reset()
        running = np.zeros(n, dtype=bool)
        running[:k] = True
        ret = np.zeros(n, dtype=np.float64)
        steps = np.zeros(n, dtype=np.int64)
        while running.any():
            actions = act(obs)
            obs, reward, terminated, truncated, info = venv.step(actions)
            ret[running] += np.asarray(reward, dtype=np.float64)[running]
            steps[running] += 1
            ended, cut = np.asarray(terminated), np.asarray(truncated)
            finished = running & (ended | cut)
            for i in np.flatnonzero(finished):
                success = episode_success(info, int(i))
                successes[start + i] = ret[i] > 0 if success is None else success
                timed_out[start + i] = bool(cut[i]) and not bool(ended[i])
            running &= ~finished
            if running.any() and steps.max() >= STEP_LIMIT:
                raise RuntimeError(
                    f"An episode ran past {STEP_LIMIT} steps without ending; wrap the env in "
                    "gymnasium.wrappers.TimeLimit (or pass max_episode_steps) to evaluate it."
                )
        returns[start : start + k] = ret[:k]
        lengths[start : start + k] = steps[:k]
    return EpisodeResults(
        returns, lengths, successes, np.asarray(seed_list, dtype=np.int64), timed_out
    )


def _game_venv(env_id: str, num_envs: int, env_kwargs: dict[str, Any]) -> Any:
    """Our game's same-step vector env (the one the trainer evaluates on)."""
    return make_eval_env(env_id, env_kwargs, num_envs, None)


def expert_baseline(
    env_id: str,
    episodes: int,
    seeds: Sequence[int],
    *,
    num_envs: int = 32,
    **env_kwargs: Any,
) -> EpisodeResults:
    """The shortest-path expert of one of our games on the given seeds.

    Args:
        env_id: A game id such as ``"mbm/GoToObject-v1"``.
        episodes: Number of episodes.
        seeds: One seed per episode (the agent's evaluation seeds).
        num_envs: Worlds stepped together (does not change the results).
        **env_kwargs: Game arguments, as given to the agent's env.

    Returns:
        The expert's episode results.
    """
    venv = _game_venv(env_id, min(num_envs, episodes), env_kwargs)
    return evaluate_episodes(
        lambda _obs: venv.expert_actions(), venv, episodes=episodes, seeds=seeds
    )


def random_baseline(
    env_id: str,
    episodes: int,
    seeds: Sequence[int],
    *,
    num_envs: int = 32,
    seed: int = 0,
    **env_kwargs: Any,
) -> EpisodeResults:
    """A uniformly random policy on one of our games, on the given seeds.

    Args:
        env_id: A game id such as ``"mbm/GoToObject-v1"``.
        episodes: Number of episodes.
        seeds: One seed per episode (the agent's evaluation seeds).
        num_envs: Worlds stepped together (the actions drawn depend on it).
        seed: Seed of the action generator.
        **env_kwargs: Game arguments, as given to the agent's env.

    Returns:
        The random policy's episode results (reproducible for fixed arguments).
    """
    venv = _game_venv(env_id, min(num_envs, episodes), env_kwargs)
    rng = np.random.default_rng(seed)
    n_actions = int(venv.single_action_space.n)
    return evaluate_episodes(
        lambda _obs: rng.integers(0, n_actions, size=venv.num_envs),
        venv,
        episodes=episodes,
        seeds=seeds,
    )


def _baseline_block(name: str, base: EpisodeResults, results: EpisodeResults) -> dict[str, Any]:
    if not np.array_equal(base.seeds, results.seeds):
        raise ValueError(
            f"The {name} baseline was run on other seeds than the agent; run it with "
            "seeds=results.seeds so the normalised score compares the same episodes."
        )
    return {
        "mean_return": base.mean_return,
        "success_rate": base.success_rate,
        "mean_length": float(base.lengths.mean()),
        "returns": [float(r) for r in base.returns],
        "successes": [bool(s) for s in base.successes],
    }


def build_report(
    results: EpisodeResults,
    *,
    random: EpisodeResults | None = None,
    expert: EpisodeResults | None = None,
    meta: Mapping[str, Any],
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Everything an evaluation found, as a JSON-ready dict.

    Args:
        results: The agent's episodes.
        random: The random baseline on the same seeds, if any.
        expert: The expert baseline on the same seeds, if any.
        meta: What was evaluated and how, e.g. ``env_id``, ``run``, ``mode``
            (``"deterministic"``/``"stochastic"``), ``drop_modalities``.
        confidence: Confidence level of the intervals.
        n_boot: Bootstrap replicates.
        seed: Seed of the bootstrap generator.

    Returns:
        ``meta`` (with ``episodes``), ``episodes`` (per-episode lists),
        ``returns`` and ``lengths`` (see :func:`~mbm_agent.stats.summarize`),
        ``success`` (rate with a Wilson interval; with ``failures`` and
        ``failures_timed_out``, the failed episodes cut off by the step limit,
        where the results record it), ``baselines`` and
        ``normalized`` (mean/IQM of ``(return - random) / (expert - random)``
        per episode, with intervals; ``None`` without both baselines, or with
        the reason in ``normalized_note`` when the scale is undefined).

    Raises:
        ValueError: When there are no episodes or a baseline used other seeds.
    """
    if len(results) == 0:
        raise ValueError("No episodes to report; evaluate at least one episode.")
    stats_kw: dict[str, Any] = {"confidence": confidence, "n_boot": n_boot, "seed": seed}
    report: dict[str, Any] = {
        "meta": {**dict(meta), "episodes": len(results)},
        "episodes": results.to_dict(),
        "returns": summarize(results.returns, **stats_kw),
        "lengths": summarize(results.lengths, **stats_kw),
        "success": {
            **success_interval(results.successes, confidence),
            **_failure_counts(results),
        },
        "baselines": {},
        "normalized": None,
    }
    for name, base in (("random", random), ("expert", expert)):
        if base is not None:
            report["baselines"][name] = _baseline_block(name, base, results)
    if random is not None and expert is not None:
        try:
            scores = np.asarray(
                normalized_score(results.returns, random.mean_return, expert.mean_return)
            )
        except ValueError as exc:
            report["normalized_note"] = str(exc)
        else:
            summary = summarize(scores, **stats_kw)
            report["normalized"] = {
                k: summary[k] for k in ("mean", "mean_ci", "iqm", "iqm_ci", "median", "confidence")
            }
    return _jsonable(report)


def _failure_counts(results: EpisodeResults) -> dict[str, int]:
    """``failures`` and ``failures_timed_out`` of a report's success block (empty if unrecorded)."""
    timed_out = results.failures_timed_out()
    if timed_out is None:
        return {}
    return {"failures": int((~results.successes).sum()), "failures_timed_out": timed_out}


def _jsonable(value: Any) -> Any:
    """Plain Python containers and numbers; non-finite floats become ``None``."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _fmt_ci(ci: Sequence[float] | None, digits: int = 3) -> str:
    return "n/a" if ci is None else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def report_markdown(report: Mapping[str, Any]) -> str:
    """A readable Markdown summary of :func:`build_report` output.

    Args:
        report: A report dict (or one loaded from ``eval.json``).

    Returns:
        Markdown text: what was evaluated, then a table of estimates with their
        confidence intervals, then the baselines.
    """
    meta = report.get("meta", {})
    title = meta.get("env_id", "evaluation")
    if meta.get("run"):
        title = f"{title}, run {meta['run']}"
    lines = [f"# Evaluation: {title}", ""]
    for key, value in meta.items():
        shown = ", ".join(map(str, value)) if isinstance(value, list | tuple) else value
        lines.append(f"- **{key}**: {shown if shown not in ('', None) else 'none'}")
    success = report["success"]
    returns = report["returns"]
    lengths = report["lengths"]
    level = round(100 * success["confidence"])
    lines += [
        "",
        f"| metric | estimate | {level}% CI |",
        "|---|---|---|",
        f"| success rate ({success['successes']}/{success['n']}) | {_fmt(success['rate'])} "
        f"| {_fmt_ci(success['ci'])} (Wilson) |",
        f"| mean return | {_fmt(returns['mean'])} | {_fmt_ci(returns['mean_ci'])} |",
        f"| IQM return | {_fmt(returns['iqm'])} | {_fmt_ci(returns['iqm_ci'])} |",
        f"| median return | {_fmt(returns['median'])} | |",
        f"| std of return | {_fmt(returns['std'])} | |",
        f"| mean length | {_fmt(lengths['mean'], 1)} | {_fmt_ci(lengths['mean_ci'], 1)} |",
    ]
    if success.get("failures_timed_out") is not None:
        lines.append(
            f"| failures cut off by the step limit | "
            f"{success['failures_timed_out']}/{success['failures']} | |"
        )
    normalized = report.get("normalized")
    if normalized:
        lines += [
            f"| normalised score, mean | {_fmt(normalized['mean'])} "
            f"| {_fmt_ci(normalized['mean_ci'])} |",
            f"| normalised score, IQM | {_fmt(normalized['iqm'])} "
            f"| {_fmt_ci(normalized['iqm_ci'])} |",
        ]
    baselines = report.get("baselines") or {}
    if baselines:
        lines += ["", "| baseline | mean return | success rate |", "|---|---|---|"]
        for name, base in baselines.items():
            lines.append(f"| {name} | {_fmt(base['mean_return'])} | {_fmt(base['success_rate'])} |")
        if normalized:
            lines += ["", "Normalised score: (return - random) / (expert - random), same seeds."]
    if report.get("normalized_note"):
        lines += ["", f"No normalised score: {report['normalized_note']}"]
    lines.append("")
    return "\n".join(lines)


#: File stems (``NAME.json``, ``NAME.md``) that run, policy and export folders keep for
#: their own files: ``mbm-agent eval --name`` refuses them.
KEPT_FILE_STEMS = frozenset(
    {"config", "model", "score", "state", "export", "vocabulary", "summary", "readme", "results"}
)


def report_name(
    deterministic: bool = True,
    drop_modalities: Sequence[str] = (),
    policy: str = "",
    env: str = "",
) -> str:
    """The file stem of an evaluation's report, named by how it played and what.

    ``eval`` (greedy, every sense: the one ``mbm-agent train`` writes), ``eval-sampled``
    (sampled actions), either with the policy when it is not the run's best
    (``eval-final``, ``eval-sampled-step-000000500000``), with the env when it is not
    the one the agent trained on or its arguments changed (``eval-on-mbm_GoToObject-v0``,
    ``eval-with-n_objects=2``, see :func:`env_suffix`)
    and with ``-drop-<m>[-<m2>...]`` for masked modalities: ``eval-drop-text``,
    ``eval-sampled-drop-audio``. ``mbm-agent eval`` and ``mbm-agent bench`` both name
    reports so, so that no evaluation overwrites another mode's, policy's or env's.

    Args:
        deterministic: Greedy (argmax) actions; ``False``: sampled.
        drop_modalities: The modalities masked, in the order given.
        policy: The policy's suffix (:attr:`~mbm_agent.training.agent.PolicySource.suffix`):
            ``""`` for the best policy, else ``-final``, ``-step-N``.
        env: The env's suffix (:func:`env_suffix`): ``""`` for the training env.
    """
    name = ("eval" if deterministic else "eval-sampled") + policy + env
    if drop_modalities:
        name += "-drop-" + "-".join(drop_modalities)
    return name


#: Longest env part of a report name before it is replaced by a digest.
_MAX_ENV_SUFFIX = 96


def env_suffix(env_id: str | None = None, env_args: Mapping[str, Any] | None = None) -> str:
    """The part of a report's name that says which env it played, when not the training one.

    ``-on-<id>`` for another env id (``/`` and ``:`` become ``_``:
    ``-on-mbm_GoToObject-v0``) and ``-with-<key>=<value>...`` for changed game arguments
    (``-with-n_objects=2``); ``""`` for neither. Other characters than letters, digits,
    ``.``, ``_``, ``=`` and ``-`` become ``_``; a part longer than 96 characters is
    shortened to its first 12 hex digits of SHA-256 (``-with-3f2a...``), so every name
    stays a plain file name. The report's ``meta`` holds the exact id and arguments.
    """
    parts = []
    if env_id:
        parts.append(("on", env_id))
    if env_args:
        parts.append(
            (
                "with",
                "-".join(
                    f"{k}={v if isinstance(v, str) else json.dumps(v, sort_keys=True)}"
                    for k, v in sorted(env_args.items())
                ),
            )
        )
    suffix = ""
    for label, text in parts:
        safe = "".join(c if c.isascii() and (c.isalnum() or c in "._=-") else "_" for c in text)
        if len(safe) > _MAX_ENV_SUFFIX:
            safe = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
        suffix += f"-{label}-{safe}"
    return suffix


def check_agent_fits(agent: Agent, venv: VectorEnv[Any, Any, Any], env_id: str) -> None:
    """Raise :class:`ValueError` naming the difference when ``env_id`` is not an env ``agent`` can play.

    The env's observations (after the agent's observation adapter) must have the keys,
    shapes and dtypes of the policy's observation space, and its actions must be the
    policy's. A game's other version or difficulty usually fits; another game does not.
    """
    trained_on = agent.spec.get("env_id")
    fix = (
        f"the agent was trained on {trained_on}; evaluate it on an env with the same "
        "observation keys, shapes and actions (e.g. another version of the same game)."
    )
    want, got = agent.policy.observation_space, venv.single_observation_space
    if isinstance(want, spaces.Dict) and isinstance(got, spaces.Dict):
        if set(want.spaces) != set(got.spaces):
            raise ValueError(
                f"{env_id}'s observations have the keys {sorted(got.spaces)}, this agent takes "
                f"{sorted(want.spaces)}: {fix}"
            )
        pairs = [(key, want[key], got[key]) for key in want.spaces]
    else:
        pairs = [("observation", want, got)]
    for key, w, g in pairs:
        if tuple(g.shape or ()) not in emitted_shapes(tuple(w.shape or ())) or w.dtype != g.dtype:
            raise ValueError(
                f"{env_id}'s {key!r} is {g} (shape {g.shape}, {g.dtype}), this agent takes "
                f"{w} (shape {w.shape}, {w.dtype}): {fix}"
            )
    if agent.policy.action_space != venv.single_action_space:
        raise ValueError(
            f"{env_id}'s actions are {venv.single_action_space}, this agent's are "
            f"{agent.policy.action_space}: {fix}"
        )


#: Where :func:`set_aside_reports` moves the reports of a run's earlier best policy.
EARLIER_REPORTS = "reports-of-earlier-best"


def weights_digest(policy_dir: str | Path) -> str | None:
    """SHA-256 of a policy folder's weights (None without them).

    Every report names the digest of the weights it played (``meta.policy_digest``), so
    a report can be matched to the policy it describes long after it was written.
    """
    weights = Path(policy_dir) / "model.safetensors"
    if not weights.is_file():
        return None
    return hashlib.sha256(weights.read_bytes()).hexdigest()


def policy_meta(run: str, label: str, policy_dir: str | Path) -> dict[str, Any]:
    """A report's ``meta`` about what it played: run, policy label, folder and weights digest."""
    return {
        "run": run,
        "policy": label,
        "policy_dir": str(policy_dir),
        "policy_digest": weights_digest(policy_dir),
    }


def set_aside_reports(
    run_dir: str | Path, main_report: bool = False, *, changed: bool = True
) -> list[Path]:
    """Move the reports of an earlier best policy aside, into ``EARLIER_REPORTS/``.

    When a resumed training run replaces ``best/``, ``eval-sampled.json``,
    ``eval-drop-text.json`` and the like describe a policy that is gone. They are
    kept (never deleted) in ``RUN/reports-of-earlier-best/<n>/``, a new ``<n>`` each
    time; reports of other policies (``-final``, ``-step-N``) stay where they are.

    A report that names the digest of the weights it played (``meta.policy_digest``)
    is stale exactly when that digest is not ``best/``'s; one without (written before
    reports carried it) is stale when the caller says best/ ``changed``. So the check
    also finds what a session killed between replacing best/ and its end left behind.

    Args:
        run_dir: The run folder.
        main_report: Check ``eval.json`` too (a session stopped before its final
            evaluation re-made it; the start of a resumed session).
        changed: Whether best/ is known to have changed (for reports without a digest).

    Returns:
        The moved ``.json`` reports at their new place.
    """
    run = Path(run_dir)
    current = weights_digest(run / "best")
    stale = []
    candidates = sorted(run.glob("eval-*.json")) + ([run / "eval.json"] if main_report else [])
    for path in candidates:
        try:
            meta = json.loads(path.read_text(encoding="utf-8")).get("meta", {})
        except (OSError, ValueError, AttributeError):
            continue
        if not isinstance(meta, Mapping) or meta.get("policy") != "best":
            continue
        digest = meta.get("policy_digest")
        if (digest != current) if isinstance(digest, str) else changed:
            stale.append(path)
    if not stale:
        return []
    root = run / EARLIER_REPORTS
    taken = [int(p.name) for p in root.iterdir() if p.name.isdigit()] if root.is_dir() else []
    n = max(taken, default=0) + 1
    while (root / str(n)).exists():
        n += 1
    target = root / str(n)
    target.mkdir(parents=True)
    moved = []
    for path in stale:
        for part in (path, path.with_suffix(".md")):
            if part.is_file():
                part.replace(target / part.name)
        moved.append(target / path.name)
    return moved


def write_report(
    report: Mapping[str, Any], run_dir: str | Path, name: str = "eval"
) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` into ``run_dir``, each atomically.

    Args:
        report: A report from :func:`build_report`.
        run_dir: The run folder (created if missing).
        name: File stem.

    Returns:
        The paths of the JSON and Markdown files.
    """
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / f"{name}.json", folder / f"{name}.md"
    text = json.dumps(_jsonable(report), indent=2, allow_nan=False)
    atomic_write_text(json_path, text + "\n")
    atomic_write_text(md_path, report_markdown(report))
    return json_path, md_path


__all__ = [
    "EVAL_SEED_BASE",
    "EpisodeResults",
    "build_report",
    "check_agent_fits",
    "env_suffix",
    "episode_success",
    "eval_seeds",
    "evaluate_episodes",
    "expert_baseline",
    "random_baseline",
    "report_markdown",
    "report_name",
    "write_report",
]


def evaluate_agent(
    agent: Agent,
    env_id: str,
    env_kwargs: Mapping[str, Any] | None = None,
    *,
    episodes: int,
    n_envs: int = 32,
    deterministic: bool = True,
    drop_modalities: Sequence[str] = (),
    baselines: bool = True,
    seed_base: int = EVAL_SEED_BASE,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a trained agent on held-out seeds and build its report.

    Args:
        agent: The policy (see :func:`mbm_agent.load_agent`).
        env_id: Environment id; our games also get random and expert baselines
            on the same seeds, for normalised scores.
        env_kwargs: Environment arguments (as in training).
        episodes: Episodes to play.
        n_envs: Episodes played at once.
        deterministic: Greedy (True) or sampled (False) actions; sampling is
            seeded from ``seed_base``, so a stochastic report is repeatable too.
        drop_modalities: Keys or modality names to mask, to measure what each sense adds.
        baselines: Compute random and expert baselines (our games only).
        seed_base: First evaluation seed.
        meta: Extra fields for the report's ``meta``.

    Returns:
        The report (see :func:`build_report`); ``report["success"]["rate"]`` and
        ``report["returns"]["mean"]`` are the headline numbers.
    """
    kwargs = dict(env_kwargs or {})
    seeds = eval_seeds(episodes, seed_base)
    venv = make_eval_env(
        env_id, kwargs, max(1, min(n_envs, episodes)), agent.vocabulary, agent.adapter
    )
    try:
        check_agent_fits(agent, venv, env_id)
        actor = agent.actor(deterministic=deterministic)
        # Sampled actions come from torch's generator, seeded here (and restored
        # after) so that a stochastic evaluation is as repeatable as a greedy one.
        with agent.dropped(tuple(drop_modalities)), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_base)
            results = evaluate_episodes(
                actor, venv, episodes=episodes, seeds=seeds, on_reset=actor.reset
            )
    finally:
        venv.close()
    random = expert = None
    if baselines and is_our_game(env_id):
        random = random_baseline(env_id, episodes, seeds, **kwargs)
        expert = expert_baseline(env_id, episodes, seeds, **kwargs)
    info = {
        "env_id": env_id,
        "env_kwargs": kwargs,
        "algo": agent.spec.get("algo"),
        "fusion": agent.spec.get("encoder", {}).get("fusion"),
        "deterministic": deterministic,
        "drop_modalities": list(drop_modalities),
        "seed_base": seed_base,
        **dict(meta or {}),
    }
    return build_report(results, random=random, expert=expert, meta=info)
