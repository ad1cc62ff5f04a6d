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
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from connectors.base import Batch
from connectors.registry import split_uri
from connectors.zmq.uri import worker_address
from streammas.service import logs
from streammas.service.checkpoint import Checkpoint
from streammas.service.errors import ServiceError
from streammas.service.telemetry import Tally

if TYPE_CHECKING:
    from streammas.collective import DistributedContext
    from streammas.service.app import Service

log = logging.getLogger("streammas.service")


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


@dataclass
class Turn:
    """What the workers agreed on for one turn of the loop.

    Examples
    --------
    >>> Turn(counts=[3, 0], stop=False, checkpoint=True, finished=False).rows
    3
    """

    counts: list[int]
    stop: bool
    checkpoint: bool
    finished: bool
    failed: list[int] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(self.counts)


class Group:
    """A worker's part in its group: start-up, agreeing each turn, and the group's checkpoints.

    Parameters
    ----------
    service : Service
        This worker's service.
    context : DistributedContext
        The group (:class:`streammas.collective.DistributedContext`).

    Examples
    --------
    In prose (every call is a collective, made by every worker in the same order)::

        group = Group(service, context)
        ckpt = group.open_state()                       # rank 0 reads the state directory, all get it
        turn = group.agree(rows=len(batch), stop=False, checkpoint=False, finished=False, due=False)
        if turn.rows: ...                               # every worker steps, some with an empty batch
        group.checkpoint("signal")                      # rank 0 writes the group's state
    """

    def __init__(self, service: Service, context: DistributedContext) -> None:
        self.service = service
        self.ctx = context
        #: Whether the group's last checkpoint was written (known on every worker).
        self.last_ok = True
        #: Set when this worker left a turn half-way (an error): no collective can meet any more.
        self.broken = False
        #: Rows the group received in the state directory's life (the sum of every turn's counts; the same on
        #: every worker), for rank 0's checkpoint policy.
        self.received = 0

    @property
    def is_main(self) -> bool:
        return self.ctx.is_main

    # -- start-up ----------------------------------------------------------------------------------------------
    def open_state(self) -> Checkpoint | None:
        """Rank 0 locks the state directory and reads its newest checkpoint; every worker gets it (or the
        start-up error, so that no worker waits for a rank 0 that gave up)."""
        error, payload = None, None
        if self.is_main:
            try:
                ckpt = self.service.checkpoints.open()
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

    def resume_position(self, meta: dict[str, Any]) -> dict | None:
        """This worker's position in a checkpoint of the group (raises :class:`ServiceError` for a group of
        another size, unless ``[distributed] reshard``)."""
        cfg = self.service.config
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
        >>> group = Group(None, Ctx())
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

    # -- each turn ---------------------------------------------------------------------------------------------
    def agree(self, rows: int, stop: bool, checkpoint: bool, finished: bool, due: bool, failed: bool = False) -> Turn:
        """Exchange this turn's facts; any worker's stop or checkpoint request counts for all, rank 0's
        checkpoint policy (``due``) decides for the group, the stream is finished when every source is, and a
        worker whose source failed stops the group in this same turn."""
        facts = self.ctx.gather_ints([rows, int(stop), int(checkpoint or (due and self.is_main)), int(finished),
                                      int(failed)])
        failed_ranks = [r for r, f in enumerate(facts) if f[4]]
        turn = Turn(counts=[f[0] for f in facts], stop=any(f[1] for f in facts) or bool(failed_ranks),
                    checkpoint=any(f[2] for f in facts), finished=all(f[3] for f in facts), failed=failed_ranks)
        self.received += turn.rows
        return turn

    def sample_shape(self, batch: Batch | None) -> tuple[int, ...]:
        """The sample shape of the first rows any worker read (the learner is made alike on every worker)."""
        mine = None if batch is None or len(batch) == 0 else tuple(int(d) for d in batch.x.shape[1:])
        return next(s for s in self.ctx.gather_objects(mine) if s is not None)

    def empty_batch(self) -> Batch:
        """A batch of no rows, for a worker without data in a turn where others have some."""
        learner = self.service.learner
        assert learner is not None and learner.sample_shape is not None
        return Batch(np.zeros((0, *learner.sample_shape), np.float32), None, position=self.service.position)

    # -- checkpoints -------------------------------------------------------------------------------------------
    def checkpoint(self, reason: str) -> Checkpoint | None:
        """Write the group's checkpoint (rank 0), with every worker's position and counts; all workers call it.
        Returns the checkpoint on rank 0, ``None`` elsewhere or when the write failed."""
        service = self.service
        learner = service.learner
        if learner is None:
            return None
        learner.flush()  # the learner's pending reads may involve collectives: all workers at once
        mine = {"position": service.position, "tally": asdict(service.tally), "rejected": service.rejected()}
        workers = self.ctx.gather_objects(mine)
        written = None
        if self.is_main:
            written = service.write_checkpoint(reason, positions=[w["position"] for w in workers],
                                               workers=workers)
        self.last_ok = bool(self.ctx.broadcast_object(written is not None))
        if not self.last_ok and not self.is_main:
            logs.log_event(log, "checkpoint_failed", logging.ERROR, reason=reason, msg="rank 0 could not write")
        return written

    def shutdown_due(self, due: bool, asked: bool) -> bool:
        """Whether the group writes a final checkpoint: rank 0's policy says something changed since the last
        one (``due``, as rank 0 sees it), or any worker was asked for one."""
        facts = self.ctx.gather_ints([int(due), int(asked)])
        return bool(facts[0][0]) or any(f[1] for f in facts)

    def group_meta(self, workers: list[dict[str, Any]]) -> dict[str, Any]:
        """The group's part of a checkpoint's metadata: the counts summed (``service``, as one worker's would
        read), each worker's own (``workers``), and the group's size (``distributed``)."""
        rejected: dict[str, int] = {}
        for w in workers:
            for reason, count in w["rejected"].items():
                if reason != "learner":
                    rejected[reason] = rejected.get(reason, 0) + int(count)
        tallies = [w["tally"] for w in workers]
        return {
            "service": {"batches": max(t["batches"] for t in tallies), "received": sum(t["received"] for t in tallies),
                        "sink_failed": sum(t["sink_failed"] for t in tallies), "rejected": rejected},
            "workers": [{"tally": {k: v for k, v in w["tally"].items() if k != "carried_rejected"},
                         "rejected": {k: v for k, v in w["rejected"].items() if k != "learner"}} for w in workers],
            "distributed": {"world_size": self.ctx.world_size, "mode": self.service.config.distributed.mode},
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
                     sink_failed=int(t.get("sink_failed", 0)), carried_rejected=rejected)
