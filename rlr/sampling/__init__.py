"""Jitted generation with a KV cache: prefill + decode, stops, temperature / top-k / top-p,
n samples a prompt, log-probs of the raw policy out."""
from rlr.sampling.filters import (apply_temperature, categorical, filter_logits, sample_tokens,
                                  top_k_filter, top_p_filter)
from rlr.sampling.generate import (Rollout, Sampler, SamplingConfig, bucket_length, check_prompts,
                                   generate, left_pad)
