"""``aionctl keys``: the API keys of your tenant (admins only).

    aionctl keys create --role ROLE [--role ROLE]... [--name NAME] [--json]
    aionctl keys list [--all] [--json]
    aionctl keys revoke KEY_ID

``create`` prints the whole key once (``aion_<id>_<secret>``); the gateway
keeps only its hash, so a lost key cannot be shown again: revoke it and make
another. A bootstrap key for ``AION_GATEWAY_API_KEYS`` is made on the
gateway's side: ``python -m aion.gateway.keys hash``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

import click
from google.protobuf import json_format

from aion.api.v1 import keys_pb2
from aion.sdk import sync_client


def key_to_dict(key: keys_pb2.ApiKey) -> dict[str, Any]:
    """A key as JSON (field names as in the proto)."""
    return json_format.MessageToDict(key, preserving_proto_field_name=True)


def _when(key: keys_pb2.ApiKey, field: Literal["created_at", "last_used_at", "revoked_at"]) -> str:
    if not key.HasField(field):
        return "-"
    return str(getattr(key, field).ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ"))


def register(main: click.Group, client: Callable[[click.Context], sync_client.Client]) -> None:
    """Add the ``keys`` command group to ``main``; ``client`` makes the gateway client."""

    @main.group()
    def keys() -> None:
        """API keys of your tenant: create, list, revoke (admin role)."""

    @keys.command()
    @click.option(
        "--role",
        "roles",
        multiple=True,
        required=True,
        type=click.Choice(["viewer", "user", "admin"]),
        help="A role of the key.",
    )
    @click.option("--name", default="", help="A label, such as 'ci'.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_context
    def create(ctx: click.Context, roles: tuple[str, ...], name: str, as_json: bool) -> None:
        """Create a key; its secret is printed once, here."""
        made = client(ctx).create_key(name, roles)
        if as_json:
            click.echo(json.dumps({**key_to_dict(made.key), "secret": made.secret}, indent=2))
            return
        click.echo(made.secret)
        click.echo(
            f"key {made.key.id} ({', '.join(made.key.roles)}) created; the line above "
            "is the whole key, shown once",
            err=True,
        )

    @keys.command(name="list")
    @click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_context
    def list_(ctx: click.Context, include_revoked: bool, as_json: bool) -> None:
        """List the tenant's keys (never their secrets)."""
        found = client(ctx).list_keys(include_revoked=include_revoked)
        if as_json:
            click.echo(json.dumps([key_to_dict(k) for k in found], indent=2))
            return
        click.echo(f"{'ID':<14}{'NAME':<16}{'ROLES':<20}{'CREATED':<22}{'LAST USED':<22}REVOKED")
        for k in found:
            click.echo(
                f"{k.id:<14}{k.name[:15]:<16}{','.join(k.roles):<20}"
                f"{_when(k, 'created_at'):<22}{_when(k, 'last_used_at'):<22}"
                f"{_when(k, 'revoked_at')}"
            )

    @keys.command()
    @click.argument("key_id")
    @click.pass_context
    def revoke(ctx: click.Context, key_id: str) -> None:
        """Revoke the key KEY_ID (it stops working within the gateway's key cache time)."""
        revoked = client(ctx).revoke_key(key_id)
        click.echo(f"key {revoked.id} revoked")
