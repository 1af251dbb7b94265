"""Executors: where a run's batches of work units are computed.

The runner is the **driver**: it plans :class:`~.worker.UnitBatch` es, hands
them to an executor, and writes each batch's rows to the run store as soon as
they come back, in whatever order. It is the store's only writer, so resume
and the ledger work alike with every executor. An executor answers two calls:

- ``prepare(ModelRequest) -> ModelFacts``: load a model on a worker, check the
  plans on it, measure R_V (the driver never loads a model itself);
- ``map_batches(batches)``: an iterator of ``(batch, rows)`` as they complete.

Two executors share that interface:

- :class:`InProcessExecutor` (the default): one :class:`~.worker.Worker` in
  the driver's process; a batch is computed when the driver asks for the
  next result, so a driver that stops early computes nothing more.
- :class:`RayExecutor`: one Ray actor per GPU (``gpus_per_worker`` GPUs each,
  for models split over several cards) or, without GPUs, ``workers`` CPU
  actors. Each actor loads the model once and holds up to ``prefetch`` (2)
  batches: the next one is queued on it before the driver scores and stores
  the last, so a worker never idles between batches.
  Actors are created with ``max_restarts=-1, max_task_retries=-1``: when a
  worker process dies, Ray restarts the actor and runs its batch again, so
  nothing is lost; should Ray give up on an actor (its node gone for good),
  the driver puts the batch back in the queue for a live one. The
  scheduling is Ray's (``ray.wait``); nothing here is a scheduler.

Ray is an optional extra (``pip install 'transferlab[ray]'``); it is imported
only when a :class:`RayExecutor` is made.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from typing import Iterable, Iterator

from .worker import ModelFacts, ModelRequest, UnitBatch, Worker

EXECUTORS = ("inprocess", "ray")
RAY_MISSING = "--executor ray needs Ray, an optional extra: pip install 'transferlab[ray]'"


class ExecutorError(RuntimeError):
    """An executor that cannot be made or cannot go on (Ray missing, every worker dead, ...)."""


class Executor:
    """The interface the runner uses; see the module docstring."""

    kind = "executor"

    def prepare(self, request: ModelRequest) -> ModelFacts:
        raise NotImplementedError

    def map_batches(self, batches: Iterable[UnitBatch]) -> Iterator[tuple[UnitBatch, list[dict]]]:
        raise NotImplementedError

    def describe(self) -> dict:
        """What ran the units, for ``metadata.json``."""
        return {"kind": self.kind}

    def close(self) -> None:
        """Release the workers (an executor made by ``run_experiment`` is closed by it)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InProcessExecutor(Executor):
    """One worker in the driver's process; batches computed lazily, one at a time, in order."""

    kind = "inprocess"

    def __init__(self):
        self.worker = Worker()

    def prepare(self, request: ModelRequest) -> ModelFacts:
        return self.worker.prepare(request)

    def map_batches(self, batches: Iterable[UnitBatch]) -> Iterator[tuple[UnitBatch, list[dict]]]:
        for batch in batches:
            yield batch, self.worker.run(batch)

    def close(self) -> None:
        self.worker = Worker()  # drop the model


class RayWorker:
    """The body of a Ray actor: a :class:`~.worker.Worker` and its process id (tests kill it)."""

    def __init__(self, threads: int = 0):
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        self.worker = Worker()

    def prepare(self, request: ModelRequest) -> ModelFacts:
        return self.worker.prepare(request)

    def run(self, batch: UnitBatch) -> list[dict]:
        return self.worker.run(batch)

    def pid(self) -> int:
        return os.getpid()

    def placement(self) -> dict:
        """Where this worker runs: host, process, the GPUs Ray gave it and its loaded model's device.

        Ray gives an actor with ``num_gpus=1`` its own card by setting
        ``CUDA_VISIBLE_DEVICES``; the model is then on ``cuda:0`` of that one
        card. ``gpus`` names the cards this process sees (name and UUID), so
        two workers on one card show the same UUID.
        """
        import socket

        import torch

        gpus = []
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                gpus.append({"index": i, "name": props.name, "uuid": str(getattr(props, "uuid", ""))})
        model = self.worker.model
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "gpus": gpus,
            "model_device": str(model.device) if model is not None else None,
        }


def import_ray():
    """``ray``, or :class:`ExecutorError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ExecutorError(RAY_MISSING) from exc
    return ray


class RayExecutor(Executor):
    """Ray actors on this machine (``address=None``) or on a running Ray cluster (``address="HOST:6379"``).

    ``gpus_per_worker``: GPUs per actor (default: 1 where the cluster has GPUs,
    else 0). ``workers``: number of actors (default: one per ``gpus_per_worker``
    GPUs, or one per ``cpus_per_worker`` CPUs without GPUs). ``num_cpus``: CPUs
    a local Ray may use (default: this machine's, at least enough for the
    workers). CPU actors run torch with ``cpus_per_worker`` threads. If Ray is
    already initialised in this process, it is used as it is and left running.
    """

    kind = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        gpus_per_worker: float | None = None,
        cpus_per_worker: int = 1,
        num_cpus: int | None = None,
        prefetch: int = 2,
    ):
        ray = import_ray()
        self.prefetch = max(1, int(prefetch))
        self._ray = ray
        self.address = address
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
            if address is None:
                wanted = (workers or 1) * cpus_per_worker
                kwargs["num_cpus"] = num_cpus or max(os.cpu_count() or 1, wanted)
            ray.init(address=address, **kwargs)
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if gpus_per_worker is None:
            gpus_per_worker = 1 if gpus else 0
        if workers is None:
            workers = (
                int(gpus // gpus_per_worker) if gpus_per_worker else int(resources.get("CPU", 1) // cpus_per_worker)
            )
        if workers < 1:
            self.close()
            raise ExecutorError(
                f"no Ray worker fits: the cluster has {gpus} GPU(s) and {resources.get('CPU', 0)} CPU(s); "
                f"each worker asks for {gpus_per_worker} GPU(s) and {cpus_per_worker} CPU(s)"
            )
        self.gpus_per_worker, self.cpus_per_worker = gpus_per_worker, cpus_per_worker
        actor = ray.remote(RayWorker).options(
            num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=-1, max_task_retries=-1
        )
        threads = cpus_per_worker if not gpus_per_worker else 0
        self.actors = [actor.remote(threads) for _ in range(workers)]
        self._busy: dict = {}  # actor -> the batch it is computing (tests kill a busy worker)

    # -- the interface ----------------------------------------------------------
    def prepare(self, request: ModelRequest) -> ModelFacts:
        return self._call_any("prepare", request)

    def map_batches(self, batches: Iterable[UnitBatch]) -> Iterator[tuple[UnitBatch, list[dict]]]:
        ray = self._ray
        pending = deque(batches)
        running: dict = {}  # object ref -> (batch, actor)
        queued: dict = {actor: deque() for actor in self.actors}  # actor -> its batches in flight, oldest first

        def dispatch() -> None:
            # each actor holds up to ``prefetch`` batches: the next is already queued on it when one
            # finishes, so it never waits while the driver scores and stores a result
            # (level by level: every actor gets a first batch before any gets a second)
            for depth in range(1, self.prefetch + 1):
                for actor in list(self.actors):
                    if pending and len(queued[actor]) < depth:
                        batch = pending.popleft()
                        running[actor.run.remote(batch)] = (batch, actor)
                        queued[actor].append(batch)
                        self._busy[actor] = queued[actor][0]

        while pending or running:
            dispatch()
            (ref,), _ = ray.wait(list(running), num_returns=1)
            batch, actor = running.pop(ref)
            mine = queued[actor]
            for i, b in enumerate(mine):
                if b is batch:  # identity: comparing batches field by field is slow and could match a twin
                    del mine[i]
                    break
            if queued[actor]:
                self._busy[actor] = queued[actor][0]
            else:
                self._busy.pop(actor, None)
            try:
                rows = ray.get(ref)
            except ray.exceptions.RayActorError:
                self._drop(actor)
                pending.appendleft(batch)  # Ray gave up on the actor: a live one takes the batch
                continue
            dispatch()
            yield batch, rows

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "address": self.address or "local",
            "workers": len(self.actors),
            "gpus_per_worker": self.gpus_per_worker,
            "cpus_per_worker": self.cpus_per_worker,
        }

    def busy(self) -> dict:
        """Actor -> the batch it is computing now."""
        return dict(self._busy)

    def close(self) -> None:
        for actor in getattr(self, "actors", []):
            try:
                self._ray.kill(actor)
            except Exception:  # already gone
                pass
        self.actors = []
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()

    # -- helpers ----------------------------------------------------------------
    def _call_any(self, method: str, arg):
        while self.actors:
            actor = self.actors[0]
            try:
                return self._ray.get(getattr(actor, method).remote(arg))
            except self._ray.exceptions.RayActorError:
                self._drop(actor)
        raise ExecutorError("every Ray worker died")

    def _drop(self, actor) -> None:
        if actor in self.actors:
            self.actors.remove(actor)
        if not self.actors:
            raise ExecutorError("every Ray worker died; the run store keeps what was finished: resume with --resume")


def make_executor(
    kind: str | Executor | None = "inprocess",
    *,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
) -> Executor:
    """An executor by name (``inprocess`` or ``ray``), with the Ray options; an Executor is returned as it is."""
    if isinstance(kind, Executor):
        return kind
    kind = kind or "inprocess"
    if kind not in EXECUTORS:
        raise ExecutorError(f"unknown executor {kind!r}; use one of {', '.join(EXECUTORS)}")
    if kind == "inprocess":
        given = [
            n
            for n, v in (("--address", address), ("--workers", workers), ("--gpus-per-worker", gpus_per_worker))
            if v is not None
        ]
        if given:
            raise ExecutorError(f"{', '.join(given)} only apply with --executor ray")
        return InProcessExecutor()
    return RayExecutor(address=address, workers=workers, gpus_per_worker=gpus_per_worker)


__all__ = [
    "Executor",
    "ExecutorError",
    "InProcessExecutor",
    "RayExecutor",
    "RayWorker",
    "make_executor",
    "import_ray",
    "EXECUTORS",
]
