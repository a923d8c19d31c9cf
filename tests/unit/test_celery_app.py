"""Queue routing and the reliability settings of the Celery app (DESIGN.md, decision 5)."""

from __future__ import annotations

from core.jobs import DISTILL, INSPECT_MODEL, MAX_GPUS, make_celery


def test_each_queue_has_its_own_exchange_and_key() -> None:
    queues = {q.name: q for q in make_celery().conf.task_queues}
    assert set(queues) == {"gpu", "cpu", *(f"gpu-{n}" for n in range(2, MAX_GPUS + 1))}
    for name, queue in queues.items():
        assert queue.exchange.name == name and queue.routing_key == name


def test_routing_and_reliability_settings() -> None:
    conf = make_celery().conf
    assert conf.task_routes[INSPECT_MODEL]["queue"] == "cpu"
    assert DISTILL not in conf.task_routes  # the API picks cpu, gpu or gpu-N per run
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] >= 24 * 3600
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]


def test_tasks_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, worker.tasks; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "the worker's parent process must not import torch"
