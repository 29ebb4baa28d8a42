"""Executors: where routing shards run (this process, or a Ray cluster)."""

from atlas_build.registry import Registry

EXECUTORS = Registry(
    "executor",
    {
        "local": "atlas_build.executors.local:LocalExecutor",
        # Imports ray only when constructed; a missing ray says how to install it.
        "ray": "atlas_build.executors.ray:RayExecutor",
    },
)
