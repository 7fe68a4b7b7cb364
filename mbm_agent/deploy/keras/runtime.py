"""Run SavedModel and TFLite files of the Keras twin on numpy: :class:`PolicyRunner`."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from mbm_agent.deploy.memory import SlotStates
from mbm_agent.deploy.network import OUTPUT_NAMES, STATE_INPUT, STATE_OUTPUT
from mbm_agent.encoding.spec import InputSpec, check_observation

SIGNATURE = "serving_default"


class PolicyRunner:
    """Run an exported policy on a dict of numpy observations.

    Calling it with ``{key: (B, *shape) array}`` returns ``{"action", "logits",
    "value"}`` as numpy arrays. Inputs are checked and converted by the check
    every runtime shares (:func:`mbm_agent.encoding.spec.check_observation`: keys,
    shapes, dtypes, e.g. int32 ids cast to int64, float frames refused); extra
    keys are ignored.

    A policy with memory (an input named ``recurrent_state``) carries its state
    from one call to the next, slot by slot, as
    :class:`~mbm_agent.training.agent.Actor` does: a slot starts a new episode (a
    zero state) on the first call, after :meth:`reset`, where ``episode_start`` is
    set and when the batch size changes. :meth:`run` is the model itself, the
    state an input and an output.

    Args:
        inputs: Expected per-sample shape and dtype of every input, by name.
        run: Function from the checked input dict to the output dict.
        source: Description of the file, for error messages.

    Attributes:
        inputs: What every observation input must look like (named
            :class:`InputSpec`), in order.
        memory: Size of the recurrent state (0: a policy without memory).
    """

    def __init__(
        self,
        inputs: Mapping[str, tuple[tuple[int, ...], np.dtype]],
        run: Callable[[dict[str, np.ndarray]], Mapping[str, Any]],
        source: str,
    ) -> None:
        # A scalar input (a Discrete key) also takes (B, 1), as SB3's buffers store it.
        self.inputs = [
            InputSpec(tuple(s), np.dtype(d).name, flexible_shape=tuple(s) == (), name=k)
            for k, (s, d) in inputs.items()
            if k != STATE_INPUT
        ]
        self.memory = int(inputs[STATE_INPUT][0][0]) if STATE_INPUT in inputs else 0
        self._states = SlotStates(self.memory) if self.memory else None
        self._run = run
        self.source = source

    @property
    def state(self) -> np.ndarray | None:
        """A policy with memory: ``(B, memory)`` state after the last call (else None)."""
        return None if self._states is None else self._states.state

    def reset(self, slots: np.ndarray | Sequence[int] | None = None) -> None:
        """Start new episodes in ``slots`` (all when None): their state is zeroed on the next call."""
        if self._states is not None:
            self._states.reset(slots)

    def check(self, obs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate and convert the observation dict.

        Raises:
            ValueError: Naming the key and the expected shape / dtype.
        """
        return check_observation(self.inputs, obs, ignored=None).values

    def __call__(
        self, obs: Mapping[str, Any], episode_start: np.ndarray | Sequence[bool] | None = None
    ) -> dict[str, np.ndarray]:
        """``{key: (B, *shape)}`` -> ``{"action": (B,), "logits": (B, A), "value": (B,)}``.

        Args:
            obs: A batch of observations.
            episode_start: A policy with memory: ``(B,)``, True where the observation
                starts an episode (its state starts from zeros).
        """
        feeds = self.check(obs)
        if self._states is not None:
            batch = len(next(iter(feeds.values())))
            feeds[STATE_INPUT] = self._states.before(batch, episode_start)
        out = self._run(feeds)
        if self._states is not None:
            self._states.after(np.asarray(out[STATE_OUTPUT]))
        return {k: np.asarray(out[k]) for k in OUTPUT_NAMES}

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The model on checked observations and, with memory, ``recurrent_state``: every output.

        Nothing is carried: with memory the caller feeds the state and gets
        ``next_recurrent_state`` back.
        """
        inputs = self.check(feeds)
        if self.memory:
            if STATE_INPUT not in feeds:
                raise ValueError(
                    f"{self.source} has memory: feed its {STATE_INPUT!r} (B, {self.memory}) "
                    "too, or call the runner, which carries it."
                )
            inputs[STATE_INPUT] = np.asarray(feeds[STATE_INPUT], dtype=np.float32)
        return {k: np.asarray(v) for k, v in self._run(inputs).items()}


def load_savedmodel(path: str | os.PathLike[str]) -> PolicyRunner:
    """Load a SavedModel written by :func:`export_savedmodel` as a numpy runner.

    Args:
        path: The SavedModel directory.

    Returns:
        A :class:`PolicyRunner`.
    """
    loaded = tf.saved_model.load(str(path))
    if SIGNATURE not in loaded.signatures:
        raise ValueError(
            f"{path} has no {SIGNATURE!r} signature; was it written by export_savedmodel?"
        )
    fn = loaded.signatures[SIGNATURE]
    specs = fn.structured_input_signature[1]
    inputs = {
        name: (tuple(spec.shape[1:]), spec.dtype.as_numpy_dtype) for name, spec in specs.items()
    }

    def run(obs: dict[str, np.ndarray]) -> dict[str, Any]:
        out = fn(**{k: tf.constant(v) for k, v in obs.items()})
        return {k: v.numpy() for k, v in out.items()}

    runner = PolicyRunner(inputs, run, f"the SavedModel {path}")
    runner._loaded = loaded  # type: ignore[attr-defined]  # keep the variables alive
    return runner


def load_tflite(path: str | os.PathLike[str], num_threads: int | None = None) -> PolicyRunner:
    """Load a TFLite file written by :func:`export_tflite` as a numpy runner.

    Uses ``ai_edge_litert`` when installed, else ``tf.lite.Interpreter``. Inputs
    and outputs are matched by signature name; the input tensors are resized to
    each call's batch.

    Args:
        path: The ``.tflite`` file.
        num_threads: Interpreter threads (None: the runtime's default).

    Returns:
        A :class:`PolicyRunner`.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
    if SIGNATURE not in interpreter.get_signature_list():
        raise ValueError(f"{path} has no {SIGNATURE!r} signature; was it written by export_tflite?")
    runner_fn = interpreter.get_signature_runner(SIGNATURE)
    details = runner_fn.get_input_details()
    inputs = {
        name: (tuple(int(s) for s in d["shape_signature"][1:]), np.dtype(d["dtype"]))
        for name, d in details.items()
    }

    def run(obs: dict[str, np.ndarray]) -> dict[str, Any]:
        return runner_fn(**obs)

    runner = PolicyRunner(inputs, run, f"the TFLite model {path}")
    runner._interpreter = interpreter  # type: ignore[attr-defined]  # keep it alive
    return runner
