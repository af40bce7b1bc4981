"""`cdra users` (who may sign in to the chat app, and their API keys for `cdra serve`) and `cdra logs`
(export, forget, prune the session log)."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path
from typing import Annotated, Optional

import typer

users_app = typer.Typer(
    help="Accounts for the chat app's sign-in (salted password hashes).", no_args_is_help=True
)
key_app = typer.Typer(
    help="API keys for `cdra serve`: each key acts as its own user only (stored as a salted hash).",
    no_args_is_help=True,
)
users_app.add_typer(key_app, name="key")
logs_app = typer.Typer(
    help="The session log: export for retraining, forget a user, apply retention.", no_args_is_help=True
)


@users_app.command("add")
def add_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="user name (letters, digits, _ . -)")],
    password: Annotated[
        Optional[str], typer.Option("--password", "-p", help="password (prompted when left out)")
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="set a new password for an existing user")
    ] = False,
) -> None:
    """Create a user; non-interactive when --password is given."""
    from app.cli import settings_from
    from app.users import UserStore

    settings = settings_from(ctx)
    if password is None:
        password = typer.prompt(f"password for {name}", hide_input=True, confirmation_prompt=True)
    UserStore.for_data_dir(settings.data_dir).add(name, password, replace=replace)
    typer.echo(f"{'updated' if replace else 'added'} user {name}")


@users_app.command("remove")
def remove_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="user name")],
    forget: Annotated[
        bool, typer.Option("--forget", help="also delete the user's memory and session log")
    ] = False,
) -> None:
    """Remove a user's sign-in (and with --forget everything stored about them)."""
    from app.cli import settings_from
    from app.users import UserStore

    settings = settings_from(ctx)
    UserStore.for_data_dir(settings.data_dir).remove(name)
    typer.echo(f"removed user {name}")
    if forget:
        from app.assistant import forget_user

        turns = forget_user(settings, name)
        typer.echo(f"forgot {name}: memory cleared, {turns} logged turns deleted")


@users_app.command("list")
def list_cmd(ctx: typer.Context) -> None:
    """The users who may sign in."""
    from app.cli import settings_from
    from app.users import UserStore

    users = UserStore.for_data_dir(settings_from(ctx).data_dir).list()
    if not users:
        typer.echo(
            "no users yet: `cdra users add NAME --password P` (or start `cdra chat`, which creates one)"
        )
    for user in users:
        typer.echo(f"{user.name}\tcreated {user.created}")


@key_app.command("create")
def key_create_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the user the key acts as")],
    admin: Annotated[
        bool, typer.Option("--admin", help="the key may also name any other user in `user` (operators only)")
    ] = False,
) -> None:
    """Create an API key for NAME; it is printed once (only its hash is kept)."""
    from app.cli import settings_from
    from app.users import UserStore

    key, info = UserStore.for_data_dir(settings_from(ctx).data_dir).create_key(name, admin=admin)
    typer.echo(key)
    typer.echo(f"created {'admin ' if admin else ''}API key {info.key_id} for {name}: send it as "
               "`Authorization: Bearer <key>`; it is shown only this once", err=True)


@key_app.command("revoke")
def key_revoke_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="whose keys")],
    key_id: Annotated[
        Optional[str], typer.Argument(help="one key id (from `cdra users key list`); default: all of NAME's keys")
    ] = None,
) -> None:
    """Revoke NAME's API keys (or one of them); a running `cdra serve` refuses them at once."""
    from app.cli import settings_from
    from app.users import UserStore

    n = UserStore.for_data_dir(settings_from(ctx).data_dir).revoke_keys(name, key_id)
    typer.echo(f"revoked {n} API key(s) of {name}")


@key_app.command("list")
def key_list_cmd(
    ctx: typer.Context,
    name: Annotated[Optional[str], typer.Argument(help="only this user's keys")] = None,
) -> None:
    """Key ids, owners and creation times (the keys themselves are not stored)."""
    from app.cli import settings_from
    from app.users import UserStore

    keys = UserStore.for_data_dir(settings_from(ctx).data_dir).keys(name)
    if not keys:
        typer.echo("no API keys: `cdra users key create NAME`")
    for k in keys:
        typer.echo(f"{k.key_id}\t{k.user}\t{'admin' if k.admin else 'user'}\tcreated {k.created}")


@logs_app.command("export")
def export_cmd(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write (one line per turn)")],
    since: Annotated[
        Optional[str], typer.Option(help="only turns at or after this date/time (ISO 8601)")
    ] = None,
    user: Annotated[Optional[str], typer.Option("--user", "-u", help="only this user's turns")] = None,
    include_failed: Annotated[
        bool, typer.Option("--include-failed", help="also failed/abandoned turns")
    ] = False,
) -> None:
    """Export logged turns as JSONL for `cdra train retrain` (schema: docs/ARCHITECTURE.md)."""
    from app.assistant import open_log, user_preference_texts
    from app.cli import settings_from

    settings = settings_from(ctx)
    log = open_log(settings)
    n = log.export_jsonl(
        out,
        since=since,
        user_id=user,
        include_failed=include_failed,
        user_preferences=lambda uid: user_preference_texts(settings, uid),
    )
    typer.echo(f"exported {n} turns to {out}")


@logs_app.command("forget")
def forget_cmd(
    ctx: typer.Context,
    user: Annotated[str, typer.Option("--user", "-u", help="whose log to delete")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Delete every logged session and turn of one user."""
    from app.assistant import open_log
    from app.cli import settings_from

    if not yes:
        typer.confirm(f"delete all logged turns of {user}?", abort=True)
    n = open_log(settings_from(ctx)).forget_user(user)
    typer.echo(f"deleted {n} turns of {user}")


@logs_app.command("prune")
def prune_cmd(
    ctx: typer.Context,
    older_than_days: Annotated[
        int, typer.Option("--older-than-days", min=0, help="retention: delete older turns")
    ],
) -> None:
    """Retention: delete turns older than N days."""
    from datetime import datetime, timedelta

    from app.assistant import open_log
    from app.cli import settings_from

    cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
    n = open_log(settings_from(ctx)).prune(cutoff)
    typer.echo(f"deleted {n} turns older than {cutoff.date()}")


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")
    app.add_typer(logs_app, name="logs")
