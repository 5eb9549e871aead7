"""The pieces of `python -m fastllm.train`: `config` (TrainConfig, flags and config files), `data` (token stream,
packed rows, batch order), `state` (atomic checkpoints, resume), `parallel` (DDP or FSDP2 under torchrun, full
checkpoint state from sharded ranks). The loop itself is in `fastllm/train.py`."""

from fastllm.training.config import TrainConfig as TrainConfig
from fastllm.training.config import parse_args as parse_args
