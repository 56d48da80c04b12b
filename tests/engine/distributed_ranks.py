"""Processes for the distributed tests (tests/engine/test_distributed.py), started as torchrun would
start them (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the environment):

- `python distributed_ranks.py checks OUT`: the helpers of `medtrain.engine.distributed` in a real
  two-process Gloo group; each rank writes what it saw to OUT/rank<r>.json.
- `python distributed_ranks.py dying EPOCH medtrain-args...`: `medtrain` whose rank 1 kills itself
  (SIGKILL, as the kernel's OOM killer would) when epoch EPOCH (from 0) starts.
- `python distributed_ranks.py failing EPOCH medtrain-args...`: `medtrain` whose rank 1 alone
  raises an error of its own (a bug, an out-of-memory GPU) when epoch EPOCH starts.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


def checks(out: Path) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn

    from medtrain.data.loading import DealtBatches
    from medtrain.engine import distributed
    from medtrain.errors import ConfigError

    dist.init_process_group("gloo")
    rank = distributed.rank()
    seen: dict = {"rank": rank, "world": distributed.world_size(), "main": distributed.is_main()}
    seen["decided"] = distributed.decided(lambda: f"chosen by rank {distributed.rank()}")

    def refuse():
        raise ConfigError("dataset.path: rank 0 found a bad file")

    try:
        distributed.decided(refuse)
    except ConfigError as err:
        seen["error"] = [str(err), distributed.from_main(err)]

    def only_rank_1_fails():
        if rank == 1:
            raise ConfigError("dataset.path: not found on this node")
        return "fine"

    try:
        distributed.agreed(only_rank_1_fails)
    except ConfigError as err:
        seen["agreed"] = [str(err), distributed.from_main(err), distributed.raised_everywhere(err)]
    seen["sum"] = distributed.sum_across(torch.tensor([rank + 1.0])).item()

    torch.manual_seed(rank)  # different weights on each rank, then rank 0's everywhere
    layer = nn.BatchNorm1d(3)
    layer.running_mean.fill_(rank)
    distributed.broadcast_module(layer)
    seen["weights"] = layer.weight.tolist() + layer.running_mean.tolist()
    seen["checksums"] = distributed.parameter_checksums(nn.Linear(2, 2))

    # A model wrapped for training still reads the batch keys it declares (a fusion model was
    # fed the image alone under torchrun).
    from medtrain.models import call_model, input_keys

    class TwoInputs(nn.Module):
        input_keys = ("image", "tabular")

        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(3, 1)

        def forward(self, image, tabular):
            return self.layer(tabular) + image.mean()

    wrapped = nn.parallel.DistributedDataParallel(TwoInputs())
    batch = {"image": torch.ones(2, 1, 4, 4), "tabular": torch.zeros(2, 3), "id": ["a", "b"]}
    seen["wrapped_keys"] = list(input_keys(wrapped))
    seen["wrapped_output"] = list(call_model(wrapped, batch).shape)

    # 10 samples in batches of 3: 4 batches dealt 0,1,0,1; rank 0 yields them in batch order.
    batches = DealtBatches(10, 3, rank, 2)
    items = ({"batch": list(b), "by": rank} for b in batches)
    seen["gathered"] = list(distributed.in_batch_order(items, batches.total))
    (out / f"rank{rank}.json").write_text(json.dumps(seen))
    # The group is destroyed only after the DDP wrapper is released and both ranks are done with
    # it: destroying it under a live wrapper aborted a rank at exit ("terminate called without an
    # active exception", SIGABRT) in 2 of 20 runs; with the wrapper released and the barrier,
    # 0 of 100 (medtrain itself never destroys the group: the jobs of a multirun share it).
    del wrapped
    dist.barrier()
    dist.destroy_process_group()


def dying(epoch: int, argv: list[str], how: str = "dying") -> int:
    import medtrain.engine.loop as loop
    from medtrain.commands import main

    original = loop.train_one_epoch

    def train_one_epoch(*args, **kwargs):
        if os.environ.get("RANK") == "1" and args[8] == epoch:  # the epoch argument
            if how == "failing":
                raise RuntimeError("rank 1's own failure")
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    loop.train_one_epoch = train_one_epoch
    return main(argv)


if __name__ == "__main__":
    if sys.argv[1] == "checks":
        checks(Path(sys.argv[2]))
        # As medtrain ends its ranks (`_end_distributed_process`): torch's process-group
        # destructors at interpreter exit still aborted a rank now and then under load ("terminate
        # called without an active exception", SIGABRT, once in a loaded suite run); nothing is
        # left to clean up once rank<r>.json is written and the group destroyed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    else:
        sys.exit(dying(int(sys.argv[2]), sys.argv[3:], how=sys.argv[1]))
