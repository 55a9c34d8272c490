"""Reward functions (docs/recipe.md §5): table-driven cases, the original's regexes as a reference, linear time, robustness."""

import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from r1aqa.rewards import (
    REWARD_FUNCS,
    accuracy_reward,
    default_reward_names,
    format_reward,
    get_reward_funcs,
    think_format_reward,
)

GOLD = "<answer>Sailboat</answer>"

ACCURACY_CASES = [
    # (completion, solution, expected)
    ("<answer>Sailboat</answer>", GOLD, 1.0),
    ("<answer> Sailboat </answer>", GOLD, 1.0),
    ("  <answer>Sailboat</answer>\n", GOLD, 1.0),
    ("<answer>\nSailboat\n</answer>", GOLD, 1.0),  # the fixed bug: the original's regex stopped at newlines
    ("<answer>Sail\nboat</answer>", "<answer>Sail\nboat</answer>", 1.0),
    ("<answer>sailboat</answer>", GOLD, 0.0),  # case-sensitive
    ("<answer>SAILBOAT</answer>", GOLD, 0.0),
    ("Sailboat", GOLD, 1.0),  # no tag pair: the whole text, stripped
    (" Sailboat \n", GOLD, 1.0),
    ("The answer is Sailboat", GOLD, 0.0),
    ("<answer>Sailboat</answer><answer>Yacht</answer>", GOLD, 1.0),  # the first pair decides
    ("<answer>Yacht</answer><answer>Sailboat</answer>", GOLD, 0.0),
    ("<answer>Sailboat", GOLD, 0.0),  # unclosed: the whole text is compared
    ("Sailboat</answer>", GOLD, 0.0),
    ("<think>Yacht or Sailboat?</think>\n<answer>Sailboat</answer>", GOLD, 1.0),
    ("<think>\nIt sails.\n</think><answer>\nSailboat</answer>", GOLD, 1.0),
    ("", GOLD, 0.0),
    ("<answer></answer>", GOLD, 0.0),
    ("<answer>Sailboat</answer>", "Sailboat", 1.0),  # an untagged solution is used whole
    ("<answer>Café ☕</answer>", "<answer>Café ☕</answer>", 1.0),
    ("<answer>Cafe</answer>", "<answer>Café</answer>", 0.0),
    ("<answer>Cafe\u0301</answer>", "<answer>Caf\u00e9</answer>", 0.0),  # no Unicode normalisation
    ("<answer>汽车</answer>", "<answer>汽车</answer>", 1.0),
    ("<answer>2 cars</answer>", "<answer>2 boats</answer>", 0.0),  # no math verifier calling these equal
    ("<answer>3</answer>", "<answer>3.0</answer>", 0.0),
]

FORMAT_CASES = [
    ("<answer>Sailboat</answer>", 1.0),
    ("<answer></answer>", 1.0),
    ("<answer>\nSail\nboat\n</answer>", 1.0),
    ("<answer>a</answer><answer>b</answer>", 1.0),  # fullmatch lets `.*?` span the inner tags
    ("<answer>☕ 汽车</answer>", 1.0),
    (" <answer>Sailboat</answer>", 0.0),  # nothing may surround the tags
    ("<answer>Sailboat</answer>\n", 0.0),
    ("The answer is <answer>Sailboat</answer>", 0.0),
    ("<answer>a</answer> trailing", 0.0),
    ("<answer>Sailboat", 0.0),
    ("Sailboat</answer>", 0.0),
    ("<answer></answer", 0.0),
    ("<answer>", 0.0),
    ("<ANSWER>a</ANSWER>", 0.0),
    ("<think>x</think><answer>a</answer>", 0.0),
    ("Sailboat", 0.0),
    ("", 0.0),
]

THINK_FORMAT_CASES = [
    ("<think>hm</think><answer>a</answer>", 1.0),
    ("<think>hm</think>\n\n <answer>a</answer>", 1.0),
    ("<think>\nhm\n</think>\n<answer>\na\n</answer>", 1.0),
    ("<think></think><answer></answer>", 1.0),
    ("<think>hm</think>\u00a0\t<answer>a</answer>", 1.0),  # `\s` is Unicode whitespace, as in the original
    ("<think>a</think>b</think> <answer>c</answer>", 1.0),  # the thinking may contain `</think>`
    ("<think>a</think><answer>b</answer>c<answer>d</answer>", 1.0),
    ("<think>汽车?</think><answer>汽车</answer>", 1.0),
    ("<think>hm</think> x <answer>a</answer>", 0.0),  # only whitespace between the parts
    ("<think>hm<answer>a</answer>", 0.0),
    ("<think>hm</think>", 0.0),
    ("<answer>a</answer>", 0.0),
    (" <think>hm</think><answer>a</answer>", 0.0),
    ("<think>hm</think><answer>a</answer>\n", 0.0),
    ("<think>hm</think><answer>a", 0.0),
    ("<THINK>hm</THINK><answer>a</answer>", 0.0),
    ("<think></answer>", 0.0),
    ("<think></think></answer>", 0.0),
    ("", 0.0),
]


def as_conversation(text):
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize(("completion", "solution", "expected"), ACCURACY_CASES)
def test_accuracy_reward(completion, solution, expected):
    assert accuracy_reward([completion], [solution]) == [expected]
    assert accuracy_reward([as_conversation(completion)], solution=[solution]) == [expected]


@pytest.mark.parametrize(("completion", "expected"), FORMAT_CASES)
def test_format_reward(completion, expected):
    assert format_reward([completion]) == [expected]
    assert format_reward([as_conversation(completion)]) == [expected]


@pytest.mark.parametrize(("completion", "expected"), THINK_FORMAT_CASES)
def test_think_format_reward(completion, expected):
    assert think_format_reward([completion]) == [expected]
    assert think_format_reward([as_conversation(completion)]) == [expected]


def test_batches_keep_order_and_ignore_extra_columns():
    completions = [as_conversation(text) for text, _, _ in ACCURACY_CASES]
    solutions = [solution for _, solution, _ in ACCURACY_CASES]
    expected = [value for _, _, value in ACCURACY_CASES]
    assert accuracy_reward(completions, solutions, prompts=None, audio_path=["x.wav"] * len(solutions)) == expected
    assert format_reward([text for text, _ in FORMAT_CASES], solution=[]) == [v for _, v in FORMAT_CASES]
    assert accuracy_reward([], []) == format_reward([]) == think_format_reward([]) == []


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match="completion 1"):
        format_reward(["<answer>a</answer>", as_conversation(None)])
    with pytest.raises(TypeError, match="completion 0"):
        think_format_reward([None])
    with pytest.raises(TypeError, match="solution 1"):
        accuracy_reward(["a", "b"], ["a", None])
    with pytest.raises(ValueError, match="2 completions but 1 solutions"):
        accuracy_reward(["a", "b"], ["a"])


def test_registry():
    assert get_reward_funcs(["accuracy", "format"]) == [accuracy_reward, format_reward]
    assert get_reward_funcs(default_reward_names(think=True)) == [accuracy_reward, think_format_reward]
    assert default_reward_names(think=False) == ["accuracy", "format"]
    assert default_reward_names(think=True) == ["accuracy", "think_format"]
    # TRL logs `rewards/<__name__>/mean`
    assert {name: f.__name__ for name, f in REWARD_FUNCS.items()} == {
        "accuracy": "accuracy_reward",
        "format": "format_reward",
        "think_format": "think_format_reward",
        "option_format": "option_format_reward",  # the CPU demo's, not the paper's
    }
    with pytest.raises(ValueError, match=r"'bleu'.*known: \['accuracy', 'format', 'option_format', 'think_format'\]"):
        get_reward_funcs(["accuracy", "bleu"])


# 1 MB inputs that make the original's `re.fullmatch` with lazy quantifiers backtrack quadratically
# (its think pattern takes ~11 s on 128 kB of `</think><answer>`; 1 MB would take minutes).
ADVERSARIAL = {
    "answer_open": "<answer>" * 131_072,
    "answer_open_closed": "<answer>" * 131_071 + "</answer>",
    "think_open": "<think>" * 149_796 + "</answer>",
    "think_close": "<think>" + "</think>" * 131_072 + "</answer>",
    "think_then_answer": "<think>" + "</think><answer>" * 65_536 + "</answer>",
    "think_then_answer_unclosed": "<think>" + "</think><answer>" * 65_536,
    "think_then_spaces": "<think>" + ("</think>" + " " * 56) * 16_384 + "</answer>",
    "newlines": "<answer>" + "\n" * 1_048_576,
}


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_linear_time_on_adversarial_megabyte(name):
    text = ADVERSARIAL[name]
    assert len(text) >= 900_000
    start = time.perf_counter()
    for completions in ([text], [as_conversation(text)]):
        accuracy_reward(completions, [GOLD])
        format_reward(completions)
        think_format_reward(completions)
    assert time.perf_counter() - start < 2.0  # a guard against quadratic blow-up, not a benchmark


# The original release's regexes, as a reference on inputs short enough for their backtracking.
def original_format(text):
    return 1.0 if re.fullmatch(r"<answer>.*?</answer>", text, re.DOTALL) else 0.0


def original_think_format(text):
    return 1.0 if re.fullmatch(r"<think>.*?</think>\s*<answer>.*?</answer>", text, re.DOTALL) else 0.0


def original_extract(text):
    match = re.search(r"<answer>(.*?)</answer>", text)
    return match.group(1).strip() if match else text.strip()


FRAGMENTS = ["<think>", "</think>", "<answer>", "</answer>", "<", ">", "/", "a", "B", " ", "\t", "\u00a0", "\n"]
tagged_text = st.lists(st.sampled_from(FRAGMENTS), max_size=16).map("".join)


@given(tagged_text)
def test_format_rewards_equal_the_original_regexes(text):
    assert format_reward([text]) == [original_format(text)]
    assert think_format_reward([text]) == [original_think_format(text)]


@given(tagged_text.filter(lambda t: "\n" not in t), tagged_text.filter(lambda t: "\n" not in t))
def test_accuracy_equals_the_original_without_newlines(completion, solution):
    expected = 1.0 if original_extract(completion) == original_extract(solution) else 0.0
    assert accuracy_reward([completion], [solution]) == [expected]


@given(st.text(), st.text())
def test_rewards_never_raise_and_are_binary(completion, solution):
    for rewards in (
        accuracy_reward([completion, as_conversation(completion)], [solution, solution]),
        format_reward([completion, as_conversation(completion)]),
        think_format_reward([completion, as_conversation(completion)]),
    ):
        assert rewards[0] == rewards[1]
        assert rewards[0] in (0.0, 1.0)


@given(tagged_text)
def test_a_completion_scores_full_accuracy_against_itself(text):
    assert accuracy_reward([text], [text]) == [1.0]
