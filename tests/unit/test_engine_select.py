"""Engine selection: transformers by default on CPU; asking for vLLM without it is an error."""

from __future__ import annotations

import pytest

from optimus_lib.errors import OptimusError
from optimus_lib.models.engine import TransformersEngine, build_engine, vllm_available


@pytest.mark.skipif(vllm_available(), reason="vllm with a GPU is here: auto picks it")
def test_auto_picks_transformers_without_vllm(tiny_model_dir):
    eng = build_engine(str(tiny_model_dir), "auto", "cpu")
    assert isinstance(eng, TransformersEngine)


@pytest.mark.skipif(vllm_available(), reason="vllm is available here")
def test_vllm_without_vllm_is_one_line_error(tiny_model_dir):
    with pytest.raises(OptimusError, match="vllm"):
        build_engine(str(tiny_model_dir), "vllm", "cpu")


def test_unknown_engine(tiny_model_dir):
    with pytest.raises(OptimusError, match="engine must be"):
        build_engine(str(tiny_model_dir), "tensorrt", "cpu")
