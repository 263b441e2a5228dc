"""``duet seed-client``: the seed's client command line, for scripts written against the seed.

Why: the seed's end-to-end script (and people's own scripts) call ``duet_admin_client.py``
and parse what it prints (``started cvm_id: <id>`` above all). This command takes exactly its
options, parsed by argparse as the seed did, and prints what it printed, so such a script runs
with only the program name changed, against a controller started with ``--seed-api``.

It speaks the seed protocol (specs/seed-api.md), which has no replay protection; for anything
new use ``duet cvm ...`` (protocol v1). Differences from the seed's client: it exits non-zero
when the controller refuses (1) or an answer's signature does not verify (3) instead of exiting
0 or dying with a traceback; a controller whose attestation does not verify is not sent anything
(exit 3) unless ``--insecure`` (or ``DUET_INSECURE``) is given, while the seed's client printed
"Valid SGX controller: False" and sent the owner's signed request anyway; it reads the owner key
only for privileged actions; ``DUET_URL`` may set the default of ``--url``; the quote is checked
offline against Intel's pinned root (duet.attestation) instead of through Azure Attestation; and
the params of a start or a mark carry a random ``request_id`` (ignored by the controller, but
signed), so that repeating one is a new request and not a replay the controller refuses.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import secrets
import sys
from datetime import UTC, datetime
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from duet.cli.output import visible
from duet.protocol import lifecycle as lc
from duet.protocol import seed

ACTIONS = ("start-cvm", "stop-cvm", "run-commands", "get-cvm-state", "get-cvm-state-long", "mark-cvm")
PRIVILEGED_ACTIONS = ("start-cvm", "stop-cvm", "run-commands", "mark-cvm")
DEFAULT_URL = "http://127.0.0.1:6037"
REPORT_DATA_KEY_HASH = slice(368, 400)
"""Where the seed's client looks for SHA-256 of the controller's PEM: the first half of REPORTDATA."""

EXIT_REFUSED = 1
EXIT_UNTRUSTED = 3
DUET_OPTIONS = ("insecure",)
"""Options the seed's client did not have (not printed among the arguments)."""
TRUE_WORDS = ("1", "true", "t", "yes", "y", "on")
"""What ``DUET_INSECURE`` accepts as true, as the rest of the CLI (click) reads it."""


class SeedClientError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def build_parser() -> argparse.ArgumentParser:
    """The seed client's options, in its order (it prints them in that order)."""
    parser = argparse.ArgumentParser(prog="duet seed-client", description="The seed's client, speaking the seed protocol.")
    parser.add_argument("--url", default=os.environ.get("DUET_URL", DEFAULT_URL), help="Controller URL")
    parser.add_argument(
        "--service-owner-private-key-file",
        default="service_owner_private_key",
        help="Service owner private key to sign privileged commands",
    )
    parser.add_argument("--action", required=True, choices=list(ACTIONS))
    parser.add_argument("--cvm-type", metavar="CVM_TYPE", choices=list(lc.CVM_TYPES))
    parser.add_argument("--cvm-id", metavar="CVM_ID", help="Stop a CVM (privileged)")
    parser.add_argument("--cvm-mode", metavar="CVM_MODE", choices=list(lc.MARKABLE_MODES))
    parser.add_argument("--command", metavar="COMMAND", nargs="+", action="append", help="Run commands on a CVM (privileged)")
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=os.environ.get("DUET_INSECURE", "").strip().lower() in TRUE_WORDS,
        help="Go on when the controller's attestation does not verify (development only; warned about). Default: DUET_INSECURE.",
    )
    return parser


def missing_argument(args: argparse.Namespace) -> str | None:
    """The seed's checks, in its order; the name it printed for the first missing argument."""
    if args.action in PRIVILEGED_ACTIONS and not args.service_owner_private_key_file:
        return "SERVICE_OWNER_PRIVATE_KEY_FILE"
    if args.action == "start-cvm":
        return None if args.cvm_type else "CVM_TYPE"
    if not args.cvm_id:
        return "CVM_ID"
    if args.action == "run-commands" and not args.command:
        return "COMMAND"
    if args.action == "mark-cvm" and not args.cvm_mode:
        return "CVM_MODE"
    return None


def attestation_failure(quote_b64: str, public_pem: str) -> str | None:
    """Why the quote does not vouch for the controller's key; None if it verifies to Intel's root
    and its report data starts with SHA-256 of the PEM."""
    if not quote_b64:
        return "the controller sent no quote (it runs without a TEE)"
    from duet.attestation import sgx

    try:
        quote = base64.b64decode(quote_b64, validate=True)
        verdict = sgx.verify_quote(quote, trusted_root_keys=[sgx.intel_sgx_root_key()], now=datetime.now(UTC))
    except ValueError as exc:
        return f"the quote is malformed ({exc})"
    if not verdict.ok:
        return f"the quote does not verify to Intel's root ({verdict.message})"
    if quote[REPORT_DATA_KEY_HASH] != hashlib.sha256(public_pem.encode("utf-8")).digest():
        return "the quote does not bind the controller's public key"
    return None


def load_owner_key(path: str) -> rsa.RSAPrivateKey:
    try:
        data = open(path, "rb").read()
    except OSError as exc:
        raise SeedClientError(f"cannot read the service owner's private key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise SeedClientError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SeedClientError(f"{path} is not an RSA key; the seed protocol signs with RSA-PSS only")
    return key


class SeedClient:
    """Talks the seed protocol; checks every answer's signature with the key ``/quote`` gave."""

    def __init__(self, url: str, owner_key: rsa.RSAPrivateKey | None, *, insecure: bool = False) -> None:
        self.url = url.rstrip("/")
        self.owner_key = owner_key
        self._http = httpx.Client(timeout=None)
        answer = self._call("GET", "/quote")
        if (
            not isinstance(answer, dict)
            or not isinstance(answer.get("public_key"), str)
            or not isinstance(answer.get("quote"), str)
        ):
            self.close()
            raise SeedClientError(f"{self.url} does not speak the seed protocol (is the controller started with --seed-api?)")
        failure = attestation_failure(answer["quote"], answer["public_key"])
        print(f"Valid SGX controller: {failure is None}")
        if failure is not None:
            print("[WARNING]: Unverified SGX controller.")
            if not insecure:
                self.close()
                raise SeedClientError(
                    f"the controller's attestation did not verify: {failure}; nothing was sent. "
                    "Pass --insecure to use it anyway (development only).",
                    EXIT_UNTRUSTED,
                )
            print(f"[WARNING]: --insecure: going on with an unverified controller ({failure}).")
        try:
            key = serialization.load_pem_public_key(answer["public_key"].encode("utf-8"))
        except ValueError:
            raise SeedClientError("the controller's public key is not a PEM public key", EXIT_UNTRUSTED) from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise SeedClientError("the controller's public key is not an RSA key", EXIT_UNTRUSTED)
        self.controller_key = key

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = self._http.request(method, self.url + path, json=body)
            return response.json()
        except httpx.HTTPError as exc:
            raise SeedClientError(f"Request encountered an exception: {exc}") from None
        except ValueError:
            raise SeedClientError(
                f"{self.url}{path} did not answer with JSON (is the controller started with --seed-api?)"
            ) from None

    def request(self, path: str, params: dict[str, Any], *, privileged: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"params": params}
        if privileged:
            assert self.owner_key is not None
            body["signature"] = seed.sign(self.owner_key, params)
        answer = self._call("POST", path, body)
        if not isinstance(answer, dict) or not isinstance(answer.get("result"), dict):
            raise SeedClientError(f"the answer of {path} is not a seed answer (no result)", EXIT_UNTRUSTED)
        if not seed.verify(self.controller_key, answer.get("signature"), answer["result"]):
            raise SeedClientError(
                f"the controller's signature on the answer of {path} does not verify; nothing in it can be trusted",
                EXIT_UNTRUSTED,
            )
        return answer["result"]  # type: ignore[no-any-return]


def _print_state(result: dict[str, Any], long: bool) -> None:
    """Exactly as the seed printed a state; a hash is printed character by character, like its lines."""
    list_name, field = ("command_outputs", "output") if long else ("command_output_hashes", "output_hash")
    for entry in result["state"][list_name]:
        print("command: " + visible(entry["command"], one_line=True))  # control characters made visible
        print("-" * 20)
        for line in entry[field]:
            print(visible(line), end="")
        print("=" * 20)


def _request_id() -> dict[str, str]:
    """A random field in the signed params of a start or a mark: the controller ignores it, but it makes
    each request new, so that starting or reopening again is not refused as a replay of the last one."""
    return {"request_id": secrets.token_hex(16)}


def perform(client: SeedClient, args: argparse.Namespace) -> dict[str, Any]:
    """One action; prints its success output as the seed did and returns the result."""
    action = args.action
    if action == "start-cvm":
        result = client.request("/start_cvm", {"cvm_type": args.cvm_type, **_request_id()}, privileged=True)
        if result.get("success"):
            print("started cvm_id: " + visible(result["state"]["cvm_id"], one_line=True))
    elif action == "stop-cvm":
        result = client.request("/stop_cvm", {"cvm_id": args.cvm_id}, privileged=True)
        if result.get("success"):
            print(result["status"])
    elif action == "run-commands":
        commands = ["".join(parts) for parts in args.command]
        result = client.request("/run_commands", {"cvm_id": args.cvm_id, "commands": commands}, privileged=True)
        if result.get("success"):
            print(result["output"])
    elif action == "mark-cvm":
        params = {"cvm_id": args.cvm_id, "cvm_mode": args.cvm_mode, **_request_id()}
        result = client.request("/mark_cvm", params, privileged=True)
        if result.get("success"):
            print(result["mode"])
    else:
        long = action == "get-cvm-state-long"
        result = client.request("/get_cvm_state", {"cvm_id": args.cvm_id, "should_be_long": long}, privileged=False)
        if result.get("success"):
            _print_state(result, long)
    return result


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    missing = missing_argument(args)
    if missing is not None:
        print(f"Missing argument: {missing}")
        print("Invalid args.")
        return EXIT_REFUSED
    print("=" * 10 + "Start of command: " + args.action + "=" * 10)
    print("-" * 10 + "Arguments" + "-" * 10)
    for name, value in vars(args).items():
        if name not in DUET_OPTIONS:  # the seed's options only, as its client printed them
            print(f"{name}: {value}")
    print("-" * 29)
    sys.stdout.flush()
    status = 0
    client: SeedClient | None = None
    try:
        owner_key = load_owner_key(args.service_owner_private_key_file) if args.action in PRIVILEGED_ACTIONS else None
        client = SeedClient(args.url, owner_key, insecure=args.insecure)
        result = perform(client, args)
        if not result.get("success"):
            print("ERROR: " + visible(result.get("error"), one_line=True))
            status = EXIT_REFUSED
    except SeedClientError as exc:
        print(f"ERROR: {exc}")
        status = exc.exit_code
    finally:
        if client is not None:
            client.close()
    print("=" * 11 + "End of command: " + args.action + "=" * 11)
    print()
    return status
