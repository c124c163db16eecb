"""Model specs (bundled name, local path, pinned hub id) and inference engines.

Nothing is imported here eagerly: engines import torch, and the light image must not.
"""
