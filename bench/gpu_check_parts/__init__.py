"""The parts of `bench/gpu_check.py`, by role (the script is their one entry point)."""
