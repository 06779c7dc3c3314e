"""Chat templates: parity with transformers' apply_chat_template, Ollama Go templates, precedence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from store_fakes import make_hf_dir

from yunque.store import entries as store
from yunque.store.entries import chat_settings
from yunque.text.chat_template import render_chat, render_ollama
from yunque.text.special import DEFAULT_CHAT_TEMPLATE
from yunque.errors import YunqueError
from yunque.text.gotemplate import looks_like_go, render_go_template

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
# A template exercising namespace, loop controls, tojson options, strftime_now and raise_exception.
FEATURES = (
    "{%- set ns = namespace(n=0) -%}\n"
    "{%- for m in messages %}\n"
    "  {%- if m.role == 'bad' %}{{ raise_exception('bad role') }}{% endif %}\n"
    "  {%- if m.role == 'skip' %}{% continue %}{% endif %}\n"
    "  {%- set ns.n = ns.n + 1 %}\n"
    "[{{ ns.n }}] {{ m.role }}: {{ m.content }}\n"
    "{% endfor %}\n"
    "{%- if tools %}{{ tools | tojson(indent=2) }}{% endif %}\n"
    "{{ strftime_now('%Y') | length }}{% if add_generation_prompt %}>{% endif %}"
)

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "  Hi there ü  "},
    {"role": "assistant", "content": "Hello <b>&</b>!"},
    {"role": "user", "content": "What is 2+2?"},
]
TOOLS = [{"type": "function", "function": {"name": "add", "description": "Add numbers.", "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}}]


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    path = make_hf_dir(
        tmp_path_factory.mktemp("tok") / "model",
        tokenizer_config={"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": DEFAULT_CHAT_TEMPLATE, "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"},
    )
    return transformers.AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("template", [None, CHATML, LLAMA3, FEATURES], ids=["yunque", "chatml", "llama3", "features"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", [CONVERSATION, CONVERSATION[1:2]], ids=["multi", "single"])
def test_render_matches_transformers(hf_tokenizer, template, add_generation_prompt, conversation) -> None:
    theirs = hf_tokenizer.apply_chat_template(conversation, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt)
    ours = render_chat(conversation, template, add_generation_prompt=add_generation_prompt, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    assert ours == theirs


@pytest.mark.parametrize("template", [None, FEATURES], ids=["yunque", "features"])
def test_tools_and_tool_calls_match_transformers(hf_tokenizer, template) -> None:
    conversation = [
        *CONVERSATION,
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 2}}}]},
        {"role": "tool", "content": "4"},
    ]
    theirs = hf_tokenizer.apply_chat_template(conversation, tools=TOOLS, chat_template=template, tokenize=False, add_generation_prompt=True)
    assert render_chat(conversation, template, tools=TOOLS, bos_token="<|endoftext|>", eos_token="<|endoftext|>") == theirs


def test_default_template_format() -> None:
    text = render_chat(CONVERSATION[:3])
    assert text == "<|system|>You are terse.<|end|>\n<|user|>  Hi there ü  <|end|>\n<|assistant|>Hello <b>&</b>!<|end|>\n<|assistant|>"
    call = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "add", "arguments": {"a": 1}}}]}
    assert '<|assistant|><|tool_call|>{"name": "add", "arguments": {"a": 1}}<|/tool_call|><|end|>\n' in render_chat([call])


def test_template_errors_are_user_errors() -> None:
    with pytest.raises(YunqueError, match="bad role"):
        render_chat([{"role": "bad", "content": "x"}], FEATURES)
    with pytest.raises(YunqueError, match="Unknown role"):
        render_chat([{"role": "robot", "content": "x"}])
    with pytest.raises(YunqueError, match="unsafe"):
        render_chat([], "{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(YunqueError, match="syntax error on line 1"):
        render_chat([], "{% for %}")


# Ollama's library templates (trimmed of tool handling): legacy per-turn style and `.Messages` style.
OLLAMA_CHATML = """{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ .Response }}<|im_end|>
"""
OLLAMA_LLAMA3 = """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>

{{ .Content }}{{ if not $last }}<|eot_id|>{{ end }}
{{- end }}
{{- end }}"""


def test_ollama_templates_match_their_jinja_counterparts() -> None:
    conv = [dict(m, content=m["content"].strip()) for m in CONVERSATION]
    assert render_ollama(OLLAMA_CHATML, conv) == render_chat(conv, CHATML)
    assert render_ollama(OLLAMA_LLAMA3, conv) == render_chat(conv, LLAMA3, bos_token="")


def test_legacy_template_stops_where_the_answer_begins() -> None:
    text = render_ollama("[{{ .Prompt }}]{{ .Response }}</s>", [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}])
    assert text == "[a]b</s>[c]"


def test_go_template_features() -> None:
    data = {"Messages": [{"role": "user", "content": "x", "tool_calls": []}], "Tools": [{"function": {"name": "f"}}], "Name": "", "N": 2}
    t = (
        "{{/* comment */}}{{ range .Messages }}{{ .Role }}={{ .Content }}{{ if .ToolCalls }}!{{ end }}{{ end }}"
        "|{{ with .Name }}{{ . }}{{ else }}anon{{ end }}|{{ range $t := .Tools }}{{ $t.Function.Name }}{{ json $t }}{{ end }}"
        "|{{ if and .N (gt .N 1) }}many{{ end }}|{{ or .Name \"dflt\" }}|{{ .N | print }}|{{ index .Messages 0 | len }}"
        "|{{ range .Name }}never{{ else }}empty{{ end }}|  {{- \"trim\" -}}  |"
    )
    assert render_go_template(t, data) == 'user=x|anon|f{"function":{"name":"f"}}|many|dflt|2|3|empty|trim|'


@pytest.mark.parametrize(
    "template, message",
    [
        ('{{ template "x" }}', "template"),
        ('{{ printf "%s" .System }}', "printf"),
        ("{{ .Nope }}", ".Nope"),
        ("{{ if .System }}x", "never closed"),
        ("x{{ end }}", "no matching"),
        ("{{ $x }}", "before defining"),
        ("{{ if .System }}a{{ else with .System }}b{{ end }}", "else with"),
        ("{{ .System | printf }}", "printf"),
    ],
)
def test_unsupported_go_constructs_are_clear_errors(template: str, message: str) -> None:
    with pytest.raises(YunqueError, match=message):
        render_go_template(template, {"System": "s"})


def test_template_language_detection() -> None:
    assert looks_like_go(OLLAMA_CHATML) and looks_like_go(OLLAMA_LLAMA3)
    assert not looks_like_go(CHATML) and not looks_like_go(DEFAULT_CHAT_TEMPLATE) and not looks_like_go("{{ messages[0].content }}")


def test_precedence_modelfile_over_model_over_default(tmp_path: Path) -> None:
    plain = store.import_model(make_hf_dir(tmp_path / "plain"), "plain")
    s = chat_settings(plain)
    assert (s.source, s.template, s.kind, s.stop) == ("default", DEFAULT_CHAT_TEMPLATE, "jinja", ["<|end|>"])

    generation = {"temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.1}
    own = make_hf_dir(tmp_path / "own", tokenizer_config={"chat_template": CHATML, "eos_token": {"content": "<|im_end|>"}}, generation_config=generation)
    store.import_model(own, "own")
    s = chat_settings("own")
    assert (s.source, s.template, s.stop, s.eos_token) == ("model", CHATML, ["<|im_end|>"], "<|im_end|>")
    assert s.parameters == {"temperature": 0.6, "top_p": 0.9, "repeat_penalty": 1.1}

    (own / "chat_template.jinja").write_text(LLAMA3)  # transformers' newer place for it wins over tokenizer_config
    assert chat_settings(str(own)).template == LLAMA3

    modelfile = f'FROM own\nTEMPLATE """{OLLAMA_CHATML}"""\nPARAMETER temperature 0.1\nPARAMETER stop <|im_end|>\nSYSTEM Be kind.\nMESSAGE user hi\nMESSAGE assistant hello\n'
    store.create("mine", modelfile)
    s = chat_settings("mine")
    assert (s.source, s.kind, s.stop) == ("modelfile", "go", ["<|im_end|>"])
    assert s.parameters == {"temperature": 0.1, "top_p": 0.9, "repeat_penalty": 1.1}
    prompt = s.render([{"role": "user", "content": "Who?"}])
    assert prompt == render_chat(
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "Who?"}], CHATML
    )
    own_system = s.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who?"}])
    assert "Be brief." in own_system and "Be kind." not in own_system


def test_greedy_generation_config_means_temperature_zero(tmp_path: Path) -> None:
    d = make_hf_dir(tmp_path / "g", generation_config={"do_sample": False, "temperature": 0.7})
    assert chat_settings(str(d)).parameters["temperature"] == 0.0
    (d / "generation_config.json").write_text(json.dumps({"temperature": -1}))
    with pytest.raises(YunqueError, match="temperature"):
        chat_settings(str(d))


def test_go_json_and_print_follow_go_semantics() -> None:
    data = {"Tools": [{"name": "<a&b>"}], "S": "x"}
    assert render_go_template("{{ json .Tools }}|{{ print .S 1 2 .S }}", data) == '[{"name":"\\u003ca\\u0026b\\u003e"}]|x1 2x'


def test_ollama_collate_merges_consecutive_turns_but_not_tool_results() -> None:
    t = "{{ .System }}|{{ range .Messages }}{{ .Role }}:{{ .Content }};{{ end }}"
    msgs = [{"role": "system", "content": "a"}, {"role": "system", "content": "b"}, {"role": "user", "content": "u1"}, {"role": "user", "content": "u2"},
            {"role": "tool", "content": "t1"}, {"role": "tool", "content": "t2"}]
    assert render_ollama(t, msgs) == "a\n\nb|system:a\n\nb;user:u1\n\nu2;tool:t1;tool:t2;"


# Ollama's qwen2.5 library template (tool prose trimmed): both styles in one, with tools and tool calls.
OLLAMA_QWEN25 = """{{- if .Messages }}
{{- if or .System .Tools }}<|im_start|>system
{{- if .System }}
{{ .System }}
{{- end }}
{{- if .Tools }}

# Tools

<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"""


def test_ollama_tool_template() -> None:
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "add 1"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "add", "arguments": {"a": 1}}}]},
        {"role": "tool", "content": "2"},
    ]
    text = render_ollama(OLLAMA_QWEN25, msgs, tools=[{"type": "function", "function": {"name": "add", "parameters": {}}}])
    assert text == (
        "<|im_start|>system\nS\n\n# Tools\n\n<tools>\n"
        '{"type": "function", "function": {"name":"add","parameters":{}}}\n</tools><|im_end|>\n'
        "<|im_start|>user\nadd 1<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "add", "arguments": {"a":1}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n2\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    legacy = render_ollama(OLLAMA_QWEN25.replace(".Messages", ".Nothing").replace("{{- if .Nothing }}", "{{- if false }}"), msgs[:2])
    assert legacy == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nadd 1<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("bad", [[{"content": "no role"}], ["text"]])
def test_messages_without_a_role_are_user_errors(bad: list) -> None:
    for render in (lambda: render_chat(bad), lambda: render_ollama(OLLAMA_CHATML, bad)):
        with pytest.raises(YunqueError, match="needs a 'role'"):
            render()


def test_yunque_saved_tokenizer_keeps_default_template_and_end_stop(tmp_path: Path) -> None:
    from yunque.text.tokenizer import Tokenizer

    d = make_hf_dir(tmp_path / "trained")
    Tokenizer.train_from_iterator(["hello world, hello chat"] * 20, 300, show_progress=False).save_pretrained(d)
    assert json.loads((d / "tokenizer_config.json").read_text())["chat_template"] == DEFAULT_CHAT_TEMPLATE
    s = chat_settings(str(d))
    assert (s.source, s.template, s.stop) == ("default", DEFAULT_CHAT_TEMPLATE, ["<|end|>"])
