"""Training: the train state, optimizer, gradient accumulation, checkpoints and metrics that the
loops (sft, rm, dpo, ppo, ...) share; each loop is a module here with a `train(config, workdir)` function."""
from rlr.train.accumulate import accumulated_grad
from rlr.train.checkpoint import (CheckpointError, Checkpointer, abstract_like, install_preemption_handler,
                                  restore_from, should_stop)
from rlr.train.metrics import MetricsWriter, Progress, Timer, read_jsonl, to_scalar
from rlr.train.optim import OptimConfig, as_optim_config, make_optimizer, make_schedule, weight_decay_mask
from rlr.train.state import (TrainState, abstract_train_state, apply_gradients, create_train_state, ema_update,
                             opt_state_shardings)
