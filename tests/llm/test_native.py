"""`edgeport llm generate --native`: the native runner generates what the Python session
does, in the memory issue 16 asks for, and refuses what it cannot run in one line."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import edgeport
from edgeport.llm import native

from conftest import DATA

# a short prompt; chat ones answering with a character of two bytes, and with emoji of
# three tokens each (23 tokens end inside the 8th: it is not printed); three prefill chunks
LONG_PROMPT = " ".join((DATA / "gettysburg_address.txt").read_text().split()[:60])
PROMPTS = (("The capital of France is", (), 24), ("Write the word café three times.", ("--chat",), 24),
           ("Write a happy emoji.", ("--chat",), 23), (LONG_PROMPT, (), 24))
# Python before the exec touches this much memory, so a peak the runner reports below it
# says VmHWM started again at exec
BALLAST_MIB = 900


def generate(program: Path, *args: str, env: dict[str, str] | None = None, ballast: bool = False,
             stdout: Any = subprocess.PIPE) -> subprocess.CompletedProcess:
    """``edgeport llm generate PROGRAM ARGS`` in a fresh process (--native replaces it),
    writing to ``stdout`` (captured by default)."""
    script = "import sys\n"
    if ballast:
        script += f"ballast = bytearray({BALLAST_MIB} << 20); ballast[::4096] = b'x' * len(ballast[::4096]); del ballast\n"
    script += ("from edgeport.cli import main\n"
               f"sys.argv = ['edgeport', 'llm', 'generate', {str(program)!r}, *{list(args)!r}]\n"
               "main()\n")
    return subprocess.run([sys.executable, "-c", script], stdout=stdout, stderr=subprocess.PIPE, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


def generated(program: Path, *args: str, **kwargs) -> dict:
    done = generate(program, "--json", "--threads", "1", *args, **kwargs)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> dict[str, str]:
    """A cache directory of this module's own: the runner and the weight cache are built
    in it on the first native run."""
    return {"EDGEPORT_CACHE_DIR": str(tmp_path_factory.mktemp("native-cache"))}


@pytest.mark.slow
@pytest.mark.parametrize("prompt,flags,tokens", PROMPTS)
def test_greedy_ids_and_text_equal_the_python_sessions(smol_path, cache_dir, prompt, flags, tokens):
    python = generated(smol_path, "--prompt", prompt, "--max-new-tokens", str(tokens), *flags, env=cache_dir)
    ours = generated(smol_path, "--prompt", prompt, "--max-new-tokens", str(tokens), "--native", *flags, env=cache_dir)
    assert ours["runner"] == "native" and "runner" not in python
    assert ours["token_ids"] == python["token_ids"]
    assert ours["text"] == python["text"]
    assert set(ours) - {"runner"} == set(python) and set(ours["stats"]) == set(python["stats"])
    for key in ("prompt_tokens", "prefilled_tokens", "generated_tokens", "stop_reason"):
        assert ours["stats"][key] == python["stats"][key], key
    if prompt == LONG_PROMPT:
        assert ours["stats"]["prompt_tokens"] > 64  # prefilled in three chunks of at most 32


# (temperature, top-p, seed): sampled broadly, in a tight nucleus, and cold and wide
SAMPLINGS = ((1.0, 1.0, 7), (0.8, 0.9, 12345), (0.3, 0.5, 2**64 - 1))


@pytest.mark.slow
@pytest.mark.parametrize("temperature,top_p,seed", SAMPLINGS)
def test_sampled_ids_equal_the_python_sessions(smol_path, cache_dir, temperature, top_p, seed):
    """The same sampling rule (core/llm/sampling.py) in both runners: 16 tokens, equal."""
    args = ("--prompt", "Once upon a time", "--max-new-tokens", "16", "--temperature", str(temperature),
            "--top-p", str(top_p), "--seed", str(seed))
    python = generated(smol_path, *args, env=cache_dir)
    ours = generated(smol_path, *args, "--native", env=cache_dir)
    assert ours["seed"] == python["seed"] == seed
    assert ours["token_ids"] == python["token_ids"] and len(ours["token_ids"]) == 16
    assert ours["text"] == python["text"]


@pytest.mark.slow
def test_without_a_seed_one_is_drawn_and_printed_so_the_run_repeats(smol_path, cache_dir):
    args = ("--prompt", "Once upon a time", "--max-new-tokens", "8", "--temperature", "1.0", "--native")
    first = generated(smol_path, *args, env=cache_dir)
    again = generated(smol_path, *args, "--seed", str(first["seed"]), env=cache_dir)
    assert 0 <= first["seed"] < 2**64 and again["token_ids"] == first["token_ids"]


@pytest.mark.slow
def test_stops_at_the_stop_token_and_at_max_new_tokens(smol_path, cache_dir):
    """The chat reply ends with <|im_end|> (not printed); a budget of 3 gives 3 tokens."""
    reply = generated(smol_path, "--prompt", "What is the capital of France?", "--chat", "--native",
                      "--max-new-tokens", "64", env=cache_dir)
    assert reply["stats"]["stop_reason"] == "stop_token"
    assert 0 < reply["stats"]["generated_tokens"] < 64 and 2 not in reply["token_ids"]
    assert "Paris" in reply["text"]
    short = generated(smol_path, "--prompt", "The capital of France is", "--native", "--max-new-tokens", "3",
                      env=cache_dir)
    assert short["stats"]["stop_reason"] == "max_new_tokens" and len(short["token_ids"]) == 3


@pytest.mark.slow
def test_a_damaged_weight_cache_is_packed_again_before_the_runner_maps_it(smol_path, cache_dir):
    """The runner ran a weight cache changed since it was packed (another weight per
    changed byte: other tokens, no error); Python checks its digest before the exec."""
    from edgeport import cache

    args = ("--prompt", "The capital of France is", "--native", "--max-new-tokens", "8")
    before = generated(smol_path, *args, env=cache_dir)  # the cache exists after this
    (packed,) = (Path(cache_dir["EDGEPORT_CACHE_DIR"]) / "xnnpack").glob("*.xnnpack_cache")
    assert cache.usable(packed)  # a cache the runner packed gets its digest at its next use, as here
    with open(packed, "r+b") as f:
        f.seek(packed.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x40]))
    done = generate(smol_path, "--json", "--threads", "1", *args, env=cache_dir)
    assert done.returncode == 0, done.stderr
    assert "is damaged" in done.stderr
    assert json.loads(done.stdout)["token_ids"] == before["token_ids"]


@pytest.mark.slow
def test_streams_text_then_the_speed_line(smol_path, cache_dir):
    done = generate(smol_path, "--prompt", "The capital of France is", "--native", "--max-new-tokens", "4",
                    env=cache_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(" Paris.")
    speed = done.stderr.strip().splitlines()
    assert len(speed) == 1 and speed[0].startswith("ready in") and "native runner" in speed[0], done.stderr
    assert all(word in speed[0] for word in ("time to first token", "prefill", "decode", "peak RSS", "stop:"))


@pytest.mark.slow
def test_a_reader_that_left_stops_the_runner(smol_path, cache_dir):
    """Python's ignored SIGPIPE survived the exec: the runner generated all 200 tokens into
    a pipe nobody read (| head), then exited 0."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = generate(smol_path, "--prompt", "Once upon a time", "--native", "--max-new-tokens", "200",
                        env=cache_dir, stdout=write)
    finally:
        os.close(write)
    assert done.returncode == -13 and "ready in" not in done.stderr  # SIGPIPE, as C tools end


@pytest.mark.slow
@pytest.mark.parametrize("json_flag", [(), ("--json",)])
def test_output_to_a_full_disk_is_an_error(smol_path, cache_dir, json_flag):
    """runner.c never checked its writes: the output was lost, and it exited 0."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    with open("/dev/full", "w") as full:
        done = generate(smol_path, "--prompt", "Once upon a time", "--native", "--max-new-tokens", "4", *json_flag,
                        env=cache_dir, stdout=full)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == "Error: native runner: cannot write the output: No space left on device"


# SentencePiece-style text: a first token with a leading space (the decoder's Strip drops
# it), an emoji of four <0xNN> byte pieces (byte fallback), then a word
SENTENCEPIECE_TEXT = " Hello 🙂 world"


def sentencepiece_tokenizer() -> str:
    """A real tokenizer.json of Llama 2's form, built offline: BPE with byte fallback and
    a Metaspace pre-tokenizer trained on a few sentences, its vocabulary given the 256
    <0xNN> byte pieces, and the decoder Replace("▁" -> " "), ByteFallback, Fuse, Strip."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    sentences = ["Hello world, the quick brown fox jumps over the lazy dog.", "The capital of France is Paris."]
    tokenizer.train_from_iterator(sentences * 4, trainers.BpeTrainer(vocab_size=100, special_tokens=["<unk>", "<s>", "</s>"]))
    spec = json.loads(tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    return json.dumps(spec)


@pytest.fixture(scope="module")
def sentencepiece_path(tmp_path_factory, cpu_registry) -> tuple[Path, list[int]]:
    """A tiny random-weight Llama with that tokenizer, rigged to answer "The capital of
    France is" greedily with SENTENCEPIECE_TEXT's tokens, then </s>: its layers add
    nothing (o_proj and down_proj zero), so the logits are lm_head against the current
    token's embedding, and each chain token's lm_head row is the embedding of the token
    before it. Exported once for the module; the saved program and the chain's ids."""
    transformers = pytest.importorskip("transformers")
    import torch
    from tokenizers import Tokenizer

    import edgeport.llm

    root = tmp_path_factory.mktemp("sentencepiece")
    tokenizer_json = sentencepiece_tokenizer()
    tokenizer = Tokenizer.from_str(tokenizer_json)
    chain = tokenizer.encode(SENTENCEPIECE_TEXT).ids
    edges = [tokenizer.encode("The capital of France is").ids[-1], *chain, tokenizer.token_to_id("</s>")]
    assert len(set(edges)) == len(edges)  # a path: each token has one successor
    config = transformers.LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=64, intermediate_size=96,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embedding, head = model.model.embed_tokens.weight, model.lm_head.weight
        head.zero_()
        for before, after in zip(edges, edges[1:]):
            head[after] = 10 * embedding[before] / embedding[before].norm()
    model.save_pretrained(root / "hf", safe_serialization=True)
    (root / "hf" / "tokenizer.json").write_text(tokenizer_json)
    (root / "hf" / "generation_config.json").write_text(json.dumps({"eos_token_id": tokenizer.token_to_id("</s>")}))
    path = root / "sentencepiece.edgeport"
    edgeport.llm.export(root / "hf", max_seq_len=32, prefill_chunk=8, registry=cpu_registry).save(path)
    return path, chain


@pytest.mark.slow
def test_sentencepiece_text_equals_the_python_sessions(sentencepiece_path, cache_dir):
    """The first token's leading space is dropped (Strip) and the emoji's four byte
    pieces print as one character, in both runners."""
    path, chain = sentencepiece_path
    args = ("--prompt", "The capital of France is", "--max-new-tokens", "16")
    python = generated(path, *args, env=cache_dir)
    ours = generated(path, *args, "--native", env=cache_dir)
    assert python["token_ids"] == chain and python["stats"]["stop_reason"] == "stop_token"
    assert python["text"] == SENTENCEPIECE_TEXT[1:]
    assert ours["token_ids"] == python["token_ids"] and ours["text"] == python["text"]
    cut = generated(path, "--prompt", "The capital of France is", "--native", "--max-new-tokens", "5", env=cache_dir)
    assert cut["text"] == "Hello "  # the emoji cut short by the budget is not printed


def test_the_sentencepiece_decode_table_and_other_decoders():
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(sentencepiece_tokenizer())
    table = native.decode_table(sentencepiece_tokenizer(), tokenizer.get_vocab_size())
    assert table.strip_leading_space
    assert table.pieces[:3] == [b"", b"", b""]  # <unk>, <s>, </s>: special
    assert b"".join(table.pieces[i] for i in tokenizer.encode(SENTENCEPIECE_TEXT).ids) == SENTENCEPIECE_TEXT.encode()
    spec = json.loads(sentencepiece_tokenizer())
    spec["decoder"]["decoders"] = spec["decoder"]["decoders"][:3]  # Gemma's form: no Strip
    assert not native.decode_table(json.dumps(spec), tokenizer.get_vocab_size()).strip_leading_space
    spec["decoder"] = {"type": "WordPiece", "prefix": "##", "cleanup": True}
    with pytest.raises(native.NotNativeProgram, match="this program's tokenizer decodes WordPiece"):
        native.decode_table(json.dumps(spec), tokenizer.get_vocab_size())


def test_a_prompt_longer_than_the_cache_is_one_line_with_a_hint(smol_path):
    done = generate(smol_path, "--prompt", "word " * 200, "--native")
    assert done.returncode == 1 and not done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and "KV cache holds 128" in lines[0], done.stderr
    assert lines[1].startswith("  hint:") and "--max-seq-len 256 or more" in lines[1]  # as in Python


@pytest.mark.slow
def test_a_full_cache_ends_generation_as_in_python(smol_path, cache_dir):
    """More new tokens than the cache has room for: both runners generate until it is
    full (the native one used to refuse)."""
    args = ("--prompt", "Count from 1 to 500: 1, 2, 3, 4,", "--max-new-tokens", "200")
    native, python = generated(smol_path, *args, "--native", env=cache_dir), generated(smol_path, *args)
    assert native["stats"]["stop_reason"] == python["stats"]["stop_reason"] == "max_seq_len"
    assert native["token_ids"] == python["token_ids"]
    assert len(native["token_ids"]) == 128 - native["stats"]["prompt_tokens"] + 1


def kv_cache_bytes(program: edgeport.Program) -> int:
    return sum(math.prod(spec["shape"]) * 4 for spec in program.manifest.state.values())  # float32 rows


@pytest.mark.slow
def test_peak_rss_is_within_issue_16s_budget_on_first_and_later_loads(smol_path, smol, tmp_path):
    """1.3x (weights + KV cache), with the runner and weight cache built on the first run
    (a fresh cache directory) and mapped on the next; the ballast Python touched before
    the exec is not counted (VmHWM restarts at exec)."""
    budget_mib = 1.3 * (smol.manifest.metadata["llm"]["weight_bytes"] + kv_cache_bytes(smol)) / (1 << 20)
    env = {"EDGEPORT_CACHE_DIR": str(tmp_path)}
    peaks = []
    for load in ("first", "later"):
        stats = generated(smol_path, "--prompt", "The capital of France is", "--native", "--max-new-tokens", "16",
                          env=env, ballast=True)["stats"]
        peaks.append(stats["peak_rss_mb"])
    assert list((tmp_path / "xnnpack").glob("*.xnnpack_cache")) and list((tmp_path / "native").glob("runner-*"))
    assert max(peaks) <= budget_mib < BALLAST_MIB, (peaks, budget_mib)


@pytest.mark.slow
def test_the_cache_window_is_read_in_place_so_the_peak_stays_flat_to_a_full_cache(smol_path, smol, cache_dir):
    """Every cache is read as a state prefix (bound where it lies, role ``prefix`` in the
    runner's spec): filling the cache adds no window copies to the peak (60 gathered
    windows of a 128-position cache would add 5.6 MiB)."""
    plan = smol.manifest.methods["prefill"]
    assert {plan.state_reads[p.value] for p in plan.state_prefixes} == set(smol.manifest.state)
    artifact = native._one_graph_artifact(smol)
    assert sum(line.endswith(" prefix") for line in native._io_lines(smol, artifact)) == len(smol.manifest.state)
    long_prompt = " ".join((DATA / "declaration_of_independence.txt").read_text().split()[:80])
    short, full = (generated(smol_path, "--prompt", prompt, "--native", "--max-new-tokens", "16", env=cache_dir)
                   ["stats"] for prompt in ("The capital of France is", long_prompt))
    assert full["prompt_tokens"] + full["generated_tokens"] > 96  # the last calls read a 128-row window
    assert full["peak_rss_mb"] - short["peak_rss_mb"] < 4, (short["peak_rss_mb"], full["peak_rss_mb"])


def test_a_program_that_is_not_an_llm_program_is_one_line(tmp_path, cpu_registry):
    torch = pytest.importorskip("torch")
    path = tmp_path / "linear.edgeport"
    edgeport.export(torch.nn.Linear(4, 4), (torch.randn(1, 4),), ["cpu"], registry=cpu_registry).save(path)
    done = generate(path, "--prompt", "hi", "--native")
    assert done.returncode == 1 and not done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and "not an LLM program" in lines[0] and lines[1].startswith("  hint:"), done.stderr


def test_an_llm_program_not_of_the_one_graph_cpu_form_is_refused(smol):
    plan = smol.manifest.methods["prefill"]
    two_graph = dataclasses.replace(plan, inputs=plan.inputs[:2])  # the form before the cache window
    manifest = dataclasses.replace(smol.manifest, methods={**smol.manifest.methods, "prefill": two_graph})
    with pytest.raises(native.NotNativeProgram, match="--native needs a cpu LLM program"):
        native._one_graph_artifact(SimpleNamespace(manifest=manifest))


@pytest.mark.parametrize("compiler_env", [{"PATH": "/nonexistent", "CC": ""}, {"CC": "/nowhere/cc"}])
def test_no_c_compiler_is_one_line(smol_path, tmp_path, compiler_env):
    done = generate(smol_path, "--prompt", "The capital of France is", "--native",
                    env={"EDGEPORT_CACHE_DIR": str(tmp_path), **compiler_env})
    assert done.returncode == 1 and not done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and "no C compiler was found" in lines[0] and lines[1].startswith("  hint:"), done.stderr


def test_the_decode_table_has_a_piece_per_row_of_the_model_whatever_ids_the_tokenizer_names():
    """A damaged tokenizer's added token at id 4,000,000,000 made a table of that many
    pieces (a MemoryError, or the machine's memory); ids past the model's rows are never
    generated, so the table stops there."""
    spec = json.loads(sentencepiece_tokenizer())
    spec["added_tokens"].append({"id": 4_000_000_000, "content": "<far>", "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": False})
    table = native.decode_table(json.dumps(spec), 300)
    assert len(table.pieces) == 300
    assert table.pieces[100] == b"\x00"  # the first byte piece, after the 100 trained tokens


def test_the_decode_table_joins_a_character_split_over_tokens(smol):
    """Byte-level BPE splits an emoji into pieces that are not UTF-8 alone: their bytes,
    joined, are the character."""
    from edgeport.llm.session import vocab_size
    from edgeport.llm.text import TextCodec

    codec = TextCodec.of(smol)
    decoding = native.decode_table(str(smol.files[smol.manifest.metadata["llm"]["tokenizer"]], "utf-8"),
                                   vocab_size(smol))
    table = decoding.pieces
    assert not decoding.strip_leading_space
    for text in (" café 🙂 naïve", "日本語"):
        ids = codec.encode(text)
        assert b"".join(table[i] for i in ids).decode("utf-8") == text
    assert any(not _is_utf8(table[i]) for i in codec.encode("🙂"))  # really split mid-character
    special = [i for i, piece in enumerate(table) if codec.tokenizer.id_to_token(i) == "<|im_end|>"]
    assert special and table[special[0]] == b""


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_an_int4_model_is_checked_before_its_weight_cache_is_first_built(smol_path, monkeypatch, tmp_path):
    """The cpu backend's check that XNNPACK takes every INT4 FULLY_CONNECTED (on a probe)
    runs before the exec on a first load, and not once the weight cache exists; the spec
    is private."""
    from edgeport.backends.tflite.compiled import weight_cache_path
    from edgeport.program import read_program_file

    manifest, files = read_program_file(smol_path)
    artifact = next(name for name in manifest.artifacts if name.endswith(".tflite"))
    info = manifest.artifacts[artifact]
    manifest.artifacts[artifact] = dataclasses.replace(info, metadata={**info.metadata, "int4_weights": True})
    monkeypatch.setattr("edgeport.program.read_program_file", lambda path: (manifest, files))
    checked = []
    monkeypatch.setattr("edgeport.backends.tflite.int4_probe.check_delegated",
                        lambda model, threads: checked.append(len(model)))
    monkeypatch.setenv("EDGEPORT_CACHE_DIR", str(tmp_path))
    request = native.Request(str(smol_path), "The capital of France is", max_new_tokens=4)
    for load in ("first", "later"):
        spec = Path(native.write_spec(request))
        assert spec.stat().st_mode & 0o777 == 0o600
        spec.unlink()
        weight_cache_path(manifest.files[artifact].sha256).touch()  # what the first run builds
    assert checked == [manifest.files[artifact].size]


def test_no_litert_library_is_one_error_with_a_hint(monkeypatch, tmp_path):
    monkeypatch.setattr(native.importlib.util, "find_spec",
                        lambda name: SimpleNamespace(origin=str(tmp_path / "__init__.py")))
    with pytest.raises(native.NativeUnavailable, match="has no libLiteRt.so") as raised:
        native.build()
    assert raised.value.hint
