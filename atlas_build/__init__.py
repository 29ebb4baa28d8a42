"""routing-atlas: build, validate and publish datasets of how Mixture-of-Experts models route tokens."""

__version__ = "0.1.0"
