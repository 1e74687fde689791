"""The numbers a promotion is decided on: challenger and holder on the *same* evaluation.

Logged evidence (version tags, see evidence.py) is reused only when both versions'
fingerprints agree for that kind and it was made on the requested data; otherwise both
versions are evaluated now with the same settings (the challenger's logged ones), each in
a post-training Ray task on its own base and masks.
"""
from dataclasses import dataclass, field
from typing import Optional

from maskunet_platform.registry.evidence import Evidence, read_evidence
from maskunet_platform.registry.gate import GateMetric, GateSpecError

LOGGED, EVALUATED = "logged", "evaluated now"


@dataclass
class Comparison:
    metrics: list[GateMetric]  # the gate metrics that could be scored (optional ones may drop out)
    challenger: dict[str, float] = field(default_factory=dict)
    holder: Optional[dict[str, float]] = None
    sources: dict[str, str] = field(default_factory=dict)  # evidence kind -> LOGGED | EVALUATED


def _reusable(evidence: Optional[Evidence], data_uri: Optional[str]) -> bool:
    """Logged evidence answers the question asked: any data when none was named, else exactly it."""
    if evidence is None:
        return False
    if data_uri is None or evidence.kind != "heldout":
        return True
    return evidence.settings.get("data", {}).get("source") == data_uri and evidence.settings.get("split") == "all"


def compare(tracking_uri: str, challenger, holder, metrics: list[GateMetric], data_uri: Optional[str],
            address: Optional[str], progress) -> Comparison:
    """`challenger` / `holder`: MLflow ModelVersion entities (holder None: no holder yet)."""
    kinds = list(dict.fromkeys(m.kind for m in metrics))
    out = Comparison(metrics=list(metrics), holder=None if holder is None else {})
    to_evaluate: list[str] = []
    for kind in kinds:
        mine = read_evidence(challenger.tags, kind)
        theirs = read_evidence(holder.tags, kind) if holder is not None else None
        same = holder is None or (theirs is not None and mine is not None and mine.fingerprint == theirs.fingerprint)
        if same and _reusable(mine, data_uri) and (holder is None or _reusable(theirs, data_uri)):
            _add(out, kind, mine, theirs, LOGGED)
        elif _can_evaluate(kind, mine, data_uri):
            to_evaluate.append(kind)
        elif all(m.required for m in metrics if m.kind == kind):
            raise GateSpecError(f"{challenger.name} v{challenger.version} has no logged {kind} evaluation "
                                f"to repeat{'' if kind == 'shapes' else ': give --data URI'}")
        else:  # an optional metric nobody can score: leave it out of the gate
            out.metrics = [m for m in out.metrics if m.kind != kind]
    if to_evaluate:
        from maskunet_platform.registry.evaluate import evaluate_versions

        template = {kind: read_evidence(challenger.tags, kind) for kind in to_evaluate}
        versions = [challenger] + ([holder] if holder is not None else [])
        results = evaluate_versions(tracking_uri, versions, template, data_uri, address, progress)
        for kind in to_evaluate:
            _add(out, kind, results[0][kind], results[1][kind] if holder is not None else None, EVALUATED)
    return out


def _can_evaluate(kind: str, logged: Optional[Evidence], data_uri: Optional[str]) -> bool:
    """A fresh evaluation needs settings to repeat: the challenger's logged ones (or, for the
    held-out loss, a named data set with the default eval settings)."""
    return logged is not None or (kind == "heldout" and data_uri is not None)


def _add(out: Comparison, kind: str, mine: Evidence, theirs: Optional[Evidence], source: str) -> None:
    out.challenger.update(mine.metrics)
    if theirs is not None:
        out.holder.update(theirs.metrics)
    out.sources[kind] = source
