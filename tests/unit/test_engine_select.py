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


def test_dtype_setting_reaches_the_transformers_model(tiny_model_dir):
    import torch

    eng = build_engine(str(tiny_model_dir), "transformers", "cpu", dtype="bfloat16")
    assert next(eng.model.parameters()).dtype == torch.bfloat16
    eng = build_engine(str(tiny_model_dir), "transformers", "cpu")  # auto on a CPU
    assert next(eng.model.parameters()).dtype == torch.float32
    with pytest.raises(OptimusError, match="dtype must be"):
        build_engine(str(tiny_model_dir), "transformers", "cpu", dtype="fp8")


def test_vllm_args_come_from_the_environment(monkeypatch):
    from optimus_lib.models.vllm_engine import DEFAULT_ARGS, engine_args

    monkeypatch.delenv("OPTIMUS_VLLM_ARGS", raising=False)
    assert engine_args("bfloat16") == {**DEFAULT_ARGS, "dtype": "bfloat16"}
    monkeypatch.setenv("OPTIMUS_VLLM_ARGS", '{"enforce_eager": true, "max_model_len": 1024}')
    args = engine_args()
    assert args["enforce_eager"] is True and args["max_model_len"] == 1024
    assert args["dtype"] == "auto" and args["enable_prefix_caching"] is True
    monkeypatch.setenv("OPTIMUS_VLLM_ARGS", "[1, 2]")
    with pytest.raises(OptimusError, match="JSON object"):
        engine_args()
    monkeypatch.setenv("OPTIMUS_VLLM_ARGS", "{enforce_eager: 1")
    with pytest.raises(OptimusError, match="not JSON"):
        engine_args()


@pytest.mark.skipif(vllm_available(), reason="vllm is available here")
def test_stage_settings_take_engine_and_dtype(tmp_path):
    from optimus_lib.stages.classify import ClassifySettings
    from optimus_lib.stages.evaluate import EvaluateSettings, _engine
    from optimus_lib.stages.heal import HealSettings

    for cls in (ClassifySettings, HealSettings, EvaluateSettings):
        s = cls(engine="vllm", dtype="bfloat16")
        assert (s.engine, s.dtype) == ("vllm", "bfloat16")
        with pytest.raises(ValueError):
            cls(dtype="fp8")
    with pytest.raises(OptimusError, match="vllm"):
        _engine(EvaluateSettings(engine="vllm"), None, tmp_path)
