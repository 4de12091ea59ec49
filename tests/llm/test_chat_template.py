"""A program's tokenizer and chat template against bad text and damaged templates: one
edgeport error each, never jinja2's or the tokenizers library's own exceptions."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from edgeport import InputError, ProgramError
from edgeport.llm.text import TextCodec

USER = [{"role": "user", "content": "hello"}]
TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"


def codec(template: str | None = TEMPLATE) -> TextCodec:
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "user:": 2, "assistant:": 3}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return TextCodec(tokenizer.to_str(), template, None)


def test_a_conversation_renders_as_the_template_says():
    assert codec().encode_chat(USER) == [2, 1, 3]


@pytest.mark.parametrize("template", ["{% for m in messages %}{{ m['content'] }", "{{ messages | nosuchfilter }}",
                                      "{{ 1 + 'a' }}", ""])
def test_a_damaged_template_is_a_program_error(template):
    with pytest.raises(ProgramError, match="chat template") as error:
        codec(template).encode_chat(USER)
    assert "fix it there" in error.value.hint  # re-exporting alone stores the same template


@pytest.mark.parametrize("where", ["chat_template.jinja", "tokenizer_config.json"])
def test_a_model_whose_template_does_not_compile_is_refused_at_load_naming_the_file(tmp_path, where):
    """It exported with rc 0, and every chat failed, saying to re-export."""
    import json

    from tiny_llms import tiny_model_dir

    from edgeport.llm.loader import ModelLoadError, load_model

    path, _ = tiny_model_dir(tmp_path, "llama")
    broken = "{% for m in messages %}{{ m['content'] }"
    if where == "chat_template.jinja":
        (path / where).write_text(broken)
    else:
        (path / where).write_text(json.dumps({"chat_template": broken}))
    with pytest.raises(ModelLoadError, match=f"the chat template in {path / where} does not compile: line 1: ") as error:
        load_model(path)
    assert error.value.hint == "fix the template there, then export again"


@pytest.mark.parametrize(("template", "stopped"), [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "ran longer than 0.2 s"),
    ("{{ 'x' * 10000000000 }}", "repeats a str of 1 10,000,000,000 times"),
    ("{% for i in range(100000) %}{{ 'word ' * 100 }}{% endfor %}", "wrote more than 1,048,581 characters"),
])
def test_a_template_that_would_run_for_hours_or_fill_memory_is_stopped(monkeypatch, template, stopped):
    """A program file is someone else's code: jinja2's sandbox caps one range, not the work
    (the nested loops rendered for hours) or the text ("x" * 10**10 asked for 10 GB)."""
    from edgeport.llm import chat_template

    monkeypatch.setattr(chat_template, "RENDER_SECONDS", 0.2)
    with pytest.raises(ProgramError, match=f"chat template was stopped rendering this conversation: it {stopped}"):
        codec(template).encode_chat(USER)


def test_the_bounds_leave_a_real_template_and_the_callers_trace_alone():
    import sys

    def tracer(frame, event, arg):
        return None

    sys.settrace(tracer)
    try:
        assert codec("{{ 'hello ' * 3 }}{% for m in messages %}{{ m['role'] }}: {% endfor %}").encode_chat(USER) \
            == [1, 1, 1, 2]
        assert sys.gettrace() is tracer  # a debugger's or coverage's
    finally:
        sys.settrace(None)


def test_a_conversation_the_template_refuses_is_the_callers_error():
    template = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('roles must start with system') }}{% endif %}"
    with pytest.raises(InputError, match="refuses this conversation: roles must start with system"):
        codec(template).encode_chat(USER)


def test_text_that_is_not_utf8_is_an_input_error():
    """A prompt read from bytes that are not UTF-8 holds lone surrogates
    (``--prompt $'\\xff'``): the tokenizers library raised TypeError."""
    with pytest.raises(InputError, match="the prompt is not valid UTF-8 text") as error:
        codec().encode("hello \udcff")
    assert error.value.hint
    with pytest.raises(InputError, match="a user message is not valid UTF-8 text"):
        codec().encode_chat([{"role": "user", "content": "\udcff"}])


@pytest.mark.parametrize(("messages", "error"), [
    ("hello", "messages must be a list of .* got str"),
    ({"role": "user", "content": "hello"}, "messages must be a list of .* got dict"),
    (b"hello", "messages must be a list of .* got bytes"),
    (["hello"], "message 1 must be a mapping with text role and content, got str"),
    ([{"role": "user"}], "message 1 has no 'content'"),
    ([*USER, {"content": "hi"}], "message 2 has no 'role'"),
    ([{"role": "user", "content": None}], "message 1's 'content' must be text, got NoneType"),
])
def test_messages_that_are_not_a_list_of_role_and_content_texts_are_the_callers_error(messages, error):
    """A str or dict was the tokenizer's AttributeError; a message without its content
    made the template fail, blamed on the program ("the template is damaged")."""
    with pytest.raises(InputError, match=error) as refused:
        codec().encode_chat(messages)
    assert refused.value.hint
