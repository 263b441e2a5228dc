"""Load: many local CVMs, concurrent clients and thousands of idle connections on one controller.

Issue 12's requirement: 50 local CVMs started concurrently and driven by 8 clients for 60 s with
a mix of runs, reads and marks, plus 2,000 idle connections held open: no error, memory below
1 GB, p99 of ``/v1/ledger/head`` under 100 ms.

A real controller as users run it (``_setup.running_controller``: HTTPS, simulated TEE, a
verified and pinned client). The phases, in order:

1. the CVMs are started concurrently through the SDK (one thread each; each waits for its job);
2. baseline: a prober process reads ``/v1/ledger/head`` (verified SDK call, one every
   ``--probe-interval-ms``) for ``--baseline-seconds`` while the controller is idle;
3. ``--idle`` TLS connections are opened (handshake done, then nothing sent) by a separate
   process, from ``--idle-per-address`` connections per loopback source address (127.0.1.x, as
   many idle clients would be); one the controller closes is counted and opened again, so the
   number stays up for the whole run;
4. the load: ``--clients`` threads, each with its own verified client, loop for ``--seconds``
   over a mix of ``run`` (``echo ok`` on one of its own CVMs in-update), CVM state reads, ledger
   head reads and ``mark`` flips (in-update <-> in-service) of its own CVMs, so that marks never
   fight each other and every refusal is a real error; the prober measures again meanwhile.

The prober and the idle holder are separate processes so that the clients' threads (one GIL)
neither delay the probes nor the idle sockets: the latency measured is the controller's.

Printed: operations and errors by kind (any error fails), the controller's peak RSS (VmHWM),
p50/p99 of the head under load and idle (the baseline, same run) with their ratio, the idle
connections held. Exits 1 if any requirement is not met. A short run for development:
``bench/load.py --seconds 10 --cvms 10 --idle 200`` (or the ``DUET_LOAD_*`` environment).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import resource
import ssl
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

from _setup import running_controller
from duet.client.sdk import DuetClient
from duet.client.trust import TrustStore
from duet.errors import DuetError

IN_UPDATE, IN_SERVICE = "in-update", "in-service"
MAX_RSS_BYTES = 1_000_000_000  # "below 1 GB"
MAX_HEAD_P99_MS = 100.0
MIX: tuple[tuple[str, int], ...] = (("run", 35), ("state", 25), ("head", 20), ("mark", 20))


# --- arguments -------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    def env(name: str, default: float) -> float:
        return float(os.environ.get(f"DUET_LOAD_{name}", default))

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cvms", type=int, default=int(env("CVMS", 50)), help="local CVMs started concurrently (50)")
    parser.add_argument("--clients", type=int, default=int(env("CLIENTS", 8)), help="client threads (8)")
    parser.add_argument("--seconds", type=float, default=env("SECONDS", 60), help="duration of the load (60)")
    parser.add_argument("--idle", type=int, default=int(env("IDLE", 2000)), help="idle TLS connections held open (2000)")
    parser.add_argument("--idle-per-address", type=int, default=int(env("IDLE_PER_ADDRESS", 20)))
    parser.add_argument("--baseline-seconds", type=float, default=env("BASELINE_SECONDS", 10))
    parser.add_argument("--probe-interval-ms", type=float, default=env("PROBE_INTERVAL_MS", 10))
    return parser.parse_args(argv)


def raise_open_files(needed: int) -> int:
    """Raise the soft open-files limit towards the hard one (the controller, started after,
    inherits it); the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else max(soft, min(hard, max(needed, soft)))
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --- measurements ----------------------------------------------------------------------------


def ms(samples: list[float], q: int) -> float:
    """The ``q``-th percentile (1..99) of durations in seconds, in milliseconds."""
    if len(samples) < 2:
        return samples[0] * 1000 if samples else float("nan")
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] * 1000


def proc_status(pid: int, field_name: str) -> int:
    """A ``kB`` field of /proc/<pid>/status, in bytes (0 if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def error_kind(op: str, exc: BaseException) -> str:
    code = getattr(exc, "code", None) if isinstance(exc, DuetError) else None
    return f"{op}: {code or type(exc).__name__}"


# --- the prober (its own process) ------------------------------------------------------------


def prober(url: str, trust_dir: str, interval_s: float, stop: EventType, out: Connection) -> None:
    """``/v1/ledger/head`` through the verified SDK until ``stop``; sends (samples, errors)."""
    client = DuetClient(url, trust=TrustStore(Path(trust_dir)))
    samples: list[float] = []
    errors: Counter[str] = Counter()
    first: dict[str, str] = {}
    try:
        client.head()  # the connection and the pin, not measured
    except Exception as exc:
        errors[error_kind("probe", exc)] += 1
    while not stop.is_set():
        started = time.perf_counter()
        try:
            client.head()
            samples.append(time.perf_counter() - started)
        except Exception as exc:
            kind = error_kind("probe", exc)
            errors[kind] += 1
            first.setdefault(kind, str(exc)[:300])
        time.sleep(interval_s)
    client.close()
    out.send((samples, dict(errors), first))


@dataclass
class Probe:
    url: str
    trust_dir: Path
    interval_s: float
    context: Any = field(default_factory=lambda: multiprocessing.get_context("spawn"))

    def __post_init__(self) -> None:
        self.stop = self.context.Event()
        self.receive, send = self.context.Pipe(duplex=False)
        self.process = self.context.Process(
            target=prober, args=(self.url, str(self.trust_dir), self.interval_s, self.stop, send), daemon=True
        )

    def start(self) -> Probe:
        self.process.start()
        return self

    def finish(self) -> tuple[list[float], dict[str, int], dict[str, str]]:
        self.stop.set()
        result: tuple[list[float], dict[str, int], dict[str, str]] = self.receive.recv()
        self.process.join(30)
        return result


# --- the idle connections (their own process) ------------------------------------------------


def idle_holder(port: int, count: int, per_address: int, ready: EventType, stop: EventType, out: Connection) -> None:
    asyncio.run(_hold_idle(port, count, per_address, ready, stop, out))


async def _hold_idle(port: int, count: int, per_address: int, ready: EventType, stop: EventType, out: Connection) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # these connections never read an answer: nothing to trust
    stats: Counter[str] = Counter()
    first: dict[str, str] = {}
    state = {"open": 0, "min_open": count, "stopping": 0}
    handshakes = asyncio.Semaphore(64)
    all_open = asyncio.Event()

    async def hold(index: int) -> None:
        source = f"127.0.{1 + index // per_address // 250}.{1 + index // per_address % 250}"
        while not state["stopping"]:
            try:
                async with handshakes:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", port, ssl=context, local_addr=(source, 0)), 30
                    )
            except Exception as exc:
                kind = f"idle connect: {type(exc).__name__}"
                stats[kind] += 1
                first.setdefault(kind, str(exc)[:300])
                await asyncio.sleep(1)
                continue
            stats["opened"] += 1
            state["open"] += 1
            if state["open"] == count:
                all_open.set()
            try:
                data = await reader.read(4096)  # nothing is ever sent: this returns when the controller closes
                reason = "answer then close" if data else "closed"
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
                reason = type(exc).__name__
            except asyncio.CancelledError:
                writer.close()
                raise
            state["open"] -= 1
            writer.close()
            if not state["stopping"]:
                state["min_open"] = min(state["min_open"], state["open"])
                stats[f"closed by the controller ({reason})"] += 1
                await asyncio.sleep(0.2)  # then open it again, as a client that keeps its connection would

    tasks = [asyncio.create_task(hold(index)) for index in range(count)]
    started = time.perf_counter()
    try:
        await asyncio.wait_for(all_open.wait(), 120)
    except TimeoutError:
        pass
    stats["setup_ms"] = round((time.perf_counter() - started) * 1000)
    stats["open_at_start"] = state["open"]
    state["min_open"] = state["open"]
    ready.set()
    await asyncio.get_running_loop().run_in_executor(None, stop.wait)
    stats["open_at_end"] = state["open"]
    stats["min_open"] = state["min_open"]
    state["stopping"] = 1
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    out.send((dict(stats), first))


# --- the clients -----------------------------------------------------------------------------


@dataclass
class Tally:
    ops: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    first_error: dict[str, str] = field(default_factory=dict)
    latency: dict[str, list[float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def merge(self, ops: Counter[str], errors: Counter[str], first: dict[str, str], latency: dict[str, list[float]]) -> None:
        with self.lock:
            self.ops.update(ops)
            self.errors.update(errors)
            for kind, message in first.items():
                self.first_error.setdefault(kind, message)
            for op, samples in latency.items():
                self.latency.setdefault(op, []).extend(samples)


def client_loop(
    make_client: Callable[[], DuetClient], own: list[str], everyone: list[str], deadline: float, seed: int, tally: Tally
) -> None:
    """One client: a closed loop over the mix until ``deadline``; it alone marks its ``own`` CVMs."""
    rng = random.Random(seed)
    modes = dict.fromkeys(own, IN_UPDATE)
    ops: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    first: dict[str, str] = {}
    latency: dict[str, list[float]] = {op: [] for op, _ in MIX}
    names, weights = [op for op, _ in MIX], [weight for _, weight in MIX]
    with make_client() as client:
        while time.monotonic() < deadline:
            op = rng.choices(names, weights)[0]
            in_update = [cvm for cvm in own if modes[cvm] == IN_UPDATE]
            if op == "run" and not in_update:
                op = "mark"
            if op == "mark" and not own:
                op = "state"
            cvm = ""
            started = time.perf_counter()
            try:
                if op == "run":
                    cvm = rng.choice(in_update)
                    answer = client.run(cvm, ["echo ok"])
                    result = answer["results"][0]
                    if result["exit_status"] != 0 or result["stdout"] != "ok\n":
                        raise AssertionError(f"run answered {result!r}")
                elif op == "state":
                    cvm = rng.choice(everyone)
                    answer = client.state(cvm)
                    mode = answer["cvm"]["mode"]
                    if answer["cvm"]["cvm_id"] != cvm or (
                        mode != modes[cvm] if cvm in modes else mode not in (IN_UPDATE, IN_SERVICE)
                    ):
                        raise AssertionError(f"state of {cvm[:16]}… says {answer['cvm']!r}")
                elif op == "head":
                    if int(client.head()["tree_size"]) <= 0:
                        raise AssertionError("empty ledger head")
                else:
                    # Never mark the last in-update CVM in-service: runs need one.
                    cvm = rng.choice(own if len(in_update) > 1 else [c for c in own if modes[c] == IN_SERVICE] or own)
                    new = IN_SERVICE if modes[cvm] == IN_UPDATE else IN_UPDATE
                    answer = client.mark(cvm, new)
                    if answer["mode"] != new or answer["changed"] is not True:
                        raise AssertionError(f"mark {new} answered {answer!r}")
                    modes[cvm] = new
                latency[op].append(time.perf_counter() - started)
                ops[op] += 1
            except Exception as exc:
                kind = error_kind(op, exc)
                errors[kind] += 1
                first.setdefault(kind, str(exc)[:300])
                if op == "mark":  # learn the mode the controller holds, so one error does not cascade
                    try:
                        modes[cvm] = client.state(cvm)["cvm"]["mode"]
                    except Exception:
                        pass
    tally.merge(ops, errors, first, latency)


# --- the run ---------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    faithful = (args.cvms, args.clients, args.seconds, args.idle) == (50, 8, 60, 2000)
    needed = args.idle + 64 * args.cvms + 1024  # the controller: idle + clients + SSH to CVMs + files
    limit = raise_open_files(needed)
    failures: list[str] = []
    if limit < needed:
        fits = max(0, limit - 64 * args.cvms - 1024)
        failures.append(f"open files limited to {limit} (hard limit): {args.idle} idle connections do not fit, {fits} do")
        print(f"WARNING: {failures[-1]}", flush=True)
        args.idle = fits
    print(
        f"load: {args.cvms} CVMs, {args.clients} clients for {args.seconds:g} s, {args.idle} idle TLS connections "
        f"({args.idle_per_address} per source address); open-files limit {limit}"
        + ("" if faithful else " — SHORT RUN, not the requirement's scale"),
        flush=True,
    )

    with running_controller() as bench:
        assert bench.controller.process is not None
        pid = bench.controller.process.pid
        trust_dir = bench.workdir / "user"
        owner_key = bench.client.owner_key

        def make_client() -> DuetClient:
            return DuetClient(bench.controller.url, owner_key=owner_key, trust=TrustStore(trust_dir))

        # 1. CVMs started concurrently, each start waiting for its job.
        start_errors: Counter[str] = Counter()
        start_first: dict[str, str] = {}
        start_times: list[float] = []
        start_lock = threading.Lock()

        def start_one(_: int) -> str | None:
            began = time.perf_counter()
            try:
                with make_client() as client:
                    accepted = client.start("snp")
                    job = client.wait_job(accepted["job_id"])
                if job["status"] != "succeeded":
                    raise AssertionError(f"start job ended {job['status']}: {job.get('error')}")
                start_times.append(time.perf_counter() - began)
                return str(accepted["cvm_id"])
            except Exception as exc:
                kind = error_kind("start", exc)
                with start_lock:
                    start_errors[kind] += 1
                    start_first.setdefault(kind, str(exc)[:300])
                return None

        began = time.perf_counter()
        with ThreadPoolExecutor(max(1, args.cvms)) as pool:
            cvms = [cvm for cvm in pool.map(start_one, range(args.cvms)) if cvm]
        start_wall = time.perf_counter() - began
        rss_after_start = proc_status(pid, "VmRSS")
        print(
            f"started {len(cvms)}/{args.cvms} CVMs concurrently in {start_wall:.1f} s "
            f"(each until in-update: median {ms(start_times, 50):.0f} ms, max {max(start_times, default=0) * 1000:.0f} ms)",
            flush=True,
        )

        # 2. Baseline: the prober against the idle controller.
        probe = Probe(bench.controller.url, trust_dir, args.probe_interval_ms / 1000).start()
        time.sleep(min(args.baseline_seconds, args.seconds))
        idle_samples, idle_probe_errors, idle_probe_first = probe.finish()

        # 3. The idle connections.
        context = multiprocessing.get_context("spawn")
        holder_ready, holder_stop = context.Event(), context.Event()
        holder_receive, holder_send = context.Pipe(duplex=False)
        holder = context.Process(
            target=idle_holder,
            args=(bench.controller.port, args.idle, args.idle_per_address, holder_ready, holder_stop, holder_send),
            daemon=True,
        )
        holder.start()
        holder_ready.wait(180)

        # 4. The load, probed.
        tally = Tally()
        probe = Probe(bench.controller.url, trust_dir, args.probe_interval_ms / 1000).start()
        time.sleep(1)  # the prober's process is up and connected before the load starts
        deadline = time.monotonic() + args.seconds
        threads = [
            threading.Thread(
                target=client_loop,
                args=(make_client, cvms[index :: args.clients], cvms, deadline, index, tally),
                name=f"client-{index}",
            )
            for index in range(args.clients)
        ]
        load_began = time.perf_counter()
        for thread in threads:
            thread.start()
        rss_samples: list[int] = []
        while any(thread.is_alive() for thread in threads):
            rss_samples.append(proc_status(pid, "VmRSS"))
            time.sleep(0.5)
        load_wall = time.perf_counter() - load_began
        load_samples, load_probe_errors, load_probe_first = probe.finish()
        holder_stop.set()
        holder_stats, holder_first = holder_receive.recv() if holder_receive.poll(60) else ({}, {})
        holder.join(30)
        peak_rss = proc_status(pid, "VmHWM")
        end_rss = proc_status(pid, "VmRSS")
        head = bench.client.head()
        alive = bench.controller.process.poll() is None

    # --- report ----------------------------------------------------------------------------
    errors: Counter[str] = Counter(start_errors) + tally.errors + Counter(idle_probe_errors) + Counter(load_probe_errors)
    first = {**start_first, **tally.first_error, **idle_probe_first, **load_probe_first}
    for kind, value in holder_stats.items():
        if kind.startswith("idle connect"):
            errors[kind] += value
            first.update({k: v for k, v in holder_first.items() if k == kind})
    total_ops = sum(tally.ops.values())
    print(f"operations in {load_wall:.1f} s: {total_ops} ({total_ops / load_wall:.0f}/s)")
    for op, _ in MIX:
        samples = tally.latency.get(op, [])
        print(f"  {op:6} {tally.ops[op]:6}  p50 {ms(samples, 50):7.1f} ms  p99 {ms(samples, 99):7.1f} ms")
    print(f"ledger: {head['tree_size']} entries at the end")
    print(f"errors: {sum(errors.values())}" + ("" if errors else " (target 0)"))
    for kind, count in sorted(errors.items()):
        print(f"  {count:6} × {kind}: {first.get(kind, '')}")
    print(
        f"idle connections: {holder_stats.get('open_at_start', 0)}/{args.idle} open after "
        f"{holder_stats.get('setup_ms', 0) / 1000:.1f} s, at least {holder_stats.get('min_open', 0)} during the load, "
        f"{holder_stats.get('open_at_end', 0)} at its end"
    )
    for kind, count in sorted(holder_stats.items()):
        if kind.startswith("closed"):
            print(f"  {count:6} × {kind} (and opened again)")
    print(
        f"controller memory: peak RSS (VmHWM) {peak_rss / 1e6:.0f} MB (target < {MAX_RSS_BYTES / 1e6:.0f} MB); "
        f"{rss_after_start / 1e6:.0f} MB after the starts, max sampled {max(rss_samples, default=0) / 1e6:.0f} MB "
        f"under load, {end_rss / 1e6:.0f} MB at the end"
    )
    idle_p50, idle_p99 = ms(idle_samples, 50), ms(idle_samples, 99)
    load_p50, load_p99 = ms(load_samples, 50), ms(load_samples, 99)
    print(
        f"/v1/ledger/head under load: p50 {load_p50:.1f} ms, p99 {load_p99:.1f} ms over {len(load_samples)} probes "
        f"(target p99 < {MAX_HEAD_P99_MS:.0f} ms)"
    )
    print(
        f"/v1/ledger/head idle (baseline, same run): p50 {idle_p50:.1f} ms, p99 {idle_p99:.1f} ms over {len(idle_samples)} probes"
    )
    print(f"ratio load/idle: p50 {load_p50 / idle_p50:.1f}x, p99 {load_p99 / idle_p99:.1f}x")

    if len(cvms) < args.cvms:
        failures.append(f"only {len(cvms)} of {args.cvms} CVMs started")
    if errors:
        failures.append(f"{sum(errors.values())} errors")
    if holder_stats.get("open_at_start", 0) < args.idle:
        failures.append(f"only {holder_stats.get('open_at_start', 0)} of {args.idle} idle connections could be opened")
    if not peak_rss or peak_rss >= MAX_RSS_BYTES:
        failures.append(f"controller peak RSS {peak_rss / 1e6:.0f} MB (or not measured)")
    if not load_samples or not load_p99 < MAX_HEAD_P99_MS:
        failures.append(f"p99 of /v1/ledger/head under load {load_p99:.1f} ms")
    if not alive:
        failures.append("the controller exited during the run")
    if failures:
        print("REQUIREMENT NOT MET: " + "; ".join(failures))
        return 1
    print("requirement met" + ("" if faithful else " at this (short) scale"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
