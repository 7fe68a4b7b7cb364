"""A trained policy ready to act, saved and loaded without pickle.

``save_policy`` writes a policy folder (see :mod:`mbm_agent.training.storage`);
``load_agent`` rebuilds the SB3 policy from its JSON description and loads the
weights from safetensors. Nothing on that path unpickles anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from gymnasium import spaces
from numpy.typing import NDArray
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BasePolicy

from envs.core.text import Vocabulary
from mbm_agent._version import __version__
from mbm_agent.encoding.config import EncoderConfig
from mbm_agent.encoding.values import check_space_observation
from mbm_agent.sb3.algorithms import is_recurrent, policy_class
from mbm_agent.sb3.extractor import MultimodalExtractor
from mbm_agent.sb3.policy import policy_kwargs_for
from mbm_agent.training.adapter import AdapterState, ObservationAdapter
from mbm_agent.training.config import TrainConfig
from mbm_agent.training.envs import observation_adapter
from mbm_agent.training.model_check import (
    MAX_PARAMETERS,
    check_model_json,
    count_parameters_meta,
    parameter_bound,
)
from mbm_agent.training.storage import (
    FORMAT,
    FORMAT_VERSION,
    RESTORE_HINT,
    SCORE_FILE,
    ModelFileError,
    atomic_save_module,
    atomic_write_text,
    fresh_tmp_dir,
    load_module,
    old_dir,
    read_json,
    replace_dir,
    space_from_dict,
    space_to_dict,
)


def source_architecture(source: str | Path) -> dict[str, Any]:
    """Encoder, modalities and policy settings of a run's (or model folder's) policy.

    ``train --init-from`` starts from these, so the new run's network matches the
    weights it loads.
    """
    spec = read_spec(resolve_model_dir(source, "best"))
    adapter = spec.get("observation_adapter") or {}
    return {
        "encoder": dict(spec.get("encoder", {})),
        # The declarations as the source's config wrote them (a waveform key's are
        # not its encoder modality, 'audio').
        "modalities": dict(adapter.get("declared", spec.get("modalities", {}))),
        "policy_kwargs": dict(spec.get("policy_kwargs", {})),
    }


def policy_spec(
    policy: BasePolicy,
    *,
    algo: str,
    env_id: str,
    env_kwargs: Mapping[str, Any],
    encoder: EncoderConfig,
    modalities: Mapping[str, str],
    policy_kwargs: Mapping[str, Any],
    vocabulary: Vocabulary | None,
    extractor: str = "mbm",
    adapter: ObservationAdapter | None = None,
) -> dict[str, Any]:
    """The JSON description a policy folder stores.

    ``modalities`` are the encoder's declarations; ``adapter`` (stored as
    ``observation_adapter`` unless it changes nothing) converts the env's raw
    observations into the ``observation_space`` the policy takes.
    """
    policy_kwargs = dict(policy_kwargs)
    # Parts an algorithm adds to our policy (MultimodalPPO: the reward head, a memory
    # given as its own argument) are the policy's architecture: model.json says so.
    for name in ("reward_head", "memory"):
        if getattr(policy, name, None):
            policy_kwargs[name] = getattr(policy, name)
    spec = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "mbm_agent_version": __version__,
        "algo": algo,
        "env_id": env_id,
        "env_kwargs": dict(env_kwargs),
        "observation_space": space_to_dict(policy.observation_space),
        "action_space": space_to_dict(policy.action_space),
        "encoder": encoder.to_dict(),
        "modalities": dict(modalities),
        "policy_kwargs": policy_kwargs,
        "extractor": extractor,
        "vocabulary": vocabulary is not None,
    }
    if adapter is not None and not adapter.is_identity:
        spec["observation_adapter"] = adapter.to_dict()
    return spec


def model_spec(model: BaseAlgorithm, cfg: TrainConfig, vocab: Vocabulary | None) -> dict[str, Any]:
    """The JSON description (:func:`policy_spec`) of a model trained with ``cfg``."""
    adapter = observation_adapter(cfg)
    return policy_spec(
        model.policy,
        algo=cfg.algo,
        env_id=cfg.env_id,
        env_kwargs=cfg.env_kwargs,
        encoder=cfg.encoder_config(),
        modalities=adapter.modalities,
        policy_kwargs=cfg.policy_kwargs,
        vocabulary=vocab,
        extractor=cfg.extractor,
        adapter=adapter,
    )


def save_policy(
    policy: BasePolicy,
    spec: Mapping[str, Any],
    out_dir: Path,
    vocabulary: Vocabulary | None,
    *,
    score: Mapping[str, Any] | None = None,
) -> Path:
    """Write a policy folder atomically (a crash leaves the previous one intact).

    Args:
        policy: The SB3 policy.
        spec: Its description (:func:`policy_spec`).
        out_dir: The folder to write (replaced whole).
        vocabulary: The instruction vocabulary, if the game has text.
        score: The evaluation that chose this policy (``best/``), written as
            ``score.json`` in the same rename as the weights.
    """
    tmp = fresh_tmp_dir(out_dir)
    try:
        atomic_write_text(tmp / "model.json", json.dumps(spec, indent=2))
        atomic_save_module(tmp / "model.safetensors", policy, metadata={"format": FORMAT})
        if vocabulary is not None:
            vocabulary.save(tmp / "vocabulary.json")
        if score is not None:
            atomic_write_text(tmp / SCORE_FILE, json.dumps(dict(score), indent=2))
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_spec(model_dir: Path) -> dict[str, Any]:
    """Read and check ``model.json`` of a policy folder."""
    spec = read_json(model_dir / "model.json", "the policy")
    if spec.get("format") != FORMAT:
        raise ModelFileError(
            f"{model_dir / 'model.json'} is not an mbm-agent policy (format {spec.get('format')!r})."
        )
    if spec.get("version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{model_dir / 'model.json'}: field 'version': {model_dir} was saved in policy "
            f"format version {spec.get('version')!r}; this mbm-agent "
            f"reads version {FORMAT_VERSION}. Load it with the mbm-agent version that wrote it "
            f"({spec.get('mbm_agent_version', 'unknown')}) or retrain."
        )
    check_model_json(spec, model_dir / "model.json")
    return spec


#: What a malformed model.json can make the policy constructors raise; all of them
#: become a :class:`ModelFileError` naming the file.
_BUILD_ERRORS = (KeyError, ValueError, TypeError, AttributeError, IndexError, AssertionError)


def build_policy(spec: Mapping[str, Any], where: Path | str = "model.json") -> BasePolicy:
    """Construct an untrained policy with the architecture ``spec`` describes.

    The spec's fields are checked first and the policy's size is bounded by
    :data:`~mbm_agent.training.model_check.MAX_PARAMETERS` before any weight is
    allocated.

    Args:
        spec: A ``model.json`` (read by :func:`read_spec`, or made by :func:`policy_spec`).
        where: The file it came from, for the messages.

    Raises:
        ModelFileError: The spec is malformed, too large, or does not build.
    """
    check_model_json(spec, where)
    try:
        encoder = EncoderConfig.from_dict(spec["encoder"])
    except _BUILD_ERRORS as exc:
        raise ModelFileError(f"{where}: field 'encoder' is malformed: {exc}") from exc
    obs_space = space_from_dict(spec["observation_space"], f"{where}: observation_space")
    act_space = space_from_dict(spec["action_space"], f"{where}: action_space")
    if not isinstance(obs_space, spaces.Dict):
        raise ModelFileError(f"{where}: observation_space must be a Dict space.")
    try:
        kwargs = policy_kwargs_for(
            encoder,
            spec.get("modalities", {}),
            spec.get("policy_kwargs", {}),
            str(spec.get("extractor", "mbm")),
        )
        cls = policy_class(str(spec.get("algo")), str(spec.get("extractor", "mbm")))
    except _BUILD_ERRORS as exc:
        raise ModelFileError(f"{where} does not describe a buildable policy: {exc}") from exc

    def build(check_inputs: bool = True) -> BasePolicy:
        args = kwargs
        if not check_inputs and "features_extractor_kwargs" in kwargs:
            # Counting on the meta device: the dummy forward pass needs no input checks.
            extractor = dict(kwargs["features_extractor_kwargs"])
            extractor["config"] = {**extractor["config"], "check_inputs": False}
            args = {**kwargs, "features_extractor_kwargs": extractor}
        return cls(obs_space, act_space, lambda _: 0.0, **args)

    bound = parameter_bound(spec)
    if bound > MAX_PARAMETERS:
        try:
            n_params = count_parameters_meta(lambda: build(check_inputs=False))
        except Exception as exc:  # an op without a meta kernel: refuse rather than allocate
            raise ModelFileError(
                f"{where} describes a policy of up to {bound} parameters, more than the "
                f"{MAX_PARAMETERS} parameters mbm-agent loads, and its exact size cannot be "
                f"counted without allocating it ({type(exc).__name__}); {RESTORE_HINT}."
            ) from exc
        if n_params > MAX_PARAMETERS:
            raise ModelFileError(
                f"{where} describes a policy of {n_params} parameters, more than the "
                f"{MAX_PARAMETERS} parameters mbm-agent loads; {RESTORE_HINT}."
            )
    try:
        return build()
    except ModelFileError:
        raise
    except (*_BUILD_ERRORS, RuntimeError, NotImplementedError) as exc:
        raise ModelFileError(f"{where} does not describe a buildable policy: {exc}") from exc


class Agent:
    """A policy that acts on raw (batched or single) observations, as the env emits them.

    Raw strings, byte texts and waveform chunks are converted by the model's
    observation adapter first (already converted ones, as the training and
    evaluation envs emit them, pass unchanged). A waveform is heard over a
    rolling window of the last steps: call :meth:`reset` at episode starts.

    Attributes:
        policy: The SB3 policy (a torch module).
        spec: The model description (``model.json``).
        vocabulary: The instruction vocabulary, if the game has text.
        adapter: How raw observations are converted (``model.json``'s ``observation_adapter``).
    """

    def __init__(
        self, policy: BasePolicy, spec: Mapping[str, Any], vocabulary: Vocabulary | None
    ) -> None:
        self.policy = policy
        self.spec = dict(spec)
        self.vocabulary = vocabulary
        self.adapter = ObservationAdapter.from_spec(spec)
        self.adapter_state: AdapterState = self.adapter.new_state(1)
        self.policy.set_training_mode(False)
        self.recurrent = is_recurrent(spec)

    @property
    def extractor(self) -> MultimodalExtractor:
        """The policy's multimodal features extractor."""
        # DQN's policy keeps its extractor in q_net, a dynamic attribute of the policy.
        ext = (
            getattr(self.policy, "features_extractor", None)
            or cast(torch.nn.Module, self.policy.q_net).features_extractor
        )
        return cast(MultimodalExtractor, ext)

    @contextlib.contextmanager
    def dropped(self, modalities: Sequence[str]) -> Iterator[None]:
        """Act as if the keys of ``modalities`` (names like ``"audio"``) were missing."""
        extractors = [m for m in self.policy.modules() if isinstance(m, MultimodalExtractor)]
        keys = set()
        for ext in extractors:
            for key, modality in ext.encoder.modalities.items():
                if key in modalities or modality in modalities:
                    keys.add(key)
        unknown = (
            set(modalities)
            - keys
            - {m for ext in extractors for m in ext.encoder.modalities.values()}
        )
        if unknown:
            known = sorted(
                {*ext.encoder.modalities, *ext.encoder.modalities.values()}
                for ext in extractors[:1]
            )
            raise ValueError(
                f"Cannot drop {sorted(unknown)}: this policy's keys/modalities are {known}."
            )
        previous = [ext.drop_keys for ext in extractors]
        try:
            for ext in extractors:
                ext.drop_keys = frozenset(keys)
            yield
        finally:
            for ext, prev in zip(extractors, previous, strict=True):
                ext.drop_keys = prev

    def reset(self, slots: NDArray[np.bool_] | Sequence[int] | None = None) -> None:
        """Start new episodes in ``slots`` (all when None): silence their waveform windows."""
        self.adapter_state.reset(slots)

    def predict(
        self,
        observation: Mapping[str, Any] | NDArray[Any],
        *,
        deterministic: bool = True,
        state: tuple[NDArray[Any], ...] | None = None,
        episode_start: NDArray[np.bool_] | None = None,
    ) -> tuple[NDArray[Any], tuple[NDArray[Any], ...] | None]:
        """Actions for a (batched or single) observation, as SB3's ``predict``.

        Raises:
            ValueError: Float frames for a uint8 image, NaN or infinite values, or an
                empty batch (the same rule as every export's runtime).
        """
        if episode_start is not None and self.adapter_state.batch == len(episode_start):
            self.adapter_state.reset(np.flatnonzero(episode_start))
        converted = self.adapter.adapt(observation, self.adapter_state)
        if isinstance(self.policy.observation_space, spaces.Dict):
            check_space_observation(self.policy.observation_space, converted)
        with torch.no_grad():
            return self.policy.predict(
                converted,
                state=state,
                episode_start=episode_start,
                deterministic=deterministic,
            )

    def act(
        self, observation: Mapping[str, Any] | NDArray[Any], deterministic: bool = True
    ) -> NDArray[Any]:
        """Actions only (a recurrent policy starts from a fresh state each call; see :meth:`actor`)."""
        return self.predict(observation, deterministic=deterministic)[0]

    def actor(self, deterministic: bool = True) -> Actor:
        """A callable ``obs -> actions`` that carries a recurrent policy's state between calls."""
        return Actor(self, deterministic)


class Actor:
    """Stateful action function over batched observations, one episode per slot.

    A recurrent policy (:attr:`Agent.recurrent`) carries its state from one call to
    the next, slot by slot. A slot starts a new episode (a fresh state, a silent
    waveform window) on the first call, after :meth:`reset` and where the call's
    ``episode_start`` is set; the exported runtimes
    (:class:`~mbm_agent.deploy.runtime.ExportedPolicy`, the Keras
    :class:`~mbm_agent.deploy.keras.runtime.PolicyRunner`) take the same calls.

    Attributes:
        agent: The agent acting.
        deterministic: Greedy (True) or sampled actions.
        state: The recurrent state after the last call (None before the first, and
            for a memoryless policy).
    """

    def __init__(self, agent: Agent, deterministic: bool) -> None:
        self.agent = agent
        self.deterministic = deterministic
        self.state: tuple[NDArray[Any], ...] | None = None
        self._starts: NDArray[np.bool_] | None = None

    def reset(self, slots: NDArray[np.bool_] | Sequence[int] | None = None) -> None:
        """Start new episodes: in every slot (None), or in ``slots`` (indices or a mask).

        The state of those slots is reset on the next call.
        """
        if slots is None:
            self.state = None
            self._starts = None
            self.agent.reset()
            return
        if self._starts is not None:
            self._starts[np.asarray(slots)] = True
        self.agent.reset(slots)

    def __call__(
        self,
        observation: Mapping[str, NDArray[Any]],
        episode_start: NDArray[np.bool_] | Sequence[bool] | None = None,
    ) -> NDArray[Any]:
        """One action per slot of a batch.

        Args:
            observation: A batch of observations.
            episode_start: ``(B,)``, True where the observation starts an episode
                (after an autoreset, say); the first call and :meth:`reset` mark
                slots themselves.
        """
        n = len(next(iter(observation.values())))
        if self._starts is None or len(self._starts) != n:
            self._starts = np.ones(n, dtype=bool)
            self.state = None
        if episode_start is not None:
            self._starts |= np.asarray(episode_start, dtype=bool).reshape(n)
        actions, state = self.agent.predict(
            observation,
            deterministic=self.deterministic,
            state=self.state if self.agent.recurrent else None,
            episode_start=self._starts,
        )
        self.state = state if self.agent.recurrent else None
        self._starts = np.zeros(n, dtype=bool)
        return actions


def resolve_model_dir(path: str | Path, which: str = "best") -> Path:
    """A policy folder from a run folder (``best`` or ``final``) or a policy folder itself."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"{p} does not exist: pass a run folder (runs/NAME) or a policy folder."
        )
    if (p / "model.json").is_file():
        return p
    names = {"best": ["best", "final"], "final": ["final"]}.get(which)
    if names is None:
        raise ValueError(f"which={which!r} is not known; use 'best' or 'final'.")
    for name in names:
        if (p / name / "model.json").is_file():
            return p / name
        # A run stopped between the two renames that replace a policy folder left the
        # previous copy here; the next training run puts it back (storage.recover_dir).
        kept = old_dir(p / name)
        if (kept / "model.json").is_file() and not (p / name).exists():
            warnings.warn(
                f"{p / name} is missing; using the copy a stopped run left in {kept}.",
                stacklevel=2,
            )
            return kept
    raise ModelFileError(f"{p} holds no saved policy ({' or '.join(names)}/model.json is missing).")


@dataclass(frozen=True)
class PolicySource:
    """A saved policy's folder, the folder it belongs to, and which of its policies it is.

    Attributes:
        model_dir: The folder holding ``model.json``.
        home: Where what is made from the policy belongs (reports, exports): the run
            folder for its ``best/``, ``final/`` and ``checkpoints/step-N/policy``
            (never a folder that training replaces or prunes), else ``model_dir`` itself
            (a published agent such as ``runs/reference/agents/<Game>``).
        label: ``best``, ``final``, ``step-N`` (a checkpoint) or ``policy`` (a folder of
            its own).
    """

    model_dir: Path
    home: Path
    label: str

    @property
    def suffix(self) -> str:
        """What names a report or export of this policy apart from the run's best one."""
        return "" if self.label in ("best", "policy") else f"-{self.label}"


def policy_source(path: str | Path, which: str = "best") -> PolicySource:
    """Which policy ``path`` (a run or policy folder) and ``which`` load, and its home.

    Raises:
        FileNotFoundError, ModelFileError, ValueError: as :func:`resolve_model_dir`.
    """
    model_dir = Path(os.path.abspath(resolve_model_dir(path, which)))  # "." has no name
    name = model_dir.name
    if name.startswith(".") and name.endswith(".old"):  # a copy a stopped run left
        name = name[1 : -len(".old")]
    if name in ("best", "final"):
        return PolicySource(model_dir, model_dir.parent, name)
    if name == "policy" and model_dir.parent.parent.name == "checkpoints":
        return PolicySource(model_dir, model_dir.parent.parent.parent, model_dir.parent.name)
    return PolicySource(model_dir, model_dir, "policy")


def load_agent(path: str | Path, which: str = "best", device: str = "cpu") -> Agent:
    """Load a trained agent from a run folder or a policy folder, never unpickling anything.

    Args:
        path: ``runs/NAME`` (uses its ``best/`` policy, else ``final/``) or a policy folder.
        which: ``"best"`` (best periodic evaluation, falling back to final) or ``"final"``.
        device: Torch device.

    Raises:
        ModelFileError: Missing, corrupt or incompatible files (the message says which).
    """
    model_dir = resolve_model_dir(path, which)
    spec = read_spec(model_dir)
    vocabulary = None
    if spec.get("vocabulary"):
        vocab_path = model_dir / "vocabulary.json"
        if not vocab_path.is_file():
            raise ModelFileError(
                f"{vocab_path} is missing; this policy reads text and needs its vocabulary: "
                "copy vocabulary.json from the run folder the policy came from "
                "(best/, final/ or checkpoints/step-*/policy/)."
            )
        try:
            vocabulary = Vocabulary.load(vocab_path)
        except (ValueError, OSError, RecursionError) as exc:
            raise ModelFileError(f"{vocab_path}: {exc}") from exc
    try:
        ObservationAdapter.from_spec(spec)
    except ValueError as exc:
        raise ModelFileError(f"{model_dir / 'model.json'}: {exc}") from exc
    policy = build_policy(spec, model_dir / "model.json")
    if vocabulary is not None:
        check_vocabulary(vocabulary, policy, model_dir)
    load_module(model_dir / "model.safetensors", policy)
    return Agent(policy.to(device), spec, vocabulary)


def check_vocabulary(vocabulary: Vocabulary, policy: BasePolicy, model_dir: Path) -> None:
    """Refuse a ``vocabulary.json`` that does not fit the policy's text inputs.

    Raises:
        ModelFileError: Its size differs from the text encoder's number of token ids,
            or its ``max_len`` from the instruction length in ``model.json``.
    """
    from mbm_agent.encoding.encoders import TextEncoder

    for module in policy.modules():
        if not isinstance(module, TextEncoder):
            continue
        if len(vocabulary) != module.vocab_size or vocabulary.max_len != module.seq_len:
            raise ModelFileError(
                f"{model_dir / 'vocabulary.json'} does not fit {model_dir / 'model.json'}: it has "
                f"{len(vocabulary)} words and max_len {vocabulary.max_len}, the policy reads "
                f"{module.vocab_size} token ids and instructions of {module.seq_len}; copy the "
                "vocabulary.json saved with this policy (best/, final/ or "
                "checkpoints/step-*/policy/ of its run)."
            )
