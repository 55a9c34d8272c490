"""GRPO rewards (docs/recipe.md §5): TRL's `(completions, **kwargs) -> list[float]`, each 0.0 or 1.0; the registry."""

from __future__ import annotations

import re
from collections.abc import Callable

from r1aqa.prompts import ANSWER_CLOSE, ANSWER_OPEN, extract_answer

THINK_OPEN = "<think>"
# Where the think format joins its two parts; a search for it is linear (each whitespace run follows one `</think>`).
_THINK_TO_ANSWER = re.compile(r"</think>\s*" + ANSWER_OPEN)


def completion_texts(completions: list, what: str = "completion") -> list[str]:
    """The text of each completion: plain strings, or TRL conversational `[{"role": "assistant", "content": ...}]`."""
    texts = [c[0].get("content") if isinstance(c, list) and c and isinstance(c[0], dict) else c for c in completions]
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{what} {index}: expected a string or message dicts, got {type(text).__name__}")
    return texts


def accuracy_reward(completions: list, solution: list[str], **kwargs) -> list[float]:
    """1.0 when the completion's answer equals the solution's (`extract_answer` of both), case-sensitively."""
    texts, golds = completion_texts(completions), completion_texts(solution, "solution")
    if len(golds) != len(texts):
        raise ValueError(f"got {len(texts)} completions but {len(golds)} solutions")
    return [float(extract_answer(text) == extract_answer(gold)) for text, gold in zip(texts, golds, strict=True)]


def _is_answer_format(text: str) -> bool:
    """The original's `re.fullmatch(r"<answer>.*?</answer>", text, re.DOTALL)`, in linear time."""
    long_enough = len(text) >= len(ANSWER_OPEN) + len(ANSWER_CLOSE)  # the two tags may not overlap
    return long_enough and text.startswith(ANSWER_OPEN) and text.endswith(ANSWER_CLOSE)


def format_reward(completions: list, **kwargs) -> list[float]:
    """1.0 when the whole completion is `<answer>...</answer>` (nothing around the tags, not even whitespace)."""
    return [1.0 if _is_answer_format(text) else 0.0 for text in completion_texts(completions)]


def think_format_reward(completions: list, **kwargs) -> list[float]:
    """1.0 when the whole completion is `<think>...</think>`, optional whitespace, `<answer>...</answer>`."""
    return [1.0 if _is_think_format(text) else 0.0 for text in completion_texts(completions)]


def _is_think_format(text: str) -> bool:
    """`re.fullmatch(r"<think>.*?</think>\\s*<answer>.*?</answer>", text, re.DOTALL)`, in linear time."""
    if not (text.startswith(THINK_OPEN) and text.endswith(ANSWER_CLOSE)):
        return False
    return _THINK_TO_ANSWER.search(text, len(THINK_OPEN), len(text) - len(ANSWER_CLOSE)) is not None


def option_format_reward(completions: list, multi_choice: list | None = None, choices: list | None = None, **kw):
    """The CPU demo's format reward: `format_reward`'s, and the answer is one of the row's options (stripped), as the
    paper's let GRPO collapse onto an empty or made-up answer on a tiny random model."""
    texts = completion_texts(completions)
    options = multi_choice if multi_choice is not None else choices
    if options is None:
        raise ValueError("option_format needs the listed options: a `multi_choice` or `choices` column.")
    if len(options) != len(texts):
        raise ValueError(f"got {len(texts)} completions but {len(options)} option lists")
    allowed = [{option.strip() for option in row} for row in options]
    return [float(_is_answer_format(t) and extract_answer(t) in ok) for t, ok in zip(texts, allowed, strict=True)]


# By name without `_reward` (TRL logs `rewards/<__name__>/mean`); option_format is the CPU demo's, not the paper's.
REWARD_FUNCS: dict[str, Callable[..., list[float]]] = {
    f.__name__.removesuffix("_reward"): f
    for f in (accuracy_reward, format_reward, think_format_reward, option_format_reward)
}


def get_reward_funcs(names: list[str]) -> list[Callable[..., list[float]]]:
    """The reward functions registered under `names`, in order; an unknown name is a ValueError."""
    if unknown := [name for name in names if name not in REWARD_FUNCS]:
        raise ValueError(f"unknown reward name(s) {unknown}; known: {sorted(REWARD_FUNCS)}")
    return [REWARD_FUNCS[name] for name in names]


def default_reward_names(think: bool) -> list[str]:
    """The paper's rewards: accuracy plus the format check of the prompt mode (Prompt <3> when `think`)."""
    return ["accuracy", "think_format" if think else "format"]
