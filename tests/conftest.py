"""Test set-up: Triton kernels run under the interpreter on machines without a CUDA GPU.

``TRITON_INTERPRET`` must be set before anything imports triton, hence here, first.
"""

import os
import shutil

if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from vllm_padrec import envs  # noqa: E402


def pytest_configure(config):
    # show the reason of every skipped test (GPU tests on CPU machines) in the summary
    if "s" not in config.option.reportchars:
        config.option.reportchars += "s"
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU")


GPU_REASON = "needs a CUDA GPU (runs on the H200 device machine)"
requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason=GPU_REASON)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tests run tiny models: a second thread gains nothing and loses a lot on a shared 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def keep_torch_threads():
    """For tests of the CLI, which pins torch's threads to the allowed cores: the rest of the suite runs on one."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_dir() -> str:
    path = envs.data_dir()
    if not os.path.isdir(path):
        pytest.skip(f"shared datasets not found at {path} (set PADREC_DATA_DIR)")
    return path


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
