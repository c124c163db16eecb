"""Dataset schema, JSONL I/O, bundled sources and poisoning builders."""

from optimus.data.io import read_jsonl, read_samples, write_jsonl
from optimus.data.schema import Sample, parse_record

__all__ = ["Sample", "parse_record", "read_jsonl", "read_samples", "write_jsonl"]
