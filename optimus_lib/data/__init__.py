"""Dataset schema, JSONL I/O and bundled sources (poisoning lives in optimus_lib.threats)."""

from optimus_lib.data.io import read_jsonl, read_samples, write_jsonl
from optimus_lib.data.schema import Sample, parse_record

__all__ = ["Sample", "parse_record", "read_jsonl", "read_samples", "write_jsonl"]
