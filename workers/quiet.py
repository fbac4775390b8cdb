"""Library noise on model loads, silenced unless ``ADREG_VERBOSE=1``.

Loading a model prints transformers' "Loading weights" progress bars and deprecation ``FutureWarning``\\ s, and
PEFT warns about ``fan_in_fan_out`` on GPT-2 style (Conv1D) bases; none of it is actionable for a user of the
registry. The workers wrap every model load (and the training loop) in :func:`quiet_loading`, which silences
that noise for its duration and restores transformers' logging settings and the warning filters afterwards,
so an in-process job leaves the caller's process as it found it. :func:`quiet_hf` does the same for the whole
process (demo, benchmarks). ``ADREG_VERBOSE=1`` turns both into no-ops.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

VERBOSE_ENV = "ADREG_VERBOSE"


def verbose() -> bool:
    """Whether library output was asked for (``ADREG_VERBOSE`` set to 1 / true / yes / on)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _silence() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")


def quiet_hf() -> None:
    """Silence transformers' progress bars and deprecation chatter for the rest of the process (demo, benchmarks)."""
    if not verbose():
        _silence()


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence library noise while the block runs (model loads, training); restore the previous settings after."""
    if verbose():
        yield
        return
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars, hub_bars = hf_logging.is_progress_bar_enabled(), not hub_utils.are_progress_bars_disabled()
    with warnings.catch_warnings():
        _silence()
        try:
            yield
        finally:
            hf_logging.set_verbosity(level)
            if bars:
                hf_logging.enable_progress_bar()
            if not hub_bars:
                hub_utils.disable_progress_bars()
