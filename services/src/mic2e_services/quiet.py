"""Keep the model libraries' own chatter out of a server's terminal and logs.

transformers, diffusers, huggingface_hub, torchao and torch print progress bars
("Loading weights", "Loading pipeline components") and warnings about their own
internals (load reports, deprecations, config keys they ignore) that say nothing to a user
of this service; our servers report loading, warm-up and errors in their own lines, and
check what matters (missing weights) themselves. Their errors still show.

An operator who wants the libraries' lines back sets TRANSFORMERS_VERBOSITY /
DIFFUSERS_VERBOSITY (e.g. `warning`): those win over the defaults set here.
"""

from __future__ import annotations

import logging
import os

__all__ = ["quiet_model_libraries"]


def quiet_model_libraries() -> None:
    """Silence the model libraries for this process; call before loading a model.

    Environment first: diffusers and transformers read their verbosity when they are
    first imported, and diffusers warns about torchao while being imported. Then the
    libraries' own switches, for a process that had already imported them.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # torchao registers enums with torch's pytree, which warns about each one.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

    import diffusers.utils.logging as diffusers_logging
    import huggingface_hub.utils
    import transformers.utils.logging as transformers_logging

    huggingface_hub.utils.disable_progress_bars()
    for library in (diffusers_logging, transformers_logging):
        library.disable_progress_bar()
        # Read again here: an already-imported library took its level at import.
        name = library.__name__.split(".")[0].upper()
        if os.environ.get(f"{name}_VERBOSITY") == "error":
            library.set_verbosity_error()
