"""Moving an alias safely and auditably.

MLflow has no compare-and-set on aliases, so a promotion first takes an advisory claim on the
alias (a registered-model tag of its own), waits for concurrent writers to settle, and proceeds
only when its claim is the oldest; it then re-reads the holder and refuses if the alias moved
since its evidence was gathered. Every move is appended to the alias history tag and recorded
on the versions under `maskunet.promotion.<alias>.`.
"""
import getpass
import json
import os
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Optional

PROMOTION_TAG = "maskunet.promotion"
HISTORY_TAG = "maskunet.alias_history"
CLAIM_SETTLE_S = 1.0  # how long concurrent claims take to settle before each reads back
CLAIM_TTL_S = 120.0  # an older claim is a crashed promotion's and is ignored
HISTORY_LENGTH = 20  # entries kept (tag values are bounded)


class AliasMoved(RuntimeError):
    """Another promotion won the alias or moved it meanwhile (a refusal, not a failure)."""


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def actor() -> str:
    """Who is promoting: MASKUNET_USER, else the login name."""
    try:
        return os.environ.get("MASKUNET_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def alias_map(model) -> dict[str, str]:
    """alias -> version as a string (stores differ: sqlite gives ints, the REST API strings)."""
    return {alias: str(version) for alias, version in model.aliases.items()}


def holder(client, name: str, alias: str) -> Optional[str]:
    """The version the alias names now (read from the registered model: version searches may
    omit aliases), or None."""
    return alias_map(client.get_registered_model(name)).get(alias)


def version_tag(alias: str, field: str) -> str:
    return f"{PROMOTION_TAG}.{alias}.{field}"


@contextmanager
def claim(client, name: str, alias: str):
    """Hold the advisory claim on `alias`, or raise AliasMoved naming who holds it.

    Each claimant writes its own tag (distinct keys: two writers never race on one row, which the
    store may reject), waits for concurrent writers to land, and wins only if its claim is the
    oldest live one."""
    prefix = f"{PROMOTION_TAG}.{alias}.claim."
    live = _live_claims(client, name, prefix)
    if live:
        raise AliasMoved(f"another promotion of @{alias} (by {live[0]['by']}) is in progress; try again")
    mine = {"token": uuid.uuid4().hex, "by": actor(), "at": time.time()}
    client.set_registered_model_tag(name, prefix + mine["token"], json.dumps(mine))
    try:
        time.sleep(CLAIM_SETTLE_S)
        first = _live_claims(client, name, prefix)[0]
        if first["token"] != mine["token"]:
            raise AliasMoved(f"a concurrent promotion of @{alias} (by {first['by']}) won the claim on the alias")
        yield
    finally:
        client.delete_registered_model_tag(name, prefix + mine["token"])


def _live_claims(client, name: str, prefix: str) -> list[dict]:
    """Claims younger than the TTL, oldest first (ties broken by token, so all readers agree)."""
    claims = []
    for key, text in client.get_registered_model(name).tags.items():
        if key.startswith(prefix):
            try:
                entry = json.loads(text)
            except ValueError:
                continue
            if time.time() - entry.get("at", 0) < CLAIM_TTL_S:
                claims.append({"token": key[len(prefix):], "by": entry.get("by", "someone"), "at": entry["at"]})
    return sorted(claims, key=lambda c: (c["at"], c["token"]))


def move(client, name: str, alias: str, version: str, action: str, tags: dict[str, str]) -> None:
    """Point the alias at `version` (one registry call), then record who/when/why."""
    previous = holder(client, name, alias)
    client.set_registered_model_alias(name, alias, version)
    for field, value in tags.items():
        client.set_model_version_tag(name, version, version_tag(alias, field), value)
    history = read_history(client, name)
    history.append({"alias": alias, "version": version, "previous": previous, "action": action,
                    "at": now_utc(), "by": actor()})
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-HISTORY_LENGTH:]))


def read_history(client, name: str) -> list[dict]:
    text = client.get_registered_model(name).tags.get(HISTORY_TAG)
    try:
        return json.loads(text) if text else []
    except ValueError:
        return []
