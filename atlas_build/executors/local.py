"""Run shards one after another in this process, with one engine."""

from __future__ import annotations

from atlas_build.executors.base import Executor


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, **options):
        if options:
            raise ValueError(f"the local executor takes no options, got {sorted(options)}")

    def run(self, tasks, worker_factory, progress):
        worker = worker_factory()
        written = []
        for task in tasks:
            written.append(worker(task))
            progress(task)
        return written
