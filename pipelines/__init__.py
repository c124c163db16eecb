"""KFP pipelines that link the Optimus components; each compiled YAML is committed beside
its module (``defense.py`` -> ``defense.yaml``). Recompile with ``make compile``."""
