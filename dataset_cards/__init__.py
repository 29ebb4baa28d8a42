"""Dataset card template and renderer: reads the manifest and the atlas, never the models."""
