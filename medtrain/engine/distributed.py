"""Data-parallel training on several processes (GPUs, or CPU cores), on one machine or many, as
`torchrun` launches them: which process this is, the process group, and the few exchanges the loop
needs.

The rule that keeps the processes in step: rank 0 decides (the run folder, whether the data check
passed, each epoch's metrics and so early stopping, pruning and the best checkpoint, the test
results) and sends its decision, or its error, to every rank, which follows it. Only rank 0 writes
files. Without torchrun (no `WORLD_SIZE` above 1 in the environment) every function here is a
no-op, and a run is exactly what it was before distributed training existed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from medtrain.engine.ranks import launched
from medtrain.errors import ConfigError, MedtrainError, TrainingError

log = logging.getLogger(__name__)
T = TypeVar("T")

BACKENDS = ("auto", "gloo", "nccl")
# What a run's trainer.distributed node holds when its config predates the key.
DEFAULTS = {"backend": "auto", "timeout_s": 1800, "sync_batchnorm": False}
DEFAULTS |= {"find_unused_parameters": False}


# The settings this process joined its process group with (one group for all jobs of a multirun).
_joined: dict[str, Any] = {}


class PeerFailed(MedtrainError):
    """Another process of the run failed, was killed, or stopped answering."""


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the process that decides and writes."""
    return rank() == 0


def settings(trainer: DictConfig) -> dict[str, Any]:
    """`trainer.distributed` with the defaults for keys a saved config lacks."""
    node = trainer.get("distributed") or {}
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    return DEFAULTS | dict(node)


def check_settings(trainer: DictConfig) -> None:
    """Refuse bad `trainer.distributed` values before anything starts."""
    values = settings(trainer)
    unknown = sorted(set(values) - set(DEFAULTS))
    if unknown:
        raise ConfigError(
            f"trainer.distributed.{unknown[0]} is not a key; keys: {', '.join(DEFAULTS)}"
        )
    if values["backend"] not in BACKENDS:
        raise ConfigError(
            f"trainer.distributed.backend={values['backend']}: choose one of {', '.join(BACKENDS)}"
        )
    timeout = values["timeout_s"]
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigError(f"trainer.distributed.timeout_s={timeout}: must be a number > 0")
    for key in ("sync_batchnorm", "find_unused_parameters"):
        if not isinstance(values[key], bool):
            raise ConfigError(f"trainer.distributed.{key}={values[key]}: must be true or false")


def setup(cfg: DictConfig, validate: Callable[[], torch.device]) -> torch.device:
    """Check the config (`validate`, medtrain's checks, returning the device) and, under torchrun,
    join the process group (once per process; the jobs of a multirun share it). Returns this
    process's device: `cuda:LOCAL_RANK` on GPUs.

    The backend is NCCL on CUDA (with Gloo beside it for small CPU messages) and Gloo on the CPU,
    unless `trainer.distributed.backend` names one. A collective that waits longer than
    `trainer.distributed.timeout_s` (a rank stuck, or dead without closing its connections) ends
    the run with an error on every rank. Every rank runs the checks; an error on any of them
    (a data path missing on one node) stops all of them together.
    """
    _, world, local = launched()
    if world == 1:
        return validate()
    joining = not dist.is_initialized()
    device, chosen = (
        _device_and_backend(cfg, local) if joining else agreed(_device_and_backend, cfg, local)
    )
    if joining:
        dist.init_process_group(chosen["backend"], timeout=timedelta(seconds=chosen["timeout_s"]))
        _joined.update(chosen)
    elif chosen != _joined:  # the same config on every rank (checked below): the same outcome
        raise everywhere(
            ConfigError(
                f"trainer.distributed: this process joined its group with {_joined}; the jobs of "
                f"one multirun under torchrun must keep the backend, device type and timeout "
                f"({chosen})"
            )
        )
    check_same_config(cfg)
    agreed(validate)
    return device


def _device_and_backend(cfg: DictConfig, local: int) -> tuple[torch.device, dict[str, Any]]:
    """This process's device and the process group's settings, from the config."""
    check_settings(cfg.trainer)
    options = settings(cfg.trainer)
    spec = str(cfg.trainer.device)
    device = torch.device("cpu")
    if spec.startswith("cuda") or (spec == "auto" and torch.cuda.is_available()):
        if spec.startswith("cuda:"):
            raise ConfigError(
                f"trainer.device={spec} names one GPU, but under torchrun each process takes the "
                "GPU of its LOCAL_RANK: use trainer.device=cuda (or auto)"
            )
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local}, but this machine has {torch.cuda.device_count()} GPU(s): "
                "start at most that many processes per node (--nproc_per_node)"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if options["sync_batchnorm"] and device.type != "cuda":
        raise ConfigError(
            "trainer.distributed.sync_batchnorm=true needs CUDA (torch has no CPU kernel)"
        )
    backend = options["backend"]
    if backend == "auto":
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    elif backend == "nccl" and device.type != "cuda":
        raise ConfigError(
            "trainer.distributed.backend=nccl needs CUDA; use gloo (or auto) on the CPU"
        )
    return device, {"backend": backend, "timeout_s": float(options["timeout_s"])}


def check_same_config(cfg: DictConfig, datasets: dict | None = None) -> None:
    """Refuse to train when the ranks composed different configs (other overrides or config files
    on another node), or, given the datasets, read different data (another copy on another node:
    other cases, or other inferred classes or statistics): each rank would train something else."""
    try:  # resolved: `${oc.env:...}` values that differ between processes count
        text = OmegaConf.to_yaml(cfg, resolve=True)
    except Exception:  # a missing value: validate() names it
        text = OmegaConf.to_yaml(cfg, resolve=False)
    if datasets is not None:
        text += repr({split: list(d.ids) for split, d in datasets.items()})
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    digests = [None] * world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) > 1:
        odd = [r for r, d in enumerate(digests) if d != digests[0]]
        what = "read different data" if datasets is not None else "composed different configs"
        raise everywhere(
            ConfigError(
                f"the processes {what} (rank(s) {odd} differ from rank 0): start every rank with the "
                "same overrides and config files, and give every node the same data"
            )
        )


def decided(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)`, run on rank 0 only, its result sent to every rank; an exception it
    raises on rank 0 is raised on every rank (marked `from_main`, as rank 0 has reported it), so
    that all ranks stop together."""
    if not is_distributed():
        return fn(*args, **kwargs)
    message: list[Any] = [None]
    error: BaseException | None = None
    if is_main():
        try:
            message[0] = (True, fn(*args, **kwargs))
        except BaseException as err:  # sent on, then raised here as well
            error = err
            message[0] = (False, _picklable(err))
    dist.broadcast_object_list(message, src=0)
    if error is not None:
        error.decided = True  # every rank raises it: the processes stay in step
        raise error
    ok, value = message[0]
    if ok:
        return value
    value.from_main = value.decided = True
    raise value


def agreed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on every rank (its own result returned), then the ranks compare:
    when it raised on any rank, every rank raises the error of the lowest such rank (marked
    `from_main` on the others, which stay quiet), so that all stop together. For checks whose
    outcome may differ between nodes: a data path missing on one of them, a file only one reads."""
    if not is_distributed():
        return fn(*args, **kwargs)
    error: BaseException | None = None
    result = None
    try:
        result = fn(*args, **kwargs)
    except Exception as err:  # compared with the other ranks' first
        error = err
    errors = [None] * world_size()
    mine = None if error is None else _picklable(error)
    if mine is not None and not is_main():
        mine = type(mine)(f"rank {rank()}: {mine}") if _rebuildable(mine) else mine
    dist.all_gather_object(errors, mine)
    first = next((r for r, e in enumerate(errors) if e is not None), None)
    if first is None:
        return result
    raised = error if first == rank() and error is not None else errors[first]
    raised.decided = True
    raised.from_main = first != rank()
    raise raised


def _rebuildable(err: BaseException) -> bool:
    """Whether `type(err)(message)` rebuilds `err` (medtrain's errors do)."""
    return isinstance(err, MedtrainError) and len(err.args) == 1


def _picklable(err: BaseException) -> BaseException:
    """`err` itself when it survives pickling (a MedtrainError, optuna's TrialPruned, ...), else a
    TrainingError with its message."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return TrainingError(f"{type(err).__name__}: {err}")


def from_main(err: BaseException) -> bool:
    """Whether `err` is rank 0's error re-raised here by `decided` (rank 0 reports it)."""
    return bool(getattr(err, "from_main", False))


def everywhere(err: BaseException) -> BaseException:
    """`err`, marked as raised by every rank together (a check whose outcome every rank shares)."""
    err.decided = True
    return err


def raised_everywhere(err: BaseException) -> bool:
    """Whether every rank raised `err` together (through `decided`), so that they can go on
    together (to a multirun's next job); any other error leaves the ranks out of step."""
    return bool(getattr(err, "decided", False))


def sum_across(value: torch.Tensor) -> torch.Tensor:
    """`value` summed over every rank (a copy; itself when there is one process)."""
    if not is_distributed():
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total


def broadcast_module(module: nn.Module) -> None:
    """Overwrite every rank's parameters and buffers with rank 0's (in place)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def parameter_checksums(module: nn.Module) -> list[str]:
    """A SHA-256 of each rank's parameters, in rank order: equal when the replicas are in step."""
    digest = hashlib.sha256()
    for tensor in module.parameters():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    if not is_distributed():
        return [digest.hexdigest()]
    digests = [None] * world_size()
    dist.all_gather_object(digests, digest.hexdigest())
    return digests


def in_batch_order(items: Iterable[Any], total: int) -> Iterator[Any]:
    """The items of batches dealt out in turn (batch k to rank k mod W, see
    `medtrain.data.loading.DealtBatches`), gathered on rank 0 and yielded there in batch order;
    the other ranks yield nothing. `items` yields this rank's items, one per batch, computed as
    they are asked for; `total` is the number of batches over all ranks."""
    if not is_distributed():
        yield from items
        return
    mine = iter(items)
    size, me = world_size(), rank()
    for start in range(0, total, size):
        item = next(mine) if start + me < total else None
        received = [None] * size if me == 0 else None
        dist.gather_object(item, received, dst=0)
        if me == 0:
            yield from (x for x in received if x is not None)


def to_cpu(value: Any) -> Any:
    """Tensors (also inside lists, tuples and dicts) moved to the CPU, to be sent to rank 0."""
    if torch.is_tensor(value):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def wrap(model: nn.Module, trainer: DictConfig, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel when several processes train it (batch norm made
    synchronous first when `trainer.distributed.sync_batchnorm`); `model` itself otherwise."""
    if not is_distributed():
        return model
    options = settings(trainer)
    if options["sync_batchnorm"]:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=options["find_unused_parameters"],
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (and torch.compile's): what is saved
    (no `module.` or `_orig_mod.` prefix), averaged, evaluated and served."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper (trainer.compile)
    return model.module if isinstance(model, DistributedDataParallel) else model


def no_sync(model: nn.Module, sync: bool):
    """DDP's `no_sync` for a batch whose gradients are only accumulated (no optimizer step): they
    are exchanged once, with the batch that steps."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper (trainer.compile)
    if sync or not isinstance(model, DistributedDataParallel):
        return nullcontext()
    return model.no_sync()


def describe() -> dict[str, Any]:
    """This launch for provenance.json and run_info.json: processes, nodes, backend."""
    if not is_distributed():
        return {"world_size": 1}
    return {
        "world_size": world_size(),
        "nodes": int(os.environ.get("GROUP_WORLD_SIZE", 1) or 1),
        "processes_per_node": int(os.environ.get("LOCAL_WORLD_SIZE", world_size()) or 1),
        "backend": str(dist.get_backend()),
    }


def is_communication_error(err: BaseException) -> bool:
    """Whether `err` comes from a collective whose peer failed, died or timed out."""
    if isinstance(err, dist.DistError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        word in text for word in ("gloo", "Gloo", "NCCL", "Connection closed by peer")
    )


def peer_failed(err: BaseException) -> PeerFailed:
    """The error a rank reports when the run broke elsewhere: what torch said, and where to look."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return PeerFailed(
        f"rank {rank()}: another process of this run failed, was killed or stopped answering, so "
        f"this one stops too (see the first error above, or torchrun's summary): {first}"
    )


def configure_rank_logging(rank_: int) -> None:
    """Ranks other than 0 log warnings and errors only, to stderr, with their rank in the prefix."""
    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter(f"[%(asctime)s][rank {rank_}][%(name)s][%(levelname)s] - %(message)s")
    )
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("medtrain").setLevel(logging.WARNING)
