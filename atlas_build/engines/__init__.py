"""Engines: an engine turns texts into routing arrays (see `engines.base.Engine`)."""

from atlas_build.registry import Registry

ENGINES = Registry("engine", {"hf": "atlas_build.engines.hf:HFEngine"})
