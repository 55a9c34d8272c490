"""How far a colocated vLLM engine is from the HF policy: greedy completions by the trainer's engine, their log-probs
by vLLM and by the HF model, scored with each prompt's own clip. Small (< 1e-4) when the engine holds the policy's
weights, large (> 1e-3) when it holds weights from before the last update. Used by tests/test_vllm_backend.py in-process and,
under torchrun (R1AQA_VLLM_STALE_LOG), by tests/helpers/grpo_with_varied_reward.py."""

import torch


def engine_prompts(processor, convs) -> list[dict]:
    """TRL's rows for the wrapped engine (`AudioLLM`): expanded prompt ids, the clips in the image slot."""
    rows = []
    for conv in convs:
        text = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        audio = conv[0]["content"][0]["audio"]
        ids = processor(text=[text], audio=[audio], sampling_rate=16_000)["input_ids"][0]
        rows.append({"prompt_token_ids": list(ids), "multi_modal_data": {"image": [audio]}})
    return rows


def hf_logprobs(model, processor, conv, completion_ids) -> list[float]:
    """The log-probs of `completion_ids` after the prompt of `conv`, with its audio, under `model` (a plain forward;
    under ZeRO-3 every process must call it alike: the forward gathers the sharded weights)."""
    text = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], audio=[conv[0]["content"][0]["audio"]], sampling_rate=16_000, return_tensors="pt")
    prompt_len = inputs["input_ids"].shape[1]
    ids = torch.cat([inputs["input_ids"], torch.tensor([completion_ids])], dim=1)
    with torch.no_grad():
        logits = model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            input_features=inputs["input_features"],
            feature_attention_mask=inputs["feature_attention_mask"],
        ).logits
    logps = torch.log_softmax(logits[0, prompt_len - 1 : -1].float(), dim=-1)
    return logps.gather(1, torch.tensor(completion_ids)[:, None])[:, 0].tolist()


def largest_logprob_difference(trainer, convs, model) -> float:
    """Over the greedy completions (6 tokens) of `convs` by `trainer`'s vLLM engine: the largest difference between
    vLLM's log-prob of a token and `model`'s."""
    from vllm import SamplingParams

    from r1aqa.models import placeholder_token_ids

    processor = trainer.processing_class
    placeholders = set(placeholder_token_ids(trainer.model.config))
    params = SamplingParams(temperature=0.0, max_tokens=6, logprobs=0)
    outputs = trainer.vllm_generation.llm.generate(engine_prompts(processor, convs), params, use_tqdm=False)
    largest = 0.0
    for conv, output in zip(convs, outputs, strict=True):
        ids = list(output.outputs[0].token_ids)
        vllm_logps = [next(iter(lp.values())).logprob for lp in output.outputs[0].logprobs]
        # Up to a sampled audio placeholder (training's rollouts never sample one): HF would want features for it.
        kept = next((i for i, token in enumerate(ids) if token in placeholders), len(ids))
        ids, vllm_logps = ids[:kept], vllm_logps[:kept]
        if not ids:
            continue
        model_logps = hf_logprobs(model, processor, conv, ids)
        largest = max([largest] + [abs(v - h) for v, h in zip(vllm_logps, model_logps, strict=True)])
    return largest
