"""yunque's special tokens and its default chat template: the one list both the tokenizer
and chat-template rendering read, so a trained tokenizer always has the tokens its template writes."""

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|tool|>",
    "<|end|>",
    "<|tool_call|>",
    "<|/tool_call|>",
    *(f"<|reserved_{i}|>" for i in range(8)),
)
# The chat special tokens of yunque's tokenizer.
SYSTEM, USER, ASSISTANT, TOOL = "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"
END, TOOL_CALL, TOOL_CALL_END, ENDOFTEXT = "<|end|>", "<|tool_call|>", "<|/tool_call|>", "<|endoftext|>"
CHAT_TOKENS = (SYSTEM, USER, ASSISTANT, END)  # what the default chat template needs of a tokenizer

# yunque's own format: `<|role|>content<|end|>\n` per message, tools listed in the system turn,
# each tool call as `<|tool_call|>{"name": ..., "arguments": ...}<|/tool_call|>`, and
# `<|assistant|>` as the generation prompt. Written for HF's renderer (trim_blocks, lstrip_blocks).
DEFAULT_CHAT_TEMPLATE = (
    "{%- set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' else none -%}\n"
    "{%- if system is not none or tools -%}\n"
    "{{ '<|system|>' }}{% if system is not none %}{{ system }}{% endif %}\n"
    "{%- if tools -%}\n"
    "{{ '\\n\\n' if system else '' }}{{ 'You can call these tools; answer with <|tool_call|>{\"name\": ..., \"arguments\": {...}}<|/tool_call|>:' }}\n"
    "{%- for tool in tools %}{{ '\\n' }}{{ (tool['function'] if tool['function'] is defined else tool) | tojson }}{% endfor -%}\n"
    "{%- endif -%}\n"
    "{{ '<|end|>\\n' }}\n"
    "{%- endif -%}\n"
    "{%- for message in messages -%}\n"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] -%}\n"
    "{{ raise_exception('Unknown role ' + message['role'] + '; use system, user, assistant or tool.') }}\n"
    "{%- endif -%}\n"
    "{%- if not (loop.first and message['role'] == 'system') -%}\n"
    "{{ '<|' + message['role'] + '|>' }}{{ message['content'] if message['content'] is string else '' }}\n"
    "{%- for call in message['tool_calls'] if message['tool_calls'] is defined and message['tool_calls'] -%}\n"
    "{%- set fn = call['function'] if call['function'] is defined else call -%}\n"
    "{{ '<|tool_call|>' }}{{ {'name': fn['name'], 'arguments': fn['arguments']} | tojson }}{{ '<|/tool_call|>' }}\n"
    "{%- endfor -%}\n"
    "{{ '<|end|>\\n' }}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}\n"
)
