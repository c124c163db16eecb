"""Optimus: fine-tune a chat model on untrusted dialog data without learning its toxicity.

The pipeline (scan -> heal -> train -> evaluate -> report) lives in one sub-package per
stage; ``data``, ``models`` and ``config`` sit below the stages and import nothing from them.
"""

__version__ = "0.1.0"
