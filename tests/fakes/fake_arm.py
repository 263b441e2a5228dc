"""A fake Azure Resource Manager: a real HTTPS server on 127.0.0.1 for the real Azure SDKs.

It behaves like ARM where duet depends on it (facts: specs/providers.md §1.3):
- bearer tokens are required, and issued by an App Service-style managed-identity endpoint
  (plain HTTP, like the real one), so ``ManagedIdentityCredential`` runs unchanged;
- PUT is a long-running operation: 201 + ``Azure-AsyncOperation`` polled to ``Succeeded``
  (first poll ``InProgress``), then the SDK's final GET; DELETE is 202 + ``Location``;
- a PUT referring to a resource that does not exist or is not yet provisioned is refused, so
  a provider that does not await each step fails here as it would on Azure;
- a DELETE of something still referenced is refused (``InUse...``), so dependency order matters;
  deleting a VM cascades to its OS disk and NIC when ``deleteOption`` is ``Delete``;
- ``GET .../resources?$filter=tagName eq 'x'`` lists tagged resources of a group;
- extension operations on a VM created with ``osProfile.allowExtensionOperations: false`` or
  ``linuxConfiguration.provisionVMAgent: false`` (extension PUTs such as VMAccess, managed Run
  Command PUTs, action Run Command POSTs) are answered ``409 OperationNotAllowed`` as ARM does,
  and recorded in ``refused``; ``provisionVMAgent`` cannot be changed by a later PUT of the VM
  (``409 PropertyChangeNotAllowed``).
Errors can be injected per resource type, synchronous (4xx) or asynchronous (operation
``Failed``, resource left in ``Failed`` state as ARM does). Every VM gets a ``vmId`` (a GUID, kept
across updates) in its properties, as ARM returns it.

When a VM succeeds it "boots": a real sshd is started with the VM's login key and a host key —
the one its cloud-init customData installs (``ssh_keys``: the owner's opt-out), or else one the
guest generates itself, as cloud-init does at first boot. A Confidential VM's guest also has a
SIMULATED vTPM and the way to a fake instance metadata service (``fake_guest.py``,
``fake_vtpm.py``, ``fake_imds.py``), so that the controller's real Azure evidence collection runs
on it: its HCL report names the VM's ``vmId`` (or ``reported_vm_id``, to play another VM) and is
signed by the SIMULATED hardware in ``hardware_dir``, whose roots a controller trusts only with
``--trust-simulated-cvm``.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import secrets
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from tests.fakes.fake_guest import FakeGuest
from tests.fakes.fake_imds import FakeImds
from tests.fakes.sshd import LocalSshd
from tests.fakes.tls import make_server_context

_RES = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)/providers/(?P<ns>[^/]+)/(?P<type>[^/]+)/(?P<name>[^/]+)"
    r"(?:/(?P<subtype>[^/]+)/(?P<subname>[^/]+))?(?:/(?P<action>instanceView|start|runCommand))?$",
    re.I,
)
_LIST = re.compile(r"^/subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)/resources$", re.I)
# ARM's answer to an extension operation on a VM without the agent or with extension operations off
EXTENSIONS_DISALLOWED = (
    "This operation cannot be performed when extension operations are disallowed. To allow, please ensure VM Agent "
    "is installed on the VM and the osProfile.allowExtensionOperations property is true."
)
_VM_CHILDREN = {"extensions", "runcommands"}  # child resources run by the VM agent
_IN_USE = {
    "microsoft.network/networksecuritygroups": "InUseNetworkSecurityGroupCannotBeDeleted",
    "microsoft.network/publicipaddresses": "PublicIPAddressCannotBeDeleted",
    "microsoft.network/networkinterfaces": "NicInUse",
    "microsoft.network/virtualnetworks": "InUseSubnetCannotBeDeleted",
    "microsoft.compute/disks": "OperationNotAllowed",
}


@dataclass
class Failure:
    """Fail the next ``times`` PUTs of a resource type (e.g. ``virtualMachines``)."""

    method: str
    type_suffix: str
    code: str
    message: str
    asynchronous: bool = False
    status: int = 400
    times: int = 1


@dataclass
class Operation:
    status: str
    polls_left: int
    on_done: Any = None
    error: dict[str, str] | None = None
    kind: str = "async"  # "async" (Azure-AsyncOperation) or "location" (DELETE)


class FakeArm:
    def __init__(
        self,
        workdir: Path,
        *,
        subscription: str = "sub-1",
        resource_groups: tuple[str, ...] = ("rg-duet",),
        ssh_port: int | None = None,
        polls: int = 1,
        hardware_dir: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.hardware_dir = hardware_dir or workdir / "simulated-hardware"
        """The SIMULATED AMD and Intel of every Confidential VM this fake boots (settable before a boot)."""
        self.reported_vm_id: str | None = None
        """When set, the vTPM of VMs booted from now on reports this vmUniqueId instead of their own vmId."""
        self.vtpm_refresh_s = 0.0
        """How long the vTPM of VMs booted from now on takes to put new user data into its report."""
        self.subscription = subscription
        self.resource_groups = {rg.lower() for rg in resource_groups}
        self.ssh_port = ssh_port
        self.polls = polls
        self.resources: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.failures: list[Failure] = []
        self.tokens: set[str] = set()
        self.token_requests: list[dict[str, Any]] = []
        self.refused: list[dict[str, str]] = []  # extension operations refused (VM agent off / extensions off)
        self.sshds: dict[str, LocalSshd] = {}
        # by VM resource id (lowercase): the public host key its guest has, the #cloud-config it received, its guest
        self.host_keys: dict[str, str] = {}
        self.cloud_configs: dict[str, dict[str, Any]] = {}
        self.guests: dict[str, FakeGuest] = {}
        self.imds = FakeImds(lambda: self.hardware_dir)
        self.operations: dict[str, Operation] = {}
        self.lock = threading.RLock()
        self.identity_header = secrets.token_hex(8)
        ctx, self.ca_path = make_server_context(workdir / "tls")
        self._arm = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, "arm"))
        self._arm.socket = ctx.wrap_socket(self._arm.socket, server_side=True)
        self._identity = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, "identity"))
        self.endpoint = f"https://127.0.0.1:{self._arm.server_address[1]}"
        self.identity_endpoint = f"http://127.0.0.1:{self._identity.server_address[1]}/msi/token"
        self._threads = [threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True) for s in (self._arm, self._identity)]

    # ---- lifecycle ----
    def start(self) -> FakeArm:
        for t in self._threads:
            t.start()
        self.imds.start()
        return self

    def stop(self) -> None:
        for s in (self._arm, self._identity):
            s.shutdown()
            s.server_close()
        self.imds.stop()
        for sshd in self.sshds.values():
            sshd.stop()

    def env(self) -> dict[str, str]:
        """The environment a controller needs to talk to this fake (managed identity included)."""
        env = {
            "SUBSCRIPTION_ID": self.subscription,
            "RESOURCE_GROUP_NAME": sorted(self.resource_groups)[0],
            "LOCATION": "westeurope",
            "MANAGED_IDENTITY_CLIENT_ID": "mi-client-1",
            "DUET_AZURE_ARM_ENDPOINT": self.endpoint,
            "REQUESTS_CA_BUNDLE": str(self.ca_path),
            "DUET_AZURE_POLL_SECONDS": "0",
            "DUET_AZURE_DELETE_RETRY_SECONDS": "0",
        }
        if self.ssh_port:
            env["DUET_SSH_PORT"] = str(self.ssh_port)
        return env

    def identity_env(self) -> dict[str, str]:
        """os.environ entries that make azure-identity use this fake's managed-identity endpoint."""
        return {"IDENTITY_ENDPOINT": self.identity_endpoint, "IDENTITY_HEADER": self.identity_header}

    # ---- test helpers ----
    def fail(
        self,
        type_suffix: str,
        code: str,
        message: str,
        *,
        method: str = "PUT",
        asynchronous: bool = False,
        status: int = 400,
        times: int = 1,
    ) -> None:
        self.failures.append(Failure(method, type_suffix.lower(), code, message, asynchronous, status, times))

    def bodies(self, type_suffix: str, method: str = "PUT") -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests if r["method"] == method and r["type"].lower().endswith(type_suffix.lower())]

    def names(self, type_suffix: str = "") -> list[str]:
        with self.lock:
            return sorted(r["name"] for r in self.resources.values() if r["type"].lower().endswith(type_suffix.lower()))

    # ---- ARM semantics ----
    def _take_failure(self, method: str, rtype: str) -> Failure | None:
        with self.lock:
            for f in self.failures:
                if f.method == method and rtype.lower().endswith(f.type_suffix) and f.times > 0:
                    f.times -= 1
                    return f
        return None

    def _referenced_ids(self, body: Any) -> list[str]:
        found: list[str] = []
        if isinstance(body, dict):
            for k, v in body.items():
                if k == "id" and isinstance(v, str) and v.lower().startswith("/subscriptions/"):
                    found.append(v.lower())
                else:
                    found += self._referenced_ids(v)
        elif isinstance(body, list):
            for v in body:
                found += self._referenced_ids(v)
        return found

    def _users_of(self, rid: str) -> list[str]:
        """Ids of resources (other than rid and its children) whose body mentions rid."""
        users = []
        for other_id, res in self.resources.items():
            if other_id == rid or other_id.startswith(rid + "/"):
                continue
            text = json.dumps(res).lower()
            if f'"{rid}"' in text or f'"{rid}/' in text:
                users.append(res["id"])
        return users

    def vm_id_of(self, vm_name: str) -> str:
        """The ``vmId`` ARM gave the VM named ``vm_name`` (ARM names are case-insensitive)."""
        with self.lock:
            [vm] = [
                r
                for r in self.resources.values()
                if r["name"].lower() == vm_name.lower() and r["type"].lower() == "microsoft.compute/virtualmachines"
            ]
            return str(vm["properties"]["vmId"])

    def _boot(self, rid: str, name: str, vm: dict[str, Any]) -> None:
        """The VM 'boots': its guest gets the host key from cloud-init or generates its own, the
        login key from osProfile, and, for a Confidential VM with a vTPM, a SIMULATED vTPM."""
        props = vm["properties"]
        os_profile = props.get("osProfile", {})
        custom = os_profile.get("customData")
        keys = [k["keyData"] for k in os_profile.get("linuxConfiguration", {}).get("ssh", {}).get("publicKeys", [])]
        if not custom:
            return
        doc = yaml.safe_load(base64.b64decode(custom))
        self.cloud_configs[rid] = doc
        if "ssh_keys" in doc:  # the owner's opt-out: the key travelled through the control plane
            private, public = doc["ssh_keys"]["ed25519_private"], doc["ssh_keys"]["ed25519_public"]
        elif "ed25519" in doc.get("ssh_genkeytypes", ["rsa", "ecdsa", "ed25519"]):  # cloud-init's default
            private, public = _first_boot_host_key(name)
        else:
            return  # no Ed25519 host key: nothing the controller could log in to
        self.host_keys[rid] = public
        security = props.get("securityProfile", {})
        confidential = security.get("securityType") == "ConfidentialVM" and security.get("uefiSettings", {}).get("vTpmEnabled")
        root = self.workdir / "vms" / name
        guest = FakeGuest(
            root=root,
            platform=_platform(props.get("hardwareProfile", {}).get("vmSize", "")),
            vm_unique_id=self.reported_vm_id or str(self.resources[rid]["properties"]["vmId"]),
            hardware_dir=self.hardware_dir,
            imds_url=self.imds.url,
            refresh_s=self.vtpm_refresh_s,
            vtpm=bool(confidential),
        ).install()
        self.guests[rid] = guest
        if self.ssh_port:
            for other in list(self.sshds.values()):
                other.stop()
            sshd = LocalSshd(
                root,
                self.ssh_port,
                private,
                keys,
                host_public_key=public,
                environment=guest.environment(),
                force_command=guest.force_command(),
            )
            sshd.start()
            self.sshds[rid] = sshd

    def extensions_refused(self, m: re.Match[str], what: str) -> tuple[int, dict[str, Any]] | None:
        """ARM's answer to an extension operation (``what``) on VM ``m['name']``, or None if it may go on."""
        vm_id = f"/subscriptions/{m['sub']}/resourceGroups/{m['rg']}/providers/{m['ns']}/{m['type']}/{m['name']}"
        vm = self.resources.get(vm_id.lower())
        if vm is None:
            return 404, _err(
                "ParentResourceNotFound",
                f"Can not perform requested operation on nested resource. Parent resource '{m['name']}' not found.",
            )
        os_profile = vm["properties"].get("osProfile", {})
        agent = os_profile.get("linuxConfiguration", {}).get("provisionVMAgent", True)
        if os_profile.get("allowExtensionOperations", True) is False or agent is False:
            self.refused.append({"vm": vm["id"], "what": what})
            return 409, _err("OperationNotAllowed", EXTENSIONS_DISALLOWED)
        return None

    def put(self, rid: str, m: re.Match[str], body: dict[str, Any], host: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        rtype = f"{m['ns']}/{m['type']}" + (f"/{m['subtype']}" if m["subtype"] else "")
        if m["rg"].lower() not in self.resource_groups:
            return 404, _err("ResourceGroupNotFound", f"Resource group '{m['rg']}' could not be found."), {}
        is_vm = rtype.lower() == "microsoft.compute/virtualmachines"
        if m["type"].lower() == "virtualmachines" and (m["subtype"] or "").lower() in _VM_CHILDREN:
            refused = self.extensions_refused(m, m["subtype"])
            if refused:
                return *refused, {}
        if is_vm and rid in self.resources:  # an update: properties fixed at creation stay as they are
            before = self.resources[rid]["properties"].get("osProfile", {}).get("linuxConfiguration", {})
            after = body.get("properties", {}).get("osProfile", {}).get("linuxConfiguration", {})
            if "provisionVMAgent" in after and after["provisionVMAgent"] != before.get("provisionVMAgent", True):
                return (
                    409,
                    _err("PropertyChangeNotAllowed", "Changing property 'linuxConfiguration.provisionVMAgent' is not allowed."),
                    {},
                )
        for ref in self._referenced_ids(body):
            target = self.resources.get(ref)
            if target is None:
                return 400, _err("InvalidResourceReference", f"Resource {ref} referenced by resource {rid} was not found."), {}
            if target["properties"].get("provisioningState") != "Succeeded":
                return (
                    400,
                    _err(
                        "ReferencedResourceNotProvisioned",
                        f"Cannot proceed with operation because resource {ref} is not in Succeeded state.",
                    ),
                    {},
                )
        failure = self._take_failure("PUT", rtype)
        if failure and not failure.asynchronous:
            return failure.status, _err(failure.code, failure.message), {}
        name = m["subname"] or m["name"]
        path_id = _canonical_id(m)
        res = copy.deepcopy(body)
        res.update({"id": path_id, "name": name, "type": rtype})
        props = res.setdefault("properties", {})
        props["provisioningState"] = "Creating"
        props.pop("customData", None)
        if "osProfile" in props:
            props["osProfile"] = {k: v for k, v in props["osProfile"].items() if k != "customData"}  # ARM never returns it
        if rtype.lower() == "microsoft.network/publicipaddresses":
            props["ipAddress"] = "127.0.0.1"
        if rtype.lower() == "microsoft.network/networksecuritygroups":
            for rule in props.get("securityRules", []):
                rule["id"] = f"{path_id}/securityRules/{rule['name']}"
        disk_id = None
        if rtype.lower() == "microsoft.compute/virtualmachines":
            os_disk = props.get("storageProfile", {}).get("osDisk", {})
            disk_name = os_disk.get("name") or f"{name}_OsDisk_{uuid.uuid4().hex[:8]}"
            disk_id = f"/subscriptions/{m['sub']}/resourceGroups/{m['rg']}/providers/Microsoft.Compute/disks/{disk_name}"
            os_disk.setdefault("managedDisk", {})["id"] = disk_id
            # ARM's unique id of the VM, kept across updates (what the vTPM's runtime data names)
            props["vmId"] = self.resources[rid]["properties"].get("vmId") if rid in self.resources else str(uuid.uuid4())
        existed = rid in self.resources
        self.resources[rid] = res
        vm_body = body

        def done(ok: bool) -> None:
            with self.lock:
                current = self.resources.get(rid)
                if current is None:
                    return
                current["properties"]["provisioningState"] = "Succeeded" if ok else "Failed"
                if ok and disk_id:
                    self.resources[disk_id.lower()] = {
                        "id": disk_id,
                        "name": disk_id.rsplit("/", 1)[1],
                        "type": "Microsoft.Compute/disks",
                        "location": res.get("location"),
                        "properties": {"provisioningState": "Succeeded"},
                    }
                if ok and rtype.lower() == "microsoft.compute/virtualmachines" and not existed:
                    self._boot(rid, name, vm_body)  # first boot only: an update changes no guest

        op = Operation("InProgress", self.polls, on_done=done)
        if failure:
            op.error = {"code": failure.code, "message": failure.message}
        op_id = uuid.uuid4().hex
        self.operations[op_id] = op
        headers = {"Azure-AsyncOperation": f"{host}/fakearm/operations/{op_id}?api-version=2024-01-01", "Retry-After": "0"}
        return (200 if existed else 201), res, headers

    def delete(self, rid: str, host: str) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        res = self.resources.get(rid)
        if res is None:
            return 204, None, {}
        failure = self._take_failure("DELETE", res["type"])
        if failure and not failure.asynchronous:
            return failure.status, _err(failure.code, failure.message), {}
        users = self._users_of(rid)
        if users:
            code = _IN_USE.get(res["type"].lower(), "InUse")
            return 400, _err(code, f"Resource {res['id']} is in use by {', '.join(users)} and cannot be deleted."), {}

        def done(ok: bool) -> None:
            with self.lock:
                self._remove(rid)

        op = Operation("InProgress", self.polls, on_done=done, kind="location")
        if failure:
            op.error = {"code": failure.code, "message": failure.message}
        op_id = uuid.uuid4().hex
        self.operations[op_id] = op
        return 202, None, {"Location": f"{host}/fakearm/operations/{op_id}?api-version=2024-01-01", "Retry-After": "0"}

    def _remove(self, rid: str) -> None:
        res = self.resources.pop(rid, None)
        if res is None:
            return
        for child in [k for k in self.resources if k.startswith(rid + "/")]:
            self.resources.pop(child)
        sshd = self.sshds.pop(rid, None)
        if sshd:
            sshd.stop()
        if res["type"].lower() == "microsoft.compute/virtualmachines":  # cascade deleteOption: Delete
            props = res["properties"]
            os_disk = props.get("storageProfile", {}).get("osDisk", {})
            if os_disk.get("deleteOption") == "Delete":
                self.resources.pop(os_disk.get("managedDisk", {}).get("id", "").lower(), None)
            for nic in props.get("networkProfile", {}).get("networkInterfaces", []):
                if nic.get("properties", {}).get("deleteOption") == "Delete":
                    self.resources.pop(nic["id"].lower(), None)

    def poll(self, op_id: str) -> tuple[int, dict[str, Any] | None]:
        op = self.operations.get(op_id)
        if op is None:
            return 404, _err("NotFound", "no such operation")
        if op.status == "InProgress":
            if op.polls_left > 0:
                op.polls_left -= 1
            else:
                op.status = "Failed" if op.error else "Succeeded"
                if op.on_done:
                    op.on_done(op.error is None)
        if op.kind == "location":
            if op.status == "InProgress":
                return 202, None
            if op.status == "Failed":
                return 400, {"error": op.error}
            return 204, None
        body: dict[str, Any] = {"status": op.status}
        if op.error and op.status == "Failed":
            body["error"] = op.error
        return 200, body

    def list_tagged(self, rg: str, flt: str) -> list[dict[str, Any]]:
        m = re.match(r"tagName eq '([^']+)'(?: and tagValue eq '([^']*)')?", flt or "")
        out = []
        for res in self.resources.values():
            if f"/resourcegroups/{rg.lower()}/" not in res["id"].lower() or res["id"].count("/") != 8:
                continue
            tags = res.get("tags") or {}
            if m and (m.group(1) not in tags or (m.group(2) is not None and tags[m.group(1)] != m.group(2))):
                continue
            out.append({k: res[k] for k in ("id", "name", "type", "location", "tags") if k in res})
        return out


def _first_boot_host_key(name: str) -> tuple[str, str]:
    """The Ed25519 host key a guest generates at first boot (cloud-init's ``ssh-keygen``)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return private, f"{public} root@{name}"


def _platform(vm_size: str) -> Literal["snp", "tdx"]:
    """Azure's confidential sizes: ``a`` (AMD) in DCasv5/DCadsv5/ECasv5..., ``e`` (Intel TDX) in DCesv5/DCedsv5/ECesv5..."""
    m = re.match(r"Standard_[A-Z]+\d+([a-z]*)", vm_size)
    return "tdx" if m and "e" in m.group(1) else "snp"


def _canonical_id(m: re.Match[str]) -> str:
    rid = f"/subscriptions/{m['sub']}/resourceGroups/{m['rg']}/providers/{m['ns']}/{m['type']}/{m['name']}"
    if m["subtype"]:
        rid += f"/{m['subtype']}/{m['subname']}"
    return rid


def _err(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _handler(fake: FakeArm, role: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle stalls

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("x-ms-request-id", str(uuid.uuid4()))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n)) if n else None

        def _handle(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            if role == "identity":
                if self.headers.get("X-IDENTITY-HEADER") != fake.identity_header:
                    return self._send(401, {"error": "bad identity header"})
                token = secrets.token_hex(16)
                with fake.lock:
                    fake.tokens.add(token)
                    fake.token_requests.append(query)
                return self._send(
                    200,
                    {
                        "access_token": token,
                        "expires_on": str(int(time.time()) + 3600),
                        "resource": query.get("resource", ""),
                        "token_type": "Bearer",
                    },
                )
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in fake.tokens:
                return self._send(401, _err("InvalidAuthenticationToken", "The access token is invalid."))
            if "api-version" not in query:
                return self._send(400, _err("MissingApiVersionParameter", "The api-version query parameter is required."))
            host = f"https://{self.headers.get('Host')}"
            body = self._body()
            with fake.lock:
                m_op = re.match(r"^/fakearm/operations/([0-9a-f]+)$", url.path)
                if m_op and self.command == "GET":
                    return self._send(*fake.poll(m_op.group(1)), {"Retry-After": "0"})
                m_list = _LIST.match(url.path)
                if m_list and self.command == "GET":
                    if m_list["rg"].lower() not in fake.resource_groups:
                        return self._send(404, _err("ResourceGroupNotFound", "Resource group not found."))
                    return self._send(200, {"value": fake.list_tagged(m_list["rg"], query.get("$filter", ""))})
                m = _RES.match(url.path)
                if not m:
                    return self._send(404, _err("InvalidResourceType", f"no route for {url.path}"))
                rid = _canonical_id(m).lower()
                rtype = f"{m['ns']}/{m['subtype'] or m['type']}"
                fake.requests.append(
                    {"method": self.command, "path": url.path, "type": rtype, "api_version": query["api-version"], "body": body}
                )
                if m["action"] == "instanceView" and self.command == "GET":
                    if rid not in fake.resources:
                        return self._send(404, _err("ResourceNotFound", f"The Resource '{rid}' was not found."))
                    return self._send(
                        200, {"statuses": [{"code": "ProvisioningState/succeeded"}, {"code": "PowerState/running"}]}
                    )
                if m["action"] == "start" and self.command == "POST":
                    return self._send(200 if rid in fake.resources else 404)
                if m["action"] == "runCommand" and self.command == "POST":
                    refused = fake.extensions_refused(m, "runCommand")
                    if refused:
                        return self._send(*refused)
                    return self._send(200, {"value": [{"code": "ComponentStatus/StdOut/succeeded", "message": ""}]})
                if self.command == "PUT":
                    return self._send(*fake.put(rid, m, body or {}, host))
                if self.command == "DELETE":
                    return self._send(*fake.delete(rid, host))
                if self.command == "GET":
                    res = fake.resources.get(rid)
                    if res is None:
                        return self._send(404, _err("ResourceNotFound", f"The Resource '{_canonical_id(m)}' was not found."))
                    return self._send(200, res)
            return self._send(405, _err("MethodNotAllowed", self.command))

        do_GET = do_PUT = do_DELETE = do_POST = _handle

    return Handler
