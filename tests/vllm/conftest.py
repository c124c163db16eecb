"""vLLM tests: they run only where vLLM imports (``make test-vllm`` builds .venv-vllm).

Every test here is marked ``vllm``; in the main venv (no vLLM) they are skipped, so the
normal suite collects them without cost. The device settings come from the environment,
as in a task: set here only when the caller did not (eager mode, since compile mode
spends minutes compiling at each start on a CPU; a 1 GiB KV cache for the 135M model).
"""

from __future__ import annotations

import os

import pytest

from optimus_lib.models.engine import vllm_installed

HAVE_VLLM = vllm_installed()
if HAVE_VLLM:
    os.environ.setdefault("OPTIMUS_VLLM_ARGS", '{"enforce_eager": true}')
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    skip = pytest.mark.skip(reason="needs vLLM: make test-vllm")
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.vllm)
            if not HAVE_VLLM:
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _close_vllm():
    """Shut the shared vLLM engine down at the end (its worker processes)."""
    yield
    if HAVE_VLLM:
        from optimus_lib.models.vllm_engine import VLLMEngine

        VLLMEngine.close_shared()
