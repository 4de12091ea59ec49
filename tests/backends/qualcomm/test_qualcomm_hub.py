"""The AI Hub functions, with the real qai-hub client pointed at AiHubTestDouble (loopback).

No request ever leaves 127.0.0.1: the client's api_url is the double's address.
"""

import pytest
import torch

import edgeport
from edgeport.backends.qualcomm import QualcommOptions
from edgeport.backends.qualcomm import hub
from edgeport.backends.qualcomm.qnn_runtime import context_binary

from qualcomm_helpers import partition_of

qai_hub = pytest.importorskip("qai_hub")
from qualcomm_hub_double import AiHubTestDouble  # noqa: E402  (needs qai_hub's protobufs)


@pytest.fixture
def double():
    with AiHubTestDouble(token="test-token", latency_us=1234) as server:
        yield server


def client_for(server, token="test-token"):
    config = qai_hub.ClientConfig(api_token=token, api_url=server.url, web_url=server.url, verbose=False)
    return hub.connect(config)


@pytest.fixture(scope="module")
def artifact(backend):
    torch.manual_seed(0)
    program = partition_of(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()), torch.randn(1, 8))
    return backend.compile(program, QualcommOptions(soc="SM8650"))


def test_devices_are_listed_with_chipset_and_hexagon_version(double):
    devices = hub.list_devices(client_for(double), attributes=["framework:qnn"])
    s24 = next(d for d in devices if d.name == "Samsung Galaxy S24 (Family)")
    assert (s24.chipset, s24.hexagon, s24.os) == ("qualcomm-snapdragon-8gen3", "v75", "14")
    assert all("framework:qnn" in d.attributes for d in devices) and len(devices) == 2


def test_profiling_uploads_the_artifacts_context_binary_and_reports_latency(double, artifact):
    profiles = hub.profile_artifacts(client_for(double), {"p0": artifact}, "Samsung Galaxy S24 (Family)")
    assert [(p.partition, p.device, p.latency_ms) for p in profiles] == [("p0", "Samsung Galaxy S24 (Family)", 1.234)]
    assert profiles[0].compute_units == {"NPU": 2}
    (model_id, uploaded), = double.record.uploads.items()
    assert uploaded == context_binary(artifact.data) and len(uploaded) > 1000
    assert double.record.model_types[model_id] == qai_hub.public_api_pb2.ModelType.MODEL_TYPE_QNN_CONTEXT_BINARY
    (job,) = double.record.jobs.values()
    assert job.is_profiling_on and job.device.name == "Samsung Galaxy S24 (Family)"
    table = hub.format_profiles(profiles)
    assert "latency (ms)" in table and "1.234" in table and "p0" in table


def test_an_artifact_for_another_htp_generation_is_refused_before_upload(double, artifact):
    with pytest.raises(edgeport.BackendError) as info:
        hub.profile_artifacts(client_for(double), {"p0": artifact}, "Samsung Galaxy S23 (Family)")
    assert "HTP v75" in str(info.value) and "v73" in str(info.value) and "qualcomm.soc" in info.value.hint
    assert not double.record.uploads


def test_an_unknown_device_lists_the_ones_with_qnn(double, artifact):
    with pytest.raises(edgeport.BackendError) as info:
        hub.profile_artifacts(client_for(double), {"p0": artifact}, "Nokia 3310")
    assert "Samsung Galaxy S24 (Family)" in info.value.hint and "iPhone" not in info.value.hint


def test_without_a_token_one_error_says_how_to_configure_it(tmp_path, monkeypatch):
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(tmp_path / "absent.ini"))
    with pytest.raises(edgeport.BackendError) as info:
        hub.connect()
    assert "no Qualcomm AI Hub API token" in str(info.value)
    assert "qai-hub configure --api_token" in info.value.hint


def test_a_rejected_token_says_how_to_configure_it(double):
    with pytest.raises(edgeport.BackendError) as info:
        hub.list_devices(client_for(double, token="wrong"))
    assert "rejected the API token" in str(info.value) and "qai-hub configure" in info.value.hint
    assert double.record.unauthorized == 1


def test_an_unreachable_hub_is_one_clear_error(monkeypatch):
    from qai_hub.util import session

    monkeypatch.setattr(session, "MAX_RETRIES", 0)  # fail at once instead of ~30 s of backoff
    with AiHubTestDouble() as server:
        url = server.url
    # the double is stopped: its loopback port now refuses connections
    config = qai_hub.ClientConfig(api_token="test-token", api_url=url, web_url=url, verbose=False)
    with pytest.raises(edgeport.BackendError) as info:
        hub.list_devices(hub.connect(config))
    assert f"cannot reach Qualcomm AI Hub at {url}" in str(info.value)


def test_a_saved_programs_qualcomm_partitions_are_profiled(double, backend, tmp_path):
    from edgeport.testing import registry_for

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU())
    program = edgeport.export(model, (torch.randn(1, 8),), ["qualcomm"], registry=registry_for(backend))
    program.save(tmp_path / "m.edgeport")
    artifacts = hub.qualcomm_artifacts(edgeport.load(tmp_path / "m.edgeport", registry=registry_for(backend)))
    assert list(artifacts) == ["forward/partition 0"]
    profiles = hub.profile_artifacts(client_for(double), artifacts, "Samsung Galaxy S24 (Family)")
    assert [p.partition for p in profiles] == ["forward/partition 0"]
