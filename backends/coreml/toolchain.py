"""coremltools, imported lazily and kept quiet.

coremltools talks a lot: on import it warns that it was not tested with our torch and,
off macOS, that its runtime proxies failed to load; while converting it draws tqdm
progress bars on stderr and logs one line per node. Inside `quiet()` all of that goes
to the ``edgeport.backends.coreml`` logger at DEBUG instead, and the per-node lines
are kept in a `Transcript`, so a failed conversion can name the node it failed on.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import re
import warnings
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import Iterator

import edgeport

LOG = logging.getLogger("edgeport.backends.coreml")
INSTALL_HINT = "install it with: pip install 'edgeport[coreml]' (coremltools 9.0)"

# coremltools' torch frontend logs this (at INFO) just before it converts each node,
# and this (at ERROR) when a node's converter raised.
_CONVERTING = re.compile(r"^Converting op (?P<node>\S+) : (?P<kind>\S+)$")
_FAILED_NODE = re.compile(r"ERROR - converting '(?P<kind>[^']+)' op")


@dataclass
class Transcript:
    """What coremltools reported while `quiet()` was active."""

    current_node: str | None = None  # the last node its torch frontend started converting
    node_failed: bool = False  # a node's converter raised (rather than a later MIL pass)


class _Forward(logging.Handler):
    """Turns coremltools' log records into DEBUG records of ours and a `Transcript`."""

    def __init__(self, transcript: Transcript) -> None:
        super().__init__(logging.DEBUG)
        self.transcript = transcript

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        converting = _CONVERTING.match(message)
        if converting:  # one per node: track it, don't flood the log
            self.transcript.current_node = converting["node"]
            return
        if _FAILED_NODE.search(message):
            self.transcript.node_failed = True
        LOG.debug("coremltools %s: %s", record.levelname.lower(), message.strip())


@contextlib.contextmanager
def quiet() -> Iterator[Transcript]:
    """Run coremltools without it printing: its log, warnings and stderr go to DEBUG."""
    transcript = Transcript()
    ct_logger = logging.getLogger("coremltools")
    saved = ct_logger.level, ct_logger.propagate
    handler = _Forward(transcript)
    ct_logger.addHandler(handler)
    ct_logger.setLevel(logging.INFO)  # INFO carries the per-node "Converting op" lines
    ct_logger.propagate = False  # ours, not the root logger's, and no lastResort printing
    # coremltools imports torchao when it is installed, and torchao's pytree
    # registrations make torch log a deprecation line to stderr at import.
    pytree_logger = logging.getLogger("torch.utils._pytree")
    pytree_logger.addHandler(handler)
    pytree_propagate, pytree_logger.propagate = pytree_logger.propagate, False
    stderr = io.StringIO()  # tqdm draws its progress bars on sys.stderr
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(stderr):
            yield transcript
    finally:
        ct_logger.removeHandler(handler)
        ct_logger.setLevel(saved[0])
        ct_logger.propagate = saved[1]
        pytree_logger.removeHandler(handler)
        pytree_logger.propagate = pytree_propagate
        for warning in caught:
            LOG.debug("warning during coremltools call: %s", warning.message)
        for line in _final_frames(stderr.getvalue()):
            LOG.debug("coremltools: %s", line)


def _final_frames(text: str) -> list[str]:
    """The last frame of each progress bar (tqdm redraws a line with carriage returns)."""
    return [line.split("\r")[-1].strip() for line in text.split("\n") if line.strip()]


@functools.cache
def _import() -> ModuleType:
    with quiet():
        import coremltools
        import coremltools.converters.mil.frontend.torch  # noqa: F401  (its op registry)
    return coremltools


def coremltools() -> ModuleType:
    """The coremltools module, imported once and quietly.

    Raises `edgeport.BackendError` saying how to install it when it is missing.
    """
    try:
        return _import()
    except ImportError as error:
        raise edgeport.BackendError(f"coremltools cannot be imported ({error})", hint=INSTALL_HINT) from None


def installed_version() -> str | None:
    """coremltools' version from its distribution metadata, without importing it."""
    try:
        return metadata.version("coremltools")
    except metadata.PackageNotFoundError:
        return None
