"""Model definitions: the decoder, its heads, named shapes, log-probs and checkpoint import."""
from rlr.models.config import ModelConfig, get_config, NAMED_CONFIGS, from_hf_config, to_hf_config
from rlr.models.decoder import (KVCache, Transformer, init_cache, lm_head_weight, unstack_cache,
                                unstack_layers)
from rlr.models.logprobs import last_token_logits, next_token_logprobs, token_logprobs
