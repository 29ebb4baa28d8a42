"""`atlas intervene`: causal tests of the atlas's routing findings (floor 4, beside audit).

`plan.py` (the pre-registered plan, its hash, `atlas intervene plan`), `examples.py` (what is read from the
atlas), `run.py` (the model with intervention hooks, batched conditions, load-matched baseline draws),
`outcomes.py` (per-text changes, cluster bootstrap, p-value, verdict), `session.py` (checks, run, record).
"""
