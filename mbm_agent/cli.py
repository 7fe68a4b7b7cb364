"""The ``mbm-agent`` command: train, inspect, eval, compare, demo, demos, bc, export, bench, play."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

import envs
from mbm_agent._version import __version__
from mbm_agent.encoding.fusion import FUSION_MODES
from mbm_agent.training.config import ALGOS, VEC_ENVS, ConfigError, TrainConfig
from mbm_agent.training.lock import RunLockedError

EPILOG = """examples:
  mbm-agent demo                                  # short training + evaluation into runs/
  mbm-agent train mbm/GoToObject-v1 --steps 200000 --fusion film --seed 1
  mbm-agent train BabyAI-GoToObj-v0 --algo ppo --steps 100000
  mbm-agent inspect examples.third_party_env:ThirdPartyEnv-v0 --set modalities.mic=waveform
  mbm-agent train examples.third_party_env:ThirdPartyEnv-v0 --set modalities.mic=waveform --vec-env async
  mbm-agent train mbm/SoundMaze-v1 --set algo_kwargs.learning_rate=0.001 --set env_kwargs.n_objects=4
  mbm-agent train mbm/GoToObject-v1 --resume runs/GoToObject-ppo-concat-s0
  mbm-agent eval runs/GoToObject-ppo-concat-s0 --episodes 500 --drop-modality text
  mbm-agent eval runs/GoToObject-ppo-concat-s0 --env mbm/GoToObject-v0 --set grid_size=6
  mbm-agent compare runs/GoToObject-ppo-*-s*
  mbm-agent demos mbm/FindSound-v0 --episodes 5000 --out demos/findsound.npz
  mbm-agent bc demos/findsound.npz --backend keras --epochs 8
  mbm-agent train mbm/FindSound-v0 --init-from runs/FindSound-bc-torch-concat-s0
  mbm-agent export runs/FindSound-bc-torch-concat-s0 --format onnx --format tflite
"""


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (dotted keys nest; values parsed as YAML) into a dict."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(
                f"--set {item!r}: expected KEY=VALUE, e.g. --set algo_kwargs.learning_rate=0.001."
            )
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc}).") from exc
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is both a value and a section.")
        node[parts[-1]] = value
    return out


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    helps = TrainConfig.help()
    p = sub.add_parser(
        "train",
        help="train an agent (writes runs/NAME)",
        description="Train an agent on one of our games or any Dict-observation Gymnasium env. "
        "Precedence: built-in defaults < per-env YAML < --config FILE < flags.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("env_id", help=helps["env_id"])
    p.add_argument("--algo", choices=ALGOS, help=helps["algo"])
    p.add_argument(
        "--fusion", choices=sorted(FUSION_MODES), help="fusion mode of the encoder (encoder.fusion)"
    )
    p.add_argument("--steps", type=int, help=helps["steps"])
    p.add_argument("--seed", type=int, help=helps["seed"])
    p.add_argument("--n-envs", type=int, help=helps["n_envs"])
    p.add_argument("--run-name", help=helps["run_name"])
    p.add_argument("--runs-dir", help=helps["runs_dir"])
    p.add_argument("--device", help=helps["device"])
    p.add_argument("--eval-every", type=int, help=helps["eval_every"])
    p.add_argument("--eval-episodes", type=int, help=helps["eval_episodes"])
    p.add_argument("--checkpoint-every", type=int, help=helps["checkpoint_every"])
    p.add_argument("--vec-env", choices=VEC_ENVS, help=helps["vec_env"])
    p.add_argument("--vec-env-workers", type=int, metavar="K", help=helps["vec_env_workers"])
    p.add_argument("--torch-threads", type=int, metavar="N", help=helps["torch_threads"])
    p.add_argument(
        "--config", type=Path, help="YAML file of config fields (overrides the per-env defaults)"
    )
    p.add_argument(
        "--resume", type=Path, metavar="RUN", help="continue RUN from its newest checkpoint"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any field, dotted for sections: --set algo_kwargs.n_steps=64",
    )
    p.add_argument("--init-from", metavar="RUN", help=helps["init_from"])
    p.add_argument("--sb3-zip", action="store_true", default=None, help=helps["sb3_zip"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def _resume_config(args: argparse.Namespace, flags: dict[str, Any]) -> TrainConfig:
    """The config of the run to resume, from :func:`~mbm_agent.training.config.resume_config`.

    ``--steps`` is the run's new total budget; flags that would change the run
    (``--fusion``, ``--set``, ``--config``, ...) are refused by name.
    """
    from mbm_agent.training.config import resume_config

    cfg = resume_config(args.resume, {**flags, "set": args.set, "config": args.config})
    if args.env_id != cfg.env_id:
        raise ConfigError(
            f"--resume {args.resume} is a run on {cfg.env_id}, not {args.env_id}; "
            f"use: mbm-agent train {cfg.env_id} --resume {args.resume}"
        )
    return cfg


def _print_headline(run_dir: Path, report: dict[str, Any]) -> None:
    """The run folder and its held-out success and return (train and bc print the same)."""
    print(f"run: {run_dir}")
    print(
        f"success {report['success']['rate']:.3f}  mean return {report['returns']['mean']:.3f}  "
        f"({report['meta']['episodes']} held-out episodes)"
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from mbm_agent.training.agent import source_architecture
    from mbm_agent.training.config import expand_aliases, merge, resolve_config
    from mbm_agent.training.trainer import train

    overrides = _parse_set(args.set)
    flags = {
        "algo": args.algo,
        "fusion": args.fusion,
        "steps": args.steps,
        "seed": args.seed,
        "n_envs": args.n_envs,
        "run_name": args.run_name,
        "runs_dir": args.runs_dir,
        "device": args.device,
        "eval_every": args.eval_every,
        "eval_episodes": args.eval_episodes,
        "checkpoint_every": args.checkpoint_every,
        "vec_env": args.vec_env,
        "vec_env_workers": args.vec_env_workers,
        "torch_threads": args.torch_threads,
        "sb3_zip": args.sb3_zip,
        "init_from": args.init_from,
    }
    overrides.update({k: v for k, v in flags.items() if v is not None})
    if args.resume is not None:
        cfg = _resume_config(args, flags)
    else:
        if args.init_from is not None:
            # Start from the source's architecture; flags and --set still win (and a
            # mismatch they create is then reported by name).
            overrides = merge(
                source_architecture(args.init_from), expand_aliases(overrides, "flags and --set")
            )
        cfg = resolve_config(args.env_id, config_file=args.config, overrides=overrides)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    result = train(
        cfg, resume=args.resume, command=["mbm-agent", *args.argv], progress=not args.no_progress
    )
    if result.report is not None:
        _print_headline(result.run_dir, result.report)
    return 130 if result.interrupted else 0


def _add_eval(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a run on held-out seeds",
        description="Evaluate a trained run on episodes with seeds never used in training; writes eval.json and eval.md into the run (or --out).",
    )
    p.add_argument("run", type=Path, help="run folder (runs/NAME) or policy folder")
    p.add_argument("--episodes", type=int, default=200, help="episodes to play (default 200)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--deterministic",
        dest="deterministic",
        action="store_true",
        default=True,
        help="greedy actions (default)",
    )
    mode.add_argument(
        "--stochastic",
        dest="deterministic",
        action="store_false",
        help="sample actions from the policy",
    )
    p.add_argument(
        "--drop-modality",
        action="append",
        default=[],
        metavar="NAME",
        help="mask a modality or key (image, text, audio, ...); repeatable",
    )
    p.add_argument(
        "--which",
        choices=("best", "final"),
        default="best",
        help="which saved policy of the run (default best)",
    )
    p.add_argument(
        "--env",
        metavar="ENV_ID",
        help="play on this env instead of the one the agent trained on (e.g. another version "
        "of the game: mbm/GoToObject-v0); it starts from its own default arguments; the "
        "report's name gets -on-<ENV_ID>",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="game argument of the env played, e.g. --set grid_size=6 (repeatable); the "
        "report's name gets -with-KEY=VALUE",
    )
    p.add_argument("--n-envs", type=int, default=32, help="episodes played in parallel")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        metavar="N",
        help="torch threads (default 0: as train picks them, see training/threads.py)",
    )
    p.add_argument("--out", type=Path, help="folder for the report (default: the run folder)")
    p.add_argument(
        "--name",
        default=None,
        help="report file name without extension (default: "
        "eval[-sampled][-final|-step-N][-on-ENV][-with-KEY=VALUE][-drop-X], by what was played)",
    )


def _eval_env_args(items: Sequence[str]) -> dict[str, Any]:
    """``eval --set`` items as game arguments; ``env_kwargs.KEY`` (train's spelling) is KEY."""
    plain = [i[len("env_kwargs.") :] if i.startswith("env_kwargs.") else i for i in items]
    for item in plain:
        if "." in item.split("=", 1)[0]:
            raise ConfigError(
                f"--set {item!r}: eval --set takes the env's own arguments, e.g. --set "
                "n_objects=2 (training settings do not apply to an evaluation)."
            )
    return _parse_set(plain)


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from mbm_agent.evaluation import (
        KEPT_FILE_STEMS,
        env_suffix,
        evaluate_agent,
        policy_meta,
        report_markdown,
        report_name,
        write_report,
    )
    from mbm_agent.training.agent import load_agent, policy_source
    from mbm_agent.training.config import check_name
    from mbm_agent.training.envs import evaluation_env_kwargs
    from mbm_agent.training.threads import torch_threads_for

    if args.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {args.episodes}.")
    if args.name is not None:
        check_name(args.name, "--name")
        if args.name.lower() in KEPT_FILE_STEMS:
            raise ConfigError(
                f"--name {args.name} would overwrite {args.name}.json or {args.name}.md, which "
                "a run, policy or export folder keeps for itself; pick another name "
                f"(e.g. eval-{args.name})."
            )
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise ConfigError(
            f"--out {args.out} is a file; --out takes a folder (the report is written as "
            "NAME.json and NAME.md in it)."
        )
    if args.torch_threads < 0:
        raise ConfigError(f"--torch-threads must be >= 0 (0: automatic), got {args.torch_threads}.")
    torch.set_num_threads(torch_threads_for(args.torch_threads))
    source = policy_source(args.run, args.which)
    # The digest of the weights before they are read: a training session that replaced
    # them in between would otherwise have its weights named for what was played.
    meta = policy_meta(str(args.run), source.label, source.model_dir)
    agent = load_agent(source.model_dir)
    trained_on = agent.spec["env_id"]
    other_env = args.env if args.env not in (None, trained_on) else None
    # Another env starts from its own defaults: the training env's arguments may mean
    # nothing to it. --set changes either.
    env_args = _eval_env_args(args.set)
    target = other_env or trained_on
    trained_args = {} if other_env else agent.spec.get("env_kwargs", {})
    env_kwargs = {**evaluation_env_kwargs(target, trained_args), **env_args}
    report = evaluate_agent(
        agent,
        target,
        env_kwargs,
        episodes=args.episodes,
        n_envs=max(1, min(args.n_envs, args.episodes)),
        deterministic=args.deterministic,
        drop_modalities=tuple(args.drop_modality),
        meta=meta,
    )
    name = args.name or report_name(
        args.deterministic,
        args.drop_modality,
        source.suffix,
        env=env_suffix(other_env, env_args),
    )
    # A run's policies (best/, final/, checkpoints/step-N/policy) report into the run
    # folder, which training never replaces; a policy folder of its own into itself.
    out = args.out or source.home
    write_report(report, out, name=name)
    print(report_markdown(report))
    print(f"wrote {out / (name + '.json')} and {out / (name + '.md')}")
    return 0


def _add_compare(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "compare",
        help="aggregate runs across seeds (IQM, intervals, P(improvement))",
        description="Group evaluated runs by config (env, algo, fusion) across seeds; write a Markdown table and a plot.",
    )
    p.add_argument("runs", nargs="+", type=Path, help="run folders (each evaluated: eval.json)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/compare"),
        help="output folder (default runs/compare)",
    )
    p.add_argument(
        "--group-by",
        default="env_id,algo,fusion",
        help="comma-separated config fields (default env_id,algo,fusion)",
    )


def _cmd_compare(args: argparse.Namespace) -> int:
    from mbm_agent.compare import compare_markdown, compare_plot, compare_runs
    from mbm_agent.training.storage import atomic_write_text

    result = compare_runs(
        args.runs, group_by=tuple(g.strip() for g in args.group_by.split(",") if g.strip())
    )
    args.out.mkdir(parents=True, exist_ok=True)
    md = compare_markdown(result)
    atomic_write_text(args.out / "compare.md", md)
    atomic_write_text(args.out / "compare.json", json.dumps(result, indent=2, default=float))
    try:
        compare_plot(result, args.out / "compare.png")
    except ImportError as exc:
        print(f"(no plot: {exc})", file=sys.stderr)
    print(md)
    print(f"wrote {args.out}/compare.md, compare.json, compare.png")
    return 0


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="short training + evaluation of a real agent into runs/ (the README's main job)",
        description="Train an agent on mbm/FindSound-v0 (hear which object makes a sound and walk to it) to a real success bar, evaluate it on held-out seeds, and leave a complete run folder with plot and GIF.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny budget for CI smoke tests (does not reach the bar)",
    )
    p.add_argument("--runs-dir", default="runs", help="where the run folder goes")
    p.add_argument("--seed", type=int, default=0)


def _cmd_demo(args: argparse.Namespace) -> int:
    from mbm_agent.training.demo import run_demo

    return run_demo(quick=args.quick, runs_dir=args.runs_dir, seed=args.seed)


def _add_demos(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demos",
        help="record expert demonstrations of one of our games (.npz, no pickle)",
        description="Play the game's shortest-path expert over many worlds and save whole "
        "episodes (observations, expert actions, rewards) to one .npz file that loads with "
        "numpy.load(..., allow_pickle=False).",
    )
    p.add_argument("env_id", help="one of our games, e.g. mbm/FindSound-v0")
    p.add_argument("--episodes", type=int, default=2000, help="episodes to record (default 2000)")
    p.add_argument(
        "--noise",
        type=float,
        default=0.2,
        help="probability of executing a random action instead of the expert's, the label "
        "staying the expert's (DART; teaches recovery; default 0.2)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the first world and of the noise")
    p.add_argument("--n-envs", type=int, default=64, help="worlds played at once")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="game argument, e.g. --set n_objects=2 (repeatable)",
    )
    p.add_argument("--out", type=Path, help="output file (default demos/<game>-<episodes>.npz)")


def _cmd_demos(args: argparse.Namespace) -> int:
    from mbm_agent.imitation.demos import record_demos, save_demos

    env_kwargs = _parse_set(args.set)
    demos = record_demos(
        args.env_id,
        args.episodes,
        n_envs=args.n_envs,
        seed=args.seed,
        noise=args.noise,
        env_kwargs=env_kwargs,
    )
    game = envs.game_name(args.env_id)
    out = save_demos(demos, args.out or Path("demos") / f"{game}-{args.episodes}.npz")
    print(
        f"wrote {out}: {len(demos)} steps, {demos.n_episodes} episodes, expert success "
        f"{demos.meta['success_rate']:.3f} (noise {args.noise})"
    )
    return 0


def _add_bc(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bc",
        help="behaviour cloning: fit a policy to expert demonstrations (torch or Keras)",
        description="Fit the multimodal policy to recorded demonstrations with a cross-entropy "
        "loss, keep the epoch with the lowest loss on held-out episodes, evaluate it on "
        "held-out seeds and write a run folder (usable by eval, export and train --init-from).",
    )
    p.add_argument("demos", type=Path, help="demonstrations file from `mbm-agent demos`")
    p.add_argument("--backend", choices=("torch", "keras"), default="torch")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--fusion", choices=sorted(FUSION_MODES), help="fusion mode of the encoder (encoder.fusion)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="BC setting, dotted for the encoder: --set encoder.text_encoder=gru, --set net_arch=[128]",
    )
    p.add_argument("--eval-episodes", type=int, default=200, help="held-out episodes (0: none)")
    p.add_argument(
        "--run-name", help="run folder name (default <game>-bc-<backend>-<fusion>-s<seed>)"
    )
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")


def _cmd_bc(args: argparse.Namespace) -> int:
    from mbm_agent.imitation.bc import BCConfig, bc_run
    from mbm_agent.imitation.demos import load_demos

    settings = _parse_set(args.set)
    settings.update(
        backend=args.backend,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        eval_episodes=args.eval_episodes,
    )
    if args.fusion is not None:
        settings["fusion"] = args.fusion
    cfg = BCConfig.from_dict(settings)
    demos = load_demos(args.demos)
    run_dir, report = bc_run(
        demos,
        cfg,
        run_name=args.run_name,
        runs_dir=args.runs_dir,
        demos_path=args.demos,
        command=["mbm-agent", *args.argv],
        progress=not args.quiet,
    )
    if report is not None:
        _print_headline(run_dir, report)
    else:
        print(f"run: {run_dir}")
    return 0


def _add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained policy to ONNX, TorchScript, TF SavedModel or TFLite",
        description="Write a deployable model that takes raw observations (uint8 frames, int64 "
        "token ids, float32 audio; any batch size) and returns action, logits and value, with "
        "export.json describing the inputs. Act with it: mbm_agent.load_exported(DIR).act(obs).",
    )
    p.add_argument("run", type=Path, help="run folder (runs/NAME) or policy folder")
    p.add_argument(
        "--format",
        dest="fmt",
        action="append",
        required=True,
        choices=("onnx", "torchscript", "savedmodel", "tflite"),
        help="repeatable: --format onnx --format tflite",
    )
    p.add_argument("--which", choices=("best", "final"), default="best")
    p.add_argument("--out", type=Path, help="output folder (default RUN/exports/FORMAT)")


def _cmd_export(args: argparse.Namespace) -> int:
    from mbm_agent.deploy.export import export_policy

    if args.out is not None and len(args.fmt) > 1:
        raise ConfigError("--out takes one --format; export one format at a time with --out.")
    for fmt in args.fmt:
        out = export_policy(args.run, fmt, args.out, which=args.which)
        print(f"wrote {out}")
    return 0


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="reference grid: games x fusion modes x seeds + ablations + SB3 baseline",
        description="Train and evaluate the reference grid (resuming where it stopped) and write "
        "summary.md / summary.json / curves-<game>.png under --out, summarising every "
        "evaluated run there (from this and earlier invocations). Each run is an ordinary "
        "run folder under OUT/runs/.",
    )
    p.add_argument("--games", nargs="+", metavar="ENV_ID", help="default: all our games")
    p.add_argument(
        "--fusions",
        nargs="+",
        choices=sorted(FUSION_MODES),
        metavar="MODE",
        help=f"fusion modes, of {', '.join(sorted(FUSION_MODES))} (default: all)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, help="budget per run (default: each game's)")
    p.add_argument("--no-ablations", action="store_true", help="skip the mask-<modality> runs")
    p.add_argument("--no-baseline", action="store_true", help="skip the SB3-default runs")
    p.add_argument(
        "--components",
        action="store_true",
        help="add the recipe's ablation: one no-<component> run per component the game's "
        "config turns on (memory, reward-prediction, curriculum, cells, novelty, final-phase), each taken out in "
        "turn at the same budget",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        metavar="VARIANT",
        help="only these variants of the grid (e.g. bc-ppo, mask-text, sb3-default, film)",
    )
    p.add_argument(
        "--no-bc",
        action="store_true",
        help="skip the bc-ppo runs (expert demos -> behaviour cloning -> PPO fine-tune; "
        "GoToObject and SoundMaze)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke-test settings and budgets (CI); an explicit --steps is kept",
    )
    p.add_argument("--out", type=Path, default=Path("runs/reference"))
    p.add_argument("--list", action="store_true", help="print the cells and exit")
    p.add_argument(
        "--summary-only",
        action="store_true",
        help="summarise the runs already trained under --out and exit; first runs their "
        "missing evaluations (e.g. of runs made by an earlier version), trains nothing",
    )
    p.add_argument(
        "--backend",
        choices=("auto", "ray", "sequential"),
        default="auto",
        help="ray: each run a Ray Tune trial (runs in parallel, retried if its worker dies); "
        "sequential: one after another in this process; auto (default): ray when the ray "
        "extra is installed and the machine has 2+ cores",
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="run the trials on this Ray cluster (e.g. ray://head:10001 or auto) instead of a "
        "local Ray started for the command; --out must then be on a file system every node "
        "can write",
    )
    p.add_argument(
        "--cpus-per-trial",
        type=int,
        default=1,
        metavar="N",
        help="CPUs (and torch threads) per Ray trial (default 1)",
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    from mbm_agent.grid.ray import GridError
    from mbm_agent.grid.run import complete_evaluations, run_grid
    from mbm_agent.grid.spec import build_grid, finished_cells
    from mbm_agent.grid.summary import write_summary

    cells = build_grid(
        args.games,
        args.fusions,
        args.seeds,
        ablations=not args.no_ablations,
        baseline=not args.no_baseline,
        bc=not args.no_bc,
        components=args.components,
        steps=args.steps,
    )
    if args.variants:
        known = list(dict.fromkeys(c.variant for c in cells))
        unknown = [v for v in args.variants if v not in known]
        if unknown:
            raise ConfigError(
                f"--variants {' '.join(unknown)}: not in this grid; its variants are: "
                f"{', '.join(known)}."
            )
        cells = [c for c in cells if c.variant in args.variants]
    if args.list:
        for cell in cells:
            print(cell.name)
        return 0
    if args.summary_only:
        finished = finished_cells(args.out)
        if not finished:
            raise ConfigError(
                f"--summary-only: {args.out}/runs holds no evaluated grid run; check --out."
            )
        complete_evaluations(finished, args.out)
        summary = write_summary(finished, args.out)
    else:
        try:
            summary = run_grid(
                cells,
                args.out,
                quick=args.quick,
                backend=args.backend,
                ray_address=args.ray_address,
                cpus_per_trial=args.cpus_per_trial,
                command=["mbm-agent", *args.argv],
            )
        except GridError as exc:
            print(f"mbm-agent bench: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt as exc:
            print(
                f"mbm-agent bench: stopped ({exc or 'Ctrl-C'}); run the same command again to "
                "resume, or add --summary-only to summarise the finished runs.",
                file=sys.stderr,
            )
            return 130
    from mbm_agent.grid.summary import summary_markdown

    print(summary_markdown(summary))
    print(f"wrote {args.out}/summary.md, summary.json and curves-*.png")
    return 0


def _add_play(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "play", help="play a game from the keyboard or watch the expert", add_help=False
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)


def _add_inspect(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "inspect",
        help="show how each observation key of an env will be encoded (before training)",
        description="Make the env once and print, per observation key, its space, its "
        "modality (declared, else by name or space), the conversion at the env's edge (raw "
        "strings to token ids, waveforms to log-mel features) and the encoder with its output "
        "width. Exits non-zero, with the error, when a key cannot be encoded.",
    )
    p.add_argument("env_id", help=TrainConfig.help()["env_id"])
    p.add_argument("--config", type=Path, help="YAML file of config fields, as for train")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, e.g. --set modalities.mic=waveform",
    )


def _cmd_inspect(args: argparse.Namespace) -> int:
    from mbm_agent.training.config import resolve_config
    from mbm_agent.training.inspection import format_plan, observation_plan

    cfg = resolve_config(args.env_id, config_file=args.config, overrides=_parse_set(args.set))
    print(format_plan(observation_plan(cfg)))
    return 0


def _add_view(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "view",
        help="watch, hear and take over an agent in the browser (a local web app)",
        description="Serve a page that plays the run's agent on its game: its frame and the "
        "room, the instruction with the words it relies on, the sound it hears (with its "
        "spectrogram), action probabilities, value and what each sense contributed; pause, "
        "step, mask a sense, take over with the keyboard. A second run plays side by side on "
        "the same seed. Needs pip install 'mbm-agent[view]'.",
    )
    p.add_argument("run", type=Path, help="run folder (runs/NAME) or policy folder")
    p.add_argument("run2", type=Path, nargs="?", help="a second run, shown side by side")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (0 picks a free one)")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (the page has no authentication)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the first episode")


def _cmd_view(args: argparse.Namespace) -> int:
    from mbm_agent.view.app import serve

    runs = [args.run] + ([args.run2] if args.run2 is not None else [])
    return serve(
        runs, host=args.host, port=args.port, allow_remote=args.allow_remote, seed=args.seed
    )


def _add_report(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "report",
        help="write a self-contained HTML report of a run (curves, evaluations, episodes)",
        description="One HTML file with everything inline (learning curves, the evaluation "
        "table with intervals, a few episodes with frames, text and playable audio), to share "
        "without a server.",
    )
    p.add_argument("run", type=Path, help="run folder (runs/NAME) or policy folder")
    p.add_argument("--html", action="store_true", help="write HTML (the only format)")
    p.add_argument(
        "--out",
        type=Path,
        help="output .html file, or a folder for its report.html (default: RUN/report.html, "
        "also for a run's best/ or final/)",
    )
    p.add_argument("--episodes", type=int, default=3, help="episodes to show (0: none)")


def _cmd_report(args: argparse.Namespace) -> int:
    if not args.html:
        print("mbm-agent report: error: pass --html (the only format).", file=sys.stderr)
        return 2
    from mbm_agent.view.report import write_report

    path = write_report(args.run, args.out, args.episodes)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mbm-agent``."""
    parser = argparse.ArgumentParser(
        prog="mbm-agent",
        description="Train and evaluate RL agents that see, read and hear.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"mbm-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo(sub)
    _add_train(sub)
    _add_inspect(sub)
    _add_eval(sub)
    _add_compare(sub)
    _add_demos(sub)
    _add_bc(sub)
    _add_export(sub)
    _add_bench(sub)
    _add_play(sub)
    _add_view(sub)
    _add_report(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mbm-agent`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["play"]:
        from envs.play import main as play_main

        return play_main(argv[1:])
    args = build_parser().parse_args(argv)
    # A 'module:EnvId' env id imports its module as `python -m` would find it: the
    # current folder is searched too (after everything installed).
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    args.argv = argv  # recorded in the run's command.txt
    handlers = {
        "train": _cmd_train,
        "inspect": _cmd_inspect,
        "eval": _cmd_eval,
        "compare": _cmd_compare,
        "demo": _cmd_demo,
        "demos": _cmd_demos,
        "bc": _cmd_bc,
        "export": _cmd_export,
        "bench": _cmd_bench,
        "view": _cmd_view,
        "report": _cmd_report,
    }
    try:
        return handlers[args.command](args)
    except ImportError as exc:  # a missing optional dependency; the message names the extra
        print(f"mbm-agent {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ConfigError, FileNotFoundError, RunLockedError) as exc:
        print(f"mbm-agent {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # ModelFileError and other bad-input errors
        print(f"mbm-agent {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
