"""Executors run routing shards. A shard is idempotent: same inputs, same file, written atomically.

An executor gets the shard tasks that are not done yet and a picklable `ShardWorker` recipe; it returns
the written files. The local executor runs them in this process; the Ray executor spreads them over a
cluster, each worker building its own engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from atlas_build.atlas.writer import WrittenFile


@dataclass(frozen=True)
class ShardTask:
    """One shard of a routing config: `items` are `atlas.texts.TextItem`s, in their fixed order."""

    config: str
    index: int
    items: tuple
    inputs_sha256: str
    # Which corpus's shards within the config ("" for WordNet, "traces"): their files never collide.
    part: str = ""

    @property
    def n_texts(self) -> int:
        return len(self.items)


class Executor(ABC):
    name: str

    @abstractmethod
    def run(
        self,
        tasks: list[ShardTask],
        worker_factory: Callable[[], Callable[[ShardTask], WrittenFile]],
        progress,
    ) -> list[WrittenFile]:
        """Run every task with workers made by `worker_factory`; call `progress(task)` as each finishes.

        Returns the written files in task order. A task that fails after the executor's retries raises.
        """
