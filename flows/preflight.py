"""Preflight: can this run's sub-tile tasks ever run? Checked before any is dispatched.

Two checks, within seconds on a local Ray:

1. **Resources.** A sub-tile task asks for ``runtime.ray.num_gpus_per_task`` GPUs and
   ``num_cpus_per_task`` CPUs. Ray would queue a task that no node can ever hold
   forever (printing autoscaler warnings), so the request is compared with every
   node of the cluster and, on a cluster started by Ray's cluster launcher, with the
   node types the autoscaler may add (read from ``~/ray_bootstrap_config.yaml`` on
   the head node). A local Ray has only its own node.
2. **Backend.** One probe task, with the same resources and worker reuse as the
   sub-tile tasks, builds the backend on a worker (importing SHINE and JAX there,
   and what a sub-tile task imports besides) — the worker then stays warm for the
   first sub-tiles. The other task slots of the cluster get the same probe, not
   waited for, so that their workers warm up at the same time instead of at their
   first sub-tile. It also reports where JAX computes, so that GPU tasks silently
   running on the CPU are pointed out. With ``runtime.executor: local`` the backend
   is built in the flow's own process instead.

Each problem comes with the setting that fixes it; :class:`PreflightError` carries
them all, its message is the first.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from constellation.config import Settings

__all__ = [
    "PreflightError",
    "Problem",
    "local_problems",
    "preflight",
    "report_probe",
    "resource_shortfall",
]

log = logging.getLogger(__name__)

#: Where Ray's cluster launcher leaves the cluster configuration on the head node.
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"


@dataclass(frozen=True)
class Problem:
    """Why sub-tile tasks cannot run, and what fixes it."""

    cause: str
    fix: str

    def line(self) -> str:
        return f"{self.cause}. Fix: {self.fix}"


class PreflightError(RuntimeError):
    """The run cannot start; ``problems`` lists why (the message is the first, with
    the count of the others)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        more = f" (and {len(self.problems) - 1} more problem(s))" if len(self.problems) > 1 else ""
        super().__init__(f"preflight: {self.problems[0].line()}{more}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))

    def lines(self) -> list[str]:
        """One line per problem."""
        return [f"preflight: {p.line()}" for p in self.problems]


def _fmt(value: float) -> str:
    return f"{value:g}"


def resource_shortfall(
    request: Mapping[str, float],
    nodes: Sequence[Mapping[str, float]],
    node_types: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, float] | None:
    """``None`` when some node — one of ``nodes``, or a node of one of the autoscaler's
    ``node_types`` — offers every resource of ``request``; else, per requested
    resource, the most any single node or node type offers."""
    wanted = {k: float(v) for k, v in request.items() if v > 0}
    if not wanted:
        return None
    offers = [*nodes, *(node_types or {}).values()]
    for offer in offers:
        if all(float(offer.get(k, 0.0)) >= v for k, v in wanted.items()):
            return None
    return {k: max((float(o.get(k, 0.0)) for o in offers), default=0.0) for k in wanted}


def _resource_problem(settings: Settings, request: dict[str, float], best: dict[str, float],
                      local: bool) -> Problem:  # fmt: skip
    ray_cfg = settings.runtime.ray
    where = "this machine's local Ray" if local else "no node of the Ray cluster (or node type)"
    if request.get("GPU", 0) > best.get("GPU", 0):
        has = f"has {_fmt(best.get('GPU', 0))} GPU(s)"
        cause = (
            f"each sub-tile task asks for {_fmt(request['GPU'])} GPU(s) "
            f"(runtime.ray.num_gpus_per_task) but {where} {has}"
        )
        fix = (
            "run on CPUs with runtime.ray.num_gpus_per_task: 0 "
            "(CONSTELLATION_RUNTIME__RAY__NUM_GPUS_PER_TASK=0)"
        )
        if local:
            fix += ", or advertise fake GPUs with runtime.ray.local_num_gpus: N (tests, demos)"
        else:
            fix += ", or add a GPU node type to the cluster (ray_cluster.yaml)"
        return Problem(cause, fix)
    cause = (
        f"each sub-tile task asks for {_fmt(request.get('CPU', 0))} CPU(s) "
        f"(runtime.ray.num_cpus_per_task) but {where} has at most {_fmt(best.get('CPU', 0))}"
    )
    fix = f"set runtime.ray.num_cpus_per_task to at most {_fmt(best.get('CPU', 0))}"
    if local and ray_cfg.local_num_cpus is not None:
        fix += " or raise runtime.ray.local_num_cpus"
    return Problem(cause, fix)


def _slots(request: Mapping[str, float], nodes: Sequence[Mapping[str, float]]) -> int:
    """How many tasks of ``request`` the ``nodes`` hold at once."""
    total = 0
    for node in nodes:
        fits = [float(node.get(k, 0.0)) / v for k, v in request.items() if v > 0]
        total += int(min(fits)) if fits else 0
    return total


def _task_request(settings: Settings) -> dict[str, float]:
    ray_cfg = settings.runtime.ray
    return {"GPU": ray_cfg.num_gpus_per_task, "CPU": ray_cfg.num_cpus_per_task}


def _read_node_types() -> dict[str, dict[str, float]] | None:
    """The autoscaler's node types and their resources, from the launcher's config
    (run on the head node); ``None`` when there is none."""
    import yaml

    path = os.path.expanduser(BOOTSTRAP_CONFIG)
    try:
        with open(path) as fh:
            doc = yaml.safe_load(fh) or {}
    except OSError:
        return None
    types = doc.get("available_node_types") or {}
    return {
        str(name): {str(k): float(v) for k, v in (spec.get("resources") or {}).items()}
        for name, spec in types.items()
        if int(spec.get("max_workers", 1) or 0) > 0
    }


def _alive_nodes() -> list[dict[str, Any]]:
    import ray

    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return [n for n in nodes if n.get("Alive")]


def autoscaler_node_types(timeout_s: float = 30.0) -> dict[str, dict[str, float]] | None:
    """Node types the cluster's autoscaler may start (``None``: unknown, no launcher config)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head = next(
        (n for n in _alive_nodes() if "node:__internal_head__" in n["Resources"]),
        None,
    )
    if head is None:
        return None
    reader = ray.remote(num_cpus=0)(_read_node_types).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=head["NodeID"], soft=False)
    )
    try:
        result: dict[str, dict[str, float]] | None = ray.get(reader.remote(), timeout=timeout_s)
    except Exception as exc:  # unknown rather than wrong: the probe's timeout still applies
        log.debug("could not read the autoscaler's node types: %s", exc)
        return None
    return result


def probe_backend(payload: str) -> dict[str, Any]:
    """Run in a worker: build the backend as a sub-tile task would (then kept warm)."""
    import platform

    from constellation.inference import BackendUnavailableError, get_backend
    from flows.common import settings_from_json

    settings = settings_from_json(payload)
    t0 = time.perf_counter()
    try:
        backend = get_backend(settings)
    except BackendUnavailableError as exc:
        return {"ok": False, "error": str(exc), "host": platform.node()}
    # what a worker's first sub-tile task imports besides the backend (~4 s on 2 cores)
    import prefect.task_engine  # noqa: F401

    import flows.infer  # noqa: F401

    return {
        "ok": True,
        "backend": backend.name,
        "version": backend.version,
        "device": getattr(backend, "device", None),
        "seconds": time.perf_counter() - t0,
        "host": platform.node(),
    }


def _detected_gpus() -> float:
    """The GPUs Ray would find on this machine (infinite when that cannot be known)."""
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource

        manager = get_accelerator_manager_for_resource("GPU")
        if manager is None:
            return math.inf
        return float(manager.get_current_node_num_accelerators())
    except Exception as exc:  # a private API: unknown rather than wrong
        log.debug("could not count the GPUs: %s", exc)
        return math.inf


def local_problems(settings: Settings) -> list[Problem]:
    """What stops a run on a local Ray (``runtime.ray.address: null``) before Ray or
    Prefect start: a task's request against this machine (``local_num_gpus`` /
    ``local_num_cpus``, else what Ray would detect). When the request cannot be met,
    the backend is built here too (the run stops anyway; on the local machine the
    workers would share this environment), so that every problem is told at once.
    Empty for a cluster or the local executor: the preflight on Ray checks those."""
    ray_cfg = settings.runtime.ray
    if settings.runtime.executor != "ray" or ray_cfg.address is not None:
        return []
    gpus = float(ray_cfg.local_num_gpus) if ray_cfg.local_num_gpus is not None else None
    node = {
        "GPU": _detected_gpus() if gpus is None else gpus,
        "CPU": float(ray_cfg.local_num_cpus or os.cpu_count() or 1),
    }
    request = _task_request(settings)
    best = resource_shortfall(request, [node])
    if best is None:
        return []
    problems = [_resource_problem(settings, request, best, local=True)]
    from constellation.inference import BackendUnavailableError, get_backend

    try:
        get_backend(settings)
    except BackendUnavailableError as exc:
        problems.append(_backend_problem(settings, {"error": str(exc)}, "on the Ray workers"))
    return problems


def _backend_problem(settings: Settings, found: Mapping[str, Any], where: str) -> Problem:
    return Problem(
        f"the {settings.science.backend.name!r} backend cannot be built {where}: "
        f"{found.get('error')}",
        "install it where the sub-tiles run (docs/shine.md), or run the mock backend "
        "with science.backend.name: mock (CONSTELLATION_SCIENCE__BACKEND__NAME=mock)",
    )


def report_probe(found: Mapping[str, Any], settings: Settings) -> None:
    """The preflight's progress line: which backend builds where, and on what it computes."""
    from flows.common import progress

    where = "in this process" if settings.runtime.executor == "local" else "on the Ray workers"
    progress(
        f"preflight: the {found.get('backend')} backend {found.get('version')} builds {where} "
        f"(computes on: {found.get('device') or '-'})"
    )


def _get(ref: Any, timeout_s: float) -> Any:
    """``ray.get`` with a timeout, waiting in short slices so that SIGINT / SIGTERM stop
    it (see :func:`flows.common.deferred_stop_signals`); ``TimeoutError`` on timeout."""
    import ray

    from flows.common import deferred_stop_signals

    deadline = time.monotonic() + timeout_s
    with deferred_stop_signals() as check:
        while True:
            check()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no result within {timeout_s:g} s")
            ready, _ = ray.wait([ref], timeout=min(0.5, left))
            if ready:
                return ray.get(ref)


def preflight(settings: Settings, payload: str) -> dict[str, Any]:
    """Check that the sub-tile tasks of ``settings`` can run on the connected Ray (or,
    for ``runtime.executor: local``, that the backend builds in this process).

    Returns what the probe found (backend, version, device, seconds). Raises
    :class:`PreflightError` listing every problem found.
    """
    t0 = time.perf_counter()
    if settings.runtime.executor == "local":
        here = probe_backend(payload)
        if not here.get("ok"):
            raise PreflightError([_backend_problem(settings, here, "in this process")])
        here["preflight_s"] = time.perf_counter() - t0
        return here
    import ray

    ray_cfg = settings.runtime.ray
    local = ray_cfg.address is None
    request = _task_request(settings)
    nodes = [{str(k): float(v) for k, v in n["Resources"].items()} for n in _alive_nodes()]
    node_types = None if local else autoscaler_node_types()
    problems: list[Problem] = []
    best = resource_shortfall(request, nodes, node_types)
    options: dict[str, Any] = {"num_gpus": request["GPU"], "num_cpus": request["CPU"]}
    if best is not None:
        problems.append(_resource_problem(settings, request, best, local))
        # still check the backend, on whatever a node can offer
        options = {"num_gpus": 0, "num_cpus": min(request["CPU"], max(best.get("CPU", 0), 0))}
    probe = ray.remote(max_calls=0)(probe_backend).options(name="preflight", **options)
    ref = probe.remote(payload)
    if best is None:
        # the other task slots' workers build the backend too, now, instead of at their
        # first sub-tile; not waited for (a slow node must not hold the verdict back)
        for _ in range(min(_slots(request, nodes), settings.runtime.max_in_flight) - 1):
            probe.remote(payload)
    found: dict[str, Any] = {}
    try:
        found = _get(ref, ray_cfg.preflight_timeout_s)
    except TimeoutError:
        ray.cancel(ref, force=True)
        problems.append(
            Problem(
                f"no Ray worker took the preflight task within {ray_cfg.preflight_timeout_s:g} s "
                f"(it asks for {options})",
                "check the cluster's nodes and autoscaler (ray status), or raise "
                "runtime.ray.preflight_timeout_s for slow node start-ups",
            )
        )
    except Exception as exc:  # the worker died (e.g. out of memory while importing)
        problems.append(
            Problem(
                f"the preflight task failed on a worker: {type(exc).__name__}: {exc}",
                "see the Ray worker logs (ray logs)",
            )
        )
    if found and not found.get("ok"):
        problems.append(_backend_problem(settings, found, "on the Ray workers"))
    if problems:
        raise PreflightError(problems)
    if request["GPU"] > 0 and found.get("device") == "cpu":
        log.warning(
            "the %s backend computes on the CPU although each task holds %s GPU(s): fake "
            "GPUs (runtime.ray.local_num_gpus), or a CPU-only JAX on the workers "
            "(install jax[cuda12], docs/shine.md)",
            found.get("backend"),
            _fmt(request["GPU"]),
        )
    found["preflight_s"] = time.perf_counter() - t0
    return found
