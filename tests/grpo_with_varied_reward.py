"""`python -m r1aqa.grpo` plus a test-only reward whose values differ within a group even for a random model, so
advantages are non-zero and a few steps move the weights. With R1AQA_ORDER_LOG set, it appends the audio files of
every scored batch to that file (one line per generation batch; under torchrun, one file per rank: `<file>.rank<R>`), so
tests can compare data order across runs."""

import json
import os

from r1aqa import grpo, rewards


def varied_reward(completions, audio_path=None, **kwargs):
    if os.environ.get("R1AQA_ORDER_LOG") and audio_path is not None:
        rank = f".rank{os.environ['RANK']}" if "RANK" in os.environ else ""  # one file per process under torchrun
        with open(os.environ["R1AQA_ORDER_LOG"] + rank, "a") as log:
            log.write(json.dumps([os.path.basename(p) for p in audio_path]) + "\n")
    return [float(len(set(text)) % 2) for text in rewards.completion_texts(completions)]


if __name__ == "__main__":
    rewards.REWARD_FUNCS["varied"] = varied_reward
    grpo.cli()
