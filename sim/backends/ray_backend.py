"""``backend=ray``: a pool of Ray actors, each hosting many virtual clients (never an actor per client).

Per run (``setup``): connect to Ray (see :mod:`.ray_cluster`), put the training data and the model
into the object store once, start ``num_actors`` :class:`~.ray_actors.TrainingActor` processes that
receive that one object reference, and, with ``aggregate_on=worker``, one aggregator actor.

Per round (``train``): the round's K clients are split over the actors in chunks of near-equal work
(SGD steps, :mod:`.ray_chunks`), one task per actor. An FL round's shared start model is put into the
object store once and every task gets its reference; a gossip round sends each actor the start
models of its own nodes. Every driver-side step is O(K), so the cost follows the clients trained, not
the clients that exist. Each actor trains its chunk with a local backend (``backend.inner``: auto,
i.e. vectorized unless the model has BatchNorm, or sequential / vectorized), drawing client k's
batches from ``torch_generator(seed, "train", round, k)``,
so results equal ``backend=sequential`` to float tolerance whatever the chunking.

Faults: when an actor dies during a round (killed, out of memory, its node lost), its chunk is
re-run on a live actor, at most ``max_retries`` times per chunk; the dead actor is replaced for the
next rounds. The round's result is the fault-free one (a chunk's result depends only on its clients
and the round). Each retry is logged and counted in the round's ``retries`` column of metrics.csv.

Calls with at most ``driver_max_clients`` clients train in the driver: asynchronous gossip trains
one node per event, and a round trip to an actor would cost more than the training. Sync gossip's
merging also stays in the driver; FL aggregation runs there too unless ``aggregate_on=worker``.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, replace
from typing import Any

import ray
import torch

from sim.errors import ConfigError, GossipsoupError, RunError
from sim.threads import check_num_threads, choose_threads, usable_cores
from sim.training import ClientCorrection, TrainConfig
from sim.validation import boolean, choice, integer, number, optional_integer

from . import ray_cluster
from .base import ClientBatch, TrainingSetup, check_needs, client_rounds
from .device import check_device_name
from .ray_actors import AggregatorActor, TrainingActor, setup_payload, shared_tensor
from .ray_chunks import balanced_chunks, client_costs
from .sequential import SequentialBackend

log = logging.getLogger("sim.backends.ray")

DEVICES = ("auto", "cpu", "cuda")
AGGREGATE_ON = ("driver", "worker")
INNER = ("sequential", "vectorized", "auto")
#: sync gossip: partition actors own the nodes (partitioned) or the driver holds every model (driver)
GOSSIP = ("partitioned", "driver")
PARTITIONS = ("metis", "contiguous")
#: errors that mean "the actor (or its node) is gone", as opposed to an error in the training code
ACTOR_LOST = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError)
#: the aggregator's GPU share when aggregate_on=worker, the cluster has GPUs and aggregator_num_gpus is null
DEFAULT_AGGREGATOR_GPUS = 0.1


@dataclass
class _Task:
    """One chunk of a round: which clients (positions in the round's list), where it runs, its result."""

    positions: list[int]
    ids: list[int]
    rounds: Any  # one int for all, or a list per client
    start: Any  # ObjectRef of the chunk's start models ([P] shared, or [k, P])
    prox: float = 0.0  # the strategy's client correction: prox and this chunk's offsets rows (or None)
    offsets: Any = None
    frozen: Any = None  # the correction's frozen entries ([P] bool array), or None
    train: Any = None  # the call's TrainConfig in place of the run's, or None
    stream: str = "train"  # the seeded stream the batches come from
    slot: int = -1
    ref: Any = None
    attempts: int = 0


class RayBackend:
    name = "ray"
    #: test seam: called as ``after_submit(backend, round_)`` once a round's tasks are submitted and
    #: before their results are awaited (the fault test kills an actor here); None in normal use
    after_submit = None
    #: set before setup() when partitioned gossip will start its own actors (sim.gossip.uses_partitions)
    defer_pool = False

    def __init__(
        self,
        address: str | None = None,
        num_actors: int | None = None,
        num_cpus: float = 1,
        num_gpus: float = 0,
        num_threads: int | None = None,
        device: str = "auto",
        aggregate_on: str = "driver",
        aggregator_num_gpus: float | None = None,
        max_retries: int = 3,
        driver_max_clients: int = 1,
        inner: str = "auto",
        start_timeout_s: float = 300,
        runtime_env: Any = None,
        noop_train: bool = False,
        gossip: str = "partitioned",
        partition: str = "metis",
    ):
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ConfigError("backend.address", address, ray_cluster.ADDRESS_HELP)
        self.num_actors = optional_integer("backend.num_actors", num_actors, 1, "as many as the cluster holds")
        self.num_cpus = number(
            "backend.num_cpus", num_cpus, 0, lo_open=True, allowed="a finite number > 0 (CPUs per actor)"
        )
        self.num_gpus = number(
            "backend.num_gpus",
            num_gpus,
            0,
            allowed="a finite number >= 0 (GPUs per actor; 0.25 shares one GPU by four)",
        )
        self.num_threads = check_num_threads(num_threads)
        self.device = check_device_name(device)
        if self.device not in DEVICES:  # cuda:N: an actor sees only the GPUs Ray gave it
            raise ConfigError(
                "backend.device",
                device,
                "auto, cpu or cuda with backend=ray",
                "Ray assigns GPUs to actors (backend.num_gpus) and each actor sees its own as cuda; choose the "
                "machine's GPUs with CUDA_VISIBLE_DEVICES before Ray starts.",
            )
        self.aggregate_on = choice("backend.aggregate_on", aggregate_on, AGGREGATE_ON)
        self.aggregator_num_gpus = (
            None
            if aggregator_num_gpus is None
            else number("backend.aggregator_num_gpus", aggregator_num_gpus, 0, allowed="null or a finite number >= 0")
        )
        self.max_retries = integer("backend.max_retries", max_retries, 0)
        self.driver_max_clients = integer("backend.driver_max_clients", driver_max_clients, 0)
        self.inner = choice("backend.inner", inner, INNER)
        self.start_timeout_s = number(
            "backend.start_timeout_s", start_timeout_s, 0, lo_open=True, allowed="a finite number of seconds > 0"
        )
        self.noop_train = boolean("backend.noop_train", noop_train)
        self.gossip = choice("backend.gossip", gossip, GOSSIP)
        self.partition = choice("backend.partition", partition, PARTITIONS)
        if runtime_env is not None:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(runtime_env, DictConfig):
                runtime_env = OmegaConf.to_container(runtime_env, resolve=True)
            if not isinstance(runtime_env, dict):
                raise ConfigError("backend.runtime_env", runtime_env, "null or a mapping (Ray's runtime_env)")
        self.runtime_env = runtime_env
        if self.device == "cuda" and self.num_gpus == 0 and self.aggregate_on == "driver":
            raise ConfigError(
                "backend.device",
                "cuda",
                "auto or cpu unless actors hold GPUs",
                "With num_gpus=0 and aggregate_on=driver no actor holds a GPU; set backend.num_gpus "
                "(e.g. 0.25) or backend.aggregate_on=worker.",
            )
        self.address = address.strip() if address else None
        if self.address is not None:
            ray_cluster.probe_address(self.address)
        elif (
            not ray.is_initialized() and (self.num_gpus > 0 or self.device == "cuda") and not torch.cuda.is_available()
        ):
            # we would start Ray on this machine, and it has no GPU torch can use: say so before any work
            ray_cluster.check_gpus({"CPU": float(usable_cores())}, self.num_gpus, self.device, where="this machine")
        self.actors: list[Any] = []
        self.partition_actors: list[Any] = []  # partitioned gossip's actors (sim.gossip.partitioned)
        self.pool_size = 0  # actors the cluster holds at num_cpus/num_gpus each (decided at setup)
        self.actor_threads: int | None = None  # decided at setup, from the model and backend.num_cpus
        self.aggregator: Any | None = None  # the aggregator actor's handle with aggregate_on=worker
        self._started = False
        self._setup: TrainingSetup | None = None
        self._local = SequentialBackend(device="cpu")  # the driver's data and models stay on the host
        self._last: tuple | None = None  # (params, chunk refs, positions, stats) of the last remote round
        self._strategy_ref: tuple | None = None  # (strategy, its ObjectRef)
        self._told_driver_aggregation = False

    # ---- lifecycle ----------------------------------------------------------------------------
    @property
    def train_config(self) -> TrainConfig | None:
        """The run's training config (what ``train(train=None)`` uses); None before ``setup``."""
        return None if self._setup is None else self._setup.train

    def setup(self, setup: TrainingSetup) -> None:
        self._release()
        self._started = ray_cluster.connect(self.address, self.runtime_env) or self._started
        try:
            self._start_pool(setup)
        except BaseException:
            self.close()  # a Ray this backend started must not outlive a failed start
            raise

    def _start_pool(self, setup: TrainingSetup) -> None:
        resources = ray.cluster_resources()
        ray_cluster.check_gpus(resources, self.num_gpus, self.device)
        self._agg_gpus = self._aggregator_gpus(resources) if self.aggregate_on == "worker" else 0.0
        size = ray_cluster.pool_size(self.num_actors, self.num_cpus, self.num_gpus, resources, self._agg_gpus)
        self._setup = setup
        self._local.setup(setup)
        # each actor's torch threads: the run's rule (sim.threads) with the CPUs the actor reserves as its cores
        self.actor_threads = choose_threads(
            self.num_threads, setup.layout.size, setup.train.batch_size, cores=max(1, math.floor(self.num_cpus))
        )[0]
        self._costs = torch.tensor(client_costs(setup.data.client_sizes, setup.train), dtype=torch.long)
        self._sizes = setup.data.client_sizes
        self._payload = ray.put(setup_payload(setup))  # the data enters the object store once per run
        self.pool_size = size
        if self.defer_pool:
            return
        self.actors = [self._new_actor() for _ in range(size)]
        waits = [a.ready.remote() for a in self.actors]
        if self.aggregate_on == "worker":
            self.aggregator = self._new_aggregator()
            waits.append(self.aggregator.ready.remote())
        try:
            info = ray.get(waits, timeout=self.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise RunError(
                f"the ray backend's {len(waits)} actors did not start within {self.start_timeout_s:g} s "
                "(backend.start_timeout_s); the cluster may lack the CPUs/GPUs they ask for"
            ) from None
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
            raise RunError(
                "the ray backend's actors could not start; every node needs gossipsoup installed "
                "(or backend.runtime_env to ship it; see docs/ray.md). "
                f"Ray said: {_first_line(exc)}"
            ) from None
        trainers = info[:size]
        log.info(
            "ray backend: %d training actor(s) on %d node(s), device %s%s",
            size,
            len({i["node"] for i in trainers}),
            "/".join(sorted({i["device"] for i in trainers})),
            f"; aggregation on a worker, device {info[-1]['device']}" if self.aggregator is not None else "",
        )

    def _new_actor(self):
        return TrainingActor.options(num_cpus=self.num_cpus, num_gpus=self.num_gpus).remote(
            self._payload, self.inner, self.actor_threads, self.device, self.noop_train
        )

    def start_partition_actor(self, test, part, start):
        """A partition actor (partitioned gossip) with the resources and threads of a training actor."""
        from .ray_partition import PartitionActor

        return PartitionActor.options(num_cpus=self.num_cpus, num_gpus=self.num_gpus).remote(
            self._payload, test, part, start, self.inner, self.actor_threads, self.device, self.noop_train
        )

    def client_costs(self) -> list[int]:
        """Each client's SGD steps per round (the partition balances them over the actors)."""
        return self._costs.tolist()

    def _release(self) -> None:
        """Kill the actors and wait until Ray knows they are gone, so their CPUs/GPUs are free again
        for whatever starts next (e.g. the next run of a sweep in this process)."""
        actors = [a for a in [*self.actors, *self.partition_actors, self.aggregator] if a is not None]
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        for actor in actors:
            try:
                ray.get(actor.ready.remote(), timeout=10)
            except Exception:  # ActorDiedError: gone, as asked (or it did not say within 10 s)
                pass
        self.actors, self.partition_actors, self.aggregator = [], [], None
        self._last = self._strategy_ref = None
        self._payload = None

    def close(self) -> None:
        if ray.is_initialized():
            self._release()
        self._setup = None
        self._local.close()
        if self._started:
            self._started = False
            ray.shutdown()

    # ---- training -----------------------------------------------------------------------------
    def train(
        self,
        client_ids: torch.Tensor,
        start: torch.Tensor,
        round_,
        needs: frozenset[str] = frozenset(),
        correction: ClientCorrection | None = None,
        train: TrainConfig | None = None,
        stream: str = "train",
    ) -> ClientBatch:
        assert self._setup is not None, "setup() must run before train()"
        check_needs(self.name, needs)
        ids = [int(c) for c in client_ids.tolist()]
        K = len(ids)
        if K <= self.driver_max_clients or K == 0:
            batch = self._train_in_driver(client_ids, start, round_, needs, correction, train, stream)
            batch.stats = {"retries": 0.0}
            return batch
        rounds = client_rounds(round_, K)
        ids_t = torch.as_tensor(ids, dtype=torch.long)
        chunks = balanced_chunks(self._costs[ids_t].tolist(), len(self.actors))
        start = start.detach().cpu()
        shared = ray.put(start.contiguous().numpy()) if start.dim() == 1 else None  # once per round, for all
        tasks = []
        offsets = None if correction is None or correction.offsets is None else correction.offsets.detach().cpu()
        frozen = None if correction is None or correction.frozen is None else correction.frozen.detach().cpu().numpy()
        for slot, pos in enumerate(chunks):
            chunk_rounds = [rounds[p] for p in pos]
            tasks.append(
                _Task(
                    positions=pos,
                    ids=[ids[p] for p in pos],
                    rounds=chunk_rounds[0] if len(set(chunk_rounds)) == 1 else chunk_rounds,
                    start=shared if shared is not None else ray.put(start[torch.as_tensor(pos)].contiguous().numpy()),
                    prox=0.0 if correction is None else float(correction.prox),
                    offsets=None if offsets is None else ray.put(offsets[torch.as_tensor(pos)].contiguous().numpy()),
                    frozen=frozen,
                    train=train,
                    stream=stream,
                )
            )
            self._submit(tasks[-1], slot, needs)
        hook = type(self).after_submit
        if hook is not None:
            hook(self, round_)
        results, retries = self._collect(tasks, needs, round_)
        P = self._setup.layout.size
        params = torch.empty((K, P), dtype=start.dtype)
        losses = torch.empty(K, dtype=torch.float32)
        steps = torch.empty(K, dtype=torch.long)
        extras: dict[str, torch.Tensor] = {}
        for task, (chunk_params, chunk_losses, ex, chunk_steps, _) in zip(tasks, results, strict=True):
            rows = torch.as_tensor(task.positions, dtype=torch.long)
            params[rows] = shared_tensor(chunk_params)
            losses[rows] = shared_tensor(chunk_losses).to(torch.float32)
            steps[rows] = shared_tensor(chunk_steps).to(torch.long)
            for name, value in ex.items():
                value = shared_tensor(value)
                if name not in extras:
                    extras[name] = value.new_empty((K, *value.shape[1:]))
                extras[name][rows] = value
        stats = {"retries": float(retries)}
        self._last = (params, [t.ref for t in tasks], [t.positions for t in tasks], stats)
        return ClientBatch(
            client_ids=ids_t,
            params=params,
            num_samples=self._sizes[ids_t].clone(),
            train_loss=losses,
            extras=extras,
            stats=stats,
            num_steps=steps,
        )

    def _train_in_driver(
        self, client_ids, start, round_, needs, correction=None, train=None, stream="train"
    ) -> ClientBatch:
        if not self.noop_train:
            return self._local.train(client_ids, start, round_, needs, correction, train=train, stream=stream)
        K = len(client_ids)
        params = start.expand(K, -1).clone() if start.dim() == 1 else start.clone()
        return ClientBatch(
            client_ids=client_ids.clone(),
            params=params,
            num_samples=self._sizes[client_ids].clone(),
            train_loss=torch.full((K,), float("nan")),
        )

    def _submit(self, task: _Task, slot: int, needs: frozenset[str]) -> None:
        task.slot = slot
        task.ref = self.actors[slot].train.remote(
            task.ids, task.start, task.rounds, needs, task.prox, task.offsets, task.frozen, task.train, task.stream
        )

    def _collect(self, tasks: list[_Task], needs: frozenset[str], round_) -> tuple[list, int]:
        """Every task's result, re-running the chunks of actors that died on live ones."""
        try:
            return ray.get([t.ref for t in tasks]), 0
        except ACTOR_LOST:
            pass
        except ray.exceptions.RayTaskError as exc:
            _reraise(exc)
        retries, dead = 0, set()
        results: dict[int, Any] = {}
        pending = list(range(len(tasks)))
        while pending:
            i = pending.pop(0)
            task = tasks[i]
            try:
                results[i] = ray.get(task.ref)
                continue
            except ACTOR_LOST as exc:
                error = exc
            except ray.exceptions.RayTaskError as exc:
                _reraise(exc)
            dead.add(task.slot)
            retries += 1
            task.attempts += 1
            if task.attempts > self.max_retries:
                raise RunError(
                    f"round {round_}: {len(task.ids)} clients failed on {task.attempts} actors in turn "
                    f"(backend.max_retries={self.max_retries}); the last error: {_first_line(error)}"
                )
            live = [s for s in range(len(self.actors)) if s not in dead]
            if not live:  # every actor is gone: start a fresh one for this chunk
                slot = min(dead)
                self.actors[slot] = self._new_actor()
                dead.discard(slot)
                live = [slot]
            load = {s: sum(1 for j in pending if tasks[j].slot == s) for s in live}
            slot = min(live, key=lambda s: (load[s], s))
            log.warning(
                "ray backend: actor %d died in round %s (%s); re-running its %d client(s) on actor %d (retry %d of %d)",
                task.slot,
                round_,
                type(error).__name__,
                len(task.ids),
                slot,
                task.attempts,
                self.max_retries,
            )
            self._submit(task, slot, needs)
            pending.append(i)
        for slot in dead:  # replacements start in the background, ready for the next round
            self.actors[slot] = self._new_actor()
        return [results[i] for i in range(len(tasks))], retries

    # ---- aggregation --------------------------------------------------------------------------
    def aggregate(self, strategy, params: torch.Tensor, info, state):
        """``strategy.aggregate`` in the driver, or on the aggregator actor with ``aggregate_on=worker``."""
        if self.aggregator is None:
            return strategy.aggregate(params, info, state)
        if info.validate is not None:  # the validation split and the model stay in the driver
            if not self._told_driver_aggregation:
                log.info(
                    "ray backend: %s scores models on the validation split, so it aggregates in the driver",
                    strategy.name,
                )
                self._told_driver_aggregation = True
            return strategy.aggregate(params, info, state)
        if self._strategy_ref is None or self._strategy_ref[0] is not strategy:
            self._strategy_ref = (strategy, ray.put(strategy))
        last = self._last
        if last is not None and last[0] is params:  # the models are still where the actors left them
            positions, chunks, stats = last[2], last[1], last[3]
        else:
            positions, chunks, stats = None, [ray.put(params.detach().cpu().contiguous().numpy())], None
        light = replace(info, validate=None)
        for attempt in range(self.max_retries + 1):
            try:
                out, new_state, _ = ray.get(
                    self.aggregator.aggregate.remote(self._strategy_ref[1], light, state, positions, *chunks)
                )
                return out, new_state
            except ACTOR_LOST as exc:
                if attempt == self.max_retries:
                    raise RunError(
                        f"round {info.round}: the aggregator actor failed {attempt + 1} times "
                        f"(backend.max_retries={self.max_retries}): {_first_line(exc)}"
                    ) from None
                log.warning(
                    "ray backend: the aggregator died in round %d (%s); restarting it (retry %d of %d)",
                    info.round,
                    type(exc).__name__,
                    attempt + 1,
                    self.max_retries,
                )
                if stats is not None:
                    stats["retries"] += 1
                self.aggregator = self._new_aggregator()
            except ray.exceptions.RayTaskError as exc:
                _reraise(exc)

    def _aggregator_gpus(self, resources: dict) -> float:
        """The aggregator's GPU share: as configured, else a slice of a GPU where the cluster has one."""
        if self.aggregator_num_gpus is not None:
            return self.aggregator_num_gpus
        return DEFAULT_AGGREGATOR_GPUS if resources.get("GPU", 0) > 0 and self.device != "cpu" else 0.0

    def _new_aggregator(self):
        # it reserves no CPU, so it takes one thread unless backend.num_threads says otherwise
        return AggregatorActor.options(num_cpus=0, num_gpus=self._agg_gpus).remote(self.num_threads or 1, self.device)


def _first_line(exc: BaseException) -> str:
    """The line of Ray's (often multi-line, traceback-laden) message that names the error itself."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit): ", line)]
    return (named or lines or [type(exc).__name__])[-1 if named else 0]


def _reraise(exc: ray.exceptions.RayTaskError):
    """An error of the project's own kind raised inside an actor reaches the user as it is (no traceback)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, GossipsoupError):
        raise cause from None
    raise exc
