"""Typed training configuration: defaults, per-environment YAML, file and CLI overrides.

Precedence (later wins): the dataclass defaults, ``mbm_agent/configs/default.yaml``,
the environment family's YAML (``configs/families/<family>.yaml``, e.g. ``BabyAI.yaml``
for every ``BabyAI-*`` id; :func:`env_family`), the environment's own YAML
(``configs/<env id with / replaced by _>.yaml``), a ``--config FILE``, then
command-line flags and ``--set``. Any of these files may build on another with
``extends:`` (a shipped recipe such as ``from-scratch``, or a file;
:func:`read_config_file`), so a recipe's values are written once. The resolved
config is saved with every run as ``config.yaml`` and ``config.json``.

This module owns the configuration's names and checks: the top-level aliases
(:data:`ALIASES`, e.g. ``fusion`` for ``encoder.fusion``, rewritten only by
:func:`expand_aliases`), the allowed algorithms (:data:`ALGOS`, the names of
:data:`~mbm_agent.sb3.algorithms.ALGORITHMS`) and every field's validation, with
the closest known name for a misspelt one. The encoder's fields are an
:class:`~mbm_agent.encoding.config.EncoderConfig`, checked once when the config is
made and handed on as that object.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

import envs
from mbm_agent.encoding.config import EncoderConfig
from mbm_agent.encoding.values import is_finite_number
from mbm_agent.sb3.algorithms import ALGORITHMS
from mbm_agent.training.adapter import parse_declarations
from mbm_agent.training.curriculum import Curriculum
from mbm_agent.training.final_phase import FinalPhase
from mbm_agent.training.storage import atomic_write_text

#: The YAML defaults: ``default.yaml`` and one file per environment id.
CONFIG_DIR = Path(__file__).parent.parent / "configs"
#: Shipped recipes a config file can build on: ``extends: <name>`` (:func:`read_config_file`).
RECIPE_DIR = CONFIG_DIR / "recipes"
#: Algorithm names ``algo`` accepts: the registry's (:data:`~mbm_agent.sb3.algorithms.ALGORITHMS`).
ALGOS: tuple[str, ...] = tuple(ALGORITHMS)
EXTRACTORS = ("mbm", "sb3")
DEVICES = ("cpu", "cuda", "auto")
VEC_ENVS = ("dummy", "async")


#: Longest run, report or file name accepted, in bytes (file systems allow 255; the
#: rest is room for the suffixes and temporary names mbm-agent adds).
MAX_NAME_BYTES = 200

#: Fields a resumed run may change: a new total budget and where it runs. Every
#: other difference from the saved config is refused (it would no longer be the
#: run its checkpoints come from).
RESUME_HONOURED = ("steps", "device", "torch_threads", "vec_env", "vec_env_workers")
#: Fields that say where a run folder is, not what it trains (``--resume`` names it).
RESUME_LOCATION = ("runs_dir", "run_name")


class Check(NamedTuple):
    """How :func:`check_algo_kwargs` checks one SB3 hyperparameter.

    Attributes:
        kind: ``int``, ``number`` or ``bool``.
        low: Lower bound (None: unbounded), inclusive unless ``low_open``.
        high: Inclusive upper bound (None: unbounded).
        low_open: Whether ``low`` itself is refused.
        null: What ``null`` (None) means, where it is allowed.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    null: str | None = None


#: Checks of the SB3 hyperparameters we know. SB3 would otherwise fail on a bad value
#: with an assertion, or only once training runs (or not at all: a ``lin_`` clip_range_vf
#: below 0 would silently reverse the value clamp).
ALGO_KWARGS_CHECKS: dict[str, Check] = {
    "n_steps": Check("int", 1, None),
    "batch_size": Check("int", 2, None),
    "n_epochs": Check("int", 1, None),
    "buffer_size": Check("int", 1, None),
    "learning_starts": Check("int", 0, None),
    "target_update_interval": Check("int", 1, None),
    "stats_window_size": Check("int", 1, None),
    "learning_rate": Check("number", 0.0, None),
    "gamma": Check("number", 0.0, 1.0),
    "gae_lambda": Check("number", 0.0, 1.0),
    "ent_coef": Check("number", 0.0, None),
    "vf_coef": Check("number", 0.0, None),
    "max_grad_norm": Check("number", 0.0, None),
    "clip_range": Check("number", 0.0, None),
    "clip_range_vf": Check("number", 0, None, low_open=True, null="no value clipping"),
    "exploration_fraction": Check("number", 0.0, 1.0),
    "exploration_initial_eps": Check("number", 0.0, 1.0),
    "exploration_final_eps": Check("number", 0.0, 1.0),
    "tau": Check("number", 0.0, 1.0),
    "rms_prop_eps": Check("number", 0.0, None),
    "normalize_advantage": Check("bool"),
    "use_rms_prop": Check("bool"),
}


#: Hyperparameters that also take RL Zoo's linear schedule, ``"lin_<start>"`` (e.g.
#: ``lin_2.5e-4``): ``start`` at the first step, falling linearly to 0 at the run's last
#: (SB3's ``progress_remaining``; a resume with a larger ``steps`` recomputes it over the
#: new total, as RL Zoo does).
SCHEDULABLE: tuple[str, ...] = ("learning_rate", "clip_range", "clip_range_vf")


def linear_start(value: Any) -> float | None:
    """The start of RL Zoo's ``"lin_<start>"`` schedule; None if ``value`` is not one."""
    if not isinstance(value, str) or not value.startswith("lin_"):
        return None
    try:
        start = float(value.removeprefix("lin_"))
    except ValueError:
        return None
    return start if is_finite_number(start) else None


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and the fix."""


#: Top-level short names for nested fields, accepted in config files, ``--set`` and
#: flags: ``fusion: film`` is ``encoder: {fusion: film}``.
ALIASES: dict[str, tuple[str, str]] = {"fusion": ("encoder", "fusion")}


def expand_aliases(data: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
    """``data`` with each alias of :data:`ALIASES` moved into the field it stands for.

    The one place an alias is rewritten. :func:`resolve_config` applies it to each
    layer (default YAML, env YAML, ``--config``, flags) before merging them, so the
    later layer wins whichever of the two spellings each uses;
    :meth:`TrainConfig.from_dict` and ``mbm-agent bc`` apply it to what they are given.

    Args:
        data: Config fields, possibly with aliases.
        where: Where ``data`` comes from, for the message.

    Raises:
        ConfigError: An alias and the field it stands for are both given, with
            different values, or the section is not a mapping.
    """
    out = dict(data)
    for alias, (section, name) in ALIASES.items():
        if alias not in out:
            continue
        value = out.pop(alias)
        nested = out.get(section)
        if nested is None:
            nested = {}
        if not isinstance(nested, Mapping):
            raise ConfigError(f"{where}: {section} must be a mapping, got {nested!r}.")
        if name in nested and nested[name] != value:
            raise ConfigError(
                f"{where}: {alias}={value!r} and {section}.{name}={nested[name]!r} disagree; "
                f"{alias} is short for {section}.{name}, give one of them."
            )
        out[section] = {**nested, name: value}
    return out


def check_name(name: object, what: str) -> str:
    """``name`` if it is a plain, visible file name of reasonable length, else :class:`ConfigError`.

    Args:
        name: A run name, report name or the like.
        what: How the user gave it (``--run-name``), for the message.
    """
    if (
        not isinstance(name, str)
        or not name
        or name in {".", ".."}
        or any(c in name for c in "/\\\0")
    ):
        raise ConfigError(
            f"{what} must be a plain file name (no '/', not '.' or '..'), got {name!r}."
        )
    if name.startswith("."):
        raise ConfigError(
            f"{what} {name!r} starts with '.': such names are kept for mbm-agent's temporary "
            "files; drop the dot."
        )
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        raise ConfigError(
            f"{what} is {size} bytes long; at most {MAX_NAME_BYTES} are allowed (file systems "
            "stop at 255). Pick a shorter name."
        )
    return name


def check_algo_kwargs(
    algo_kwargs: Mapping[str, Any], section: str = "algo_kwargs", schedules: bool = True
) -> None:
    """Check the hyperparameters of :data:`ALGO_KWARGS_CHECKS`; others are left to SB3.

    A :data:`SCHEDULABLE` one may be ``"lin_<start>"``, checked by its start, where
    ``schedules`` allows them.

    Args:
        algo_kwargs: The hyperparameters.
        section: The config section that holds them, for the message (``algo_kwargs``,
            ``final_phase``).
        schedules: Whether ``"lin_<start>"`` schedules are allowed.
    """
    for name, value in algo_kwargs.items():
        check = ALGO_KWARGS_CHECKS.get(str(name))
        if check is None or (value is None and check.null is not None):
            continue
        where = f"{section}.{name}"
        if check.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{where} must be true or false, got {value!r}.")
            continue
        schedulable = schedules and name in SCHEDULABLE
        number: Any = linear_start(value) if schedulable and isinstance(value, str) else value
        if check.kind == "int":
            ok = isinstance(number, int) and not isinstance(number, bool)
        else:
            ok = is_finite_number(number)
        if ok and check.low is not None:
            ok = number > check.low if check.low_open else number >= check.low
        if ok and check.high is not None:
            ok = number <= check.high
        if not ok:
            raise ConfigError(
                f"{where} must be {_wanted(check, schedulable)}, got {value!r}; fix it in the "
                f"config file or with --set {where}=VALUE."
            )


def _wanted(check: Check, schedulable: bool) -> str:
    """What a value of ``check`` must be, in words, for an error message."""
    wanted = "an integer" if check.kind == "int" else "a number"
    if schedulable:
        wanted += " or 'lin_<number>' (RL Zoo's linear decay to 0)"
    low, high = check.low, check.high
    if low is not None and high is not None:
        wanted += f" in [{low}, {high}]"
    elif low is not None:
        wanted += f" {'>' if check.low_open else '>='} {low}"
    if check.null is not None:
        wanted += f" (or null: {check.null})"
    return wanted


@dataclass
class TrainConfig:
    """Everything ``mbm-agent train`` needs; each field has one line of help."""

    env_id: str = field(
        metadata={"help": "Gymnasium id, e.g. mbm/GoToObject-v1 or BabyAI-GoToObj-v0."}
    )
    algo: str = field(default="ppo", metadata={"help": f"RL algorithm: one of {', '.join(ALGOS)}."})
    steps: int = field(default=100_000, metadata={"help": "Total environment steps to train for."})
    seed: int = field(
        default=0, metadata={"help": "Seed of the training envs, the policy and the algorithm."}
    )
    n_envs: int = field(
        default=16, metadata={"help": "Parallel environments (worlds) stepped together."}
    )
    vec_env: str = field(
        default="dummy",
        metadata={
            "help": "Vector env of third-party envs: dummy (all in this process) or async (worker processes, for slow envs); our games always step as one batched numpy env."
        },
    )
    vec_env_workers: int = field(
        default=0,
        metadata={
            "help": "Worker processes of vec_env=async (0: one per env, SB3's SubprocVecEnv; K: the envs split among K processes, for many envs on few cores: e.g. the core count)."
        },
    )
    run_name: str | None = field(
        default=None,
        metadata={
            "help": "Run folder name under runs_dir (default: <game>-<algo>-<fusion>-s<seed>)."
        },
    )
    runs_dir: str = field(default="runs", metadata={"help": "Folder that holds run folders."})
    device: str = field(
        default="cpu", metadata={"help": f"Torch device: one of {', '.join(DEVICES)}."}
    )
    torch_threads: int = field(
        default=0,
        metadata={
            "help": "Torch CPU threads (0: auto, min(4, cores other processes leave idle), or OMP_NUM_THREADS when set)."
        },
    )
    eval_every: int = field(
        default=20_000,
        metadata={"help": "Evaluate on held-out seeds every this many steps (0: only at the end)."},
    )
    eval_episodes: int = field(default=50, metadata={"help": "Episodes per periodic evaluation."})
    final_eval_episodes: int = field(
        default=200, metadata={"help": "Episodes of the evaluation at the end of training."}
    )
    checkpoint_every: int = field(
        default=20_000,
        metadata={"help": "Write a resumable checkpoint every this many steps (0: never)."},
    )
    keep_checkpoints: int = field(default=2, metadata={"help": "Newest checkpoints kept on disk."})
    gif_episodes: int = field(
        default=2, metadata={"help": "Episodes recorded into episodes.gif at the end (0: none)."}
    )
    extractor: str = field(
        default="mbm",
        metadata={
            "help": "Features extractor: mbm (our MultimodalExtractor) or sb3 (SB3's default CombinedExtractor, as a baseline)."
        },
    )
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "Start from the weights of this run or policy folder (e.g. a behaviour-cloning run); same architecture needed."
        },
    )
    sb3_zip: bool = field(
        default=False,
        metadata={"help": "Also save an SB3 .zip (pickle-based; for SB3 users only)."},
    )
    env_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Arguments of the environment."}
    )
    encoder: EncoderConfig = field(
        default_factory=EncoderConfig,
        metadata={"help": "EncoderConfig fields (fusion, features_dim, ...); a mapping in files."},
    )
    modalities: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Per-key modality declarations, e.g. {grid: symbolic_grid, mic: {kind: waveform, sample_rate: 8000}}; other keys get one by their space."
        },
    )
    algo_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Hyperparameters passed to the SB3 algorithm (n_steps, learning_rate, ...)."
        },
    )
    policy_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Extra policy arguments (net_arch, activation_fn name, ...)."},
    )
    curriculum: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Easier versions of the game trained first: {levels: [{grid_size: 5}, ...], promote_at: 0.8, window: 100} (env_kwargs overrides, easiest first; null for none)."
        },
    )
    final_phase: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "The run's last env steps trained with other values of gamma, ent_coef or a constant learning_rate, e.g. {steps: 1000000, gamma: 0.999} (null for none; mbm_agent/training/final_phase.py)."
        },
    )
    novelty_bonus: float = field(
        default=0.0,
        metadata={
            "help": "Exploration bonus added to the training reward of each step whose observation (its integer-typed keys) is new in the episode (0: none; mbm_agent/sb3/novelty.py)."
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.encoder, Mapping):  # fields as a file or --set gives them
            self.encoder = encoder_from_dict(self.encoder)
        if self.curriculum is None:  # `--set curriculum=null` turns a game's curriculum off
            self.curriculum = {}
        if self.final_phase is None:  # `--set final_phase=null` turns a game's off
            self.final_phase = {}
        self.validate()

    @property
    def fusion(self) -> str:
        """The encoder's fusion mode (``sb3-default`` for SB3's own extractor)."""
        if self.extractor == "sb3":
            return "sb3-default"
        return self.encoder.fusion

    def encoder_config(self) -> EncoderConfig:
        """The run's :class:`EncoderConfig` (the :attr:`encoder` field itself)."""
        return self.encoder

    def default_run_name(self) -> str:
        """``<game>-<algo>-<fusion>-s<seed>``."""
        game = envs.game_name(self.env_id)
        return f"{game}-{self.algo}-{self.fusion}-s{self.seed}"

    def validate(self) -> None:
        """Check every field; raise :class:`ConfigError` naming the field and the allowed values."""
        if not isinstance(self.env_id, str) or not self.env_id:
            raise ConfigError(f"env_id must be a Gymnasium id string, got {self.env_id!r}.")
        if self.algo not in ALGOS:
            raise ConfigError(f"algo={self.algo!r} is not supported; choose one of {list(ALGOS)}.")
        if self.extractor not in EXTRACTORS:
            raise ConfigError(
                f"extractor={self.extractor!r} is not known; choose one of {list(EXTRACTORS)}."
            )
        if self.device not in DEVICES:
            raise ConfigError(
                f"device={self.device!r} is not supported; choose one of {list(DEVICES)}."
            )
        if self.vec_env not in VEC_ENVS:
            raise ConfigError(
                f"vec_env={self.vec_env!r} is not known; choose one of {list(VEC_ENVS)}."
            )
        for name, low in (
            ("steps", 1),
            ("n_envs", 1),
            ("eval_every", 0),
            ("eval_episodes", 1),
            ("final_eval_episodes", 1),
            ("checkpoint_every", 0),
            ("keep_checkpoints", 1),
            ("gif_episodes", 0),
            ("seed", 0),
            ("torch_threads", 0),
            ("vec_env_workers", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}.")
        if self.vec_env_workers and self.vec_env != "async":
            raise ConfigError(
                f"vec_env_workers={self.vec_env_workers} sets the worker processes of "
                f"vec_env=async, but vec_env is {self.vec_env!r}: add --vec-env async, or drop "
                "vec_env_workers."
            )
        if self.vec_env_workers > self.n_envs:
            raise ConfigError(
                f"vec_env_workers={self.vec_env_workers} is more than the {self.n_envs} envs "
                f"(n_envs): use at most {self.n_envs} (0: one per env)."
            )
        bonus = self.novelty_bonus
        if not is_finite_number(bonus) or bonus < 0:
            raise ConfigError(f"novelty_bonus must be a number >= 0 (0: none), got {bonus!r}.")
        if not isinstance(self.sb3_zip, bool):
            raise ConfigError(f"sb3_zip must be true or false, got {self.sb3_zip!r}.")
        if not isinstance(self.encoder, EncoderConfig):
            raise ConfigError(
                f"encoder must be a mapping of EncoderConfig fields, got {self.encoder!r}."
            )
        for name in ("env_kwargs", "modalities", "algo_kwargs", "policy_kwargs"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(f"{name} must be a mapping, got {getattr(self, name)!r}.")
        if self.run_name is not None:
            check_name(self.run_name, "run_name")
        if not isinstance(self.runs_dir, str) or not self.runs_dir:
            raise ConfigError(f"runs_dir must be a folder path, got {self.runs_dir!r}.")
        check_algo_kwargs(self.algo_kwargs)
        if not isinstance(self.curriculum, dict):
            raise ConfigError(f"curriculum must be a mapping, got {self.curriculum!r}.")
        try:
            Curriculum.from_config(self.curriculum)
            phase = FinalPhase.from_config(self.final_phase)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if phase is not None:
            check_algo_kwargs(phase.settings(), section="final_phase", schedules=False)
        if phase is not None and phase.ent_coef is not None and ALGORITHMS[self.algo].family == "q":
            raise ConfigError(
                f"final_phase.ent_coef: {self.algo} has no entropy coefficient to change; drop "
                "ent_coef from final_phase."
            )
        try:
            parse_declarations(self.modalities)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-ready dict (includes the derived ``fusion`` for grouping runs)."""
        data = dataclasses.asdict(self)
        data["fusion"] = self.fusion
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping; unknown fields are errors that suggest the closest name."""
        data = expand_aliases(data)
        data.pop("fusion_resolved", None)  # written by early versions
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in known]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), [*known, *ALIASES], n=1)
                if not close:  # e.g. learning_rate, which lives in algo_kwargs
                    nested = _section_names()
                    close = [nested[m] for m in difflib.get_close_matches(str(key), nested, n=1)]
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(
                f"Unknown config field(s): {', '.join(hints)}. Known fields: {[*known, *ALIASES]}."
            )
        if "env_id" not in data:
            raise ConfigError("env_id is required (the Gymnasium id to train on).")
        return cls(**data)

    @staticmethod
    def help() -> dict[str, str]:
        """One line of help per field."""
        return {f.name: f.metadata["help"] for f in dataclasses.fields(TrainConfig)}


def _section_names() -> dict[str, str]:
    """Field names that belong in a section, mapped to their dotted name (for error hints)."""
    names: dict[str, str] = {}
    try:
        hyper = _read_yaml(CONFIG_DIR / "default.yaml").get("hyperparams") or {}
    except (ConfigError, OSError):
        hyper = {}
    for params in hyper.values():
        for name in params or {}:
            names.setdefault(str(name), f"algo_kwargs.{name}")
    for f in dataclasses.fields(EncoderConfig):
        names.setdefault(f.name, f"encoder.{f.name}")
    return names


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"Config file {path} must hold a mapping of fields, got {type(data).__name__}."
        )
    return data


def recipe_names() -> list[str]:
    """The shipped recipes ``extends:`` takes by name (``mbm_agent/configs/recipes/``)."""
    return sorted(path.stem for path in RECIPE_DIR.glob("*.yaml"))


def read_config_file(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's fields (aliases expanded), on top of the file it ``extends``.

    ``extends: from-scratch`` builds on a shipped recipe
    (``mbm_agent/configs/recipes/from-scratch.yaml``; :func:`recipe_names`);
    ``extends: base.yaml`` (any value ending in ``.yaml`` or ``.yml``) on a file,
    relative to the one that names it. The file's own fields win, mappings merge
    key by key (:func:`merge`), and the base may extend another in turn.

    Raises:
        ConfigError: Invalid YAML, an unknown recipe or missing file (named, with
            the recipes there are), or files that extend each other in a loop.
    """
    data = expand_aliases(_read_yaml(path), str(path))
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(
            f"{path}: extends must name a recipe ({', '.join(recipe_names())}) or a YAML "
            f"file, got {parent!r}."
        )
    if parent.endswith((".yaml", ".yml")):
        base = (path.parent / parent).resolve()
        if not base.is_file():
            raise ConfigError(f"{path}: extends {parent!r}, but {base} does not exist.")
    else:
        base = (RECIPE_DIR / f"{parent}.yaml").resolve()
        if not base.is_file():
            raise ConfigError(
                f"{path}: extends {parent!r}, which is not a recipe; the recipes are: "
                f"{', '.join(recipe_names())} (or give a file ending in .yaml)."
            )
    chain = (*_chain, path.resolve())
    if base in chain:
        loop = " -> ".join(str(p) for p in (*chain, base))
        raise ConfigError(f"Config files extend each other in a loop: {loop}.")
    return merge(read_config_file(base, chain), data)


def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; mappings merge key by key, everything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def encoder_from_dict(data: Mapping[str, Any]) -> EncoderConfig:
    """The checked :class:`EncoderConfig` of a config's ``encoder`` section.

    Raises:
        ConfigError: Naming the field (with the closest known name for a misspelt one).
    """
    try:
        return EncoderConfig.from_dict(data)
    except ValueError as exc:
        raise ConfigError(f"encoder: {exc}") from exc


def env_defaults_path(env_id: str) -> Path:
    """Where an environment's default hyperparameters live."""
    return CONFIG_DIR / f"{env_id.replace('/', '_')}.yaml"


def env_family(env_id: str) -> str:
    """The family whose defaults an id shares: its namespace, else its name's first word.

    ``mbm-atari/Seaquest-v0`` -> ``mbm-atari``; ``BabyAI-GoToRedBall-v0`` ->
    ``BabyAI``; ``my_pkg.envs:Lift-v0`` -> ``Lift`` (the module is not part of it).
    """
    name = env_id.split(":")[-1]
    return name.split("/")[0] if "/" in name else name.split("-")[0]


def env_defaults_files(env_id: str) -> list[Path]:
    """The YAML defaults of ``env_id`` that exist, in the order they apply (family, then own)."""
    candidates = [CONFIG_DIR / "families" / f"{env_family(env_id)}.yaml", env_defaults_path(env_id)]
    return [path for path in candidates if path.is_file()]


def resolve_config(
    env_id: str,
    *,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Defaults <- default.yaml <- family and env YAML <- ``config_file`` <- ``overrides``."""
    default_file = CONFIG_DIR / "default.yaml"
    data: dict[str, Any] = read_config_file(default_file)
    for env_file in env_defaults_files(env_id):
        data = merge(data, read_config_file(env_file))
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"--config file {path} does not exist.")
        data = merge(data, read_config_file(path))
    # Per-algorithm hyperparameters: hyperparams.<algo> feeds algo_kwargs.
    hyper = data.pop("hyperparams", {}) or {}
    algo = (overrides or {}).get("algo", data.get("algo", "ppo"))
    if not isinstance(hyper, dict):
        raise ConfigError("hyperparams must map an algorithm name to its hyperparameters.")
    if not isinstance(algo, str):
        raise ConfigError(f"algo must be one of {list(ALGOS)}, got {algo!r}.")
    for name, value in (
        ("hyperparams." + algo, hyper.get(algo)),
        ("algo_kwargs", data.get("algo_kwargs")),
    ):
        if value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"{name} must be a mapping of hyperparameters, got {value!r}.")
    data["algo_kwargs"] = merge(dict(hyper.get(algo) or {}), data.get("algo_kwargs") or {})
    data = merge(data, expand_aliases(overrides or {}, "flags and --set"))
    data["env_id"] = env_id
    return TrainConfig.from_dict(data)


def save_config(cfg: TrainConfig, run_dir: Path) -> None:
    """Write ``config.yaml`` and ``config.json`` into a run folder."""
    data = cfg.to_dict()
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(data, sort_keys=False))
    atomic_write_text(run_dir / "config.json", json.dumps(data, indent=2))


def load_run_config(run_dir: Path) -> TrainConfig:
    """The resolved config saved in a run folder.

    Raises:
        ConfigError: ``config.json`` is missing, corrupt or holds a bad field (the
            message names the file and the field).
    """
    path = run_dir / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder: {path.name} is missing.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(f"{path} is corrupt ({exc}); the run's config cannot be read.") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object of config fields.")
    data.pop("fusion", None)
    try:
        return TrainConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except TypeError as exc:  # a field of the wrong shape for the dataclass
        raise ConfigError(f"{path} holds a malformed config: {exc}") from exc


#: Config fields that ``mbm-agent train`` has a flag for (others are set with ``--set``).
_CLI_FLAGS = frozenset(
    [
        "algo",
        "fusion",
        "steps",
        "seed",
        "n_envs",
        "run_name",
        "runs_dir",
        "device",
        "eval_every",
        "eval_episodes",
        "checkpoint_every",
        "vec_env",
        "vec_env_workers",
        "torch_threads",
        "sb3_zip",
        "init_from",
        "set",
        "config",
    ]
)


def _flag(name: str) -> str:
    if name in _CLI_FLAGS:
        return "--" + name.replace("_", "-")
    return f"{name} (--set {name}...)"


def resume_config(run_dir: str | Path, flags: Mapping[str, Any] | None = None) -> TrainConfig:
    """The configuration a resumed run continues with: the saved one, changed only where safe.

    The single place that decides what ``--resume`` does with other settings:

    - ``steps`` is the run's new *total* budget (not steps to add); the saved config
      is updated with it, so a later ``--resume`` keeps it.
    - ``device``, ``torch_threads``, ``vec_env`` and ``vec_env_workers`` (where and how
      it runs) are honoured; ``--vec-env dummy`` alone also drops the saved
      ``vec_env_workers`` (they belong to ``async``).
    - ``runs_dir`` and ``run_name`` must not be given: the run folder is ``run_dir``.
    - Anything else (``--fusion``, ``--seed``, ``--n-envs``, ``--set``, ``--config``,
      ...) would make it another run than the one its checkpoints come from, and is
      refused, unless it equals the saved value.

    Args:
        run_dir: The run folder.
        flags: Settings given with the resume, by config field name (plus ``set``
            and ``config`` for those flags); None, empty and unchanged values are
            not changes.

    Raises:
        ConfigError: No such run, a damaged ``config.json``, or a refused change
            (the message names the flag).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"--resume {run_dir}: no such run folder.")
    cfg = load_run_config(run_dir)
    changes: dict[str, Any] = {}
    for name, value in (flags or {}).items():
        if value is None or (isinstance(value, list | tuple | dict) and not value):
            continue
        if name not in ("set", "config") and getattr(cfg, name, object()) == value:
            continue
        if name in RESUME_HONOURED:
            changes[name] = value
            continue
        why = (
            "the run folder is the one --resume names"
            if name in RESUME_LOCATION
            else "it would make this another run than the one its checkpoints come from"
        )
        raise ConfigError(
            f"--resume {run_dir}: {_flag(name)} cannot be changed when resuming ({why}; saved: "
            f"{getattr(cfg, name, 'see config.yaml')!r}). Drop it, or start a new run "
            f"(--init-from {run_dir} starts it from this run's policy). Only "
            f"{', '.join(_flag(n) for n in RESUME_HONOURED)} may change; --steps is the new "
            "total budget."
        )
    if changes.get("vec_env") == "dummy" and "vec_env_workers" not in changes:
        changes["vec_env_workers"] = 0
    return dataclasses.replace(cfg, **changes) if changes else cfg
