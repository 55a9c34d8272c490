"""MMAU's and MMAR's official evaluation scripts (their matching rule, loops and printouts), re-implemented literally:
the reference our scoring is compared with."""

import re


# ---- the official evaluation.py, re-implemented literally as an independent reference ----
def official_string_match(answer, prediction, choices):
    def tokenize(text):
        return set(re.findall(r"\b\w+\b", text.lower()))

    prediction_tokens = tokenize(prediction)
    answer_tokens = tokenize(answer)
    if not prediction_tokens:
        return False
    incorrect_tokens = set()
    for choice in choices:
        choice_tokens = tokenize(choice)
        if choice_tokens != answer_tokens:
            incorrect_tokens.update(choice_tokens - answer_tokens)
    cond1 = answer_tokens.issubset(prediction_tokens)
    cond2 = prediction_tokens.isdisjoint(incorrect_tokens)
    return cond1 and cond2


def official_report(data):
    """The official script's loop and printout, as lines (every item here carries `model_output`)."""
    corr, total = 0, 0
    task_metrics = {"sound": [0, 0], "music": [0, 0], "speech": [0, 0]}
    diff_metrics = {"easy": [0, 0], "hard": [0, 0], "medium": [0, 0]}
    subcat_metrics = {}
    for sample in data:
        subcat = sample.get("sub-category", None)
        if subcat is not None and subcat not in subcat_metrics:
            subcat_metrics[subcat] = [0, 0]
        if official_string_match(sample["answer"], sample["model_output"], sample["choices"]):
            task_metrics[sample["task"]][0] += 1
            diff_metrics[sample["difficulty"]][0] += 1
            if subcat is not None:
                subcat_metrics[subcat][0] += 1
            corr += 1
        total += 1
        task_metrics[sample["task"]][1] += 1
        diff_metrics[sample["difficulty"]][1] += 1
        if subcat is not None:
            subcat_metrics[subcat][1] += 1
    lines = []
    for title, metrics in (("Task", task_metrics), ("Difficulty", diff_metrics), ("Sub-category", subcat_metrics)):
        lines += ["*" * 30, f"{title}-wise Accuracy:"]
        for name, (n_correct, n_total) in metrics.items():
            acc = (n_correct / n_total) * 100 if n_total > 0 else 0
            lines.append(f"{name} : {acc:.2f}% over {n_total} samples")
    lines += ["*" * 30, f"Total Accuracy: {(corr / total) * 100:.2f}% over {total} samples", "*" * 30]
    return lines, corr


def official_mmar_report(data):
    """MMAR's evaluation.py loop and printout, re-implemented literally (it reads `answer_prediction` and skips
    items without it)."""
    corr, total = 0, 0
    modality_metrics = {name: [0, 0] for name in MMAR_MODALITIES}
    category_metrics = {name: [0, 0] for name in MMAR_CATEGORIES}
    subcat_metrics = {}
    for sample in data:
        if "answer_prediction" not in sample:
            continue
        subcat = sample.get("sub-category", None)
        if subcat is not None and subcat not in subcat_metrics:
            subcat_metrics[subcat] = [0, 0]
        if official_string_match(sample["answer"], sample["answer_prediction"], sample["choices"]):
            modality_metrics[sample["modality"]][0] += 1
            category_metrics[sample["category"]][0] += 1
            if subcat is not None:
                subcat_metrics[subcat][0] += 1
            corr += 1
        total += 1
        modality_metrics[sample["modality"]][1] += 1
        category_metrics[sample["category"]][1] += 1
        if subcat is not None:
            subcat_metrics[subcat][1] += 1
    lines = []
    for title, metrics in (("Modality", modality_metrics), ("Category", category_metrics),
                           ("Sub-category", subcat_metrics)):  # fmt: skip
        lines += ["*" * 30, f"{title}-wise Accuracy:"]
        for name, (n_correct, n_total) in metrics.items():
            acc = (n_correct / n_total) * 100 if n_total > 0 else 0
            lines.append(f"{name} : {acc:.2f}% over {n_total} samples")
    lines += ["*" * 30, f"Total Accuracy: {(corr / total) * 100:.2f}% over {total} samples", "*" * 30]
    return lines, corr


MMAR_MODALITIES = ("sound", "music", "speech", "mix-sound-music", "mix-sound-speech", "mix-music-speech",
                   "mix-sound-music-speech")  # fmt: skip


MMAR_CATEGORIES = ("Signal Layer", "Perception Layer", "Semantic Layer", "Cultural Layer")
