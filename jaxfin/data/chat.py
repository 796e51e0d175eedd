"""Chat messages -> token ids with a loss mask, the one encoding that training, evaluation and generation share.

Target policy (what the model learns to emit after the prompt), decided here once for every tokenizer:
  * The prompt is the tokenizer's chat template with the generation prompt, tokenised exactly as
    `apply_chat_template(..., add_generation_prompt=True)` does, so training sees the ids that decoding is fed.
  * If that prompt ends inside an opened `<think>` block (DeepSeek-R1 distill: "<｜Assistant｜><think>\\n"; its
    template also strips think content from assistant turns, so rendering the answer cannot reproduce the
    prompt), the target closes an empty think block: "</think>\\n\\n" + output + end-of-turn token.
  * Otherwise the target is whatever the template renders for the assistant turn after the generation prompt
    (Qwen2.5: "output<|im_end|>\\n"; Qwen3: "<think>\\n\\n</think>\\n\\noutput<|im_end|>\\n").
  * The target is cut right after its first stop token (one of `eos_ids`: the model's generation-config eos ids,
    default the tokenizer's eos), so the last supervised token is the one decoding stops on; text a template puts
    after it (Qwen's "\\n") is never trained. If the rendered turn has no stop token, `eos_ids[0]` is appended.
  The prompt and the target are tokenised separately (ids = prompt ids + target ids), because at inference the
  model continues from the prompt ids, never from a joint tokenisation across the boundary.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from jaxfin.errors import UserError
from jaxfin.tasks.base import Example as TaskExample
from jaxfin.tasks.base import Task

Encoded = tuple[list[int], list[int]]  # (token ids, loss mask 0/1 per token)
THINK_CLOSE = "</think>\n\n"




def _name(tokenizer: Any) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def _render(tokenizer: Any, messages: Sequence[Mapping[str, str]], generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(list(messages), add_generation_prompt=generation_prompt, tokenize=False)
    except ValueError as e:  # transformers raises ValueError when the tokenizer has no chat template
        raise UserError(f"tokenizer {_name(tokenizer)}: cannot apply its chat template ({e})") from e


def prompt_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """Token ids of the chat template with the generation prompt, as the model sees them before it answers.
    return_dict=True gives the same BatchEncoding in transformers 4 and 5 (whose default became a dict)."""
    import jinja2  # transformers renders chat templates with it (not one of its hard dependencies)

    try:
        enc = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True,
                                            return_dict=True)
    except (jinja2.TemplateError, ValueError, TypeError, KeyError) as e:
        raise UserError(f"tokenizer {_name(tokenizer)}: cannot apply its chat template ({e})") from None
    return [int(i) for i in enc["input_ids"]]


def _stop_ids(tokenizer: Any, eos_ids: Sequence[int] | None) -> list[int]:
    ids = [int(i) for i in eos_ids] if eos_ids else []
    if not ids and tokenizer.eos_token_id is not None:
        ids = [int(tokenizer.eos_token_id)]
    if not ids:
        raise UserError(
            f"tokenizer {_name(tokenizer)}: no eos token, and no eos ids given (generation_config.eos_token_id)"
        )
    return ids


def target_text(tokenizer: Any, messages: Sequence[Mapping[str, str]], output: str) -> str:
    """The text after the generation prompt that the model is trained to produce (see the module docstring);
    it may extend past the stop token, which encode_example cuts off."""
    prompt = _render(tokenizer, messages, True)
    full = _render(tokenizer, [*messages, {"role": "assistant", "content": output}], False)
    if prompt.rstrip().endswith("<think>"):
        at = full.rfind(output)
        tail = full[at + len(output):] if at >= 0 and output else ""
        return THINK_CLOSE + output + tail
    if not full.startswith(prompt):
        raise UserError(
            f"tokenizer {_name(tokenizer)}: its chat template does not render the assistant turn as a continuation "
            "of the generation prompt, so the training target cannot be derived"
        )
    return full[len(prompt):]


def encode(
    tokenizer: Any,
    messages: Sequence[Mapping[str, str]],
    target: str,
    *,
    eos_ids: Sequence[int] | None = None,
) -> Encoded:
    """(prompt ids + target ids, loss mask 1 on the target ids only). `eos_ids`: the ids decoding stops on
    (Model.eos_ids); the target ends with the first of them it contains, else eos_ids[0] is appended."""
    stops = _stop_ids(tokenizer, eos_ids)
    prompt = prompt_ids(tokenizer, messages)
    answer = [int(i) for i in tokenizer.encode(target_text(tokenizer, messages, target), add_special_tokens=False)]
    stop_set = set(stops)
    cut = next((i for i, t in enumerate(answer) if t in stop_set), None)
    answer = answer[: cut + 1] if cut is not None else [*answer, stops[0]]
    return prompt + answer, [0] * len(prompt) + [1] * len(answer)


def encode_task(task: Task, examples: Sequence[TaskExample], tokenizer: Any, *,
                eos_ids: Sequence[int] | None = None) -> list[Encoded]:
    """A task's examples -> (prompt + target ids, loss mask): the task's chat messages and target text."""
    return [encode(tokenizer, task.messages(ex), task.target(ex), eos_ids=eos_ids) for ex in examples]
