"""``edgeport llm``: export an LLM (GGUF or Hugging Face directory), generate, chat.

    edgeport llm export SmolLM2-135M-Instruct.Q4_1.gguf --backend cpu -o smol.edgeport
    edgeport llm generate smol.edgeport --prompt "The capital of France is"
    edgeport llm chat smol.edgeport
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from ..devtools.html import human_bytes
from ..errors import EdgeportError, InputError
from . import cli
from ._output import FiniteRange, check_writable, console, print_json, progress
from .explain import print_quantization, print_summary


@cli.group()
def llm() -> None:
    """LLMs: export a GGUF file or Hugging Face directory, then generate or chat."""


@llm.command("export")
@click.argument("model", type=click.Path(exists=True))
@click.option("--backend", "-b", default="cpu", show_default=True,
              help="Backend(s) to run both methods on, in priority order (mediatek,cpu: the lookups NeuroPilot "
                   "cannot take run on cpu, so no step needs torch).")
@click.option("--max-seq-len", default=512, show_default=True, type=click.IntRange(min=2),
              help="Positions in the KV cache: prompt plus generated tokens.")
@click.option("--prefill-chunk", default=32, show_default=True, type=click.IntRange(min=1),
              help="Prompt tokens per prefill call (cpu: 3 or more).")
@click.option("--quantize", type=click.Choice(["int8-dynamic", "int4-weight", "a16w8"], case_sensitive=False),
              help="cpu: linear weights as int8 per channel or int4 in groups of 32 (activations quantized per "
                   "token at run time); coreml: int4-weight, uint4 weight blocks of 32 with a scale and an offset "
                   "each, written by edgeport (iOS18 target); a16w8 (qualcomm): 16-bit activations calibrated on "
                   "a built-in text, int8 weights; default fp32.")
@click.option("--float-outliers/--no-float-outliers", default=True, show_default=True,
              help="Quantized on cpu: keep each linear's few outlier input channels in float (more accurate, a little slower).")
@click.option("--rotate", is_flag=True,
              help="int8-dynamic: rotate the residual stream, folded into the weights (perplexity near fp32's, "
                   "outlier channels on the down projections only).")
@click.option("--keep-reference/--no-keep-reference", default=None,
              help="Store each delegate's torch program, which --reference runs (default: only for backends that "
                   "cannot run here, e.g. coreml off macOS; for SmolLM2 they are 513 MiB of a coreml program).")
@click.option("--option", "option_items", multiple=True, metavar="BACKEND.KEY=VALUE", help="A backend option.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Program file to write.")
def export_llm(model: str, backend: str, max_seq_len: int, prefill_chunk: int, quantize: str | None,
               float_outliers: bool, rotate: bool, keep_reference: bool | None, option_items: tuple[str, ...],
               output: str) -> None:
    """Export MODEL (a .gguf file or a local Hugging Face model directory)."""
    from ..llm import export
    from ..llm.config import DecoderConfig
    from .export import parse_options  # the compile side: imports torch

    check_writable(output, reads=(model,))
    start = time.perf_counter()
    with progress(True) as show:
        program = export(model, backend=backend, max_seq_len=max_seq_len, prefill_chunk=prefill_chunk,
                         quantize=quantize, float_outliers=float_outliers, rotate=rotate, options=parse_options(option_items),
                         keep_reference=keep_reference, progress=show)
        if show:
            show("saving")
        program.save(output)
    size = sum(len(data) for data in program.files.values())
    llm_meta = program.manifest.metadata["llm"]
    config = DecoderConfig.from_json(llm_meta["config"])
    console.print(f"model: {llm_meta['name']}: {config.describe(llm_meta['max_seq_len'])}", highlight=False)
    console.print(f"wrote {output} ({human_bytes(size)}; {llm_meta['weights']} weights "
                  f"{human_bytes(llm_meta['weight_bytes'])}) in {time.perf_counter() - start:.1f} s")
    print_methods(program)


def print_methods(program: Any) -> None:
    """Each method's placement, and for a calibrated scheme (a16w8) what each backend
    runs quantized, what it computes in float, and the calibration's cost."""
    for method in program.methods:
        console.print(f"[bold]{method}[/bold]")
        report = program.report(method)
        print_summary(report)
        if "quantization" in report:
            print_quantization(report)


_REFERENCE = click.option(
    "--reference", is_flag=True,
    help="Run each delegate whose backend cannot run here (coreml off macOS) on its torch reference, labelled "
         "so: the float partition, even for a program whose backend compresses the weights.")


def _sampling_options(command: Any) -> Any:
    for option in reversed([
        click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(min=1),
                     help="Tokens to generate at most (generation also ends at a stop token)."),
        click.option("--temperature", default=0.0, show_default=True, type=FiniteRange(min=0.0),
                     help="0 picks the most likely token (greedy)."),
        click.option("--top-p", default=1.0, show_default=True, type=FiniteRange(0.0, 1.0, min_open=True),
                     help="Sample among the most likely tokens whose probabilities add up to this (with "
                          "--temperature > 0)."),
        click.option("--seed", type=click.IntRange(0, (1 << 64) - 1),
                     help="Seed of the sampler (with --temperature > 0; default: one from the OS, which generate "
                          "--json prints as \"seed\")."),
        click.option("--threads", type=click.IntRange(1, 256), help="CPU threads, 1 to 256 (default: all cores)."),
    ]):
        command = option(command)
    return command


@llm.command()
@click.argument("program", type=click.Path(exists=True, dir_okay=False))
@click.option("--prompt", required=True, help="The text to continue (with --chat: the user's message).")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat template.")
@_sampling_options
@click.option("--json", "as_json", is_flag=True, help="Print the text, token ids and speed as JSON at the end.")
@click.option("--native", is_flag=True, help="Generate in edgeport's native runner, with no Python in the process "
              "(cpu programs): less memory. Builds the runner with the C compiler on first use.")
@_REFERENCE
def generate(program: str, prompt: str, chat: bool, max_new_tokens: int, temperature: float, top_p: float,
             seed: int | None, threads: int | None, as_json: bool, native: bool, reference: bool) -> None:
    """Stream PROGRAM's continuation of --prompt, then the speed line."""
    from ..llm import Sampling, session_of
    from ..program import load

    start = time.perf_counter()
    if native and reference:
        raise click.UsageError("--native runs cpu programs in the native runner; --reference runs torch programs")
    _note_greedy(temperature, top_p, seed)
    if native:
        _generate_native(program, prompt, chat, max_new_tokens, Sampling(temperature, top_p, seed), threads, as_json)
    session = session_of(load(program, reference=reference), threads)
    sampling = Sampling(temperature, top_p, seed)
    if chat:
        tokens = session.chat([{"role": "user", "content": prompt}], max_new_tokens=max_new_tokens, sampling=sampling)
    else:
        tokens = session.generate(prompt, max_new_tokens=max_new_tokens, sampling=sampling)
    session.warm_up()  # after the prompt is known to fit: a prompt too long fails before any of this
    ready_s = time.perf_counter() - start
    runs_on = off_device(session.runtime.step_labels("decode"))
    if as_json:
        for _ in tokens:
            pass
        print_json({"text": tokens.text, "token_ids": tokens.ids, "seed": tokens.seed,
                    "stats": {"ready_s": ready_s, **tokens.stats.to_json()}, "runs_on": runs_on})
        return
    for token in tokens:
        click.echo(token.text, nl=False)
    click.echo()
    where = f" · decode runs on {', '.join(runs_on)}" if runs_on else ""
    click.echo(f"ready in {ready_s:.1f} s · " + speed_line(tokens.stats) + where, err=True)


def _note_greedy(temperature: float, top_p: float, seed: int | None) -> None:
    """Say so when --top-p or --seed is given for a greedy run (temperature 0), which
    ignores them: they were dropped without a word."""
    ignored = [name for name, given in (("--top-p", top_p != 1.0), ("--seed", seed is not None)) if given]
    if temperature == 0 and ignored:
        verb = "applies" if len(ignored) == 1 else "apply"
        click.echo(f"note: {' and '.join(ignored)} {verb} only with --temperature above 0; this run is greedy",
                   err=True)


def _generate_native(program: str, prompt: str, chat: bool, max_new_tokens: int, sampling: Any,
                     threads: int | None, as_json: bool) -> None:
    """`generate --native`: hand over to the native runner, which replaces this process."""
    from ..llm import native

    native.generate(native.Request(program, prompt, chat=chat, max_new_tokens=max_new_tokens, sampling=sampling,
                                   threads=threads, as_json=as_json, start_time=time.monotonic()))


def off_device(labels: list[str]) -> list[str]:
    """The steps' run labels that are not the real target ("qualcomm: simulator",
    "mediatek: reference (CPU)"), once each: speeds measured there say nothing about it."""
    return list(dict.fromkeys(label for label in labels if ": " in label))


@llm.command()
@click.argument("program", type=click.Path(exists=True, dir_okay=False))
@click.option("--system", help="A system message to start the conversation with.")
@_sampling_options
@_REFERENCE
def chat(program: str, system: str | None, max_new_tokens: int, temperature: float, top_p: float,
         seed: int | None, threads: int | None, reference: bool) -> None:
    """Talk with PROGRAM; the conversation stays in its KV cache. /reset starts over, /exit ends."""
    from ..llm import PromptTooLong, Sampling, session_of
    from ..program import load

    _note_greedy(temperature, top_p, seed)
    session = session_of(load(program, reference=reference), threads)
    if session.text.chat_template is None:
        raise EdgeportError("this model has no chat template, so it cannot chat",
                            hint=f"generate from a prompt instead: edgeport llm generate {program} --prompt TEXT")
    session.warm_up()
    sampling = Sampling(temperature, top_p, seed)
    start = [{"role": "system", "content": system}] if system else []
    _check_system_fits(session, start)
    messages = list(start)
    click.echo(f"chatting with {session.info.name or program} ({session.info.max_seq_len} positions); "
               "/reset starts over, /exit or end of input ends", err=True)
    while True:
        line = _next_line()
        if line is None:
            break
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            messages = list(start)
            click.echo("(conversation cleared)", err=True)
            continue
        if not line.strip():
            continue
        if line.strip().startswith("/") and " " not in line.strip():
            click.echo(f"unknown command {line.strip()}: /reset starts over, /exit ends", err=True)
            continue
        messages.append({"role": "user", "content": line})
        try:
            reply = session.chat(messages, max_new_tokens=max_new_tokens, sampling=sampling)
        except (PromptTooLong, InputError) as exc:  # this turn's fault: the conversation goes on without it
            messages.pop()
            earlier = len(messages) > len(start)  # turns a new conversation would drop
            hint = "/reset starts a new conversation" if isinstance(exc, PromptTooLong) and earlier else exc.hint
            click.echo(f"error: {exc}\n  hint: {hint}", err=True)
            continue
        click.echo("assistant> ", nl=False)
        try:
            for token in reply:
                click.echo(token.text, nl=False)
        except KeyboardInterrupt:  # Ctrl-C stops the reply, not the chat (the cache knows what it holds)
            click.echo()
            if not reply.text:  # cut during the prompt: this turn did not happen
                messages.pop()
            else:
                messages.append({"role": "assistant", "content": reply.text})
            click.echo("(reply stopped; the conversation goes on: /exit or Ctrl-C at the prompt ends it)", err=True)
            continue
        click.echo()
        click.echo(speed_line(reply.stats), err=True)
        messages.append({"role": "assistant", "content": reply.text})


def _check_system_fits(session: Any, start: list[dict[str, str]]) -> None:
    """Refuse a system message that leaves the cache no room: every turn failed as too
    long, and /reset kept the same system message. A template that refuses a
    conversation of the system message alone says so at the first turn instead."""
    from ..llm.session import longer_cache_hint

    if not start:
        return
    try:
        ids = session.text.encode_chat(start)
    except InputError:
        return
    if len(ids) >= session.info.max_seq_len:
        raise EdgeportError(f"the system message is {len(ids)} tokens; this program's KV cache holds "
                            f"{session.info.max_seq_len} positions, leaving no room for a conversation",
                            hint=longer_cache_hint(len(ids) + 2, session.info.max_positions, "the system message"))


def _next_line() -> str | None:
    """The user's next line at the ``you>`` prompt; None at the end of input: end of file,
    Ctrl-C, or no stdin at all (``<&-``: Python's sys.stdin is None, and input() raised
    "lost sys.stdin"). The prompt's line is ended, so the shell's prompt starts on its own."""
    if sys.stdin is None:
        return None
    try:
        return click.prompt("you", prompt_suffix="> ", default="", show_default=False)
    except (EOFError, click.exceptions.Abort):
        click.echo()
        return None


def speed_line(stats: Any) -> str:
    """Time to first token, prefill and decode speed, peak memory: one line. Decode counts
    the tokens its rate divides (the first comes from prefill); memory is in MiB (VmHWM / 1024)."""
    decoded = max(stats.generated_tokens - 1, 0)
    return (
        f"time to first token {stats.time_to_first_token_s * 1e3:.0f} ms · "
        f"prefill {stats.prefill_tok_s:.1f} tok/s ({_tokens(stats.prefilled_tokens)}) · "
        f"decode {stats.decode_tok_s:.1f} tok/s ({_tokens(decoded)}) · "
        f"peak RSS {stats.peak_rss_mb:.0f} MiB · stop: {stats.stop_reason.replace('_', ' ')}"
    )


def _tokens(count: int) -> str:
    return f"{count} token" if count == 1 else f"{count} tokens"
