"""kubetune's chat templates: assistant-only masks token by token, generation prompts, choice."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kubetune_trainer.models import END_OF_TURN, TEMPLATES, load_tokenizer, resolve_template
from kubetune_trainer.models.builtin import FAMILIES
from kubetune_trainer.models.templates import template_for_architecture
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
