"""Generating with no Python in the process: `edgeport llm generate PROGRAM --native`.

A Python process holds ~100 MiB (the interpreter, numpy, the tokenizer) before the first
weight, which keeps peak memory of a quantized SmolLM2 at 1.7-1.9x its weights plus KV
cache (issue 16 asks for 1.3x). Here Python does only what needs the program's manifest
or tokenizer: it verifies the program, renders and encodes the prompt, and writes a spec
(where the model lies in the program file, the roles of its inputs and outputs, the
prompt and stop ids, the cache's facts, and a decode table: each token id's bytes). Then
it ``exec``s the native runner (``runner.c``, compiled once per machine with the system
C compiler against the ai-edge-litert wheel's libLiteRt.so, `build`): the same process,
whose memory high-water mark (VmHWM) starts again at exec, runs the model through
LiteRT's C API and streams text. bench/README.md, "Native generation", has the figures.

Only cpu programs of the one-graph form with a cache window (`one_graph.takes_window`)
run this way, with byte-level BPE tokenizers (SmolLM2, Llama 3, Qwen) or SentencePiece-style
ones (Llama 2, Mistral, Gemma, Phi-3), greedy or sampled by edgeport's rule
(core/llm/sampling.py). This module imports nothing heavy at import time.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from ...errors import EdgeportError
from ..sampling import Sampling

SOURCE = Path(__file__).with_name("runner.c")
_NEEDS_CPU_PROGRAM = "--native needs a cpu LLM program exported by this version of edgeport"
_HINT_EXPORT = "export it with `edgeport llm export MODEL --backend cpu -o model.edgeport`, or drop --native"


class NativeUnavailable(EdgeportError):
    """The native runner cannot be built here (no C compiler, no libLiteRt.so)."""


class NotNativeProgram(EdgeportError):
    """The program is not one the native runner runs (not a cpu one-graph LLM program)."""


# -- building the runner -----------------------------------------------------------------


def build() -> Path:
    """The runner's executable, compiled on first use into the per-user cache directory,
    keyed by the source, libLiteRt.so's path and the compiler; reused after. Raises
    `NativeUnavailable` when there is no compiler or no libLiteRt.so."""
    from ...cache import cache_dir

    library = litert_library()
    compiler = _compiler()
    key = hashlib.sha256(SOURCE.read_bytes() + f"\0{library}\0{shlex.join(compiler)}".encode()).hexdigest()[:16]
    runner = cache_dir() / "native" / f"runner-{key}"
    if runner.exists():
        return runner
    try:
        runner.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NativeUnavailable(f"cannot write the native runner to {runner.parent}: {exc.strerror or exc}",
                                hint="set EDGEPORT_CACHE_DIR to a writable directory") from None
    building = runner.with_name(f"{runner.name}.{os.getpid()}.building")
    command = [*compiler, "-O2", "-o", str(building), str(SOURCE), f"-L{library.parent}", "-l:libLiteRt.so", "-lm",
               f"-Wl,-rpath,{library.parent}"]
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    except OSError as exc:
        raise NativeUnavailable(f"cannot run the C compiler {compiler[0]}: {exc.strerror or exc}",
                                hint="install a C compiler (gcc), or set CC to one") from None
    if done.returncode != 0:
        building.unlink(missing_ok=True)
        first = next((line for line in done.stderr.splitlines() if "error" in line), done.stderr.strip()[:200])
        raise NativeUnavailable(f"compiling the native runner failed: {first}",
                                hint="check the C compiler (CC) works; rerun with --debug for the command")
    os.replace(building, runner)  # whole or not at all: another process may be building the same
    return runner


def litert_library() -> Path:
    """libLiteRt.so of the installed ai-edge-litert wheel (found, not imported)."""
    spec = importlib.util.find_spec("ai_edge_litert")
    if spec is None or not spec.origin:
        raise NativeUnavailable("--native needs LiteRT's C library (libLiteRt.so), and ai-edge-litert is not installed",
                                hint="pip install 'edgeport[runtime-cpu]'")
    library = Path(spec.origin).parent / "libLiteRt.so"
    if not library.exists():
        raise NativeUnavailable(f"--native needs LiteRT's C library, and {library.parent} has no libLiteRt.so",
                                hint="run --native on Linux, with ai-edge-litert==2.3.0 (pip install 'edgeport[runtime-cpu]')")
    return library


def _compiler() -> list[str]:
    """The C compiler's command: $CC, else cc, else gcc."""
    named = os.environ.get("CC", "")
    candidates = [named] if named.strip() else ["cc", "gcc"]
    for candidate in candidates:
        words = shlex.split(candidate)
        found = shutil.which(words[0]) if words else None
        if found:
            return [found, *words[1:]]
    raise NativeUnavailable(f"--native compiles its runner once, and no C compiler was found ({' or '.join(candidates)})",
                            hint="install one (apt-get install gcc), set CC to one, or drop --native")


# -- the handoff --------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What `edgeport llm generate --native` was asked."""

    program: str
    prompt: str
    chat: bool = False
    max_new_tokens: int = 128
    sampling: Sampling = Sampling()
    threads: int | None = None
    as_json: bool = False
    # when the command started, on the runner's clock (CLOCK_MONOTONIC): its ready_s counts from it
    start_time: float = field(default_factory=time.monotonic)


def generate(request: Request) -> NoReturn:
    """Run ``request`` in the native runner, replacing this process (never returns).
    Raises an `EdgeportError` before anything runs when it cannot."""
    runner = build()
    spec = write_spec(request)
    sys.stdout.flush()
    sys.stderr.flush()
    # Python ignores SIGPIPE, and an ignored signal stays ignored across exec: the runner
    # went on generating into a pipe whose reader had left (| head), then exited 0
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        os.execv(runner, [str(runner), spec])
    except OSError as exc:
        os.unlink(spec)
        raise NativeUnavailable(f"cannot start the native runner {runner}: {exc.strerror or exc}",
                                hint="delete it to build it again") from None


def write_spec(request: Request) -> str:
    """Verify the program, encode the prompt and write the runner's spec to a private
    temporary file; its path. Raises `NotNativeProgram`, `PromptTooLong`."""
    from ...program import Program, read_program_file
    from ..sampling import Sampler
    from ..session import check_prompt_fits, tokenized, vocab_size
    from ..text import LLMInfo, TextCodec

    manifest, files = read_program_file(request.program)
    program = Program(manifest, files)
    info = LLMInfo.of(program)
    artifact = _one_graph_artifact(program)
    text = TextCodec.of(program)
    chat = [{"role": "user", "content": request.prompt}]
    vocab = vocab_size(program)
    ids = tokenized(text.encode_chat(chat) if request.chat else text.encode(request.prompt), vocab)
    check_prompt_fits(ids, info)
    room = info.max_seq_len - len(ids) + 1  # the last token is generated, never decoded
    budget = min(request.max_new_tokens, room)  # a full cache ends generation, as in Python
    threads = _threads(request.threads, manifest.artifacts[artifact].options)
    cache = _weight_cache(manifest.files[artifact].sha256)
    if manifest.artifacts[artifact].metadata.get("int4_weights") and not os.path.exists(cache):
        # XNNPACK must take every INT4 FULLY_CONNECTED (TFLite's kernel computes garbage from
        # them) and LiteRT's C API cannot say: checked on a probe, as the cpu backend does
        # before it first builds the weight cache (backends/cpu/backend.py)
        from ...backends.tflite.int4_probe import check_delegated

        check_delegated(files[artifact], threads)
    lines = [
        f"program {os.path.abspath(request.program)}",
        "model {} {}".format(*entry_range(request.program, artifact)),
        f"cache {cache}",
        f"threads {threads}",
        f"max_seq_len {info.max_seq_len}",
        f"chunk {info.prefill_chunk}",
        f"window_bucket {_window_bucket()}",
        f"max_new_tokens {budget}",
        # why generation ends when the budget is spent (the Python session's stop reasons)
        f"budget_reason {'max_new_tokens' if budget == request.max_new_tokens else 'max_seq_len'}",
        # the sampling rule's parameters (core/llm/sampling.py): repr round-trips through strtod
        f"temperature {float(request.sampling.temperature)!r}",
        f"top_p {float(request.sampling.top_p)!r}",
        f"seed {Sampler(request.sampling).seed}",
        f"json {int(request.as_json)}",
        f"start_time {request.start_time!r}",
        "prompt " + " ".join(map(str, ids)),
        "stop " + " ".join(map(str, info.stop_token_ids)),
        *_io_lines(program, artifact),
    ]
    table = decode_table(str(program.files[manifest.metadata["llm"]["tokenizer"]], "utf-8"), vocab)
    lines += [f"strip_leading_space {int(table.strip_leading_space)}", f"vocab {len(table.pieces)}",
              *(piece.hex() for piece in table.pieces)]
    fd, path = tempfile.mkstemp(prefix="edgeport-native-", suffix=".spec")  # mode 0600: ours alone
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _one_graph_artifact(program: Any) -> str:
    """The program's one cpu model, or `NotNativeProgram`: the runner runs a one-graph
    program with a window input, all of it one delegate step."""
    from ..one_graph import takes_window

    plan = program.manifest.methods.get("prefill")
    steps = plan.steps if plan is not None else ()
    if plan is None or not takes_window(plan) or len(steps) != 1 or steps[0].kind != "delegate" \
            or steps[0].backend != "cpu" or not str(steps[0].artifact).endswith(".tflite"):
        raise NotNativeProgram(_NEEDS_CPU_PROGRAM + " (prefill and decode as one cpu model with a cache window)",
                               hint=_HINT_EXPORT)
    return str(steps[0].artifact)


def _io_lines(program: Any, artifact: str) -> list[str]:
    """The model's inputs and outputs in signature order, each with its role: tokens,
    positions, window, a KV-cache state read whole, or one read as the window's first rows
    (``prefix``: the plan's state prefixes); the logits, or the rows a call writes into a
    state input (``rows <input index> <dim>``: the plan's row updates)."""
    plan = program.manifest.methods["prefill"]
    metadata = program.manifest.artifacts[artifact].metadata
    inputs, outputs = list(metadata["inputs"]), list(metadata["outputs"])
    state_input = {fqn: inputs.index(name) for name, fqn in plan.state_reads.items() if name in inputs}
    rows = {u.rows: (state_input[u.state], u.dim) for u in plan.row_updates if u.state in state_input}
    prefixes = {p.value for p in plan.state_prefixes if (p.length_of, p.length_dim) == ("window", 0)}
    roles = [(name, name if name in ("tokens", "positions", "window") else "prefix" if name in prefixes else "state")
             for name in inputs]
    if [name for name, role in roles if role not in ("state", "prefix")] != ["tokens", "positions", "window"] \
            or len(prefixes) != len(plan.state_prefixes) \
            or any(u.positions != "positions" for u in plan.row_updates) or len(rows) != len(plan.row_updates):
        raise NotNativeProgram(_NEEDS_CPU_PROGRAM + " (its model's inputs are not tokens, positions, window and the "
                               "KV cache)", hint=_HINT_EXPORT)
    lines = [f"in {name} {role}" for name, role in roles]
    for name in outputs:
        if name in rows:
            lines.append("out {} rows {} {}".format(name, *rows[name]))
        elif name in plan.output_values:
            lines.append(f"out {name} logits")
        else:
            raise NotNativeProgram(_NEEDS_CPU_PROGRAM + f" (its model outputs {name}, neither logits nor cache rows)",
                                   hint=_HINT_EXPORT)
    return lines


def entry_range(path: str, name: str) -> tuple[int, int]:
    """(offset, length) of a stored zip entry's bytes in the program file."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length, info.file_size


def _weight_cache(checksum: str) -> str:
    """The XNNPACK weight cache the Python session uses for this model (shared), its
    directory made; "" (pack in memory) where the directory cannot be written."""
    from ...backends.tflite.compiled import WEIGHT_CACHE, weight_cache_path
    from ...cache import make_room, mark_used, usable

    path = weight_cache_path(checksum)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return ""
    if not os.access(path.parent, os.W_OK):
        return ""
    if usable(path):
        mark_used(path)
    else:
        make_room(WEIGHT_CACHE, keep=path)  # the runner adds the file: the bound holds from the next one on
    return str(path)


def _threads(requested: int | None, options: dict[str, Any]) -> int:
    from ...backends.tflite.runner import default_threads

    return requested or int(options.get("threads") or 0) or default_threads()


def _window_bucket() -> int:
    from ..one_graph import WINDOW_BUCKET

    return WINDOW_BUCKET


# -- the decode table ----------------------------------------------------------------------


@dataclass(frozen=True)
class DecodeTable:
    """Each token id's bytes, and whether the tokenizer's decoder strips one leading
    space from the text (SentencePiece's Strip): the Python stream then never prints the
    first token's leading space, and the runner drops it too."""

    pieces: list[bytes]
    strip_leading_space: bool = False


def decode_table(tokenizer_json: str, vocab: int) -> DecodeTable:
    """The tokenizer's decoder as a table of ``vocab`` pieces, one per id the model has a
    row for (ids past them are never generated; a damaged tokenizer's added token at id
    4,000,000,000 made a table of that many), for the two forms the runner decodes:
    byte-level BPE (a piece's characters map back to bytes through GPT-2's byte <->
    character table) and SentencePiece-style BPE (Llama 2, Mistral, Gemma, Phi-3: "▁" is
    a space, a ``<0xNN>`` piece is byte NN, Strip drops the text's leading space). Either
    way a UTF-8 character split over tokens is whole once their bytes are joined. Special
    tokens decode to nothing (the Python stream skips them). `NotNativeProgram` for a
    tokenizer of another decoder."""
    spec = json.loads(tokenizer_json)
    decoder = spec.get("decoder") or {}
    strip = False
    if decoder.get("type") == "ByteLevel":
        byte_of = {char: byte for byte, char in _bytes_to_unicode().items()}
        piece_bytes = functools.partial(_piece_bytes, byte_of=byte_of)
    elif (form := _sentencepiece_form(decoder)) is not None:
        strip, piece_bytes = form, _sentencepiece_bytes
    else:
        raise NotNativeProgram(f"--native decodes byte-level and SentencePiece-style BPE tokenizers; this program's "
                               f"tokenizer decodes {_decoder_name(decoder)}", hint="drop --native for this model")
    pieces: dict[int, bytes] = {}
    for token, id_ in spec["model"]["vocab"].items():
        pieces[int(id_)] = piece_bytes(token)
    for added in spec.get("added_tokens", []):
        pieces[int(added["id"])] = b"" if added.get("special") else piece_bytes(added["content"])
    table = [b""] * vocab
    for id_, piece in pieces.items():
        if 0 <= id_ < vocab:
            table[id_] = piece
    return DecodeTable(table, strip)


_SPACE = "\u2581"  # SentencePiece's "▁"


def _sentencepiece_form(decoder: dict[str, Any]) -> bool | None:
    """For a SentencePiece-style decoder, Sequence[Replace("▁" -> " "), ByteFallback,
    Fuse, optionally Strip(" ", 1, 0)]: whether it strips the leading space; else None."""
    steps = (decoder.get("decoders") or []) if decoder.get("type") == "Sequence" else []
    kinds = [step.get("type") for step in steps]
    if kinds[:3] != ["Replace", "ByteFallback", "Fuse"] or kinds[3:] not in ([], ["Strip"]):
        return None
    replace = steps[0]
    if replace.get("pattern") != {"String": _SPACE} or replace.get("content") != " ":
        return None
    if kinds[3:] and (steps[3].get("content") != " " or steps[3].get("start") != 1 or steps[3].get("stop") != 0):
        return None
    return bool(kinds[3:])


def _sentencepiece_bytes(token: str) -> bytes:
    """A SentencePiece piece's bytes: ``<0xNN>`` is byte NN (ByteFallback), else its text
    with "▁" as a space."""
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        try:
            return bytes([int(token[3:5], 16)])
        except ValueError:
            pass
    return token.replace(_SPACE, " ").encode("utf-8")


def _decoder_name(decoder: dict[str, Any]) -> str:
    if decoder.get("type") == "Sequence":
        return "Sequence[{}]".format(", ".join(str(step.get("type")) for step in decoder.get("decoders") or []))
    return str(decoder.get("type") or "with no decoder")


def _piece_bytes(token: str, byte_of: dict[str, int]) -> bytes:
    """A token's bytes: through the byte table, or its own UTF-8 where one of its
    characters is not in the table (as the tokenizers library's ByteLevel decoder does)."""
    if all(char in byte_of for char in token):
        return bytes(byte_of[char] for char in token)
    return token.encode("utf-8")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: printable bytes stand for themselves, the others for characters
    from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table
