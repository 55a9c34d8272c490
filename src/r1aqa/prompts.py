"""The text protocol shared by training, rewards and evaluation: prompt templates and answer extraction.

Every string here is verbatim from the original release (docs/recipe.md §4): changing a byte changes the science.
"""

from __future__ import annotations

OPTIONS_SENTENCE = "{question} Please choose the answer from the following options: {choices}."
# Prompt <2>: answer mode, the paper's main result.
ANSWER_INSTRUCTION = " Output the final answer in <answer> </answer>."
# Prompt <3>: think mode.
THINK_INSTRUCTION = " Output the thinking process in <think> </think> and final answer in <answer> </answer>."

ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"


def format_question(question: str, choices: list[str], think: bool = False, format_instruction: bool = True) -> str:
    """The text part of the user turn.

    `think` picks Prompt <3> over Prompt <2>; `format_instruction=False` gives Prompt <1> (question and options
    only), which the paper used for its SFT baselines. `choices` is rendered with Python's `str(list)`, exactly as
    the original did, quotes and all:

    >>> format_question("What is it?", ["a dog", "a cat"])
    "What is it? Please choose the answer from the following options: ['a dog', 'a cat']. Output the final answer in <answer> </answer>."
    """
    text = OPTIONS_SENTENCE.format(question=question, choices=str(list(choices)))
    if not format_instruction:
        return text
    return text + (THINK_INSTRUCTION if think else ANSWER_INSTRUCTION)


def avqa_question(question_text: str) -> str:
    """AVQA asks about a video; the model only hears it. The original replaced the lowercase substring only."""
    return question_text.replace("video", "audio")


def solution_text(answer: str) -> str:
    """The gold solution string the accuracy reward compares against."""
    return f"{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


def extract_answer(text: str) -> str:
    """The text of the first `<answer>...</answer>` pair, stripped; the whole text stripped when there is none.

    Used by the accuracy reward and by MMAU evaluation, so the metric measures what training optimised. Unlike the
    original's regex this crosses newlines, and it runs in linear time on any input.

    >>> extract_answer("<think>hm</think> <answer> Sailboat\\n</answer>")
    'Sailboat'
    >>> extract_answer("  just words ")
    'just words'
    """
    start = text.find(ANSWER_OPEN)
    if start != -1:
        end = text.find(ANSWER_CLOSE, start + len(ANSWER_OPEN))
        if end != -1:
            return text[start + len(ANSWER_OPEN) : end].strip()
    return text.strip()


def user_turn(audio_path: str, text: str) -> list[dict]:
    """One user turn: the audio part, then the text part (docs/recipe.md §4). No system message: the template adds one."""
    return [{"role": "user", "content": [{"type": "audio", "path": audio_path}, {"type": "text", "text": text}]}]
