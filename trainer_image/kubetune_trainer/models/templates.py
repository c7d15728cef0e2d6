"""kubetune's chat templates: Llama 3, ChatML (Qwen) and Mistral, with generation markers.

Each template wraps every assistant turn's content *and its end-of-turn token* in
``{% generation %}…{% endgeneration %}``, so ``apply_chat_template(...,
return_assistant_tokens_mask=True)`` (what TRL's ``SFTConfig(assistant_only_loss=True)`` uses)
marks exactly the tokens the model must learn to produce: the content of every assistant turn of
a multi-turn conversation, then the token that ends the turn, and nothing of the system or user
turns. Header tokens and the newline that follows ChatML's ``<|im_end|>`` stay outside the span:
the model is prompted with the header and stops at the end-of-turn token.

Two more are conversation formats rather than a family's template (``ModelSpec.
conversationFormat``): ``roleMarkers`` wraps each message in ``<|role|>…<|/role|>`` and
``turnMarkers`` puts ``<|turn|>N role`` before each message (N counts messages from 1) and
``<|end_turn|>`` after it. Their markers are added to the tokenizer as special tokens
(:data:`FORMAT_TOKENS`), so the assistant's content always starts on a token boundary.

All of them render ``add_generation_prompt=True`` as the header of a new assistant turn (Mistral's
is empty: its user turn already ends with ``[/INST]``), and the prompt rendered that way is a
prefix of the conversation rendered with the answer, which DPO and prompt-completion SFT rely on.
"""

from __future__ import annotations

from kubetune_trainer.plan import GENERATION_MARKER

# The templates are assembled from pieces without newlines between the Jinja tags, so no
# whitespace leaks into the rendered text; '\n' inside a Jinja string literal is a newline.
LLAMA3 = (
    "{%- for message in messages -%}"
    "{%- if loop.first %}{{ bos_token }}{% endif -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] | trim }}<|eot_id|>{% endgeneration %}"
    "{%- else -%}"
    "{{ message['content'] | trim }}<|eot_id|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif -%}"
)

CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] }}<|im_end|>{% endgeneration %}{{ '\\n' }}"
    "{%- else -%}"
    "{{ message['content'] }}<|im_end|>{{ '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- endif -%}"
)

# Mistral has no system role: the system message is folded into the first user turn. The
# assistant's answer follows [/INST] directly; with kubetune's tokenizers [/INST] is a control
# token, so the answer starts on a token boundary and the mask holds exactly the content.
MISTRAL = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_message = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{{ bos_token }}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if loop.first and system_message -%}"
    "{{ '[INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}"
    "{%- else -%}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] }}</s>{% endgeneration %}"
    "{%- else -%}"
    "{{ raise_exception('Mistral chat template: unsupported role ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

_BOS = "{%- if bos_token -%}{{ bos_token }}{%- endif -%}"

ROLE_MARKERS = (
    _BOS + "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] }}<|/assistant|>{% endgeneration %}"
    "{%- else -%}"
    "{{ message['content'] + '<|/' + message['role'] + '|>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)

TURN_MARKERS = (
    _BOS + "{%- for message in messages -%}"
    "{{ '<|turn|>' + loop.index | string + ' ' + message['role'] + '\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] }}<|end_turn|>{% endgeneration %}"
    "{%- else -%}"
    "{{ message['content'] }}<|end_turn|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|turn|>' + (messages | length + 1) | string + ' assistant\n' }}"
    "{%- endif -%}"
)

TEMPLATES: dict[str, str] = {
    "llama3": LLAMA3,
    "chatml": CHATML,
    "mistral": MISTRAL,
    "roleMarkers": ROLE_MARKERS,
    "turnMarkers": TURN_MARKERS,
}
"""kubetune's templates by the name ModelSpec.chatTemplate (plan.CHAT_TEMPLATES) or
ModelSpec.conversationFormat uses."""

FORMAT_TOKENS: dict[str, tuple[str, ...]] = {
    "roleMarkers": tuple(
        marker
        for role in ("system", "user", "assistant")
        for marker in (f"<|{role}|>", f"<|/{role}|>")
    ),
    "turnMarkers": ("<|turn|>", "<|end_turn|>"),
}
"""Special tokens a conversation format adds to the tokenizer."""

END_OF_TURN: dict[str, str] = {
    "llama3": "<|eot_id|>",
    "chatml": "<|im_end|>",
    "mistral": "</s>",
    "roleMarkers": "<|/assistant|>",
    "turnMarkers": "<|end_turn|>",
}
"""The token that ends an assistant turn, per template (what generation must stop on)."""

CONTROL_TOKENS: dict[str, tuple[str, ...]] = {
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "mistral": ("[INST]", "[/INST]", "</s>"),
    **FORMAT_TOKENS,
}
"""Tokens a tokenizer must know as single tokens for the template to work as intended."""

ARCHITECTURE_TEMPLATES: dict[str, str] = {
    "llama": "llama3",
    "qwen2": "chatml",
    "qwen2_moe": "chatml",
    "qwen3": "chatml",
    "qwen3_moe": "chatml",
    "mistral": "mistral",
    "mixtral": "mistral",
}
"""Default template by ``config.model_type`` when the tokenizer has none."""


def resolve_template(name_or_jinja: str) -> str:
    """The Jinja text for a template name (llama3, chatml, mistral) or a Jinja string."""
    if name_or_jinja in TEMPLATES:
        return TEMPLATES[name_or_jinja]
    if "{%" in name_or_jinja or "{{" in name_or_jinja:
        return name_or_jinja
    raise ValueError(
        f"'{name_or_jinja}' is neither a known template ({', '.join(TEMPLATES)}) "
        "nor a Jinja template"
    )


def template_for_architecture(model_type: str | None) -> str:
    """The name of kubetune's template for a model architecture (ChatML when unknown)."""
    return ARCHITECTURE_TEMPLATES.get((model_type or "").lower(), "chatml")


def has_generation_markers(template: str | None) -> bool:
    """Whether a template marks assistant output for assistant-only loss."""
    return bool(template) and GENERATION_MARKER.search(template or "") is not None
