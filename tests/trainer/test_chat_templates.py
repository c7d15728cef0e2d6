"""kubetune's chat templates: assistant-only masks token by token, generation prompts, choice."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kubetune_trainer.models import END_OF_TURN, TEMPLATES, load_tokenizer, resolve_template
from kubetune_trainer.models.builtin import FAMILIES
from kubetune_trainer.models.templates import FORMAT_TOKENS, template_for_architecture
from kubetune_trainer.plan import ModelSpec

pytestmark = pytest.mark.trainer

SYSTEM = "You are a calculator."
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "And 10 plus 20, please?"},
    {"role": "assistant", "content": "The answer is 30."},
]
ANSWERS = ["5", "The answer is 30."]
BUILTINS = sorted(FAMILIES)


def masked_runs(ids: list[int], mask: list[int]) -> list[list[int]]:
    """Contiguous runs of masked token ids."""
    runs: list[list[int]] = []
    previous = 0
    for token, bit in zip(ids, mask, strict=True):
        if bit and not previous:
            runs.append([])
        if bit:
            runs[-1].append(token)
        previous = bit
    return runs


@pytest.mark.parametrize("name", BUILTINS)
def test_assistant_mask_is_exactly_every_assistant_turn(name: str) -> None:
    tokenizer = load_tokenizer(f"builtin://{name}")
    template = FAMILIES[name].template
    end = END_OF_TURN[template]
    end_id = tokenizer.convert_tokens_to_ids(end)
    out = tokenizer.apply_chat_template(
        CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    runs = masked_runs(ids, mask)
    # One run per assistant turn (both turns trained), each the content's tokens + end of turn.
    assert len(runs) == len(ANSWERS)
    for run, answer in zip(runs, ANSWERS, strict=True):
        expected = [*tokenizer.encode(answer, add_special_tokens=False), end_id]
        assert run == expected, (tokenizer.convert_ids_to_tokens(run), answer)
        assert tokenizer.decode(run) == answer + end
    # Everything else (bos, headers, system and user turns) is unmasked.
    unmasked = tokenizer.decode([t for t, bit in zip(ids, mask, strict=True) if not bit])
    assert SYSTEM in unmasked
    assert "What is 2 + 3?" in unmasked and "And 10 plus 20, please?" in unmasked
    assert sum(mask) == sum(len(r) for r in runs)


@pytest.mark.parametrize("name", BUILTINS)
def test_generation_prompt_is_a_prefix_of_the_answered_conversation(name: str) -> None:
    tokenizer = load_tokenizer(f"builtin://{name}")
    prompt = CONVERSATION[:4]
    rendered_prompt = tokenizer.apply_chat_template(
        prompt, tokenize=False, add_generation_prompt=True
    )
    rendered_full = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert rendered_full.startswith(rendered_prompt)
    # What follows the generation prompt is exactly the answer and the end-of-turn token.
    rest = rendered_full[len(rendered_prompt) :]
    assert rest.rstrip("\n") == ANSWERS[1] + END_OF_TURN[FAMILIES[name].template]
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True)
    full_ids = tokenizer.apply_chat_template(CONVERSATION)
    if not isinstance(prompt_ids, list):  # some versions return a BatchEncoding
        prompt_ids, full_ids = prompt_ids["input_ids"], full_ids["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    without = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=False)
    if FAMILIES[name].template == "mistral":
        assert without == rendered_prompt  # [/INST] already asks for the answer
    else:
        assert without != rendered_prompt and rendered_prompt.startswith(without)


@pytest.mark.parametrize("name", BUILTINS)
def test_trl_sees_markers_and_a_trained_stop_token(name: str) -> None:
    from trl.chat_template_utils import has_generation_markers, is_chat_template_stop_token_trained

    tokenizer = load_tokenizer(f"builtin://{name}")
    assert has_generation_markers(tokenizer.chat_template)
    assert is_chat_template_stop_token_trained(tokenizer)


def test_trl_sft_tokenization_masks_only_assistant_turns() -> None:
    """SFTTrainer(assistant_only_loss=True) builds its masks from these templates."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from kubetune_trainer.models import load_model

    spec = ModelSpec(source="builtin://tiny-qwen2")
    tokenizer = load_tokenizer(spec)
    model = load_model(spec, tokenizer=tokenizer)
    config = SFTConfig(
        output_dir="unused",
        assistant_only_loss=True,
        use_cpu=True,
        bf16=False,
        report_to=[],
        max_steps=1,
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list([{"messages": CONVERSATION}]),
        processing_class=tokenizer,
    )
    row = trainer.train_dataset[0]
    # TRL folds the assistant masks into labels: -100 wherever the loss is off.
    trained = [int(label != -100) for label in row["labels"]]
    runs = masked_runs(row["input_ids"], trained)
    assert [tokenizer.decode(r) for r in runs] == [a + "<|im_end|>" for a in ANSWERS]


def test_template_choice_spec_then_tokenizer_then_architecture(tmp_path: Path) -> None:
    from kubetune_trainer.models import resolve_model_dir

    source = resolve_model_dir("builtin://tiny-mistral")
    bare = tmp_path / "bare-mistral"
    shutil.copytree(source, bare)
    (bare / "chat_template.jinja").unlink()
    # No template in the tokenizer: kubetune's for the architecture.
    assert load_tokenizer(str(bare)).chat_template == TEMPLATES["mistral"]
    assert template_for_architecture("qwen2") == "chatml"
    assert template_for_architecture("llama") == "llama3"
    assert template_for_architecture("something-new") == "chatml"
    # The tokenizer's own template wins over the architecture's.
    assert load_tokenizer("builtin://tiny-llama").chat_template == TEMPLATES["llama3"]
    # ModelSpec.chat_template wins over both: by name, or as Jinja text.
    named = load_tokenizer(ModelSpec(source=str(bare), chat_template="chatml"))
    assert named.chat_template == TEMPLATES["chatml"]
    jinja = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    custom = load_tokenizer(ModelSpec(source=str(bare), chat_template=jinja))
    assert custom.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi"


def test_resolve_template() -> None:
    for name, text in TEMPLATES.items():
        assert resolve_template(name) == text
        assert "{% generation %}" in text and "{% endgeneration %}" in text
    assert resolve_template("{{ messages }}") == "{{ messages }}"
    with pytest.raises(ValueError, match="neither a known template"):
        resolve_template("vicuna")


# --------------------------------------------------------------------------- conversation formats

FORMATS = ["roleMarkers", "turnMarkers"]


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("conversation_format", FORMATS)
def test_conversation_format_masks_exactly_every_assistant_turn(
    name: str, conversation_format: str
) -> None:
    spec = ModelSpec(source=f"builtin://{name}", conversation_format=conversation_format)
    tokenizer = load_tokenizer(spec)
    assert tokenizer.chat_template == TEMPLATES[conversation_format]
    for marker in FORMAT_TOKENS[conversation_format]:  # each marker is one special token
        assert tokenizer.encode(marker, add_special_tokens=False) == [
            tokenizer.convert_tokens_to_ids(marker)
        ]
    end = END_OF_TURN[conversation_format]
    out = tokenizer.apply_chat_template(
        CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    runs = masked_runs(ids, mask)
    assert len(runs) == len(ANSWERS)
    for run, answer in zip(runs, ANSWERS, strict=True):
        expected = [
            *tokenizer.encode(answer, add_special_tokens=False),
            tokenizer.convert_tokens_to_ids(end),
        ]
        assert run == expected, (tokenizer.convert_ids_to_tokens(run), answer)
    unmasked = tokenizer.decode([t for t, bit in zip(ids, mask, strict=True) if not bit])
    if conversation_format == "roleMarkers":
        assert unmasked.count("<|assistant|>") == 2 and "<|/assistant|>" not in unmasked
        assert f"<|system|>{SYSTEM}<|/system|>" in unmasked
        assert "<|user|>What is 2 + 3?<|/user|>" in unmasked
    else:
        assert "<|turn|>1 system\n" + SYSTEM + "<|end_turn|>" in unmasked
        assert "<|turn|>3 assistant\n" in unmasked and "<|turn|>5 assistant\n" in unmasked
        assert "<|turn|>4 user\nAnd 10 plus 20, please?<|end_turn|>" in unmasked


@pytest.mark.parametrize("conversation_format", FORMATS)
def test_conversation_format_generation_prompt_is_a_prefix(conversation_format: str) -> None:
    tokenizer = load_tokenizer(
        ModelSpec(source="builtin://tiny-llama", conversation_format=conversation_format)
    )
    prompt = CONVERSATION[:4]
    rendered_prompt = tokenizer.apply_chat_template(
        prompt, tokenize=False, add_generation_prompt=True
    )
    rendered_full = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert rendered_full[len(rendered_prompt) :] == ANSWERS[1] + END_OF_TURN[conversation_format]
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True)["input_ids"]
    full_ids = tokenizer.apply_chat_template(CONVERSATION)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids


@pytest.mark.parametrize("conversation_format", FORMATS)
def test_conversation_format_model_grows_and_stops_at_its_marker(
    conversation_format: str,
) -> None:
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    from kubetune_trainer.models import load_model

    spec = ModelSpec(source="builtin://tiny-qwen2", conversation_format=conversation_format)
    tokenizer = load_tokenizer(spec)
    model = load_model(spec, tokenizer=tokenizer)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN[conversation_format])
    assert end in model.generation_config.eos_token_id
    assert is_chat_template_stop_token_trained(tokenizer)


def test_score_conditioned_template_keeps_masks_and_prefixes_the_first_user_turn() -> None:
    from kubetune_trainer.data.score_conditioning import (
        conditioned_template,
        control_prefix,
        is_conditioned,
    )
    from kubetune_trainer.plan import ScoreConditioningSpec

    tokenizer = load_tokenizer(
        ModelSpec(source="builtin://tiny-llama", conversation_format="roleMarkers")
    )
    plain = tokenizer.apply_chat_template(
        CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    spec = ScoreConditioningSpec(prefix='<q "{score}"> ', decimals=1)
    tokenizer.chat_template = conditioned_template(tokenizer.chat_template, spec, 4.5)
    assert is_conditioned(tokenizer.chat_template)
    for score, shown in ((None, 4.5), (1.0, 1.0), (2.25, 2.25)):
        kwargs = {} if score is None else {"score": score}
        text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, **kwargs)
        prefix = control_prefix(spec, shown)
        assert text.count(prefix) == 1
        assert f"<|user|>{prefix}What is 2 + 3?<|/user|>" in text
        assert "<|user|>And 10 plus 20, please?<|/user|>" in text  # later turns untouched
        out = tokenizer.apply_chat_template(
            CONVERSATION,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            **kwargs,
        )
        trained = [
            t for t, bit in zip(out["input_ids"], out["assistant_masks"], strict=True) if bit
        ]
        assert trained == [
            t for t, bit in zip(plain["input_ids"], plain["assistant_masks"], strict=True) if bit
        ]


def test_with_lora_the_format_markers_rows_are_trained() -> None:
    from peft import get_peft_model

    from kubetune_trainer.models import load_model
    from kubetune_trainer.plan import RecipeSpec
    from kubetune_trainer.recipes.sft_techniques import sft_peft_config

    recipe = RecipeSpec.model_validate(
        {
            "method": "sft",
            "model": {"source": "builtin://tiny-llama", "conversationFormat": "roleMarkers"},
            "data": {"sources": [{"uri": "builtin://arithmetic-sft"}]},
            "peft": {"type": "lora", "r": 4},
        }
    )
    tokenizer = load_tokenizer(recipe.model)
    model = get_peft_model(
        load_model(recipe.model, tokenizer=tokenizer), sft_peft_config(recipe, tokenizer)
    )
    trained = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}
    assert any("embed_tokens.token_adapter" in n for n in trained), trained
    assert any("lm_head.token_adapter" in n for n in trained), trained
