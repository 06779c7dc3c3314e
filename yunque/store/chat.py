"""A store model's chat settings: which template it uses (Modelfile TEMPLATE, else the model
directory's chat template, else yunque's default), its system prompt, parameters and stop strings.
Rendering itself is `yunque.text.chat_template`: this module only chooses what to pass down, and
knows nothing of store names (entries.py, which imports it, resolves them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from yunque.errors import YunqueError
from yunque.infer.options import from_generation_config
from yunque.store.modelfile import Modelfile, check_parameters
from yunque.text.chat_template import ChatSettings
from yunque.text.gotemplate import looks_like_go
from yunque.text.special import DEFAULT_CHAT_TEMPLATE, END, ENDOFTEXT


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json stores special tokens as text or as {"content": text, ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _model_template(model_dir: Path, tok_config: dict[str, Any]) -> str | None:
    jinja_file = model_dir / "chat_template.jinja"  # where recent transformers save it
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = tok_config.get("chat_template")
    if isinstance(template, list):  # named templates: HF uses the one called "default"
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def _read_optional_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise YunqueError(f"{path} is not valid JSON ({e}); fix or replace the file.") from None
    return data if isinstance(data, dict) else {}


def model_chat_settings(model_dir: Path, settings: Modelfile) -> ChatSettings:
    """The effective template, system prompt, parameters and stop strings of the model in
    `model_dir` under the Modelfile `settings` (`yunque.store.entries.chat_settings` finds both by name).

    Parameters: generation_config.json's sampling defaults, overridden by the Modelfile's.
    Stop strings: the Modelfile's `stop`; otherwise `<|end|>` for the default template, or the
    tokenizer's eos token text for a model's own template.
    """
    tok_config = _read_optional_json(model_dir / "tokenizer_config.json")
    bos, eos = _token_text(tok_config.get("bos_token")), _token_text(tok_config.get("eos_token"))
    model_template = _model_template(model_dir, tok_config)
    if settings.template is not None:
        template, source = settings.template, "modelfile"
    elif model_template is not None and model_template != DEFAULT_CHAT_TEMPLATE:
        # yunque's tokenizer saves the default template; it is still the default (stops at <|end|>).
        template, source = model_template, "model"
    else:
        template, source = DEFAULT_CHAT_TEMPLATE, "default"
    generation = _read_optional_json(model_dir / "generation_config.json")
    defaults = from_generation_config(generation)
    if generation.get("do_sample") is False:
        defaults["temperature"] = 0.0  # HF's greedy decoding; Ollama says it with temperature 0
    parameters = {**check_parameters(defaults), **settings.parameters}
    stop = list(parameters.pop("stop", []))
    if not stop:
        stop = [END] if source == "default" else [eos] if eos else []
    return ChatSettings(
        template=template,
        kind="go" if looks_like_go(template) else "jinja",
        source=source,
        system=settings.system,
        messages=list(settings.messages),
        parameters=parameters,
        stop=stop,
        bos_token=bos,
        eos_token=eos or (ENDOFTEXT if source == "default" else None),
    )
