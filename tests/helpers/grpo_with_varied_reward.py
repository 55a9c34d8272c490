"""`python -m r1aqa.grpo` plus a test-only reward whose values differ within a group even for a random model, so
advantages are non-zero and a few steps move the weights. With R1AQA_ORDER_LOG set, it appends the audio files of
every scored batch to that file (one line per generation batch; under torchrun, one file per rank: `<file>.rank<R>`), so
tests can compare data order across runs.

With R1AQA_STEP_LOG set, a callback (`StepProbe`) looks at the model at the start of every optimizer step, before that
step's generation and update: it appends, as one JSON line to that file (`.rank<R>` under torchrun), the step number
and the log-probs of a fixed completion to the first training question (with its audio) under the policy and the
reference model, and their mean KL (TRL's estimator); at the first step of the process it also saves the policy's
weights to `<file>.weights[.rank<R>].pt`. Tests compare a resumed run with the checkpoint it resumed from and with
an uninterrupted run at the same step.

With R1AQA_VLLM_STALE_LOG set (and `use_vllm`), after the first optimizer step, before the next generation syncs the
weights, each process writes to that file (`.rank<R>`) how far its vLLM engine's log-probs are from the updated
policy's (tests/helpers/vllm_sync.py): a stale engine's distance, which the sync of the next step must remove.
"""

import json
import os

from transformers import TrainerCallback

from r1aqa import grpo, rewards

PROBE_COMPLETION = "<answer>low</answer>"


def _rank_suffix() -> str:
    return f".rank{os.environ['RANK']}" if "RANK" in os.environ else ""  # one file per process under torchrun


def varied_reward(completions, audio_path=None, **kwargs):
    if os.environ.get("R1AQA_ORDER_LOG") and audio_path is not None:
        with open(os.environ["R1AQA_ORDER_LOG"] + _rank_suffix(), "a") as log:
            log.write(json.dumps([os.path.basename(p) for p in audio_path]) + "\n")
    return [float(len(set(text)) % 2) for text in rewards.completion_texts(completions)]


class StepProbe(TrainerCallback):
    """R1AQA_STEP_LOG: the policy and reference log-probs of a fixed probe at every step start, and the first step's
    weights (see the module docstring)."""

    def __init__(self, trainer, path: str):
        self.trainer, self.path = trainer, path + _rank_suffix()
        self.weights_path = f"{path}.weights{_rank_suffix()}.pt"
        self.probe = None

    def _probe_inputs(self):
        from r1aqa.audio import prompts_with_audio

        processor = self.trainer.processing_class
        conversation = prompts_with_audio([self.trainer.train_dataset[0]["prompt"]])[0]
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        audio = [part["audio"] for part in conversation[0]["content"] if part["type"] == "audio"]
        inputs = processor(text=[prompt + PROBE_COMPLETION], audio=audio, return_tensors="pt")
        completion = len(processor.tokenizer(PROBE_COMPLETION, add_special_tokens=False)["input_ids"])
        return inputs, completion

    def _logps(self, model):
        import torch

        inputs, completion = self.probe
        with torch.no_grad():
            logits = model(**inputs).logits[:, -completion - 1 : -1].float()
        targets = inputs["input_ids"][:, -completion:]
        return torch.log_softmax(logits, -1).gather(-1, targets[..., None])[0, :, 0]

    def on_step_begin(self, args, state, control, **kwargs):
        import torch

        self.probe = self.probe or self._probe_inputs()
        policy = self.trainer.accelerator.unwrap_model(self.trainer.model_wrapped)
        if not os.path.exists(self.weights_path):  # the first step this process runs
            torch.save({name: value.detach().clone() for name, value in policy.state_dict().items()}, self.weights_path)
        logps, reference = self._logps(policy), self._logps(self.trainer.ref_model)
        kl = torch.exp(reference - logps) - (reference - logps) - 1  # TRL's per-token KL
        with open(self.path, "a") as log:
            record = {"step": state.global_step, "logps": logps.tolist(), "ref_logps": reference.tolist()}
            log.write(json.dumps({**record, "kl": kl.mean().item()}) + "\n")


class StaleEngineProbe(TrainerCallback):
    """R1AQA_VLLM_STALE_LOG: the engine's distance from the policy right after the first update (see above)."""

    def __init__(self, trainer, path: str):
        self.trainer, self.path = trainer, path + _rank_suffix()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step != 1:
            return
        from vllm_sync import largest_logprob_difference  # run as a script: this folder is on sys.path

        from r1aqa.audio import prompts_with_audio

        convs = prompts_with_audio([self.trainer.train_dataset[i]["prompt"] for i in range(2)])
        gap = largest_logprob_difference(self.trainer, convs, self.trainer.model_wrapped)  # every rank: ZeRO-3 gathers
        with open(self.path, "w") as log:
            json.dump({"step": state.global_step, "stale": gap}, log)


def _with_callbacks(trainer_class, callbacks: dict) -> None:
    original = trainer_class.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        for callback, path in callbacks.items():
            self.add_callback(callback(self, path))

    trainer_class.__init__ = init


if __name__ == "__main__":
    rewards.REWARD_FUNCS["varied"] = varied_reward
    probes = {StepProbe: "R1AQA_STEP_LOG", StaleEngineProbe: "R1AQA_VLLM_STALE_LOG"}
    if any(os.environ.get(name) for name in probes.values()):
        from r1aqa.trainer import AudioGRPOTrainer

        _with_callbacks(
            AudioGRPOTrainer, {probe: os.environ[name] for probe, name in probes.items() if name in os.environ}
        )
    grpo.cli()
