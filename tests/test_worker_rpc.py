"""The plugin's methods on vLLM's worker (``integration/worker_rpc.py``): what they report and switch, and that
vLLM 0.26.0's own extension hook takes the class."""

from types import SimpleNamespace

import pytest

from vllm_padrec.integration.decode_loop_graph import DecodeLoopGraphs
from vllm_padrec.integration.worker_rpc import WORKER_RPC, PadRecWorkerRpc


def worker_with(loop_graphs) -> PadRecWorkerRpc:
    worker = PadRecWorkerRpc()
    worker.model_runner = SimpleNamespace(speculator=SimpleNamespace(_loop_graphs=loop_graphs))
    return worker


def test_the_loop_graph_switch_reports_and_switches_the_engines_graphs():
    graphs = DecodeLoopGraphs({("desc", 4): object(), ("desc", 2): object()})
    worker = worker_with(graphs)
    assert worker.padrec_decode_loop_graph() == {"graphs": 2, "replays": 0, "enabled": True}
    graphs.replays = 7
    assert worker.padrec_decode_loop_graph(False) == {"graphs": 2, "replays": 7, "enabled": False}
    assert graphs.enabled is False
    assert worker.padrec_decode_loop_graph() == {"graphs": 2, "replays": 7, "enabled": False}  # a query keeps it
    assert worker.padrec_decode_loop_graph(True)["enabled"] and graphs.enabled is True


@pytest.mark.parametrize(
    "model_runner",
    [
        SimpleNamespace(speculator=SimpleNamespace(_loop_graphs=None)),  # the setting off, or capture declined
        SimpleNamespace(speculator=None),  # an engine without a draft
        SimpleNamespace(),
    ],
)
def test_without_loop_graphs_it_answers_none(model_runner):
    worker = PadRecWorkerRpc()
    worker.model_runner = model_runner
    assert worker.padrec_decode_loop_graph() is None
    assert worker.padrec_decode_loop_graph(True) is None


@pytest.mark.parametrize("bad", ["yes", "", 1, 0.0])
def test_a_switch_that_is_not_a_boolean_is_refused_and_changes_nothing(bad):
    graphs = DecodeLoopGraphs({})
    with pytest.raises(TypeError, match='enabled must be a bool, "true", "false" or None'):
        worker_with(graphs).padrec_decode_loop_graph(bad)
    assert graphs.enabled is True


def test_the_switch_takes_the_strings_vllms_development_endpoint_sends():
    """POST /collective_rpc (VLLM_SERVER_DEV_MODE) passes every argument as a string."""
    graphs = DecodeLoopGraphs({("desc", 4): object()})
    worker = worker_with(graphs)
    assert worker.padrec_decode_loop_graph("false")["enabled"] is False and graphs.enabled is False
    assert worker.padrec_decode_loop_graph("True")["enabled"] is True and graphs.enabled is True


def test_vllms_worker_extension_hook_takes_the_class():
    """vLLM resolves the qualified name and refuses an extension whose names its worker already has
    (vllm/v1/worker/worker_base.py:261-275): the name resolves to the class and no method clashes with the GPU
    worker's."""
    from vllm.utils.import_utils import resolve_obj_by_qualname
    from vllm.v1.worker.gpu_worker import Worker

    assert resolve_obj_by_qualname(WORKER_RPC) is PadRecWorkerRpc
    names = [name for name in dir(PadRecWorkerRpc) if not name.startswith("__")]
    assert names == ["padrec_acceptance", "padrec_decode_loop_graph"]
    assert not [name for name in names if hasattr(Worker, name)]
