"""A RayTaskRunner with prefect-ray's per-task submission costs cut.

Measured here (2-core VM, no-op task, 100 tasks, `benchmarks/pipeline.py`): the
stock ``prefect_ray.RayTaskRunner`` spends ~55 ms in the *driver* per submitted
task, almost all of it in ``prefect.context.serialize_context()`` — the Prefect
settings and the flow-run context are dumped to dicts (walking every setting
for secrets) for every task although they are the same for every task of a flow
run — plus ~9 ms creating and exporting a new Ray remote function per task
(``ray.remote(...)`` is applied to the same function at each submit).

:class:`SubTileRayTaskRunner` keeps prefect-ray's behaviour and wire format
(the same remote entry point, parameters, context keys and futures) but

* serialises the flow-run part of the context once per flow run and per tag
  set, adding only the per-task asset context at each submit;
* builds one Ray remote function per distinct set of ``remote_options`` and
  reuses it.

In the *worker*, a task cost ~100 ms more: each task built a new Prefect API
client (two SSL contexts) and re-validated the whole Prefect settings model
dozens of times from the serialised settings context. The worker entry point
here keeps one client per worker process (a process-wide ``SyncClientContext``)
and the driver does not send the settings context: workers use their own
Prefect settings, from their environment — :func:`flows.common.ray_session`
puts ``PREFECT_API_URL`` (and logging settings) there for every worker. Measured
in-process on a no-op task: 102 ms -> 3.9 ms per task.

End to end (``benchmarks/pipeline.py``, no-op tasks after a warm-up, docs/deploy.md
section 4): a Prefect task costs 79-97 ms through the stock ``RayTaskRunner`` and
11-13 ms through this one.

Kept, on those figures, although it is hand-written around a library (issue 19). It
depends on private parts of prefect-ray — ``RayTaskRunner._run_prefect_task`` (called
with the keywords ``task``, ``task_run_id``, ``context``, ``parameters``, ``wait_for``,
``dependencies``), ``RayTaskRunner._exchange_prefect_for_ray_futures``, the
attributes ``_started``, ``address`` and ``init_kwargs``, the signature of ``submit``,
``PrefectRayFuture(task_run_id, wrapped_future)``,
``RemoteOptionsContext.current_remote_options`` — and of Prefect
(``serialize_context``, ``AssetContext.from_task_and_inputs``,
``collect_task_run_inputs_sync(future_cls=...)``). ``pyproject.toml`` pins prefect-ray
to ``>=0.6,<0.7``, where they were checked (0.6.0, with Prefect 3.9.1), and
``tests/flows/test_runner.py`` fails when an upgrade removes or reshapes one of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import uuid4

import ray
from prefect.context import (
    AssetContext,
    EngineContext,
    TagsContext,
    TaskRunContext,
    serialize_context,
)
from prefect.futures import PrefectFuture
from prefect.utilities.engine import collect_task_run_inputs_sync
from prefect_ray.context import RemoteOptionsContext
from prefect_ray.task_runners import PrefectRayFuture, RayTaskRunner

__all__ = ["SubTileRayTaskRunner", "run_in_worker"]

_WORKER_CLIENT: dict[str, Any] = {}
#: Ray remote functions by remote options, shared by every runner of this process: a
#: new one would be pickled and exported to the workers again for each sub-flow run.
_REMOTE_FUNCTIONS: dict[Any, Any] = {}


def _worker_client_context() -> None:
    """Enter one Prefect ``SyncClientContext`` per worker process and API URL, for good."""
    from prefect.context import SyncClientContext
    from prefect.settings import PREFECT_API_URL

    url = str(PREFECT_API_URL.value())
    if _WORKER_CLIENT.get("url") == url and SyncClientContext.get() is not None:
        return
    ctx = SyncClientContext.get_or_create()
    ctx.__enter__()  # left open: reused by every task this worker runs
    _WORKER_CLIENT.update(url=url, ctx=ctx)


def run_in_worker(*upstream: Any, **kwargs: Any) -> Any:
    """The Ray entry point: prefect-ray's task runner body under a reused API client."""
    _worker_client_context()
    return RayTaskRunner._run_prefect_task(*upstream, **kwargs)


class SubTileRayTaskRunner(RayTaskRunner):  # type: ignore[misc]
    """``RayTaskRunner`` with cached context serialisation and remote functions."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._context_cache: dict[Any, dict[str, Any]] = {}

    def duplicate(self) -> SubTileRayTaskRunner:
        return type(self)(address=self.address, init_kwargs=self.init_kwargs)

    def _base_context(self) -> dict[str, Any]:
        """The context minus the per-task asset part, serialised once per flow run/tags."""
        engine = EngineContext.get()
        parent = TaskRunContext.get()
        tags = TagsContext.get()
        key = (
            id(engine) if engine else None,
            getattr(getattr(engine, "flow_run", None), "id", None),
            id(parent) if parent else None,
            tuple(sorted(tags.current_tags)) if tags else (),
        )
        cached = self._context_cache.get(key)
        if cached is None:
            if len(self._context_cache) > 32:
                self._context_cache.clear()
            cached = serialize_context()
            cached["settings_context"] = {}  # workers use their own settings (module doc)
            self._context_cache[key] = cached
        return cached

    def _remote(self, options: dict[str, Any] | None) -> Any:
        key = tuple(sorted((options or {}).items()))
        fn = _REMOTE_FUNCTIONS.get(key)
        if fn is None:
            fn = ray.remote(**options)(run_in_worker) if options else ray.remote(run_in_worker)
            _REMOTE_FUNCTIONS[key] = fn
        return fn

    def submit(
        self,
        task: Any,
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
        dependencies: dict[str, set[Any]] | None = None,
    ) -> PrefectRayFuture[Any]:
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        task_run_id = uuid4()
        task_inputs = {
            k: collect_task_run_inputs_sync(v, future_cls=PrefectRayFuture)
            for k, v in parameters.items()
        }
        context = dict(self._base_context())
        context["asset_context"] = AssetContext.from_task_and_inputs(
            task=task, task_run_id=task_run_id, task_inputs=task_inputs, copy_to_child_ctx=True
        ).serialize()
        parameters, upstream = self._exchange_prefect_for_ray_futures(parameters)
        options = RemoteOptionsContext.get().current_remote_options
        object_ref = (
            self._remote(options)
            .options(name=task.name)
            .remote(
                *upstream,
                task=task,
                task_run_id=task_run_id,
                parameters=parameters,
                wait_for=wait_for,
                dependencies=dependencies,
                context=context,
            )
        )
        return PrefectRayFuture(task_run_id=task_run_id, wrapped_future=object_ref)
