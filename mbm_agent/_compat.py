"""Import-time fixes for third-party packages, applied before Stable-Baselines3 loads.

Importing this module applies them; ``mbm_agent/__init__.py`` imports it first,
so they are in place before any module of the package imports SB3.
"""

from __future__ import annotations

import sys
import types

_NOTF = "tensorboard.compat.notf"


def tensorboard_without_tensorflow() -> None:
    """Keep TensorBoard's writer from importing all of TensorFlow.

    SB3 imports ``torch.utils.tensorboard``, which asks ``tensorboard.compat``
    for a TF-like API; with TensorFlow installed (our ``tf`` extra) that import
    costs about 7 s of start-up on every command, for helpers that TensorBoard's
    own stub provides too. TensorBoard uses its stub when the module
    ``tensorboard.compat.notf`` exists, so we register an empty one, unless the
    process has imported TensorFlow already (then TensorBoard may use it, as before).
    """
    if "tensorflow" not in sys.modules and _NOTF not in sys.modules:
        sys.modules[_NOTF] = types.ModuleType(_NOTF)


tensorboard_without_tensorflow()
