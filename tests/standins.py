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
import time
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
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StandIn:
    url: str
    requests: list[Request] = field(default_factory=list)


@contextlib.contextmanager
def serve(routes: dict[tuple[str, str], Route | Reply]) -> Iterator[StandIn]:
    """Serve ``{(method, path): reply or handler}`` on a free port until the block ends. A
    path ending in ``/*`` takes every path under it that no exact route names; any other
    path answers 404 with a Kubernetes-style Status."""
    stand_in = StandIn(url="")

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            req = Request(
                self.command, parts.path, parse_qs(parts.query), body, dict(self.headers.items())
            )
            stand_in.requests.append(req)
            route = routes.get((self.command, parts.path))
            if route is None:
                under = [
                    k[1][:-1]
                    for k in routes
                    if k[0] == self.command
                    and k[1].endswith("/*")
                    and parts.path.startswith(k[1][:-1])
                ]
                if under:
                    route = routes[(self.command, max(under, key=len) + "*")]
            if route is None:
                status, payload = 404, not_found(parts.path)
            elif callable(route):
                status, payload = route(req)
            else:
                status, payload = route
            raw_text = isinstance(payload, bytes)  # e.g. a pod's log: plain text
            data = payload if raw_text else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if raw_text else "application/json")
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


# ---- Kubeflow Model Registry ------------------------------------------------------------
KMR_API = "/api/model_registry/v1"

# The fields each create request may carry: the server's schemas (RegisteredModelCreate,
# ModelVersionCreate, ModelArtifactCreate in kubeflow/model-registry's
# api/openapi/model-registry.yaml). The server decodes bodies with DisallowUnknownFields
# and checks required fields, so anything else is a 400 here too.
_BASE = {"customProperties", "description", "externalId", "name", "state"}
KMR_CREATE_FIELDS = {
    "registered_model": _BASE | {"owner", "language", "libraryName", "license", "licenseLink",
                                 "logo", "maturity", "provider", "readme", "tasks"},
    "model_version": _BASE | {"author", "registeredModelId"},
    "model_artifact": _BASE | {"artifactType", "modelFormatName", "modelFormatVersion",
                               "modelSourceClass", "modelSourceGroup", "modelSourceId",
                               "modelSourceKind", "modelSourceName", "serviceAccountName",
                               "storageKey", "storagePath", "uri"},
}  # fmt: skip
KMR_REQUIRED = {"registered_model": {"name"}, "model_version": {"name", "registeredModelId"}}
METADATA_TYPES = {"MetadataStringValue": "string_value", "MetadataDoubleValue": "double_value",
                  "MetadataIntValue": "int_value", "MetadataBoolValue": "bool_value"}  # fmt: skip


@dataclass
class KMRStore:
    """What the stand-in holds: every resource by id, in creation order."""

    registered_models: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_versions: dict[str, dict[str, Any]] = field(default_factory=dict)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)  # each with _parent
    token: str | None = None  # set: every request must carry "Authorization: Bearer <token>"
    # called with a version's create body just before it is stored: a test's concurrent
    # writer (it may add to model_versions; the create then meets what it added)
    before_version_create: Callable[[dict[str, Any]], None] | None = None
    _next_id: int = 0
    _last_ms: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def new_id(self) -> str:
        self._next_id += 1
        return str(self._next_id)

    def now_ms(self) -> str:
        self._last_ms = max(int(time.time() * 1000), self._last_ms + 1)
        return str(self._last_ms)


def _kmr_error(status: int, message: str) -> Reply:
    """The server's Error body: ``code`` is the status text, ``message`` the reason."""
    text = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 409: "Conflict"}
    return status, {"code": text[status], "message": message}


def _kmr_page(items: list[dict[str, Any]], query: dict[str, str]) -> Reply:
    """A list answer: pageSize, orderBy (ID, CREATE_TIME, LAST_UPDATE_TIME), sortOrder and
    an opaque nextPageToken that is empty on the last page (the server's behaviour; an
    empty token then asks for the first page again)."""
    key = {"CREATE_TIME": "createTimeSinceEpoch", "LAST_UPDATE_TIME": "lastUpdateTimeSinceEpoch"}
    field_ = key.get(query.get("orderBy", ""), "id")
    ordered = sorted(items, key=lambda r: int(r[field_]))
    if query.get("sortOrder") == "DESC":
        ordered.reverse()
    size = int(query.get("pageSize") or 0) or len(ordered) or 1
    start = int(query.get("nextPageToken") or 0)
    page = ordered[start : start + size]
    more = start + size < len(ordered)
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in page]
    return 200, {"items": public, "size": len(public), "pageSize": size,
                 "nextPageToken": str(start + size) if more else ""}  # fmt: skip


def _kmr_check(kind: str, body: Any) -> str | None:
    """Why a create body would be refused (None: accepted)."""
    if not isinstance(body, dict):
        return "request body is not a JSON object"
    unknown = set(body) - KMR_CREATE_FIELDS[kind]
    if unknown:
        return f"json: unknown field {sorted(unknown)[0]!r}"
    missing = KMR_REQUIRED.get(kind, set()) - set(body)
    if missing:
        return f"required field {sorted(missing)[0]!r} is zero value"
    for name, value in (body.get("customProperties") or {}).items():
        typed = isinstance(value, dict) and METADATA_TYPES.get(value.get("metadataType", ""))
        if not typed or typed not in value:
            return f"customProperties.{name}: not a typed metadata value"
    return None


def kmr_routes(
    store: KMRStore | None = None, prefix: str = ""
) -> tuple[dict[tuple[str, str], Route], KMRStore]:
    """The Kubeflow Model Registry REST API (v1, what model-registry 0.3.18 calls) as far
    as registering and reading models goes: registered models, their versions and the
    versions' model artifacts; create, get by id, find by name (404 when none), list.
    Names are unique (a model's, a version's within its model, an artifact's within its
    version): a second create answers 409, as the server does. ``prefix``: a path in front
    of the API (a gateway's)."""
    s = store or KMRStore()
    api = prefix + KMR_API

    def stamp(body: dict[str, Any], **extra: Any) -> dict[str, Any]:
        now = s.now_ms()
        return {**body, **extra, "id": s.new_id(), "state": body.get("state", "LIVE"),
                "createTimeSinceEpoch": now, "lastUpdateTimeSinceEpoch": now}  # fmt: skip

    def find(table: dict[str, dict[str, Any]], q: dict[str, str], parent: str) -> Reply:
        if not q.get("name") and not q.get("externalId"):
            return _kmr_error(400, "name or externalId is required")
        for r in table.values():
            if (q.get("externalId") and r.get("externalId") == q["externalId"]) or (
                r["name"] == q.get("name")
                and (not parent or r.get(parent) == q.get("parentResourceId"))
            ):
                return 200, {k: v for k, v in r.items() if not k.startswith("_")}
        return _kmr_error(404, f"no resource found for {q}")

    def handle(req: Request) -> Reply:
        if s.token is not None and req.headers.get("Authorization") != f"Bearer {s.token}":
            return _kmr_error(401, "missing or invalid bearer token")
        q = {k: v[-1] for k, v in req.query.items()}
        segs = req.path[len(api) :].strip("/").split("/")
        with s._lock:
            match (req.method, segs):
                case ("GET", ["registered_models"]):
                    return _kmr_page(list(s.registered_models.values()), q)
                case ("GET", ["registered_model"]):
                    return find(s.registered_models, q, "")
                case ("POST", ["registered_models"]):
                    if why := _kmr_check("registered_model", req.body):
                        return _kmr_error(400, why)
                    if any(r["name"] == req.body["name"] for r in s.registered_models.values()):
                        return _kmr_error(409, f"registered model with name {req.body['name']} "
                                               "already exists: conflict")  # fmt: skip
                    rm = stamp(req.body)
                    s.registered_models[rm["id"]] = rm
                    return 201, rm
                case ("GET", ["registered_models", rid]) if rid in s.registered_models:
                    return 200, s.registered_models[rid]
                case ("GET", ["registered_models", rid, "versions"]):
                    if rid not in s.registered_models:
                        return _kmr_error(404, f"no registered model found for id {rid}")
                    mine = [v for v in s.model_versions.values() if v["registeredModelId"] == rid]
                    return _kmr_page(mine, q)
                case ("GET", ["model_version"]):
                    return find(s.model_versions, q, "registeredModelId")
                case ("POST", ["model_versions"]):
                    if why := _kmr_check("model_version", req.body):
                        return _kmr_error(400, why)
                    if s.before_version_create is not None:
                        s.before_version_create(req.body)
                    rid, name = req.body["registeredModelId"], req.body["name"]
                    if rid not in s.registered_models:
                        return _kmr_error(404, f"no registered model found for id {rid}")
                    if any(v["registeredModelId"] == rid and v["name"] == name
                           for v in s.model_versions.values()):  # fmt: skip
                        return _kmr_error(409, f"model version with name {name} already "
                                               "exists: conflict")  # fmt: skip
                    mv = stamp(req.body)
                    s.model_versions[mv["id"]] = mv
                    return 201, mv
                case ("GET", ["model_versions", vid]) if vid in s.model_versions:
                    return 200, s.model_versions[vid]
                case ("POST", ["model_versions", vid, "artifacts"]):
                    if vid not in s.model_versions:
                        return _kmr_error(404, f"no model version found for id {vid}")
                    if why := _kmr_check("model_artifact", req.body):
                        return _kmr_error(400, why)
                    if req.body.get("artifactType") != "model-artifact":
                        return _kmr_error(400, "only model artifacts are kept here")
                    name = req.body.get("name")
                    if any(a["_parent"] == vid and a.get("name") == name
                           for a in s.artifacts.values()):  # fmt: skip
                        return _kmr_error(409, f"model artifact with name {name} already "
                                               "exists: conflict")  # fmt: skip
                    art = stamp(req.body, _parent=vid)
                    s.artifacts[art["id"]] = art
                    return 201, {k: v for k, v in art.items() if k != "_parent"}
                case ("GET", ["model_versions", vid, "artifacts"]):
                    mine = [a for a in s.artifacts.values() if a["_parent"] == vid]
                    return _kmr_page(mine, q)
                case ("GET", ["model_artifact"]):
                    return find(s.artifacts, q, "_parent")
        return _kmr_error(404, f"{req.method} {req.path}: not served by this stand-in")

    routes: dict[tuple[str, str], Route] = {
        (method, f"{api}/*"): handle for method in ("GET", "POST", "PATCH")
    }
    return routes, s
