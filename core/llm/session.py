"""Generating with an LLM program: prefill in chunks, decode token by token, stream text.

A `Session` owns the program's runtime and knows which tokens its KV cache holds
(`Session.tokens`, at positions 0..n-1). A new prompt that starts with tokens already
in the cache (the earlier turns of a chat) prefills only what is new: attention masks
every cache row at or after the chunk's first position, so rewinding is just a smaller
position, and stale rows are never read. A plain `generate` starts from position 0.

The cache holds one generation's tokens at a time: a generation interrupted by another
on the same program (interleaved, or from another thread) raises `ExecutionError` at
its next token rather than go on over the other's cache.

The cache lives inside the decode delegate (`Runtime.place_state`): a decode call copies
none of it. A session asks its backends to cache the packed weights (`WEIGHT_CACHE_KEY`):
the cpu backend then runs the model with LiteRT's compiled model, whose weights XNNPACK
packs once into a file that later loads map (the only copy resident). A one-graph
program that takes a cache window (`one_graph.takes_window`) is given the filled rows,
rounded up to a bucket, so attention reads only those. Where prefill and decode are one graph (cpu, `one_graph`), prefill reads it
in place too; otherwise prefill, called once per prompt chunk, gets it as an ordinary input.

Generating imports no torch: inputs are numpy arrays, and a program whose steps are all
delegates runs with numpy values even where torch is installed (`Program.runtime`),
which keeps torch's ~220 MB out of the process.
"""

from __future__ import annotations

import dataclasses
import resource
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from ..arrays import as_numpy
from ..backend import WEIGHT_CACHE_KEY
from ..errors import EdgeportError, ExecutionError, InputError, ProgramError
from ..program import Program
from ..runtime import Runtime
from ..torch_steps import portable_steps
from .one_graph import takes_any_length, takes_window, window_length
from .sampling import Sampler, Sampling
from .text import LLMInfo, Message, TextCodec


class PromptTooLong(EdgeportError):
    """The prompt does not fit the program's KV cache."""


@dataclass(frozen=True)
class Token:
    id: int
    text: str  # the text this token completes ("" while a character is still partial)


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int  # prompt length
    prefilled_tokens: int  # of which run through prefill (the rest were in the cache already)
    generated_tokens: int
    time_to_first_token_s: float
    prefill_s: float
    decode_s: float
    stop_reason: str  # "stop_token", "max_new_tokens" or "max_seq_len"
    peak_rss_mb: float

    @property
    def prefill_tok_s(self) -> float:
        return self.prefilled_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        """Tokens per second of the decode calls (the first token comes from prefill)."""
        calls = max(self.generated_tokens - 1, 0)
        return calls / self.decode_s if self.decode_s > 0 else 0.0

    def to_json(self) -> dict[str, float | int | str]:
        return {**dataclasses.asdict(self), "prefill_tok_s": self.prefill_tok_s, "decode_tok_s": self.decode_tok_s}


class Session:
    """An LLM program ready to generate; keeps the conversation in its KV cache."""

    def __init__(self, program: Program, threads: int | None = None) -> None:
        _check_threads(threads)
        self.threads = threads
        self.program = _for_generation(program, threads)
        self.info = LLMInfo.of(program)
        self.text = TextCodec.of(program)
        self.vocab = vocab_size(program)
        self._runtime: Runtime | None = None
        self._owner: Generation | None = None  # the generation whose tokens the cache holds now
        self._lock = threading.Lock()  # one call into the cache at a time
        self._any_length = takes_any_length(program.manifest.methods["prefill"])
        self._window = takes_window(program.manifest.methods["prefill"])  # reads only the filled cache rows
        self.tokens: list[int] = []  # what the cache holds, position by position
        self._windows: dict[int, np.ndarray] = {}  # window inputs by length, made once

    @property
    def runtime(self) -> Runtime:
        """The program's runtime, loaded on first use (a prompt that does not fit fails
        before any artifact is loaded), with the cache placed inside the decode delegate."""
        if self._runtime is None:
            torch_steps = portable_steps(self.program.manifest) or self.program.reference  # torch programs
            arrays = "auto" if torch_steps else "numpy"
            self._runtime = self.program.runtime(arrays)
            self._runtime.place_state("decode")
        return self._runtime

    def warm_up(self) -> None:
        """Load the runtime and call each method once, so the next calls run at speed:
        XNNPACK packs a subgraph's weights on its first call. Leaves the cache empty."""
        self.prefill([0], 0)
        self.decode(0)
        self.tokens = []

    # -- calls ------------------------------------------------------------------------

    def prefill(self, ids: Sequence[int], start: int) -> np.ndarray:
        """Run ``ids`` at positions start.. through prefill, chunk by chunk; the logits
        after the last one. The cache then holds ids at those positions."""
        ids = self._token_ids(ids)
        self._check_start(start, len(ids))
        T = self.info.prefill_chunk
        logits = None
        # The rows from start on are overwritten chunk by chunk: record them as each is,
        # so a prefill cut short (Ctrl-C in a chat, a failed call) leaves the tokens the
        # rows hold, and the next prompt is not matched against rows no longer there.
        del self.tokens[start:]
        for offset in range(0, len(ids), T):
            chunk = ids[offset : offset + T]
            logits = self.runtime.run("prefill", self._prefill_inputs(chunk, start + offset), {}).outputs
            self.tokens += chunk
        return _row(logits)

    def _prefill_inputs(self, chunk: Sequence[int], start: int) -> tuple[np.ndarray, ...]:
        """Prefill's inputs for ``chunk`` at positions start..: as they are where prefill
        takes any length (`one_graph`), else padded to the chunk length, with the index
        of the last real token."""
        positions = np.arange(start, start + len(chunk), dtype=np.int64)
        if self._window:
            return np.array([chunk], dtype=np.int64), positions, self._window_of(start)
        if self._any_length:
            return np.array([chunk], dtype=np.int64), positions
        T, S = self.info.prefill_chunk, self.info.max_seq_len
        tokens = np.zeros((1, T), dtype=np.int64)
        tokens[0, : len(chunk)] = chunk
        # Padding rows land after the real ones, at clamped positions no read reaches.
        positions = np.minimum(np.arange(start, start + T, dtype=np.int64), S - 1)
        return tokens, positions, np.array([len(chunk) - 1], dtype=np.int64)

    def decode(self, token: int) -> np.ndarray:
        """Feed one token at the next position; the logits after it."""
        self._token_ids([token])
        position = len(self.tokens)
        if position >= self.info.max_seq_len:
            raise EdgeportError(f"the KV cache is full: its {self.info.max_seq_len} positions hold tokens already",
                                hint="prefill a new conversation at position 0, or re-export with a larger "
                                     "--max-seq-len")
        inputs: tuple[np.ndarray, ...] = (np.array([[token]], dtype=np.int64), np.array([position], dtype=np.int64))
        if self._window:
            inputs += (self._window_of(position),)
        logits = self.runtime.run("decode", inputs, {}).outputs
        self.tokens.append(token)
        return _row(logits)

    def _window_of(self, start: int) -> np.ndarray:
        """The window input of a call whose first position is ``start``: 0..W-1 over the
        cache rows filled before it, W rounded up to a bucket (`one_graph.window_length`)."""
        W = window_length(start, self.info.max_seq_len)
        if self._windows.get(W) is None:
            self._windows[W] = np.arange(W, dtype=np.int64)
        return self._windows[W]

    # -- one generation at a time ------------------------------------------------------
    # The cache holds one generation's tokens. The generation that prefilled last owns
    # it; an unfinished one that lost it says so at its next token instead of going on
    # over another's cache (two interleaved generations, or two threads).

    def prefill_for(self, generation: "Generation", ids: list[int], reuse: bool) -> tuple[int, np.ndarray]:
        """Prefill ``ids`` for ``generation``, which owns the cache from now on: with
        ``reuse``, from the end of their longest prefix already in the cache. Returns
        that position and the logits."""
        with self._lock:
            self._owner = generation
            start = _common_prefix(self.tokens, ids) if reuse else 0
            start = min(start, len(ids) - 1)  # prefill at least one token: its logits pick the first
            return start, self.prefill(ids[start:], start)

    def decode_for(self, generation: "Generation", token: int) -> np.ndarray:
        """`decode`, for ``generation``, if it still owns the cache."""
        with self._lock:
            if self._owner is not generation:
                raise ExecutionError(
                    "another generation on this program has used its KV cache since this one started; this one "
                    "cannot go on", hint="finish (or drop) one generation before starting the next, or load the "
                                         "program once per concurrent generation")
            return self.decode(token)

    def release(self, generation: "Generation") -> None:
        """``generation`` has ended (the cache keeps its tokens, for a chat's next turn)."""
        with self._lock:
            if self._owner is generation:
                self._owner = None

    # -- generation -------------------------------------------------------------------

    def generate(self, prompt: str | Sequence[int], *, max_new_tokens: int = 128, sampling: Sampling = Sampling(),
                 reuse_cache: bool = False) -> "Generation":
        """Stream the continuation of ``prompt`` (text, or token ids). With
        ``reuse_cache`` the prompt's longest prefix already in the cache is not run again."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a whole number of 1 or more, got {max_new_tokens!r}")
        return Generation(self, self._ids(prompt), int(max_new_tokens), sampling, reuse_cache)

    def _ids(self, prompt: str | Sequence[int]) -> list[int]:
        """The prompt's token ids; an id the model has no row for is an InputError here,
        not LiteRT's 'gather index out of bounds' at prefill."""
        if isinstance(prompt, str):
            return tokenized(self.text.encode(prompt), self.vocab)
        return self._token_ids(prompt)

    def _token_ids(self, ids: Sequence[int]) -> list[int]:
        """``ids`` as ints, if each is a token id the model has a row for."""
        if isinstance(ids, (str, bytes, bytearray)) or not isinstance(ids, Sequence):
            raise InputError(f"the prompt must be text or a sequence of token ids, got {type(ids).__name__}")
        bad = next((t for t in ids if not _whole(t) or not 0 <= t < self.vocab), None)
        if bad is not None:
            raise InputError(f"token id {bad!r} is not one of the model's {self.vocab} (0 to {self.vocab - 1})")
        return [int(t) for t in ids]

    def _check_start(self, start: int, count: int) -> None:
        """Refuse a prefill whose rows would not follow the cache's: LiteRT's 'gather index
        out of bounds' past the cache, or positions left unfilled (the session's tokens no
        longer matching the rows, the next decode at the wrong position)."""
        S, filled = self.info.max_seq_len, len(self.tokens)
        if count == 0:
            raise InputError("prefill takes at least one token id", hint="the logits come from its last token")
        if not _whole(start) or not 0 <= start <= filled:
            raise InputError(f"prefill's start must be a position from 0 to {filled} (the cache holds {filled} "
                             f"tokens), got {start!r}", hint="start where the cache's tokens end, or earlier "
                                                              "to rewind")
        if start + count > S:
            raise InputError(f"{count} tokens from position {start} run past this program's KV cache of {S} "
                             "positions", hint="prefill fewer tokens, or re-export with a larger --max-seq-len")

    def chat(self, messages: Sequence[Message], *, max_new_tokens: int = 256, sampling: Sampling = Sampling()) -> "Generation":
        """The assistant's reply to ``messages``; earlier turns still in the cache are reused."""
        return self.generate(tokenized(self.text.encode_chat(messages), self.vocab), max_new_tokens=max_new_tokens,
                             sampling=sampling, reuse_cache=True)

    def check_fits(self, ids: Sequence[int]) -> None:
        check_prompt_fits(ids, self.info)


def check_prompt_fits(ids: Sequence[int], info: LLMInfo) -> None:
    """Raise unless the prompt `ids` leaves room in the program's cache to generate (in
    Python and in the native runner alike)."""
    if not ids:
        raise EdgeportError("the prompt is empty", hint="give at least one token of prompt")
    if len(ids) >= info.max_seq_len:
        raise PromptTooLong(
            f"the prompt is {len(ids)} tokens; this program's KV cache holds {info.max_seq_len} positions, "
            f"and at least one must stay free to generate", hint=longer_cache_hint(len(ids) + 1, info.max_positions))


def longer_cache_hint(needed: int, most: int | None, what: str = "the prompt") -> str:
    """What to do about ``what`` needing ``needed`` positions: a --max-seq-len that export
    takes for the model (at most ``most``, its trained length or sliding window; the
    hint used to suggest 16384 for SmolLM2, which export refuses past 8192)."""
    if most is not None and needed > most:
        return f"shorten {what}: the model takes at most {most} positions, so no export of it holds this"
    length = _next_power_of_two(needed)
    if most is None:
        return f"shorten {what}, or re-export with --max-seq-len {length} or more"
    if length >= most:
        return f"shorten {what}, or re-export with --max-seq-len {most} (the most the model takes)"
    return f"shorten {what}, or re-export with --max-seq-len {length} or more (the model takes up to {most})"


class Generation(Iterator[Token]):
    """Tokens as they are generated; ``stats`` is set once the generation has ended."""

    def __init__(self, session: Session, ids: list[int], max_new_tokens: int, sampling: Sampling, reuse: bool) -> None:
        session.check_fits(ids)
        self.ids: list[int] = []
        self.sampler = Sampler(sampling)  # its seed: the one in use, drawn from the OS if none was given
        self.stats: GenerationStats | None = None
        self._pieces: list[str] = []
        self._steps = self._run(session, ids, max_new_tokens, reuse)

    def __next__(self) -> Token:
        return next(self._steps)

    @property
    def text(self) -> str:
        return "".join(self._pieces)

    @property
    def seed(self) -> int:
        return self.sampler.seed

    def _run(self, session: Session, ids: list[int], max_new: int, reuse: bool) -> Iterator[Token]:
        start_time = time.perf_counter()
        start, logits = session.prefill_for(self, ids, reuse)
        prefill_s = time.perf_counter() - start_time
        stops = set(session.info.stop_token_ids)
        stream = session.text.stream()
        first_token_s, decode_s, reason = 0.0, 0.0, "max_new_tokens"
        for step in range(max_new):
            token = self.sampler.pick(logits)
            if step == 0:
                first_token_s = time.perf_counter() - start_time
            if token in stops:
                reason = "stop_token"
                break
            self.ids.append(token)
            piece = stream.step(token)
            self._pieces.append(piece)
            yield Token(token, piece)
            if step == max_new - 1:
                break
            if len(session.tokens) >= session.info.max_seq_len:
                reason = "max_seq_len"
                break
            t0 = time.perf_counter()
            logits = session.decode_for(self, token)
            decode_s += time.perf_counter() - t0
        session.release(self)
        self.stats = GenerationStats(
            prompt_tokens=len(ids),
            prefilled_tokens=len(ids) - start,
            generated_tokens=len(self.ids),
            time_to_first_token_s=first_token_s,
            prefill_s=prefill_s,
            decode_s=decode_s,
            stop_reason=reason,
            peak_rss_mb=peak_rss_mb(),
        )


def _whole(value: object) -> bool:
    """Whether ``value`` is a whole number (a Python or numpy int; not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far. On Linux, the memory map's own
    high-water mark (VmHWM): ``ru_maxrss`` survives ``exec``, so a process started from
    a large one (a test run, a notebook) would report its parent's peak."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # no procfs (macOS)
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def _row(logits: object) -> np.ndarray:
    """The logits as one numpy row (a torch tensor where the runtime holds torch values)."""
    return as_numpy(logits).reshape(-1)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _next_power_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _for_generation(program: Program, threads: int | None) -> Program:
    """``program`` as a session runs it, the caller's left as it is (a later ``save``
    writes what was loaded): its cpu delegates with ``threads`` threads, and each
    backend asked to keep its packed weights in a cache named by the artifact's
    checksum (`WEIGHT_CACHE_KEY`)."""
    manifest = program.manifest
    artifacts = {}
    for path, info in manifest.artifacts.items():
        if threads is not None and "threads" in info.options:  # 0: every core, as cpu.threads 0
            info = dataclasses.replace(info, options={**info.options, "threads": threads})
        if path in manifest.files:
            info = dataclasses.replace(info, metadata={**info.metadata, WEIGHT_CACHE_KEY: manifest.files[path].sha256})
        artifacts[path] = info
    return Program(dataclasses.replace(manifest, artifacts=artifacts), program.files, reference=program.reference,
                   registry=program._registry)  # the same plugins as the caller's


def _check_threads(threads: int | None) -> None:
    """None or 0 (every core) to 256, what `cpu.threads` takes: -2 used to be stored in
    the program and fail every later load, blaming the file."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or not 0 <= threads <= 256:
        raise InputError(f"threads must be a whole number from 1 to 256 (0 or None: every core), got {threads!r}")


def tokenized(ids: list[int], vocab: int) -> list[int]:
    """The ids the program's tokenizer gave, if its model has a row for each: a tokenizer
    that is not the model's is the program's fault, not the prompt's (a chat blamed the
    user's token id; the native runner failed in LiteRT's gather)."""
    past = next((t for t in ids if not 0 <= t < vocab), None)
    if past is not None:
        raise ProgramError(f"the program's tokenizer gave token id {past}, but its model has rows for {vocab} ids",
                           hint="re-export the model: its tokenizer is not the model's")
    return ids


def vocab_size(program: Program) -> int:
    """The number of token ids the model has rows for: decode's logits' last dim."""
    outputs = program.manifest.methods["decode"].outputs
    size = outputs[0].shape[-1] if outputs and outputs[0].shape else None
    if not isinstance(size, int):
        shape = list(outputs[0].shape) if outputs else "no output"
        raise ProgramError(f"the decode method's logits have no fixed vocabulary size ({shape})",
                           hint="re-export it with `edgeport llm export`")
    return size


_SESSIONS: "weakref.WeakKeyDictionary[Program, Session]" = weakref.WeakKeyDictionary()


def session_of(program: Program, threads: int | None = None) -> Session:
    """The session of ``program`` (one per loaded program, so its cache is tracked once);
    a new one, whose cache starts empty, when ``threads`` asks for another count."""
    session = _SESSIONS.get(program)
    if session is None or (threads is not None and threads != (session.threads or 0)):  # 0 too: every core
        session = _SESSIONS[program] = Session(program, threads)
    return session
