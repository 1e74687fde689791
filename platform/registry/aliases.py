"""Moving an alias safely and auditably.

MLflow has no compare-and-set on aliases, so a promotion first takes an advisory claim on the
alias (a registered-model tag), waits for concurrent writers to settle, and proceeds only when
its own claim is the one that stuck; it then re-reads the holder and refuses if the alias moved
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
    """Hold the advisory claim on `alias`, or raise AliasMoved naming who holds it."""
    key = f"{PROMOTION_TAG}.{alias}.claim"
    token = {"token": uuid.uuid4().hex, "by": actor(), "at": time.time()}
    current = _read_claim(client, name, key)
    if current and time.time() - current["at"] < CLAIM_TTL_S:
        raise AliasMoved(f"another promotion of @{alias} (by {current['by']}) is in progress; try again")
    client.set_registered_model_tag(name, key, json.dumps(token))
    time.sleep(CLAIM_SETTLE_S)
    current = _read_claim(client, name, key)
    if not current or current["token"] != token["token"]:
        who = current["by"] if current else "someone"
        raise AliasMoved(f"a concurrent promotion of @{alias} (by {who}) won the claim on the alias")
    try:
        yield
    finally:
        if (_read_claim(client, name, key) or {}).get("token") == token["token"]:
            client.delete_registered_model_tag(name, key)


def _read_claim(client, name: str, key: str) -> Optional[dict]:
    text = client.get_registered_model(name).tags.get(key)
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


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
