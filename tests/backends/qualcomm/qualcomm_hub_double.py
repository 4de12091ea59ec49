"""AiHubTestDouble: a loopback stand-in for Qualcomm AI Hub's HTTP API. TEST DOUBLE ONLY.

It answers the requests the real `qai_hub` client makes (protobuf over HTTP, studied from
qai_hub 0.56's public_rest_api.py) for: listing devices, creating and uploading a model
(multipart PUT), submitting an inference job with profiling, polling it and fetching its
profile. Every job finishes at once with a made-up latency (`latency_us`), so the test
asserts plumbing, never device numbers. It binds 127.0.0.1 only; nothing leaves the host.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse, parse_qs

from qai_hub import public_api_pb2 as pb


@dataclass
class HubRecord:
    """What the double saw, for tests to assert on."""

    uploads: dict[str, bytes] = field(default_factory=dict)  # model id -> bytes
    model_types: dict[str, int] = field(default_factory=dict)  # model id -> pb.ModelType
    jobs: dict[str, pb.InferenceJob] = field(default_factory=dict)
    unauthorized: int = 0


DEVICES = (
    pb.Device(name="Samsung Galaxy S24 (Family)", os="14", attributes=[
        "chipset:qualcomm-snapdragon-8gen3", "hexagon:v75", "framework:qnn", "framework:onnx",
        "framework:tflite", "os:android", "format:phone", "vendor:samsung",
    ]),
    pb.Device(name="Samsung Galaxy S23 (Family)", os="13", attributes=[
        "chipset:qualcomm-snapdragon-8gen2", "hexagon:v73", "framework:qnn", "framework:onnx",
        "framework:tflite", "os:android", "format:phone", "vendor:samsung",
    ]),
    pb.Device(name="iPhone 15 Pro", os="17", attributes=[
        "chipset:apple-a17-pro", "framework:coreml", "os:ios", "format:phone", "vendor:apple",
    ]),
)


class AiHubTestDouble:
    """Start with `with AiHubTestDouble(token="t") as hub:`; point qai_hub at `hub.url`."""

    def __init__(self, token: str = "test-token", latency_us: int = 1234) -> None:
        self.token = token
        self.latency_us = latency_us
        self.record = HubRecord()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    def __enter__(self) -> AiHubTestDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # --- the API, one method per endpoint; each returns (status, protobuf or bytes) ---

    def devices(self, query: dict[str, list[str]]) -> pb.DeviceList:
        name = query.get("name", [""])[0]
        wanted = set(query.get("attributes", []))
        found = [d for d in DEVICES if (not name or d.name == name) and wanted <= set(d.attributes)]
        return pb.DeviceList(devices=found, total_query_count=len(found))

    def create_model(self, body: bytes) -> pb.CreateUpdateResponse:
        model = pb.Model.FromString(body)
        with self._lock:
            model_id = f"m{len(self.record.model_types) + 1}"
            self.record.model_types[model_id] = model.model_type
        return pb.CreateUpdateResponse(id=model_id)

    def upload_urls(self, model_id: str) -> pb.FileUploadResponse:
        return pb.FileUploadResponse(multipart_url=pb.FileMultipartUploadURL(
            urls=[f"{self.url}upload/{model_id}"], upload_id=f"u-{model_id}", max_part_size=1 << 30,
        ))

    def put_upload(self, model_id: str, body: bytes) -> None:
        with self._lock:
            self.record.uploads[model_id] = body

    def complete_upload(self, model_id: str) -> pb.CreateUpdateResponse:
        return pb.CreateUpdateResponse(id=model_id)

    def create_job(self, body: bytes) -> pb.CreateUpdateResponse:
        job = pb.Job.FromString(body).inference_job
        with self._lock:
            job_id = f"j{len(self.record.jobs) + 1}"
            job.inference_job_id = job_id
            job.job_state = pb.JobState.JOB_STATE_DONE
            self.record.jobs[job_id] = job
        return pb.CreateUpdateResponse(id=job_id)

    def job(self, job_id: str) -> pb.Job | None:
        job = self.record.jobs.get(job_id)
        return None if job is None else pb.Job(inference_job=job)

    def job_result(self, job_id: str) -> pb.JobResult | None:
        if job_id not in self.record.jobs:
            return None
        layers = [
            pb.LayerDetail(name="conv", layer_type_name="Conv2d", compute_unit=pb.ComputeUnit.COMPUTE_UNIT_NPU),
            pb.LayerDetail(name="relu", layer_type_name="Relu", compute_unit=pb.ComputeUnit.COMPUTE_UNIT_NPU),
        ]
        detail = pb.ProfileDetail(major_version=1, execution_time=self.latency_us, layer_details=layers)
        return pb.JobResult(inference_job_result=pb.InferenceJobResult(inference_job_id=job_id, detail=detail))


_ROUTES = (
    ("GET", r"/api/v1/devices/", lambda hub, m, q, body: hub.devices(q)),
    ("POST", r"/api/v1/models/", lambda hub, m, q, body: hub.create_model(body)),
    ("GET", r"/api/v1/models/(\w+)/multipart_upload/", lambda hub, m, q, body: hub.upload_urls(m[1])),
    ("POST", r"/api/v1/models/(\w+)/multipart_upload/", lambda hub, m, q, body: hub.complete_upload(m[1])),
    ("POST", r"/api/v1/jobs/", lambda hub, m, q, body: hub.create_job(body)),
    ("GET", r"/api/v1/jobs/(\w+)/", lambda hub, m, q, body: hub.job(m[1])),
    ("GET", r"/api/v1/jobs/(\w+)/result/", lambda hub, m, q, body: hub.job_result(m[1])),
)


def _handler(hub: AiHubTestDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            # The pre-signed upload URL: no token, like S3; answers with an ETag.
            model_id = urlparse(self.path).path.rsplit("/", 1)[-1]
            hub.put_upload(model_id, self._body())
            self.send_response(200)
            self.send_header("ETag", f'"etag-{model_id}"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _serve(self, method: str) -> None:
            url = urlparse(self.path)
            body = self._body()
            if self.headers.get("Authorization") != f"token {hub.token}":
                hub.record.unauthorized += 1
                return self._reply(401, b'{"detail": "Invalid token."}', "application/json")
            for route_method, pattern, action in _ROUTES:
                match = re.fullmatch(pattern, url.path)
                if route_method == method and match:
                    answer = action(hub, match, parse_qs(url.query), body)
                    if answer is None:
                        return self._reply(404, b"not found", "text/plain")
                    return self._reply(200, answer.SerializeToString(), "application/x-protobuf")
            self._reply(404, f"the AI Hub test double has no {method} {url.path}".encode(), "text/plain")

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while (size := int(self.rfile.readline().strip(), 16)) > 0:
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _reply(self, status: int, payload: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler
