"""Shared fixtures: a tiny random Llama with the bundled model's real tokenizer.

Unit tests never load the real 135M model: they use a 2-layer, 32-wide random model
that loads in milliseconds but shares the real tokenizer and chat template, so prompt
building, padding, yes/no token lookup and training all run on the real code paths.
Only tests marked ``slow`` touch the real weights.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# One conversion cache for the whole repo (setup.sh uses the same folder), so CI converts
# the bundled GGUF once; offline switches keep transformers from trying the hub.
os.environ.setdefault("OPTIMUS_CACHE", str(ROOT / ".cache" / "optimus"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# The tiny models' ops take microseconds, so OpenMP thread hand-offs dominate; on a
# busy 2-core machine two threads made training steps ~4x slower than one.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def bundled_dir() -> Path:
    """The converted bundled model (converted once per cache; ~25 s the first time)."""
    from optimus_lib.models.specs import convert_bundled

    return convert_bundled()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, bundled_dir) -> Path:
    """A random 2-layer Llama saved as safetensors next to the real tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(bundled_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    assert (out / "model.safetensors").is_file()
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from optimus_lib.models.specs import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir, tiny_tokenizer):
    from optimus_lib.models.engine import TransformersEngine
    from optimus_lib.models.specs import load_model

    model = load_model(str(tiny_model_dir), device="cpu")
    return TransformersEngine(model, tiny_tokenizer, batch_size=8)


def pytest_configure(config):
    # Training on CPU: the DataLoader's pin_memory notice is noise, not a finding.
    config.addinivalue_line("filterwarnings", "ignore:.*pin_memory.*:UserWarning")
