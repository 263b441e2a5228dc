"""The Gramine manifest template renders, as gramine-manifest would, into TOML with the keys
the controller's security depends on."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

import jinja2
import pytest

TEMPLATE = Path(__file__).resolve().parents[3] / "deploy" / "gramine" / "duet.manifest.template"
ENTRYPOINT = "/usr/bin/python3"
ARCH_LIBDIR = "/lib/x86_64-linux-gnu"
RUNTIME = "/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc"
LIBOS = "/usr/lib/x86_64-linux-gnu/gramine/libsysdb.so"


class FakeGramine:
    """What gramine-manifest puts in the template's ``gramine`` namespace."""

    libos = LIBOS

    @staticmethod
    def runtimedir(libc: str = "glibc") -> str:
        return RUNTIME


class FakePython:
    """``python.get_sys_path(entrypoint)``: the interpreter's sys.path, as Path objects."""

    @staticmethod
    def get_sys_path(entrypoint: str) -> list[Path]:
        return [Path(p) for p in sys.path if p and Path(p).exists() and "tests" not in p]


def render(**overrides: str) -> dict[str, Any]:
    values: dict[str, Any] = {
        "gramine": FakeGramine(),
        "python": FakePython(),
        "env": {},
        "entrypoint": ENTRYPOINT,
        "arch_libdir": ARCH_LIBDIR,
        "log_level": "error",
        "state_dir": "/var/lib/duet/state",
        "sealed_uri": "/var/lib/duet/sealed",
        "owners_dir": "/etc/duet/owners",
        "owner_keys": "alice.pub, bob.pub",
        "approval_policy": "",
        "listen": "0.0.0.0:6037",
        "provider": "azure",
        **overrides,
    }
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    text = environment.from_string(TEMPLATE.read_text()).render(**values)
    return tomllib.loads(text)


def test_manifest_renders_to_toml_with_the_required_keys() -> None:
    m = render()
    sgx = m["sgx"]
    assert sgx["remote_attestation"] == "dcap" and sgx["debug"] is False
    assert sgx["file_check_policy"] == "strict" and sgx["isvprodid"] == 1 and sgx["isvsvn"] >= 1
    assert m["libos"]["entrypoint"] == ENTRYPOINT

    [sealed] = [mount for mount in m["fs"]["mounts"] if mount.get("type") == "encrypted"]
    assert sealed == {
        "type": "encrypted",
        "path": "/duet/sealed",
        "uri": "file:/var/lib/duet/sealed",
        "key_name": "_sgx_mrenclave",
    }

    argv = m["loader"]["argv"]
    assert argv[:5] == [ENTRYPOINT, "-m", "duet", "controller", "serve"]
    assert argv[argv.index("--tee") + 1] == "gramine" and argv[argv.index("--sealed-dir") + 1] == "/duet/sealed"
    assert "--no-tls" not in argv and "--insecure" not in argv
    owners = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--owner-key"]
    assert owners == ["/etc/duet/owners/alice.pub", "/etc/duet/owners/bob.pub"]
    assert "insecure__use_cmdline_argv" not in m["loader"]  # the host must not choose the command line

    trusted = sgx["trusted_files"]
    assert f"file:{ENTRYPOINT}" in trusted and f"file:{LIBOS}" in trusted and f"file:{RUNTIME}/" in trusted
    site = next(p for p in FakePython.get_sys_path(ENTRYPOINT) if p.is_dir() and "site-packages" in str(p))
    assert f"file:{site}/" in trusted  # duet's own code and dependencies are measured
    assert set(sgx["allowed_files"]) == {"file:/etc/duet/owners/", "file:/var/lib/duet/state/"}
    assert not any("/etc/duet/owners" in t or "sealed" in t for t in trusted)

    env = m["loader"]["env"]
    assert env["SUBSCRIPTION_ID"] == {"passthrough": True}
    assert not any(name.startswith("DUET_") for name in env)  # the host cannot reconfigure duet by environment


def test_every_variable_must_be_given() -> None:
    """A missing variable is an error, not an empty string (e.g. an empty owner key path)."""
    with pytest.raises(jinja2.UndefinedError):
        environment = jinja2.Environment(undefined=jinja2.StrictUndefined)
        environment.from_string(TEMPLATE.read_text()).render(gramine=FakeGramine(), python=FakePython(), env={})


def test_an_approval_policy_file_is_on_the_measured_command_line_when_given() -> None:
    assert "--approval-policy" not in render()["loader"]["argv"]
    argv = render(approval_policy="approvals.toml")["loader"]["argv"]
    assert argv[argv.index("--approval-policy") + 1] == "/etc/duet/owners/approvals.toml"  # beside the owner keys (allowed)
