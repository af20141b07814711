"""Training: optimizers, losses, jitted steps and the loop. Imports nn/models/data, never the reverse."""
from jaxformer.train.checkpoint import load_run, save_run
from jaxformer.train.loop import NonFiniteLossError, evaluate, train
from jaxformer.train.losses import cross_entropy
from jaxformer.train.optim import make_optimizer, make_schedule, rsqrt_schedule
from jaxformer.train.step import TrainState, create_train_state, forward, init_params, make_eval_step, make_train_step

__all__ = ["train", "evaluate", "NonFiniteLossError", "TrainState", "create_train_state", "init_params",
           "make_train_step", "make_eval_step", "forward", "make_optimizer", "make_schedule",
           "rsqrt_schedule", "cross_entropy", "save_run", "load_run"]
