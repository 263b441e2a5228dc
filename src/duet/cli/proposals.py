"""``duet proposals``, ``duet approve|reject|withdraw``, ``duet owners``, ``duet policy``: the
commands of M-of-N approvals (docs/approvals.md).

An operation the approval policy gives a threshold above 1 is answered with a proposal instead
of its result; the operation's command then prints who must approve and exits with
:data:`EXIT_PENDING`, so that a script does not take a pending change for a done one.
"""

from __future__ import annotations

import json
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from duet.cli import output
from duet.cli.context import CliContext

EXIT_PENDING = 4
"""The request was accepted as a proposal: it runs once enough owners approve it."""


def exit_if_proposed(context: CliContext, answer: dict[str, Any]) -> None:
    """After an operation: when it became a proposal, say so (and how to approve it) and exit
    :data:`EXIT_PENDING`; otherwise return."""
    proposal = answer.get("proposal")
    if not isinstance(proposal, dict):
        return
    output.emit_plain(context, answer, lambda: str(answer.get("message") or _line(proposal)) + "\n")
    raise typer.Exit(EXIT_PENDING)


def _line(proposal: dict[str, Any]) -> str:
    reason = f" ({proposal['reason']})" if proposal.get("reason") else ""
    return (
        f"proposal {proposal['id']}: {proposal['operation']}"
        + (f" on CVM {str(proposal['cvm_id'])[:16]}…" if proposal.get("cvm_id") else "")
        + f" — {proposal['status']}{reason}, {proposal['approved']} of {proposal['threshold']} approvals"
    )


def _details(proposal: dict[str, Any], request: dict[str, Any] | None) -> str:
    lines = [_line(proposal), f"  proposed by {proposal['proposer']} at {proposal['created_at']}"]
    lines.append(f"  expires at {_local(proposal['expires_at'])}")
    for vote in proposal.get("approvals") or []:
        lines.append(f"  approved by {vote['owner']}" + ("" if vote["counts"] else " (no longer an owner: does not count)"))
    for vote in proposal.get("rejections") or []:
        lines.append(f"  rejected by {vote['owner']}" + ("" if vote["counts"] else " (no longer an owner)"))
    if proposal.get("may_approve"):
        lines.append(f"  may still approve: {', '.join(proposal['may_approve'])}")
    if request is not None:
        lines.append(f"  request: {json.dumps(request.get('params'), sort_keys=True)}")
    return "".join(output.visible(line) + "\n" for line in lines)


def _local(text: str) -> str:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone().isoformat(timespec="seconds")
    except ValueError:
        return text


def proposals(
    ctx: typer.Context,
    proposal_id: Annotated[Optional[str], typer.Argument(help="Show this proposal in full.")] = None,
    pending: Annotated[bool, typer.Option("--pending", help="Only proposals still waiting for approvals.")] = False,
) -> None:
    """Proposals, newest first: operations waiting for (or decided by) several owners."""
    context: CliContext = ctx.obj
    with output.errors(context), context.client() as client:
        if proposal_id is not None:
            answer = client.proposal(proposal_id)
            output.emit_plain(context, answer, lambda: _details(answer["proposal"], answer.get("request")))
            return
        shown = client.proposals(status="pending" if pending else None)
        rows = [
            [
                p["id"],
                p["operation"],
                str(p.get("cvm_id") or "")[:16],
                p["status"],
                f"{p['approved']}/{p['threshold']}",
                _local(p["expires_at"]),
            ]
            for p in shown
        ]
        headers = ["proposal", "operation", "CVM", "status", "approvals", "expires"]
        output.emit_plain(context, {"proposals": shown}, lambda: output.plain_table(headers, rows))


def _vote_text(answer: dict[str, Any]) -> str:
    proposal = answer["proposal"]
    text = _line(proposal) + "\n"
    if proposal["status"] == "executed":
        text += "executed: " + json.dumps(answer.get("result"), sort_keys=True)[:2000] + "\n"
    elif answer.get("message"):
        text += str(answer["message"]) + "\n"
    return output.visible(text)


def approve(ctx: typer.Context, proposal_id: Annotated[str, typer.Argument(help="The proposal's id.")]) -> None:
    """Approve a proposal with your owner key; the approval that meets the threshold runs it."""
    context: CliContext = ctx.obj
    with output.errors(context), context.client(owner=True) as client:
        answer = client.approve(proposal_id)
        output.emit_plain(context, answer, lambda: _vote_text(answer))


def reject(
    ctx: typer.Context,
    proposal_id: Annotated[str, typer.Argument(help="The proposal's id.")],
    reason: Annotated[Optional[str], typer.Option(help="Why (recorded in the ledger, at most 500 characters).")] = None,
) -> None:
    """Reject a proposal; it closes once its threshold can no longer be met."""
    context: CliContext = ctx.obj
    with output.errors(context), context.client(owner=True) as client:
        answer = client.reject(proposal_id, reason=reason)
        output.emit_plain(context, answer, lambda: _vote_text(answer))


def withdraw(ctx: typer.Context, proposal_id: Annotated[str, typer.Argument(help="The proposal's id.")]) -> None:
    """Withdraw your own proposal."""
    context: CliContext = ctx.obj
    with output.errors(context), context.client(owner=True) as client:
        answer = client.withdraw(proposal_id)
        output.emit_plain(context, answer, lambda: _vote_text(answer))


owners_app = typer.Typer(help="The controller's owner keys (changes are governed by the approval policy).", no_args_is_help=True)
policy_app = typer.Typer(help="The approval policy: how many owners must agree (docs/approvals.md).", no_args_is_help=True)


@owners_app.command("list")
def owners_list(ctx: typer.Context) -> None:
    """The owner keys in force, from the controller's identity document."""
    context: CliContext = ctx.obj
    with output.errors(context), context.client() as client:
        identity = client.get("/v1/attestation")["identity"]
        shown = {"owners": identity.get("owners"), "owners_seq": identity.get("owners_seq")}
        output.emit_plain(context, shown, lambda: "".join(output.visible(o) + "\n" for o in shown["owners"] or []))


@owners_app.command("add")
def owners_add(ctx: typer.Context, keys: Annotated[list[Path], typer.Argument(help="Owner public key files (PEM).")]) -> None:
    """Add owner keys (``owners.change``)."""
    context: CliContext = ctx.obj
    with output.errors(context), context.client(owner=True) as client:
        pems = [_read(path) for path in keys]
        answer = client.change_owners(add=pems)
        exit_if_proposed(context, answer)
        output.emit_plain(context, answer, lambda: f"owners now: {', '.join(answer['owners'])} (entry {answer['seq']})\n")


@owners_app.command("remove")
def owners_remove(ctx: typer.Context, key_ids: Annotated[list[str], typer.Argument(help="Owner key ids to remove.")]) -> None:
    """Remove owner keys (``owners.change``); their approvals of pending proposals stop counting."""
    context: CliContext = ctx.obj
    with output.errors(context), context.client(owner=True) as client:
        answer = client.change_owners(remove=key_ids)
        exit_if_proposed(context, answer)
        output.emit_plain(context, answer, lambda: f"owners now: {', '.join(answer['owners'])} (entry {answer['seq']})\n")


@policy_app.command("show")
def policy_show(ctx: typer.Context) -> None:
    """The approval policy in force, from the controller's identity document."""
    context: CliContext = ctx.obj
    with output.errors(context), context.client() as client:
        identity = client.get("/v1/attestation")["identity"]
        policy = identity.get("approval_policy") or {}
        shown = {"approval_policy": policy, "policy_seq": identity.get("policy_seq")}
        lines = [f"{op} = {n}" for op, n in sorted((policy.get("thresholds") or {}).items())]
        lines.append(f"proposal_ttl_s = {policy.get('proposal_ttl_s')}")
        output.emit_plain(context, shown, lambda: "".join(output.visible(line) + "\n" for line in lines))


@policy_app.command("set")
def policy_set(ctx: typer.Context, file: Annotated[Path, typer.Argument(help="The new policy (TOML, as for serve).")]) -> None:
    """Put another approval policy in force (``policy.change``)."""
    context: CliContext = ctx.obj
    with output.errors(context), context.client(owner=True) as client:
        try:
            policy = tomllib.loads(_read(file))
        except tomllib.TOMLDecodeError as exc:
            raise output.UsageError(f"{file} is not valid TOML: {exc}", code="bad_approval_policy") from None
        answer = client.change_policy(policy)
        exit_if_proposed(context, answer)
        output.emit_plain(
            context, answer, lambda: f"approval policy {answer['policy_sha256'][:16]}… in force (entry {answer['seq']})\n"
        )


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise output.UsageError(f"cannot read {path}: {exc}", code="unreadable_file") from None
