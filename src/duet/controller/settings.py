"""Controller settings: one place for every limit and default, with the reasons for them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from duet.errors import ConfigError

MiB = 1024 * 1024
DEFAULT_PORT = 6037
"""Where the controller serves protocol v1 (HTTPS) unless told otherwise."""


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    owner_keys: tuple[Path, ...] = ()
    providers: tuple[str, ...] = ("local",)
    """The providers CVMs may be started with; the first is the default."""
    tee: str = "none"
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_body_bytes: int = 1 * MiB
    """Larger request bodies are refused with 413 before they are parsed."""
    request_skew_s: float = 300.0
    """How far an owner request's ``issued_at`` may be from the controller's clock."""
    command_timeout_s: float = 300.0
    max_command_timeout_s: float = 3600.0
    output_limit: int = 1 * MiB
    """Bytes kept per stream (stdout, stderr) of one command; the rest is cut and marked."""
    max_output_limit: int = 16 * MiB
    ssh_ready_timeout_s: float = 120.0
    ssh_connect_timeout_s: float = 10.0
    """Connecting to a CVM over SSH: TCP, key exchange and authentication."""
    ssh_channel_timeout_s: float = 5.0
    """Opening a command's channel on a connected CVM (one round trip; a stalled CVM never answers)."""
    ssh_close_timeout_s: float = 2.0
    """Each step of ending a timed-out command on the CVM (the kill, the channel's close) and of
    closing a connection. The defaults of these three are ``duet.remote.ssh``'s."""
    lockdown_timeout_s: float = 60.0
    """How long one attempt of the ``--final`` lockdown command may take on the CVM."""
    lockdown_retry_s: float = 5.0
    lockdown_retry_max_s: float = 300.0
    """A lockdown that could not be verified is retried after ``lockdown_retry_s``, doubling up
    to ``lockdown_retry_max_s``, until it is verified or the CVM is stopped."""
    provider_env: dict[str, str] = field(default_factory=dict)
    tls: bool = True
    """Serve HTTPS with the sealed TLS key; ``False`` (``--no-tls``) is for development only."""
    maa_url: str | None = None
    """Azure Attestation instance: at start, the controller has its own quote checked there and
    refuses to serve if the answer is not a valid token for its own enclave and identity."""
    gramine_attestation_dir: Path = Path("/dev/attestation")
    gramine_sealed_dir: Path = Path("/duet/sealed")
    """With ``--tee gramine``: the encrypted mount (keyed to MRENCLAVE) named in the manifest."""
    seed_api: bool = False
    """Also serve the seed's protocol at the root paths (controller/seed_api.py). Off by
    default: it has no replay protection."""
    seed_listen: tuple[str, int] | None = None
    """Serve the seed's protocol on its own plain-HTTP address (its clients know nothing of
    duet's TLS certificate), while /v1 stays on the HTTPS listener."""
    seed_allow_replays: bool = False
    """Accept a seed ``start_cvm`` or ``mark_cvm in-update`` request the controller has accepted
    before (the seed protocol has no nonce; by default such a copy is refused as a replay, see
    docs/seed-api.md). For seed clients that repeat identical requests; warned about at start
    and recorded in the ledger (``controller.seed_replays_allowed``) at every start."""

    # --- approvals (design §11, docs/approvals.md) ---------------------------------------
    approval_policy: Path | None = None
    """The approval policy (TOML): how many owners must sign each operation. Read at first start
    and pinned in sealed state; at a later start it must be the policy in force, or omitted.
    None: one owner for everything."""
    max_pending_proposals: int = 32
    """Proposals one owner may have waiting at once: a stolen key cannot fill the controller's
    memory or the other owners' lists with proposals (``too_many_proposals``)."""
    proposal_sweep_s: float = 30.0
    """How often expired proposals (and those whose CVM changed mode) are recorded as closed; a
    vote on one is refused at once whether or not the sweep has recorded it yet."""

    # --- CVM attestation (design §10, docs/attestation.md) -----------------------------
    cvm_attestation: bool = True
    """Every new CVM proves what it is before it reaches in-update, and again before in-service
    when its last proof is older than the policy allows; its host key, born in the CVM, is pinned
    only once the evidence binds it. False (``--no-cvm-attestation``): the provider's host key is
    pinned unverified; each CVM started so is recorded and shown as unattested."""
    cvm_policy: Path | None = None
    """The CVM policy (TOML, docs/policy.md); None: any measurement, never debug or migration."""
    trust_simulated_cvm: bool = False
    """Accept the SIMULATED hardware of local CVMs (``duet.providers.local_tsm``): its roots are
    trusted only when the operator says so, and its verdicts say SIMULATED everywhere."""
    cvm_attest_timeout_s: float = 60.0
    """How long the collection program may run on the CVM (the vTPM takes seconds)."""

    # --- outputs: budgets, quota, retention (docs/security.md) -----------------------------
    request_output_budget: int = 16 * MiB
    """Bytes of output (stdout and stderr of all its commands) one ``run`` request keeps and
    answers. Past it, the request's commands still run, their outputs cut and marked truncated."""
    cvm_output_quota: int = 1024 * MiB
    """Bytes of output kept for one CVM (outputs recorded within the retention period). A CVM at
    its quota refuses commands with 409 ``output_quota_exceeded``; the last command's outputs are
    cut to fit."""
    output_retention_days: float | None = 90.0
    """Outputs last stored longer ago than this are pruned (at start, then every
    ``output_prune_interval_s``); their hashes stay in the ledger forever. None: kept forever."""
    output_prune_interval_s: float = 3600.0
    seed_state_max_bytes: int = 1 * MiB
    """The seed's long state (``should_be_long``) holds at most this many bytes of output text;
    the rest is replaced by a marker line naming the outputs' hashes (served at /v1/blobs)."""

    # --- hostile clients: what one client may hold (docs/security.md, "Hostile clients") ---
    max_header_bytes: int = 32 * 1024
    """A request head (request line and headers) larger than this is refused with 431."""
    max_header_count: int = 100
    """More header lines than this in one request: 431."""
    max_request_line_bytes: int = 8 * 1024
    """A request target (path and query) longer than this: 414."""
    header_timeout_s: float = 10.0
    """A request head must arrive in full within this long of the connection's start (after TLS)
    or, for a later request on the connection, of its first byte: else 408 (a silent close when
    nothing was sent), however slowly its bytes trickle in."""
    idle_timeout_s: float = 30.0
    """A request body that pauses this long while the controller waits for it: 408."""
    keep_alive_timeout_s: float = 5.0
    """An idle connection between requests is closed after this long."""
    max_connections: int = 2048
    """Client connections open at once, all listeners and addresses together (TLS handshakes
    included); more are refused at once (503 on plain HTTP, a close before TLS). Lowered at
    start if the open-file limit cannot hold them, so a flood never exhausts descriptors."""
    max_connections_per_address: int = 128
    """Client connections open at once from one IP address; more are refused as above."""
    tls_handshake_timeout_s: float = 10.0
    """A TLS handshake not finished within this long is abandoned and its connection closed."""

    # --- transparency: tiles in object storage (docs/transparency.md) -------------------------
    publish_tiles: str | None = None
    """Publish the ledger as C2SP tlog-tiles to this store as it grows (``--publish-tiles``):
    ``azure://ACCOUNT/CONTAINER[/PREFIX]``, ``s3://BUCKET[/PREFIX][?endpoint=URL]``, or a directory;
    credentials from the environment (duet.publish.stores). Never blocks appends."""
    publish_tiles_interval_s: float = 0.5
    """At most one publication round this often: bursts of appends are coalesced."""

    # --- transparency: checkpoints and witnesses (docs/transparency.md) ---------------------
    witnesses: tuple[tuple[str, str], ...] = ()
    """(submission URL, cosignature/v1 vkey) of each C2SP tlog-witness the controller sends
    its checkpoints to (``--witness URL=VKEY``); their cosignatures are served with the
    checkpoint at /v1/ledger/checkpoint."""
    witness_quorum: int | None = None
    """How many of the witnesses make a checkpoint "witnessed" (``?witnessed=true`` serves the
    newest such one); None: all of them. Auditors apply their own policy."""
    witness_timeout_s: float = 5.0
    """One add-checkpoint exchange with a witness (connecting, sending, the answer, and the
    second request a 409 answer calls for). Appends never wait for it."""
    witness_retry_s: float = 1.0
    witness_retry_max_s: float = 60.0
    """A witness that failed is tried again after ``witness_retry_s``, doubling up to
    ``witness_retry_max_s`` while it keeps failing (logged once per streak)."""

    @property
    def database(self) -> Path:
        return self.state_dir / "duet.sqlite3"

    @property
    def ssh_margin_s(self) -> float:
        """How much longer than its command's timeout a command holds its CVM's lock at most, whatever
        the CVM does: connecting, opening the channel, killing and closing it on timeout, and
        dropping the connection of a CVM that stalled."""
        return self.ssh_connect_timeout_s + self.ssh_channel_timeout_s + 3 * self.ssh_close_timeout_s

    @property
    def nonce_retention_s(self) -> float:
        """Nonces must outlive the window in which their request is still accepted."""
        return 2 * self.request_skew_s + 60


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines, as Docker's ``--env-file`` reads them (the seed's ``azure_config.env``):
    blank lines and ``#`` comments skipped, values taken as written (quotes are not removed)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc.strerror}", code="env_file_unreadable") from None
    settings: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip() or any(c.isspace() for c in key.strip()):
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE", code="bad_env_file")
        settings[key.strip()] = value
    return settings
