"""The service as one worker of a data-parallel group (``[distributed] workers > 1``, or launched by torchrun).

Every worker runs the same loop over its own shard of the stream, and the workers move in step: each turn
they exchange a few integers (:meth:`Group.agree`: how many rows each one read, whether any was asked to stop
or to checkpoint, whether all sources are finished) and then act alike. When any worker has rows, every
worker takes a learning step, those without rows with an empty batch, so that the learner's collectives
(:mod:`streammas.collective`) always meet: the learner's state stays identical on every worker.

Rank 0 holds the state directory: it resumes from the newest checkpoint and sends it to the others, and
writes the group's checkpoints, with every worker's source position (``meta["source"]["positions"]``), its
counts, and the group's size (``meta["distributed"]``). A restart with another number of workers is refused,
unless ``[distributed] reshard`` says to start the sources over (then rows learned before are learned again:
at least once instead of exactly once).

A service alone has the same parts in their one-worker form (:class:`Alone`), so that the service asks its
group, whichever it is, instead of telling the two cases apart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from connectors.base import Batch
from connectors.registry import split_uri
from connectors.zmq.uri import worker_address
from streammas.config import Config
from streammas.learner import OnlineMAS
from streammas.service import logs
from streammas.service.checkpoint import Checkpoint
from streammas.service.checkpointing import restore_tally, resume_position
from streammas.service.errors import ServiceError
from streammas.service.group_loop import GroupLoop, Turn
from streammas.service.loop import Loop, Outcome
from streammas.service.telemetry import Tally

if TYPE_CHECKING:
    from streammas.collective import DistributedContext

log = logging.getLogger("streammas.service")

#: ``write(reason, amend)``: write this worker's checkpoint now, ``amend(meta)`` completing its metadata (the
#: group's part, on rank 0); returns it, or ``None`` when nothing was written.
Write = Callable[[str, Callable[[dict[str, Any]], None] | None], Checkpoint | None]


def same_world(meta: dict[str, Any], world_size: int, config: Any) -> bool:
    """Whether a checkpoint was written by a group of ``world_size`` workers (one: a service alone). Otherwise
    raises :class:`ServiceError`, or with ``[distributed] reshard`` logs that the sources start over and
    returns ``False``: each worker's position belongs to its shard of the stream.

    >>> same_world({"distributed": {"world_size": 2}}, 2, None), same_world({}, 1, None)
    (True, True)
    """
    recorded = int((meta.get("distributed") or {}).get("world_size", 1))
    if recorded == world_size:
        return True
    if not config.distributed.reshard:
        raise ServiceError(
            f"the state directory {config.state.dir} was written by {recorded} worker(s), and this run has "
            f"{world_size}: each worker's position in the stream belongs to its shard. Run {recorded} worker(s), "
            "or set [distributed] reshard = true to start the sources over (the model is kept; rows learned "
            "before are learned again: at least once)")
    logs.log_event(log, "resharded", logging.WARNING, before=recorded, now=world_size,
                   msg="sources start over: rows learned before are learned again")
    return False


class Alone:
    """A service alone: the one-worker form of :class:`Group`, each method doing the plain thing.

    Parameters
    ----------
    config : Config
        The whole configuration.
    write : callable
        ``write(reason, amend)``: writes the service's checkpoint (``amend`` is always ``None`` here).

    Examples
    --------
    >>> alone = Alone(None, write=lambda reason, amend: f"ckpt ({reason})")
    >>> alone.sink_uri("jsonl:scores.jsonl"), alone.source_options(), alone.checkpoint("signal", None, dict)
    ('jsonl:scores.jsonl', {}, 'ckpt (signal)')
    """

    is_main = True
    world_size = 1

    def __init__(self, config: Config, write: Write) -> None:
        self.config = config
        self.write = write

    def worker_device(self, device: str) -> str:
        return device

    def open_state(self, open_state: Callable[[], Checkpoint | None]) -> Checkpoint | None:
        return open_state()

    def resume(self, meta: dict[str, Any], learner: OnlineMAS | None = None) -> tuple[Tally, dict | None]:
        """The counts and the source's position a checkpoint carries over (raises :class:`ServiceError` for a
        checkpoint of a group, unless ``[distributed] reshard``)."""
        tally = restore_tally(meta)
        same = same_world(meta, 1, self.config)
        return tally, resume_position(meta, self.config.source) if same else None

    def sink_uri(self, uri: str) -> str:
        return uri

    def source_options(self) -> dict[str, Any]:
        return {}

    def learner_options(self) -> dict[str, Any]:
        return {}

    def run(self, loop: Loop) -> Outcome:
        return loop.run()

    def received(self, tally: Tally) -> int:
        """The samples the checkpoint policy counts as received."""
        return tally.received

    def checkpoint(self, reason: str, learner: OnlineMAS | None,
                   record: Callable[[], dict[str, Any]]) -> Checkpoint | None:
        """Write the checkpoint now; returns it, or ``None`` if nothing was written."""
        return self.write(reason, None)

    def durable(self, written: Checkpoint | None) -> bool:
        """Whether the checkpoint just asked for (``written``, what :meth:`checkpoint` returned) is on disk."""
        return written is not None

    def final_checkpoint(self, due: bool, asked: bool, checkpoint: Callable[[str], Checkpoint | None]) -> bool:
        """Write the shutdown checkpoint if one is ``due`` (something changed since the last) or was ``asked``
        for; returns ``False`` when that write failed."""
        return not (due or asked) or checkpoint("shutdown") is not None


class Group:
    """A worker's part in its group: start-up, agreeing each turn, and the group's checkpoints.

    It has the methods of :class:`Alone`, each doing the group's thing, and runs the worker's loop in step with
    the others (:class:`~streammas.service.group_loop.GroupLoop`).

    Parameters
    ----------
    context : DistributedContext
        The group (:class:`streammas.collective.DistributedContext`).
    config : Config
        The whole configuration.
    write : callable
        ``write(reason, amend)``: writes this worker's checkpoint, ``amend(meta)`` adding the group's part
        (rank 0 only calls it).

    Examples
    --------
    In prose (every call is a collective, made by every worker in the same order)::

        group = Group(context, config, write)
        ckpt = group.open_state(checkpoints.open)       # rank 0 reads the state directory, all get it
        turn = group.agree(rows=len(batch), stop=False, checkpoint=False, finished=False, due=False)
        if turn.rows: ...                               # every worker steps, some with an empty batch
        group.checkpoint("signal", learner, record)     # rank 0 writes the group's state
    """

    def __init__(self, context: DistributedContext, config: Config, write: Write) -> None:
        self.ctx = context
        self.config = config
        self.write = write
        #: Whether the group's last checkpoint was written (known on every worker).
        self.last_ok = True
        #: Set when this worker left a turn half-way (an error): no collective can meet any more.
        self.broken = False
        self._durable = False  # whether the last checkpoint asked for was written
        #: Rows the group received in the state directory's life (the sum of every turn's counts; the same on
        #: every worker), for rank 0's checkpoint policy.
        self.group_received = 0

    @property
    def is_main(self) -> bool:
        return self.ctx.is_main

    @property
    def world_size(self) -> int:
        return self.ctx.world_size

    # -- start-up ----------------------------------------------------------------------------------------------
    def worker_device(self, device: str) -> str:
        """The device this worker learns on: for ``cuda``, the GPU it took by local rank."""
        return f"cuda:{torch.cuda.current_device()}" if device.startswith("cuda") else device

    def open_state(self, open_state: Callable[[], Checkpoint | None]) -> Checkpoint | None:
        """Rank 0 locks the state directory and reads its newest checkpoint (``open_state()``); every worker
        gets it (or the start-up error, so that no worker waits for a rank 0 that gave up)."""
        error, payload = None, None
        if self.is_main:
            try:
                ckpt = open_state()
            except Exception as e:  # any of them: the others wait on this broadcast
                error = str(e) if isinstance(e, ServiceError) else f"[state] {type(e).__name__}: {e}"
            else:
                if ckpt is not None:
                    payload = (str(ckpt.path), ckpt.seq, ckpt.created, ckpt.meta, ckpt.learner, ckpt.nbytes)
        error, payload = self.ctx.broadcast_object((error, payload))
        if error is not None:
            raise ServiceError(error)
        if payload is None:
            return None
        path, seq, created, meta, learner, nbytes = payload
        return Checkpoint(path=Path(path), seq=seq, created=created, meta=meta, learner=learner, nbytes=nbytes)

    def resume(self, meta: dict[str, Any], learner: OnlineMAS | None = None) -> tuple[Tally, dict | None]:
        """This worker's counts and position in a checkpoint of the group, and the group's count of rows. The
        learner's count of rejected samples is rank 0's (its state is): each worker carries its own instead."""
        tally = self.restore_tally(meta) or Tally()
        if learner is not None:
            learner.guard.rejected = 0
        position = self.resume_position(meta)
        self.group_received = int((meta.get("service") or {}).get("received", 0))
        return tally, position

    def resume_position(self, meta: dict[str, Any]) -> dict | None:
        """This worker's position in a checkpoint of the group (raises :class:`ServiceError` for a group of
        another size, unless ``[distributed] reshard``)."""
        cfg = self.config
        source = meta.get("source") or {}
        if not same_world(meta, self.ctx.world_size, cfg):
            return None
        if not cfg.source.resume or source.get("uri") != cfg.source.uri:
            return None
        positions = source.get("positions")
        if positions is None:  # a checkpoint of one worker
            return source.get("position")
        return positions[self.ctx.rank]
    def sink_uri(self, uri: str) -> str:
        """Each worker's own sink: a file sink's path gets ``.worker<rank>`` before its extension
        (``jsonl:scores.jsonl`` -> ``jsonl:scores.worker1.jsonl``), a ZeroMQ sink's port the rank added; a
        plug-in's sink is used as given.

        >>> class Ctx: rank, world_size, is_main = 1, 2, False
        >>> group = Group(Ctx(), config=None, write=None)
        >>> [group.sink_uri(u) for u in ("jsonl:out/scores.jsonl", "scores.jsonl", "alerts:a.jsonl?q=0.9")]
        ['jsonl:out/scores.worker1.jsonl', 'jsonl:scores.worker1.jsonl', 'alerts:a.worker1.jsonl?q=0.9']
        >>> group.sink_uri("zmq+pub://127.0.0.1:5556")
        'zmq+pub://127.0.0.1:5557'
        """
        try:
            scheme, rest = split_uri(uri)
        except ValueError:
            return uri
        if scheme.startswith("zmq"):  # a bound socket (zmq+pub): port + rank, as for the sources
            address, qmark, query = rest.partition("?")
            if address.startswith("//"):  # zmq+pub://host:port is tcp
                return f"{scheme}:{worker_address('tcp:' + address, self.ctx.rank)[4:]}{qmark}{query}"
            return f"{scheme}:{worker_address(address, self.ctx.rank)}{qmark}{query}"
        if scheme not in ("jsonl", "alerts") or rest == "-":
            return uri
        path, qmark, query = rest.partition("?")
        stem, dot, ext = path.rpartition(".")
        path = f"{stem}.worker{self.ctx.rank}.{ext}" if dot and "/" not in ext else f"{path}.worker{self.ctx.rank}"
        return f"{scheme}:{path}{qmark}{query}"

    def source_options(self) -> dict[str, Any]:
        """Each worker its own part of the stream: rows, files or port + rank."""
        return {"shard": (self.ctx.rank, self.ctx.world_size)}

    def learner_options(self) -> dict[str, Any]:
        return {"distributed": self.ctx}

    # -- each turn ---------------------------------------------------------------------------------------------
    def run(self, loop: Loop) -> Outcome:
        """Run this worker's ``loop`` in step with the others (:class:`~streammas.service.group_loop.GroupLoop`)."""
        return GroupLoop(loop, self).run()

    def received(self, tally: Tally) -> int:
        """The rows rank 0's checkpoint policy counts as received: the whole group's (not this worker's
        ``tally``)."""
        return self.group_received

    def agree(self, rows: int, stop: bool, checkpoint: bool, finished: bool, due: bool, failed: bool = False) -> Turn:
        """Exchange this turn's facts; any worker's stop or checkpoint request counts for all, rank 0's
        checkpoint policy (``due``) decides for the group, the stream is finished when every source is, and a
        worker whose source failed stops the group in this same turn."""
        facts = self.ctx.gather_ints([rows, int(stop), int(checkpoint or (due and self.is_main)), int(finished),
                                      int(failed)])
        failed_ranks = [r for r, f in enumerate(facts) if f[4]]
        turn = Turn(counts=[f[0] for f in facts], stop=any(f[1] for f in facts) or bool(failed_ranks),
                    checkpoint=any(f[2] for f in facts), finished=all(f[3] for f in facts), failed=failed_ranks)
        self.group_received += turn.rows
        return turn

    def sample_shape(self, batch: Batch | None) -> tuple[int, ...]:
        """The sample shape of the first rows any worker read (the learner is made alike on every worker)."""
        mine = None if batch is None or len(batch) == 0 else tuple(int(d) for d in batch.x.shape[1:])
        return next(s for s in self.ctx.gather_objects(mine) if s is not None)

    # -- checkpoints -------------------------------------------------------------------------------------------
    def checkpoint(self, reason: str, learner: OnlineMAS | None,
                   record: Callable[[], dict[str, Any]]) -> Checkpoint | None:
        """Write the group's checkpoint (rank 0), with every worker's position and counts (``record()``: this
        worker's ``position``, ``tally`` and ``rejected``); all workers call it. Returns the checkpoint on rank
        0, ``None`` elsewhere or when the write failed."""
        self._durable = False
        if learner is None:
            return None
        learner.flush()  # the learner's pending reads may involve collectives: all workers at once
        workers = self.ctx.gather_objects(record())
        written = None
        if self.is_main:
            def amend(meta: dict[str, Any]) -> None:
                meta["source"]["positions"] = [w["position"] for w in workers]
                meta.update(self.group_meta(workers))

            written = self.write(reason, amend)
        self.last_ok = self._durable = bool(self.ctx.broadcast_object(written is not None))
        if not self.last_ok and not self.is_main:
            logs.log_event(log, "checkpoint_failed", logging.ERROR, reason=reason, msg="rank 0 could not write")
        return written

    def durable(self, written: Checkpoint | None) -> bool:
        """Whether the group's checkpoint just asked for is on disk (known on every worker, not only rank 0)."""
        return self._durable

    def final_checkpoint(self, due: bool, asked: bool, checkpoint: Callable[[str], Checkpoint | None]) -> bool:
        """Write the group's shutdown checkpoint when :meth:`shutdown_due` (a collective, skipped by a worker
        that left a turn half-way); returns ``False`` when that write failed."""
        if self.broken or not self.shutdown_due(due, asked):
            return True
        checkpoint("shutdown")
        return self.last_ok

    def shutdown_due(self, due: bool, asked: bool) -> bool:
        """Whether the group writes a final checkpoint: rank 0's policy says something changed since the last
        one (``due``, as rank 0 sees it), or any worker was asked for one."""
        facts = self.ctx.gather_ints([int(due), int(asked)])
        return bool(facts[0][0]) or any(f[1] for f in facts)

    def group_meta(self, workers: list[dict[str, Any]]) -> dict[str, Any]:
        """The group's part of a checkpoint's metadata: the counts summed (``service``, as one worker's would
        read), each worker's own (``workers``), and the group's size (``distributed``)."""
        rejected: dict[str, int] = {}
        for w in workers:  # each worker's own, the learner's rejects too (see resume)
            for reason, count in w["rejected"].items():
                rejected[reason] = rejected.get(reason, 0) + int(count)
        tallies = [w["tally"] for w in workers]
        return {
            "service": {"batches": max(t["batches"] for t in tallies), "received": sum(t["received"] for t in tallies),
                        "sink_failed": sum(t["sink_failed"] for t in tallies), "rejected": rejected},
            "workers": [{"tally": {k: v for k, v in w["tally"].items() if k != "carried_rejected"},
                         "rejected": w["rejected"]} for w in workers],
            "distributed": {"world_size": self.ctx.world_size, "mode": self.config.distributed.mode},
        }

    def restore_tally(self, meta: dict[str, Any]) -> Tally | None:
        """This worker's counts from a checkpoint of a group of the same size (``None``: none recorded)."""
        workers = meta.get("workers")
        if not workers or len(workers) != self.ctx.world_size:
            return None
        mine = workers[self.ctx.rank]
        rejected = {str(k): int(v) for k, v in mine.get("rejected", {}).items()}
        errors = rejected.pop("learner_error", 0)
        t = mine.get("tally", {})
        return Tally(batches=int(t.get("batches", 0)), received=int(t.get("received", 0)), errors=errors,
                     sink_failed=int(t.get("sink_failed", 0)), carried_rejected=rejected,
                     first_sample=int(t.get("first_sample", 0)))
