"""`atlas audit`: re-route a sample of an atlas's texts through its model and compare with the stored routing.

A room of its own (floor 4): it loads the model through `engines/` and reads the atlas through `atlas/`.
`reroute.py` samples, re-routes and compares.
"""
