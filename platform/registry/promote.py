"""`maskunet promote`: move an alias to a challenger version only when the evidence says it is
at least as good as the current holder; roll back; copy the promoted version to another
registered model (e.g. staging -> prod)."""
import json
import re
from dataclasses import dataclass, field
from typing import Optional

from maskunet_platform.registry.aliases import AliasMoved, actor, claim, holder, move, now_utc, version_tag
from maskunet_platform.registry.comparison import compare
from maskunet_platform.registry.files import ModelUriError
from maskunet_platform.registry.gate import DEFAULT_GATE, GateSpecError, MetricCheck, check, parse_metric

ALIAS = re.compile(r"^[A-Za-z_][\w-]*$")
RESERVED_ALIAS = re.compile(r"^v\d+$", re.I)  # MLflow reserves v<number> for versions


@dataclass
class PromotionRequest:
    name: str
    version: Optional[str] = None
    alias: str = "champion"
    metrics: tuple[str, ...] = ()
    min_improvement: float = 0.0
    force: bool = False
    copy_to: Optional[str] = None
    data_uri: Optional[str] = None
    address: Optional[str] = None


@dataclass
class PromotionResult:
    name: str
    alias: str
    version: str  # the challenger (promote) or the restored version (rollback)
    holder: Optional[str]  # who held the alias before
    action: str  # promoted | forced | refused | unchanged | rolled back
    reason: str
    checks: list[MetricCheck] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    copy: Optional[dict] = None

    @property
    def moved(self) -> bool:
        return self.action in ("promoted", "forced", "rolled back")

    def to_json(self) -> dict:
        return {"name": self.name, "alias": self.alias, "version": self.version, "previous_holder": self.holder,
                "action": self.action, "moved": self.moved, "reason": self.reason,
                "checks": [c.to_json() for c in self.checks], "evidence": self.sources, "copy": self.copy}


def check_alias(alias: str) -> None:
    if not ALIAS.match(alias) or RESERVED_ALIAS.match(alias):
        raise GateSpecError(f"--alias {alias!r}: an alias is a name (letters, digits, _ or -), not v<number>")


def model_version(client, name: str, version: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, version)
    except MlflowException as e:
        raise ModelUriError(f"{name} v{version}: {str(e).splitlines()[0]}") from None


def promote(client, tracking_uri: str, req: PromotionRequest, progress) -> PromotionResult:
    check_alias(req.alias)
    challenger = model_version(client, req.name, req.version)
    current = holder(client, req.name, req.alias)
    if current == str(challenger.version):
        return PromotionResult(req.name, req.alias, current, current, "unchanged", f"v{current} already holds @{req.alias}")
    incumbent = model_version(client, req.name, current) if current else None
    metrics = [parse_metric(m) for m in req.metrics] or list(DEFAULT_GATE)
    checks, sources = _gate(tracking_uri, challenger, incumbent, metrics, req, progress)
    passed = all(c.passed for c in checks)
    result = PromotionResult(req.name, req.alias, str(challenger.version), current,
                             "promoted" if passed else ("forced" if req.force else "refused"), "", checks, sources)
    result.reason = _reason(result, req)
    if result.action == "refused":
        return result
    try:
        with progress.stage(f"move @{req.alias} to v{challenger.version}"), claim(client, req.name, req.alias):
            now = holder(client, req.name, req.alias)
            if now != current:  # evidence was gathered against another holder: stale
                raise AliasMoved(f"@{req.alias} moved from {_v(current)} to {_v(now)} while this promotion was deciding")
            move(client, req.name, req.alias, result.version, result.action, _promotion_tags(result))
    except AliasMoved as e:
        result.action, result.reason = "refused", f"{e}; run the promotion again to compare with the new holder"
        return result
    if req.copy_to:
        with progress.stage(f"copy v{result.version} to {req.copy_to}"):
            result.copy = copy_version(client, req.name, result.version, req.copy_to, req.alias)
    return result


def _gate(tracking_uri, challenger, incumbent, metrics, req, progress) -> tuple[list[MetricCheck], dict]:
    """The gate's checks and where its numbers came from; with --force, a gate that cannot be
    evaluated (different bases, no evidence) is skipped instead of failing."""
    try:
        if incumbent is not None and challenger.tags.get("base_model") != incumbent.tags.get("base_model"):
            raise GateSpecError(f"v{challenger.version} (base {challenger.tags.get('base_model')}) and the holder "
                                f"v{incumbent.version} (base {incumbent.tags.get('base_model')}) have different bases: "
                                "their losses are not comparable (--force to promote anyway)")
        comparison = compare(tracking_uri, challenger, incumbent, metrics, req.data_uri, req.address, progress)
        return check(comparison.metrics, comparison.challenger, comparison.holder, req.min_improvement), comparison.sources
    except GateSpecError:
        if req.force:
            return [], {}
        raise


def _v(version: Optional[str]) -> str:
    return f"v{version}" if version else "no holder"


def _reason(result: PromotionResult, req: PromotionRequest) -> str:
    if result.holder is None:
        return f"@{req.alias} had no holder"
    failed = [c for c in result.checks if not c.passed]
    if not failed:
        primary = result.checks[0].metric.name if result.checks else "the gate"
        return (f"at least {req.min_improvement:g} better than v{result.holder} on {primary}"
                + (", and not worse beyond noise on the guards" if len(result.checks) > 1 else ""))
    worse = ", ".join(f"{c.metric.name} {c.challenger:.6g} vs {c.holder:.6g}" for c in failed)
    return ("forced despite: " if req.force else "not better than the holder: ") + worse


def _promotion_tags(result: PromotionResult) -> dict[str, str]:
    return {"at": now_utc(), "by": actor(), "previous": result.holder or "", "forced": str(result.action == "forced").lower(),
            "checks": json.dumps([c.to_json() for c in result.checks]), "evidence": json.dumps(result.sources)}


def rollback(client, name: str, alias: str, progress) -> PromotionResult:
    """Point the alias back at the previous holder recorded when the current one was promoted."""
    check_alias(alias)
    current = holder(client, name, alias)
    if current is None:
        raise GateSpecError(f"@{alias} of {name} has no holder: nothing to roll back")
    previous = model_version(client, name, current).tags.get(version_tag(alias, "previous"))
    if not previous:
        raise GateSpecError(f"{name} v{current} records no previous holder of @{alias}: nothing to roll back to")
    result = PromotionResult(name, alias, previous, current, "rolled back", f"@{alias} back from v{current} to v{previous}")
    try:
        with progress.stage(f"move @{alias} back to v{previous}"), claim(client, name, alias):
            if holder(client, name, alias) != current:
                raise AliasMoved(f"@{alias} moved while rolling back")
            move(client, name, alias, previous, "rolled back", {"restored_at": now_utc(), "restored_by": actor()})
            client.set_model_version_tag(name, current, version_tag(alias, "rolled_back_at"), now_utc())
    except AliasMoved as e:
        result.action, result.reason = "refused", str(e)
    return result


def copy_version(client, name: str, version: str, other: str, alias: str) -> dict:
    """Copy with MLflow's copy (a new version of `other`), keep the tags, set the same alias."""
    source = client.get_model_version(name, version)
    copied = client.copy_model_version(f"models:/{name}/{version}", other)
    for key, value in source.tags.items():
        if copied.tags.get(key) != value:
            client.set_model_version_tag(other, copied.version, key, value)
    move(client, other, alias, str(copied.version), "copied", {"at": now_utc(), "by": actor(),
                                                              "copied_from": f"{name}/{version}"})
    return {"name": other, "version": str(copied.version), "alias": alias}
