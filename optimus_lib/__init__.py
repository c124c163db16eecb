"""Optimus: fine-tune a chat model on untrusted dialog data without learning its toxicity.

The algorithm library behind the KFP components. ``stages`` holds one function per
pipeline stage (the only implementation of each); below it, imports point down only:
``threats`` -> ``detect``, ``heal``, ``train``, ``evaluate``, ``report`` -> ``models`` ->
``data`` -> ``settings``/``errors``. Nothing here imports kfp.
"""

__version__ = "0.1.0"
