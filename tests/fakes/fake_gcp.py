"""A fake Compute Engine REST endpoint on 127.0.0.1 for the real google-cloud-compute client.

Mutations answer an Operation in ``RUNNING`` state; the change takes effect when the client
waits for it (``POST .../operations/{op}/wait`` or ``GET``), so a provider that does not wait
reads stale state here as it would on GCP. Missing resources are 404 ``notFound``
(``google.api_core.exceptions.NotFound``). Errors can be injected synchronously (HTTP 4xx) or
asynchronously (operation ``DONE`` with ``error.errors``). Requests need a bearer token; when it
is a JWT (a service account's self-signed token) its issuer is recorded. Facts: providers.md §3.2.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import socket
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_BASE = r"^/compute/v1/projects/(?P<project>[^/]+)"
_ROUTES = [
    ("firewalls", re.compile(_BASE + r"/global/firewalls(?:/(?P<name>[^/]+))?$")),
    ("instances", re.compile(_BASE + r"/zones/(?P<zone>[^/]+)/instances(?:/(?P<name>[^/]+))?(?:/(?P<action>start))?$")),
    ("operations", re.compile(_BASE + r"(?:/zones/(?P<zone>[^/]+)|/global)/operations/(?P<name>[^/]+)(?:/(?P<action>wait))?$")),
]


@dataclass
class Failure:
    kind: str
    method: str
    reason: str
    message: str
    asynchronous: bool
    times: int = 1


class FakeGcp:
    def __init__(self) -> None:
        self.resources: dict[str, dict[str, dict[str, Any]]] = {"firewalls": {}, "instances": {}}
        self.requests: list[dict[str, Any]] = []
        self.operations: dict[str, dict[str, Any]] = {}
        self.failures: list[Failure] = []
        self.token_issuers: list[str] = []
        self.lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> FakeGcp:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(
        self, kind: str, reason: str, message: str, *, method: str = "POST", asynchronous: bool = False, times: int = 1
    ) -> None:
        self.failures.append(Failure(kind, method, reason, message, asynchronous, times))

    def bodies(self, kind: str) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests if r["kind"] == kind and r["method"] == "POST" and r["body"]]

    def names(self) -> dict[str, list[str]]:
        return {k: sorted(v) for k, v in self.resources.items() if v}

    # ---- semantics ----
    def _take(self, kind: str, method: str) -> Failure | None:
        for f in self.failures:
            if f.kind == kind and f.method == method and f.times > 0:
                f.times -= 1
                return f
        return None

    def _operation(self, project: str, zone: str | None, target: str, apply: Any, failure: Failure | None) -> dict[str, Any]:
        name = f"operation-{uuid.uuid4().hex[:12]}"
        where = f"zones/{zone}" if zone else "global"
        op = {
            "kind": "compute#operation",
            "id": str(uuid.uuid4().int >> 64),
            "name": name,
            "status": "RUNNING",
            "selfLink": f"{self.endpoint}/compute/v1/projects/{project}/{where}/operations/{name}",
            "targetLink": target,
        }
        if zone:
            op["zone"] = f"{self.endpoint}/compute/v1/projects/{project}/zones/{zone}"
        self.operations[name] = {"op": op, "apply": apply, "failure": failure}
        return copy.deepcopy(op)

    def _finish(self, name: str) -> dict[str, Any] | None:
        entry = self.operations.get(name)
        if entry is None:
            return None
        op = entry["op"]
        if op["status"] != "DONE":
            op["status"] = "DONE"
            failure = entry["failure"]
            if failure is not None:
                op["error"] = {"errors": [{"code": failure.reason, "message": failure.message}]}
                op["httpErrorStatusCode"] = 400
                op["httpErrorMessage"] = "BAD REQUEST"
            else:
                entry["apply"]()
        return copy.deepcopy(op)

    def handle(self, method: str, kind: str, m: re.Match[str], body: Any) -> tuple[int, Any]:
        project, name = m["project"], m["name"]
        zone = m.groupdict().get("zone")
        if kind == "operations":
            op = self._finish(name)
            return (200, op) if op else _not_found(f"operation {name}")
        store = self.resources[kind]
        link = f"{self.endpoint}/compute/v1/projects/{project}/" + (f"zones/{zone}/" if zone else "global/") + kind
        failure = self._take(kind, method)
        if failure and not failure.asynchronous:
            return 400, {
                "error": {
                    "code": 400,
                    "message": failure.message,
                    "errors": [{"reason": failure.reason, "message": failure.message, "domain": "global"}],
                }
            }
        if method == "GET" and name is None:
            return 200, {"kind": f"compute#{kind}List", "items": [copy.deepcopy(r) for r in store.values()]}
        if method == "GET":
            return (200, copy.deepcopy(store[name])) if name in store else _not_found(f"{kind} {name}")
        if method == "POST" and name is None:
            res = copy.deepcopy(body)
            if res["name"] in store:
                return 409, {
                    "error": {
                        "code": 409,
                        "message": f"The resource '{res['name']}' already exists",
                        "errors": [{"reason": "alreadyExists", "message": "exists"}],
                    }
                }
            res["selfLink"] = f"{link}/{res['name']}"
            if kind == "instances":
                res["status"] = "RUNNING"
                for nic in res.get("networkInterfaces", []):
                    for ac in nic.get("accessConfigs", []):
                        ac["natIP"] = "127.0.0.1"

            def apply(r: dict[str, Any] = res) -> None:
                store[r["name"]] = r

            return 200, self._operation(project, zone, res["selfLink"], apply, failure)
        if method == "POST" and m.groupdict().get("action") == "start":
            if name not in store:
                return _not_found(f"{kind} {name}")
            return 200, self._operation(
                project, zone, f"{link}/{name}", lambda: store[name].__setitem__("status", "RUNNING"), failure
            )
        if method == "DELETE":
            if name not in store:
                return _not_found(f"{kind} {name}")
            return 200, self._operation(project, zone, f"{link}/{name}", lambda: store.pop(name, None), failure)
        return 405, {"error": {"code": 405, "message": "method not allowed"}}


def _not_found(what: str) -> tuple[int, dict[str, Any]]:
    msg = f"The resource '{what}' was not found"
    return 404, {"error": {"code": 404, "message": msg, "errors": [{"reason": "notFound", "message": msg}]}}


def _jwt_issuer(token: str) -> str:
    parts = token.split(".")
    if len(parts) != 3:
        return ""
    try:
        return json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))).get("iss", "")
    except ValueError:
        return ""


def _handler(fake: FakeGcp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            url = urlsplit(self.path)
            n = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(n)) if n else None
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Bearer "):
                return self._send(
                    401,
                    {
                        "error": {
                            "code": 401,
                            "message": "Request is missing required authentication credential.",
                            "errors": [{"reason": "required"}],
                        }
                    },
                )
            with fake.lock:
                fake.token_issuers.append(_jwt_issuer(auth[7:]))
                for kind, rx in _ROUTES:
                    m = rx.match(url.path)
                    if m:
                        fake.requests.append(
                            {
                                "method": self.command,
                                "kind": kind,
                                "path": url.path,
                                "body": body,
                                "query": {k: v[0] for k, v in parse_qs(url.query).items()},
                            }
                        )
                        return self._send(*fake.handle(self.command, kind, m, body))
            return self._send(404, {"error": {"code": 404, "message": f"no route {url.path}"}})

        do_GET = do_POST = do_DELETE = _handle

    return Handler
