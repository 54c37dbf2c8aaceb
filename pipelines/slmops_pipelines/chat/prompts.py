"""What the model receives: the user's text rendered the way the job rendered its training prompts.

A fine-tuned model answers well only when it sees its prompts as it saw them in training,
so the rules here mirror :func:`slmops_pipelines.steps.data.render_example` for the *prompt*
half of an example (a test compares both on real rows):

* ``promptTemplate`` jobs: the text fills the template's placeholder (a template with several
  fields takes a JSON object naming them), then the chat template wraps it as the user turn,
  after the job's ``systemPrompt``, when ``chatTemplate`` is on.  These jobs learned single
  question -> answer pairs, so every request is **single-turn** (no history).
* ``chatTemplate`` jobs without a promptTemplate (``messages`` or ``prompt`` columns), and
  targets of no known job whose tokenizer has a chat template: the conversation so far plus
  the text as the next user turn: **multi-turn**.
* ``textTemplate`` jobs, models without a chat template, and ``--raw``: the text as is.

Token ids follow :func:`~slmops_pipelines.steps.data.tokenize_example` (BOS when the model
uses one and the text does not start with it), the very function training used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slmops_pipelines.errors import InputError
from slmops_pipelines.specs import DatasetSpec
from slmops_pipelines.specs.common import template_fields

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Message = dict[str, str]


@dataclass(frozen=True)
class PromptRenderer:
    """Renders a user's text (and the conversation so far) into the prompt text the model sees."""

    tokenizer: PreTrainedTokenizerBase
    dataset: DatasetSpec | None = None  # the job's data spec: how training rendered prompts
    raw: bool = False

    @property
    def mode(self) -> str:
        """raw | template | template-chat | chat: how the text becomes a prompt."""
        has_chat = bool(getattr(self.tokenizer, "chat_template", None))
        spec = self.dataset
        if self.raw or (spec is not None and spec.text_template):
            return "raw"
        if spec is None:
            return "chat" if has_chat else "raw"
        if spec.prompt_template:
            return "template-chat" if spec.chat_template else "template"
        return "chat" if spec.chat_template else "raw"

    @property
    def multi_turn(self) -> bool:
        """Whether a chat keeps its history: only for models that learned conversations."""
        return self.mode == "chat"

    def describe(self) -> str:
        """One line for people: how prompts are rendered, and whether a chat remembers."""
        what = {
            "raw": "the text as is",
            "template": "the job's promptTemplate",
            "template-chat": "the job's promptTemplate in the chat template",
            "chat": "the chat template",
        }[self.mode]
        return f"prompts: {what} ({'multi-turn' if self.multi_turn else 'single-turn'})"

    def render(self, text: str, history: list[Message] | None = None) -> str:
        """The prompt text for ``text`` after ``history`` (user and assistant turns)."""
        return self.render_messages([*(history or []), {"role": "user", "content": text}])

    def render_messages(self, messages: list[Message]) -> str:
        """The prompt text for a conversation whose last message is the user's (OpenAI's ``messages``).

        A system message in ``messages`` replaces the job's ``systemPrompt``; single-turn modes
        answer the last user message alone, as training paired one prompt with one answer.
        """
        if not messages or messages[-1].get("role") != "user":
            raise InputError("the last message must be the user's", field="messages")
        system = [m for m in messages if m.get("role") == "system"]
        turns = [m for m in messages if m.get("role") != "system"]
        text = turns[-1]["content"]
        mode = self.mode
        if mode == "raw":
            return text
        user = self._fill_template(text) if mode.startswith("template") else text
        if mode == "template":
            return user
        history = turns[:-1] if mode == "chat" else []
        conversation = [*(system or self._system()), *history, {"role": "user", "content": user}]
        return str(
            self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        )

    def token_ids(self, prompt_text: str) -> list[int]:
        """The prompt's token ids, exactly as the training rows' prompts were tokenized."""
        from slmops_pipelines.steps.data import Example, tokenize_example

        ids, _labels, _truncated = tokenize_example(
            Example(prompt_text=prompt_text, completion_text="", answer=""),
            self.tokenizer,
            max_length=1 << 30,  # training truncated to maxSeqLength; a prompt here is the user's call
            completion_only=True,
        )
        return ids

    def _system(self) -> list[Message]:
        prompt = self.dataset.system_prompt if self.dataset is not None else None
        return [{"role": "system", "content": prompt}] if prompt else []

    def _fill_template(self, text: str) -> str:
        assert self.dataset is not None and self.dataset.prompt_template is not None  # mode says so
        template = self.dataset.prompt_template
        fields = template_fields(template)
        if len(fields) <= 1:
            return template.format(**{name: text for name in fields})
        values = _json_object(text)
        missing = [name for name in fields if name not in values]
        if missing:
            raise InputError(
                f"the job's promptTemplate has the fields {', '.join(fields)}: give the prompt as a JSON "
                f'object ({{"{fields[0]}": "...", ...}}; missing: {", ".join(missing)}), or use --raw',
                field="prompt",
            )
        return template.format(**values)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
