"""Small HTTP stand-ins on 127.0.0.1 for the APIs the cluster commands talk to.

Each serves JSON from a route table and records every request, so a test drives the real
client (the ``kubernetes`` client, ``kfp.Client``) over real HTTP and then asserts on what
the client sent. ``kube_api`` serves Kubernetes objects (``tests/data/k8s/*.json``, in the
API's wire format); ``kfp_api`` answers the KFP v2beta1 calls ``kfp.Client`` makes to
create a run.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

K8S_DATA = Path(__file__).parent / "data" / "k8s"

Reply = tuple[int, Any]
Route = Callable[["Request"], Reply]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


@dataclass
class StandIn:
    url: str
    requests: list[Request] = field(default_factory=list)


@contextlib.contextmanager
def serve(routes: dict[tuple[str, str], Route | Reply]) -> Iterator[StandIn]:
    """Serve ``{(method, path): reply or handler}`` on a free port until the block ends;
    any other path answers 404 with a Kubernetes-style Status."""
    stand_in = StandIn(url="")

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            req = Request(self.command, parts.path, parse_qs(parts.query), body)
            stand_in.requests.append(req)
            route = routes.get((self.command, parts.path))
            if route is None:
                status, payload = 404, not_found(parts.path)
            elif callable(route):
                status, payload = route(req)
            else:
                status, payload = route
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _reply

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    stand_in.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield stand_in
    finally:
        server.shutdown()
        server.server_close()


def not_found(path: str) -> dict[str, Any]:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f'"{name}" not found',
        "reason": "NotFound",
        "code": 404,
    }


def k8s_object(name: str) -> dict[str, Any]:
    """A recorded object from tests/data/k8s/NAME.json."""
    return json.loads((K8S_DATA / f"{name}.json").read_text())


def kube_routes(
    namespace: str = "kubeflow",
    service_account: str | None = "serviceaccount-pipeline-runner",
    pvc: str | None = "pvc-optimus-cache-bound",
    nodes: tuple[str, ...] = ("node-default-pool-e2-standard-4", "node-l4-g2-standard-16"),
) -> dict[tuple[str, str], Reply]:
    """A cluster: which recorded objects exist (None: absent, answered 404)."""
    ns = f"/api/v1/namespaces/{namespace}"
    routes: dict[tuple[str, str], Reply] = {
        ("GET", ns): (200, {**k8s_object("namespace-kubeflow"), "metadata": {"name": namespace}}),
        ("GET", "/api/v1/nodes"): (
            200,
            {
                "kind": "NodeList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": "90500"},
                "items": [k8s_object(n) for n in nodes],
            },
        ),
        ("GET", "/apis/storage.k8s.io/v1/storageclasses/standard"): (
            200,
            k8s_object("storageclass-standard"),
        ),
        ("GET", "/apis/storage.k8s.io/v1/storageclasses/standard-rwo"): (
            200,
            k8s_object("storageclass-standard-rwo"),
        ),
    }
    if service_account:
        routes[("GET", f"{ns}/serviceaccounts/pipeline-runner")] = (
            200,
            k8s_object(service_account),
        )
    if pvc:
        routes[("GET", f"{ns}/persistentvolumeclaims/optimus-cache")] = (200, k8s_object(pvc))
    return routes


def kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig whose current context points at ``server`` (no credentials)."""
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "standin", "cluster": {"server": server}}],
                "users": [{"name": "standin", "user": {}}],
                "contexts": [
                    {"name": "standin", "context": {"cluster": "standin", "user": "standin"}}
                ],
                "current-context": "standin",
            }
        )
    )
    return path


def kfp_routes(multi_user: bool = False) -> dict[tuple[str, str], Route | Reply]:
    """The KFP v2beta1 API as far as ``create_run_from_pipeline_package`` uses it: health,
    experiments (find by name, create) and runs (create)."""
    experiments: dict[str, dict[str, Any]] = {}

    def list_experiments(req: Request) -> Reply:
        flt = json.loads(req.query.get("filter", ["{}"])[0])
        names = [p.get("string_value") or p.get("stringValue") for p in flt.get("predicates", [])]
        found = [e for e in experiments.values() if e["display_name"] in names]
        return 200, {"experiments": found, "total_size": len(found)} if found else {}

    def create_experiment(req: Request) -> Reply:
        exp = {**req.body, "experiment_id": str(uuid.uuid4()), "storage_state": "AVAILABLE"}
        experiments[exp["experiment_id"]] = exp
        return 200, exp

    def create_run(req: Request) -> Reply:
        return 200, {**req.body, "run_id": str(uuid.uuid4()), "state": "PENDING"}

    return {
        ("GET", "/apis/v2beta1/healthz"): (200, {"multi_user": multi_user}),
        ("GET", "/apis/v2beta1/experiments"): list_experiments,
        ("POST", "/apis/v2beta1/experiments"): create_experiment,
        ("POST", "/apis/v2beta1/runs"): create_run,
    }
