"""The ground floor: the atlas schema, its on-disk layout, the writer and the manifest.

Nothing here imports engines, corpora or models.
"""
