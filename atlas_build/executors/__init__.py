"""Executors: where routing shards run (this process, or a Ray cluster)."""

from atlas_build.registry import Registry

EXECUTORS = Registry("executor", {"local": "atlas_build.executors.local:LocalExecutor"})
