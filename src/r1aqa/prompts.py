"""The paper's prompts and answer extraction (docs/recipe.md §4), verbatim: changing a byte changes the science."""

from __future__ import annotations

OPTIONS_SENTENCE = "{question} Please choose the answer from the following options: {choices}."
ANSWER_INSTRUCTION = " Output the final answer in <answer> </answer>."  # Prompt <2>, the paper's main result
THINK_INSTRUCTION = " Output the thinking process in <think> </think> and final answer in <answer> </answer>."  # <3>
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"


def format_question(question: str, choices: list[str], think: bool = False, format_instruction: bool = True) -> str:
    """Prompt <2>, <3> when `think`, <1> (SFT baselines) without `format_instruction`; options as `str(list)`."""
    instruction = (THINK_INSTRUCTION if think else ANSWER_INSTRUCTION) if format_instruction else ""
    return OPTIONS_SENTENCE.format(question=question, choices=str(list(choices))) + instruction


def avqa_question(question_text: str) -> str:
    """AVQA asks about a video; the model only hears it. The original replaced the lowercase substring only."""
    return question_text.replace("video", "audio")


def solution_text(answer: str) -> str:
    """The gold solution string the accuracy reward compares against."""
    return f"{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


def extract_answer(text: str) -> str:
    """The first `<answer>...</answer>` pair's text (across newlines), else the whole text; stripped. The accuracy
    reward and evaluation both use it, so the metric measures what training optimised."""
    start = text.find(ANSWER_OPEN)
    end = -1 if start == -1 else text.find(ANSWER_CLOSE, start + len(ANSWER_OPEN))
    return (text if end == -1 else text[start + len(ANSWER_OPEN) : end]).strip()


def user_turn(audio_path: str, text: str) -> list[dict]:
    """One user turn: the audio part, then the text part. No system message: the chat template adds one."""
    return [{"role": "user", "content": [{"type": "audio", "path": audio_path}, {"type": "text", "text": text}]}]
