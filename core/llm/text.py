"""Text in and out of an LLM program: its tokenizer and chat template, read from the program.

Running needs the ``tokenizers`` library (Rust, light) and jinja2 (which torch already
brings), not transformers. The chat template is rendered the way transformers renders
it (a sandboxed jinja2 environment that trims blocks), so the same conversation gives
the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import EdgeportError, InputError, ProgramError
from ..manifest_schema import PATH, ManifestError, array, free_form, integer, mapping, nullable, record, text
from ..program import Program
from .chat_template import Refused, TemplateTooCostly, compile_template, render_within_bounds


class NotAnLLMProgram(EdgeportError):
    """The program carries no ``manifest.metadata["llm"]``."""


Message = Mapping[str, str]  # {"role": "user" | "assistant" | "system", "content": "..."}


TOKEN_ID = integer(0, 2**31 - 1)
_REEXPORT = "re-export it with `edgeport llm export`"
# the template is the model's own (export stores it as it is): re-exporting stores it again
_TEMPLATE_FIX = ("the template came from the model's files (chat_template.jinja, tokenizer_config.json or the GGUF): "
                 "fix it there, then re-export with `edgeport llm export`")
KV_CACHES = (".k_cache", ".v_cache")  # the state of each layer (llm/model.py)
LLM_METHODS = ("prefill", "decode")  # what `edgeport llm export` writes, and a generation calls

# What the run side reads of ``manifest.metadata["llm"]`` (export.py `_attach` writes it).
# The manifest schema leaves metadata free-form, so an edited or damaged program is caught
# here, as one `ProgramError` naming the field, before a session calls anything.
LLM_METADATA = record({
    "max_seq_len": integer(1),
    "prefill_chunk": integer(1),
    "tokenizer": PATH,
    "chat_template": nullable(PATH),
    "stop_token_ids": array(TOKEN_ID),
    "bos_token_id": nullable(TOKEN_ID),
    "name": text(),
    "generation": mapping(free_form),
}, open_ended=True)  # the model's config, weights line, stateful decode: read by the tools that show them


def llm_metadata(program: Program) -> dict[str, Any]:
    """``manifest.metadata["llm"]``, checked: `NotAnLLMProgram` if there is none,
    `ProgramError` if it is damaged."""
    meta = program.manifest.metadata.get("llm")
    if meta is None:
        raise NotAnLLMProgram(
            "this program is not an LLM program (it has no llm metadata)",
            hint="export one with `edgeport llm export MODEL -o model.edgeport`",
        )
    try:
        LLM_METADATA(meta, 'metadata["llm"]')
    except ManifestError as exc:
        raise ProgramError(f"the program's LLM facts are damaged: {exc}", hint=_REEXPORT) from None
    missing = [name for name in LLM_METHODS if name not in program.manifest.methods]
    if missing:  # a generation calls both by name: an LLM's facts on another program were a KeyError
        raise ProgramError(f"the program's LLM facts are damaged: it has no {' or '.join(missing)} method (its "
                           f"methods: {', '.join(program.methods)})", hint=_REEXPORT)
    chunk, max_seq_len = meta["prefill_chunk"], meta["max_seq_len"]
    if chunk > max_seq_len:
        raise ProgramError(f"the program's LLM facts are damaged: prefill_chunk {chunk} exceeds max_seq_len "
                           f"{max_seq_len}", hint=_REEXPORT)
    for field in ("tokenizer", "chat_template"):
        if meta[field] is not None and meta[field] not in program.files:
            raise ProgramError(f"the program's LLM facts name a {field} file {meta[field]!r} it does not hold",
                               hint=_REEXPORT)
    for fqn, entry in program.manifest.state.items():  # (positions, kv heads, dim), or (kv heads, positions, dim)
        if fqn.endswith(KV_CACHES) and max_seq_len not in entry["shape"][:2]:
            raise ProgramError(f"the program's LLM facts are damaged: max_seq_len {max_seq_len}, but its KV cache "
                               f"{fqn} is {entry['shape']}", hint=_REEXPORT)
    return meta


@dataclass(frozen=True)
class LLMInfo:
    """``manifest.metadata["llm"]``, typed."""

    max_seq_len: int
    prefill_chunk: int
    stop_token_ids: tuple[int, ...]
    bos_token_id: int | None
    name: str
    generation: dict[str, Any]
    max_positions: int | None = None  # the most `llm export` takes for the model; None: the program does not say

    @staticmethod
    def of(program: Program) -> "LLMInfo":
        meta = llm_metadata(program)
        return LLMInfo(
            max_seq_len=meta["max_seq_len"],
            prefill_chunk=meta["prefill_chunk"],
            stop_token_ids=tuple(meta["stop_token_ids"]),
            bos_token_id=meta["bos_token_id"],
            name=meta["name"],
            generation=dict(meta["generation"]),
            max_positions=_max_positions(meta.get("config")),
        )


def _max_positions(config: object) -> int | None:
    """The longest cache `llm export` takes for the model (export.py `_check_lengths`):
    its trained positions, or its sliding window if shorter; None where the program's
    config does not say (it is free-form metadata)."""
    if not isinstance(config, Mapping):
        return None
    limits = [config.get("max_position_embeddings"), config.get("sliding_window")]
    limits = [n for n in limits if isinstance(n, int) and not isinstance(n, bool) and n > 0]
    return min(limits) if limits else None


class TextCodec:
    """Encode prompts and conversations to token ids; decode ids back, streaming."""

    def __init__(self, tokenizer_json: str, chat_template: str | None, bos_token_id: int | None) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.chat_template = chat_template
        self._bos = self.tokenizer.id_to_token(bos_token_id) if bos_token_id is not None else None
        self._template: Any = None

    @staticmethod
    def of(program: Program) -> "TextCodec":
        meta = llm_metadata(program)
        template = meta["chat_template"]
        try:
            return TextCodec(str(program.files[meta["tokenizer"]], "utf-8"),
                             str(program.files[template], "utf-8") if template is not None else None,
                             meta["bos_token_id"])
        except Exception as exc:  # the tokenizers library raises a bare Exception on bad JSON
            raise ProgramError(f"the program's tokenizer or chat template is damaged: {exc}", hint=_REEXPORT) from None

    def encode(self, text: str) -> list[int]:
        """A plain prompt's ids, with whatever special tokens the tokenizer adds itself."""
        return self.tokenizer.encode(_utf8(text, "the prompt")).ids

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        """The conversation rendered by the chat template, ready for the assistant's turn."""
        return self.tokenizer.encode(self.render_chat(messages), add_special_tokens=False).ids

    def render_chat(self, messages: Sequence[Message]) -> str:
        if self.chat_template is None:
            raise EdgeportError(
                "this model has no chat template",
                hint="generate without --chat, with the prompt written as the model expects",
            )
        _check_messages(messages)
        for message in messages:
            _utf8(message["content"], f"a {message['role'] or 'chat'} message")
        try:
            if self._template is None:
                self._template = compile_template(self.chat_template)
            rendered = render_within_bounds(
                self._template, sum(len(message["content"]) for message in messages),
                messages=list(messages), add_generation_prompt=True, bos_token=self._bos or "", eos_token="",
            )
        except Refused as exc:  # the template's own raise_exception: a conversation it does not take
            raise InputError(f"the model's chat template refuses this conversation: {exc}",
                             hint="check the messages' roles and order") from None
        except TemplateTooCostly as exc:
            raise ProgramError(f"the program's chat template was stopped rendering this conversation: {exc}",
                               hint=_TEMPLATE_FIX) from None
        except Exception as exc:  # jinja2's syntax and undefined-name errors, a type error inside the template
            raise ProgramError(f"the program's chat template failed on this conversation: {type(exc).__name__}: "
                               f"{exc}", hint=_TEMPLATE_FIX) from None
        if not rendered:
            raise ProgramError("the program's chat template renders the conversation as no text", hint=_TEMPLATE_FIX)
        return rendered

    def stream(self) -> "TextStream":
        return TextStream(self.tokenizer)


class TextStream:
    """Turns generated ids into text pieces as they come; a character split over several
    tokens comes out whole with its last token."""

    def __init__(self, tokenizer: Any) -> None:
        from tokenizers.decoders import DecodeStream

        self._tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=True)

    def step(self, token_id: int) -> str:
        return self._stream.step(self._tokenizer, token_id) or ""


def _check_messages(messages: object) -> None:
    """Refuse a conversation that is not a list of {role, content} texts before the
    template sees it: a str or dict was an AttributeError, and a message without its
    content made the template fail, which blamed the program."""
    expected = 'a list of {"role": ..., "content": ...} mappings with text values'
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise InputError(f"messages must be {expected}, got {type(messages).__name__}",
                         hint='wrap one message in a list: [{"role": "user", "content": "hello"}]')
    for number, message in enumerate(messages, 1):
        if not isinstance(message, Mapping):
            raise InputError(f"message {number} must be a mapping with text role and content, got "
                             f"{type(message).__name__}", hint=f"messages are {expected}")
        for key in ("role", "content"):
            if key not in message:
                raise InputError(f"message {number} has no {key!r}", hint=f"messages are {expected}")
            if not isinstance(message[key], str):
                raise InputError(f"message {number}'s {key!r} must be text, got {type(message[key]).__name__}",
                                 hint=f"messages are {expected}")


def _utf8(text: str, what: str) -> str:
    """`text`, if it is text the tokenizer takes: a prompt read from bytes that are not
    UTF-8 (a terminal in another encoding) holds lone surrogates, and the tokenizers
    library raised a bare TypeError on them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{what} is not valid UTF-8 text (character {exc.start} cannot be encoded)",
                         hint="give the text in UTF-8") from None
    except AttributeError:
        raise InputError(f"{what} must be text, not {type(text).__name__}") from None
    return text
