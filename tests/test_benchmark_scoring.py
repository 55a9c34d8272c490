"""MMAU and MMAR scoring (docs/recipe.md §7, §8): the official rule, the real test-mini files and MMAR sample,
robustness, mean ± std over passes and the CLI."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.official_scoring import (
    MMAR_CATEGORIES,
    MMAR_MODALITIES,
    official_mmar_report,
    official_report,
    official_string_match,
)
from helpers.paths import MMAR_SAMPLE, MMAU_2025_01, MMAU_2025_03, MMAU_2025_05
from hypothesis import given, settings
from hypothesis import strategies as st

from r1aqa.benchmarks import (
    aggregate,
    detect_benchmark,
    format_report,
    is_match,
    load_items,
    main,
    score,
)
from r1aqa.prompts import extract_answer

MMAU_FILES = {"2025-01-28": MMAU_2025_01, "2025-03-25": MMAU_2025_03, "v05.15.25": MMAU_2025_05}
SRC = Path(__file__).resolve().parents[1] / "src"


def real_items(version):
    path = MMAU_FILES[version]
    assert path.is_file(), f"{path} is missing: the repository ships it (tests/data/README.md says where it is from)"
    return json.loads(path.read_text(encoding="utf-8"))


def with_predictions(items, predict, key="model_output"):
    items = copy.deepcopy(items)
    for item in items:
        item[key] = predict(item)
    return items


# ---- the real test-mini files ----
@pytest.mark.parametrize("version", MMAU_FILES)
def test_answers_as_predictions_score_100_everywhere(version):
    items = real_items(version)
    summary = score(with_predictions(items, lambda item: item["answer"]))
    assert summary["total"] == {"accuracy": 100.0, "correct": 1000, "total": 1000}
    for group in ("task", "difficulty", "sub-category"):
        for name, row in summary[group].items():
            assert row["accuracy"] == 100.0, (group, name)
            assert row["correct"] == row["total"] > 0
    assert sum(row["total"] for row in summary["task"].values()) == 1000
    assert sum(row["total"] for row in summary["sub-category"].values()) == 1000
    assert summary["no_prediction"] == {"missing": 0, "none": 0, "non_string": 0}
    assert summary["answer_not_in_choices"] == []


# Measured once with the official rule; pinned so a change to the scorer or the data shows up.
FIRST_CHOICE_TOTAL = {"2025-01-28": 37.80, "2025-03-25": 37.80, "v05.15.25": 39.80}


@pytest.mark.parametrize("version", MMAU_FILES)
def test_first_choice_scores_what_the_official_script_counts(version):
    items = with_predictions(real_items(version), lambda item: item["choices"][0])
    summary = score(items)
    expected_lines, expected_correct = official_report(items)

    assert summary["total"]["correct"] == expected_correct
    assert summary["total"]["accuracy"] == FIRST_CHOICE_TOTAL[version]
    # the same numbers, printed in the same layout, line for line
    report = format_report(summary).splitlines()
    assert report[: len(expected_lines)] == expected_lines
    for group, key in (("task", "task"), ("difficulty", "difficulty"), ("sub-category", "sub-category")):
        for name, row in summary[group].items():
            members = [item for item in items if item[key] == name]
            hits = sum(official_string_match(i["answer"], i["model_output"], i["choices"]) for i in members)
            assert (row["correct"], row["total"]) == (hits, len(members)), (group, name)
            assert row["accuracy"] == round(100 * hits / len(members), 2)


@pytest.mark.parametrize("version", MMAU_FILES)
def test_both_prediction_keys_accepted_and_model_output_preferred(version):
    items = real_items(version)[:50]
    first = lambda item: item["choices"][0]  # noqa: E731
    by_output = score(with_predictions(items, first, "model_output"))
    by_prediction = score(with_predictions(items, first, "model_prediction"))
    assert by_output == by_prediction
    both = with_predictions(with_predictions(items, lambda i: "", "model_prediction"), lambda i: i["answer"])
    assert score(both)["total"]["accuracy"] == 100.0


def test_predictions_are_scored_as_they_are_like_the_official_script():
    """No extraction in the scorer: a raw output that names every option is wrong, as in MMAU's evaluation.py.
    r1aqa.evaluate stores the extracted answer, which scores 100 here."""
    items = real_items("2025-03-25")[:100]
    raw = with_predictions(items, lambda i: f"<think>{' '.join(i['choices'])}</think>\n<answer>{i['answer']}</answer>")
    assert score(raw)["total"]["correct"] == sum(
        official_string_match(i["answer"], i["model_output"], i["choices"]) for i in raw
    )
    assert score(raw)["total"]["accuracy"] < 50
    extracted = with_predictions(items, lambda i: extract_answer(f"<think>x</think>\n<answer>{i['answer']}</answer>"))
    assert score(extracted)["total"]["accuracy"] == 100.0


# ---- the official rule's corner cases ----
MAN_WOMAN = ["Man", "Woman", "Child", "Robot"]
RULE_CASES = [
    # (prediction, answer, choices, expected)
    ("Man", "Man", MAN_WOMAN, True),
    ("man.", "Man", MAN_WOMAN, True),  # punctuation and case do not matter
    ("  MAN!\n", "Man", MAN_WOMAN, True),
    ("It is a man speaking", "Man", MAN_WOMAN, True),  # extra words that no wrong option has are fine
    ("Man or woman", "Man", MAN_WOMAN, False),  # a distractor word present
    ("Woman", "Man", MAN_WOMAN, False),  # `\b` keeps "man" out of "woman"
    ("", "Man", MAN_WOMAN, False),  # empty prediction
    ("   ", "Man", MAN_WOMAN, False),
    ("?!", "Man", MAN_WOMAN, False),  # no word tokens at all
    ("barking dog", "Dog barking", ["Dog barking", "Cat meowing"], True),  # a set: order does not matter
    ("dog", "Dog barking", ["Dog barking", "Cat meowing"], False),  # answer tokens must all be present
    ("dog barking", "Dog barking", ["Dog barking", "Dog growling"], True),  # shared words are not distractors
    ("dog growling", "Dog barking", ["Dog barking", "Dog growling"], False),
    ("dog_barking", "Dog barking", ["Dog barking", "Cat meowing"], False),  # `_` is a word character
    ("rock", "Rock", ["Rock", "rock!", "Jazz"], True),  # a choice with the answer's tokens is no distractor
    ("3", "3", ["3", "4"], True),
    ("3 or 4", "3", ["3", "4"], False),
    ("café", "Café", ["Café", "Tea"], True),  # `\w` is Unicode
    ("cafe", "Café", ["Café", "Tea"], False),
    ("maybe", "?", ["?", "Yes"], True),  # quirk kept: an answer without words is a subset of anything
    ("<answer>Man</answer>", "Man", MAN_WOMAN, True),  # the rule sees words, tags add only "answer"
]


@pytest.mark.parametrize(("prediction", "answer", "choices", "expected"), RULE_CASES)
def test_official_rule(prediction, answer, choices, expected):
    assert is_match(prediction, answer, choices) is expected
    assert official_string_match(answer, prediction, choices) is expected


# ---- what the official script skips or crashes on ----
def test_missing_none_and_non_string_predictions_count_wrong_and_are_reported():
    items = copy.deepcopy(real_items("2025-03-25")[:6])
    items[0]["model_output"] = items[0]["answer"]
    items[1]["model_prediction"] = items[1]["answer"]
    items[2]["model_output"] = None
    items[3]["model_output"] = 42
    items[4]["model_output"] = [items[4]["answer"]]
    # items[5] has no prediction key
    summary = score(items)
    assert summary["total"] == {"accuracy": round(100 * 2 / 6, 2), "correct": 2, "total": 6}
    assert summary["no_prediction"] == {"missing": 1, "none": 1, "non_string": 2}
    report = format_report(summary)
    assert "No prediction count: 4" in report
    assert "missing: 1, None: 1, non-string: 2" in report


def test_answer_not_among_choices_is_reported():
    items = with_predictions(real_items("2025-03-25")[:3], lambda item: item["answer"])
    items[1]["answer"] = "Submarine"
    summary = score(items)
    assert summary["answer_not_in_choices"] == [items[1]["id"]]
    assert summary["total"]["correct"] == 2  # the rule still applies: the old answer lacks "submarine"
    assert f"Answer not among choices: 1 ['{items[1]['id']}']" in format_report(summary)


def test_empty_list_and_malformed_items():
    assert score([])["total"] == {"accuracy": 0.0, "correct": 0, "total": 0}
    with pytest.raises(ValueError, match=r"item 0 \(id 'x'\): missing key\(s\) \['task'\]"):
        score([{"id": "x", "answer": "a", "choices": ["a"], "difficulty": "easy"}])
    with pytest.raises(ValueError, match="item 1: expected a JSON object"):
        score([{"answer": "a", "choices": ["a"], "task": "sound", "difficulty": "easy"}, "oops"])
    with pytest.raises(ValueError, match="answer and choices must be strings"):
        score([{"answer": 1, "choices": [1, 2], "task": "sound", "difficulty": "easy"}])


def test_unknown_groups_follow_the_official_ones():
    item = {"answer": "a", "choices": ["a", "b"], "model_output": "a"}
    summary = score([{**item, "task": "mix", "difficulty": "expert"}, {**item, "task": "sound", "difficulty": "easy"}])
    assert list(summary["task"]) == ["sound", "music", "speech", "mix"]
    assert list(summary["difficulty"]) == ["easy", "hard", "medium", "expert"]
    assert summary["task"]["music"] == {"accuracy": 0.0, "correct": 0, "total": 0}
    assert summary["sub-category"] == {}


# ---- files and the CLI ----
def test_load_items_names_the_file_on_bad_input(tmp_path):
    not_json = tmp_path / "broken.json"
    not_json.write_text("[{", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
        load_items(not_json)
    not_list = tmp_path / "object.json"
    not_list.write_text('{"id": 1}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"object\.json: expected a JSON list"):
        load_items(str(not_list))
    assert load_items(MMAU_2025_03) == real_items("2025-03-25")


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    items = with_predictions(real_items("v05.15.25"), lambda item: item["answer"])
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps(items), encoding="utf-8")
    summary_path = tmp_path / "summary.json"
    main(["--input", str(predictions), "--json", str(summary_path)])
    printed = capsys.readouterr().out.splitlines()
    assert printed[:5] == [
        "*" * 30,
        "Task-wise Accuracy:",
        "sound : 100.00% over 333 samples",
        "music : 100.00% over 334 samples",
        "speech : 100.00% over 333 samples",
    ]
    assert "Total Accuracy: 100.00% over 1000 samples" in printed
    assert json.loads(summary_path.read_text(encoding="utf-8")) == score(items)


def test_cli_module_entry_point_reports_bad_files(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("not json", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "r1aqa.benchmarks", "--input", str(broken)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC)},
        check=False,
    )
    assert result.returncode == 2
    assert f"{broken}: not valid JSON" in result.stderr
    assert result.stdout == ""


# ---- properties ----
SAMPLE_ITEMS = [
    {"id": "m", "answer": "Man", "choices": MAN_WOMAN, "task": "sound", "difficulty": "easy", "sub-category": "s"},
    {"id": "d", "answer": "Dog barking", "choices": ["Dog barking", "Dog growling", "Cat"], "task": "music"},
]


@settings(max_examples=300)
@given(st.text(), st.sampled_from(SAMPLE_ITEMS))
def test_scorer_never_raises_and_agrees_with_the_official_rule(text, item):
    item = {"difficulty": "hard", **item, "model_output": text}
    summary = score([item])
    expected = official_string_match(item["answer"], text, item["choices"])
    assert summary["total"]["correct"] == int(expected)
    assert is_match(text, item["answer"], item["choices"]) is official_string_match(
        item["answer"], text, item["choices"]
    )
    assert format_report(summary)


# ---- MMAR (docs/recipe.md §8): the same rule, its own groups and prediction key ----
def mmar_items():
    return load_items(MMAR_SAMPLE)


def test_mmar_sample_is_read_and_detected():
    items = mmar_items()
    assert (
        len(items) == 26 and detect_benchmark(items) == "mmar" and detect_benchmark(real_items("v05.15.25")) == "mmau"
    )
    assert {item["modality"] for item in items} == set(MMAR_MODALITIES)
    assert {item["category"] for item in items} == set(MMAR_CATEGORIES)


@pytest.mark.parametrize("pick", [0, 1, -1])
def test_mmar_scores_what_its_official_script_counts(pick):
    items = with_predictions(mmar_items(), lambda item: item["choices"][pick], key="answer_prediction")
    summary = score(items)
    assert summary["benchmark"] == "mmar" and list(summary)[2:4] == ["modality", "category"]
    expected_lines, expected_correct = official_mmar_report(items)
    assert summary["total"]["correct"] == expected_correct and summary["total"]["total"] == 26
    assert format_report(summary).splitlines()[: len(expected_lines)] == expected_lines
    assert list(summary["modality"]) == list(MMAR_MODALITIES)
    assert list(summary["category"]) == list(MMAR_CATEGORIES)


def test_mmar_answers_score_100_and_answer_prediction_is_the_key_read():
    items = with_predictions(mmar_items(), lambda item: item["answer"], key="answer_prediction")
    items = with_predictions(items, lambda item: "", key="model_output")  # MMAR's script does not read it
    summary = score(items, "mmar")
    assert summary["total"] == {"accuracy": 100.0, "correct": 26, "total": 26}
    assert all(row["accuracy"] == 100.0 for row in summary["sub-category"].values())


def test_mmar_jsonl_with_a_bad_line_names_file_and_line(tmp_path):
    lines = MMAR_SAMPLE.read_text(encoding="utf-8").splitlines()
    broken = tmp_path / "MMAR-meta.jsonl"
    broken.write_text("\n".join([*lines[:2], '{"id": "cut', *lines[2:]]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"MMAR-meta\.jsonl:3: not valid JSON"):
        load_items(broken)
    broken.write_text(lines[0] + "\n[1, 2]\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"MMAR-meta\.jsonl:2: expected a JSON object per line"):
        load_items(broken)


def test_cli_scores_an_mmar_file(tmp_path, capsys):
    items = with_predictions(mmar_items(), lambda item: item["answer"], key="answer_prediction")
    items[0]["answer_prediction"] = items[0]["choices"][1]  # the answer is choices[2]: one wrong
    path = tmp_path / "mmar-predictions.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    main(["--input", str(path)])
    printed = capsys.readouterr().out.splitlines()
    assert printed[1] == "Modality-wise Accuracy:" and "Total Accuracy: 96.15% over 26 samples" in printed


def test_aggregate_is_mean_and_sample_std_over_passes():
    base = real_items("2025-03-25")[:8]  # four right, then six, then five of eight
    passes = [
        with_predictions(base, lambda item, n=n: item["answer"] if base.index(item) < n else "") for n in (4, 6, 5)
    ]
    summaries = [score(items) for items in passes]
    combined = aggregate(summaries)
    assert combined["num_samples"] == 3 and combined["total"]["per_sample"] == [50.0, 75.0, 62.5]
    assert combined["total"]["accuracy"] == 62.5 and combined["total"]["std"] == 12.5
    assert combined["total"]["total"] == 8 and combined["no_prediction"] == {"missing": 0, "none": 0, "non_string": 0}
    for task, row in combined["task"].items():
        assert row["per_sample"] == [s["task"][task]["accuracy"] for s in summaries]
    assert "62.50% ± 12.50 over 8 samples (3 passes: 50.00, 75.00, 62.50)" in format_report(combined)


# ---- AVQA validation questions (checkpoint selection; docs/recipe.md §2) -------------------------------------------

AVQA_OPTIONS = ["motorboat", "Yacht consignment", "Sailboat set sail", "Consignment car"]


def avqa_row(qid: int, prediction: str, answer: int = 1, kind: str = "Happening", relation: str = "View") -> dict:
    """A row as r1aqa.prepare_avqa writes it (docs/recipe.md §2) plus the prediction r1aqa.evaluate adds."""
    return {"id": qid, "video_name": f"v{qid}", "video_id": qid, "question_text": "What happened in the video?",
            "multi_choice": AVQA_OPTIONS, "answer": answer, "question_relation": relation, "question_type": kind,
            "dataset_name": "AVQA", "audio_path": f"/wav/v{qid}.wav", "model_output": prediction}  # fmt: skip


def test_avqa_is_detected_and_scored_against_the_indexed_option_by_type_and_relation():
    rows = [
        avqa_row(1, "Yacht consignment"),  # right: multi_choice[1]
        avqa_row(2, "consignment"),  # wrong: lacks "yacht" (the official rule, as for MMAU)
        avqa_row(3, "motorboat", answer=0, kind="Which", relation="Both"),  # right
        avqa_row(4, "Sailboat set sail", answer=3, kind="Which"),  # wrong: another option
    ]
    assert detect_benchmark(rows) == "avqa" and detect_benchmark(mmar_items()) == "mmar"
    summary = score(rows)
    assert summary["benchmark"] == "avqa" and "sub-category" not in summary
    assert summary["total"] == {"accuracy": 50.0, "correct": 2, "total": 4}
    assert summary["question_type"] == {
        "Happening": {"accuracy": 50.0, "correct": 1, "total": 2},
        "Which": {"accuracy": 50.0, "correct": 1, "total": 2},
    }
    assert list(summary["question_relation"]) == ["View", "Both"]  # AVQA's values, in order of appearance
    assert summary["question_relation"]["Both"]["accuracy"] == 100.0
    report = format_report(summary)
    assert "Question type-wise Accuracy:" in report and "Happening : 50.00% over 2 samples" in report
    assert "Sub-category" not in report


@pytest.mark.parametrize("answer", [4, -1, "1", True])
def test_avqa_answer_must_index_the_options(answer):
    with pytest.raises(ValueError, match=r"item 0 \(id 1\): answer must index multi_choice"):
        score([avqa_row(1, "motorboat", answer=answer)])


# ---- which release a benchmark file is ----------------------------------------------------------------------------


def test_releases_are_told_by_content_and_the_paper_time_file_differs_in_one_answer(tmp_path):
    from r1aqa.benchmarks import PAPER_RELEASE, data_release

    assert data_release(MMAU_2025_01)["release"] == PAPER_RELEASE == "MMAU test-mini a5cd89a (2025-01-28)"
    assert data_release(MMAU_2025_03)["release"] == "MMAU test-mini 1f675a9 (2025-03-25)"
    assert data_release(MMAU_2025_05)["release"].startswith("MMAU test-mini v05.15.25")
    paper, later = (json.loads(path.read_text(encoding="utf-8")) for path in (MMAU_2025_01, MMAU_2025_03))
    changed = [(a["id"], a["answer"], b["answer"]) for a, b in zip(paper, later, strict=True) if a != b]
    assert changed == [("1a5dd76a-7905-4a83-bd88-7ae26730656d", "A bird chirping", "A cat meowing")]
    copy_ = tmp_path / "mmau-test-mini.2025-01-28.json"  # the same name, one byte more
    copy_.write_bytes(MMAU_2025_01.read_bytes() + b"\n")
    found = data_release(copy_)
    assert found["release"] == f"unknown release (sha256 {found['sha256'][:12]})"
    assert data_release(MMAR_SAMPLE)["release"].startswith("unknown release")  # an excerpt is not the release
