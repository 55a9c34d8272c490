"""GRPO reward functions (docs/recipe.md §5), a name -> function registry, and the default set per mode.

Each reward has TRL's signature `(completions, **kwargs) -> list[float]` and returns 0.0 or 1.0 per completion;
the trainer sums them with equal weight. TRL logs each one as `rewards/<function __name__>/mean`.

Semantics are the paper's, with one fix: the answer extraction crosses newlines (see `prompts.extract_answer`).
The format checks are decided with `str` methods and one backtracking-free search instead of the original's
`re.fullmatch` with lazy quantifiers, which is quadratic on inputs such as `<think></think><answer>` repeated.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from r1aqa.prompts import ANSWER_CLOSE, ANSWER_OPEN, extract_answer

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# `</think>`, optional whitespace, `<answer>`: the only place where the think format joins its two parts. A search
# for it is linear: each whitespace run is scanned from at most one `</think>`, the one right before it.
_THINK_TO_ANSWER = re.compile(re.escape(THINK_CLOSE) + r"\s*" + re.escape(ANSWER_OPEN))


def completion_texts(completions: list) -> list[str]:
    """The text of each completion: plain strings, or TRL conversational `[{"role": "assistant", "content": ...}]`."""
    texts = []
    for index, completion in enumerate(completions):
        if isinstance(completion, str):
            text = completion
        elif isinstance(completion, list) and completion and isinstance(completion[0], dict):
            text = completion[0].get("content")
        else:
            raise TypeError(
                f"completion {index}: expected a string or a list of message dicts, got {type(completion).__name__}"
            )
        if not isinstance(text, str):
            raise TypeError(f"completion {index}: expected string content, got {type(text).__name__}")
        texts.append(text)
    return texts


def accuracy_reward(completions: list, solution: list[str], **kwargs) -> list[float]:
    """1.0 when the completion's answer equals the solution's answer, case-sensitively, else 0.0.

    Both answers come from `extract_answer`: the first `<answer>...</answer>` pair, stripped, or the whole text
    stripped when there is no pair (the same function MMAU evaluation uses).

    >>> accuracy_reward(["<answer> Sailboat\\n</answer>", "<answer>sailboat</answer>"], ["<answer>Sailboat</answer>"] * 2)
    [1.0, 0.0]
    """
    texts = completion_texts(completions)
    if len(solution) != len(texts):
        raise ValueError(f"got {len(texts)} completions but {len(solution)} solutions")
    rewards = []
    for index, (text, gold) in enumerate(zip(texts, solution, strict=True)):
        if not isinstance(gold, str):
            raise TypeError(f"solution {index}: expected a string, got {type(gold).__name__}")
        rewards.append(1.0 if extract_answer(text) == extract_answer(gold) else 0.0)
    return rewards


def _is_answer_format(text: str) -> bool:
    """Same result as `re.fullmatch(r"<answer>.*?</answer>", text, re.DOTALL)`, in linear time."""
    return (
        len(text) >= len(ANSWER_OPEN) + len(ANSWER_CLOSE)  # the two tags may not overlap
        and text.startswith(ANSWER_OPEN)
        and text.endswith(ANSWER_CLOSE)
    )


def _is_think_format(text: str) -> bool:
    """Same result as `re.fullmatch(r"<think>.*?</think>\\s*<answer>.*?</answer>", text, re.DOTALL)`, linear time.

    The text must open with `<think>`, close with `</answer>`, and hold `</think>`, whitespace, `<answer>` somewhere
    in between; whatever else lies between the tags is free.
    """
    if not (text.startswith(THINK_OPEN) and text.endswith(ANSWER_CLOSE)):
        return False
    return _THINK_TO_ANSWER.search(text, len(THINK_OPEN), len(text) - len(ANSWER_CLOSE)) is not None


def format_reward(completions: list, **kwargs) -> list[float]:
    """1.0 when the whole completion is `<answer>...</answer>` (anything, newlines included, inside), else 0.0.

    Nothing may precede or follow the tags, not even whitespace.

    >>> format_reward(["<answer>Sailboat</answer>", "The answer is <answer>Sailboat</answer>"])
    [1.0, 0.0]
    """
    return [1.0 if _is_answer_format(text) else 0.0 for text in completion_texts(completions)]


def think_format_reward(completions: list, **kwargs) -> list[float]:
    """1.0 when the whole completion is `<think>...</think>`, optional whitespace, `<answer>...</answer>`, else 0.0.

    >>> think_format_reward(["<think>a boat horn</think>\\n<answer>Sailboat</answer>", "<answer>Sailboat</answer>"])
    [1.0, 0.0]
    """
    return [1.0 if _is_think_format(text) else 0.0 for text in completion_texts(completions)]


def option_format_reward(
    completions: list, multi_choice: list[list[str]] | None = None, choices: list[list[str]] | None = None, **kwargs
) -> list[float]:
    """1.0 when the completion is in the answer format and its answer is one of the listed options, else 0.0.

    The format is `format_reward`'s (the whole completion is `<answer>...</answer>`); the answer is what the accuracy
    reward reads (`extract_answer`: the first pair's text, stripped); options are compared stripped.

    A demo setting, not the paper's: on a tiny random model the paper's `format` reward, which also pays for
    `<answer></answer>` or any other text in the tags, let GRPO collapse onto an empty or made-up answer (measured
    while building the demo: see the README's demo section). The options come from the row's `multi_choice` (AVQA
    training rows) or `choices` (MMAU items), which TRL passes as keyword arguments; a right or wrong option
    earns the same, so this reward says nothing about accuracy.

    >>> option_format_reward(["<answer>low</answer>", "<answer></answer>"], multi_choice=[["low", "top"]] * 2)
    [1.0, 0.0]
    """
    texts = completion_texts(completions)
    options = multi_choice if multi_choice is not None else choices
    if options is None:
        raise ValueError("option_format needs the listed options: a `multi_choice` or `choices` column.")
    if len(options) != len(texts):
        raise ValueError(f"got {len(texts)} completions but {len(options)} option lists")
    return [
        1.0 if _is_answer_format(text) and extract_answer(text) in {option.strip() for option in row} else 0.0
        for text, row in zip(texts, options, strict=True)
    ]


REWARD_FUNCS: dict[str, Callable[..., list[float]]] = {
    "accuracy": accuracy_reward,
    "format": format_reward,
    "think_format": think_format_reward,
    "option_format": option_format_reward,  # demo only (configs/grpo_demo_cpu.yaml), not the paper's
}


def get_reward_funcs(names: list[str]) -> list[Callable[..., list[float]]]:
    """The reward functions registered under `names`, in order; an unknown name is a ValueError."""
    unknown = [name for name in names if name not in REWARD_FUNCS]
    if unknown:
        raise ValueError(f"unknown reward name(s) {unknown}; known: {sorted(REWARD_FUNCS)}")
    return [REWARD_FUNCS[name] for name in names]


def default_reward_names(think: bool) -> list[str]:
    """The paper's rewards: accuracy plus the format check of the prompt mode (Prompt <3> when `think`)."""
    return ["accuracy", "think_format" if think else "format"]
