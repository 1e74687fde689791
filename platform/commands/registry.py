"""`maskunet registry list|show` and `maskunet promote`."""
from typing import Optional

import click

from maskunet_platform.console.errors import EXIT_REFUSED, InvalidInput
from maskunet_platform.console.session import Session, console_command
from maskunet_platform.console.summary import Summary

tracking_option = click.option("--tracking-uri", default=None,
                               help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the local store)")


def registry_client(uri: Optional[str]):
    from mlflow import MlflowClient

    from maskunet_platform.train.tracking import command_tracking, tracking_uri

    resolved = tracking_uri(command_tracking("maskunet-registry", uri, True))
    return MlflowClient(resolved), resolved


@click.group()
def registry() -> None:
    """Registered MaskUNet models: versions, aliases, key metrics, who set what."""


@registry.command("list")
@tracking_option
@console_command("registry list")
def list_models(session: Session, tracking_uri) -> None:
    """Every registered model with its versions and aliases."""
    from maskunet_platform.registry.listing import list_models

    client, uri = registry_client(tracking_uri)
    models = list_models(client)
    summary = Summary(f"maskunet registry: {len(models)} registered models at {uri}",
                      data={"tracking_uri": uri, "models": models}, show_timings=False, show_log=False)
    for m in models:
        aliases = ", ".join(f"@{a} v{v}" for a, v in sorted(m["aliases"].items())) or "no aliases"
        summary.add(f"{m['name']}:", f"{m['versions']} versions (latest v{m['latest_version']}), {aliases}")
    session.finish(summary)


@registry.command("show")
@click.argument("name")
@tracking_option
@console_command("registry show")
def show(session: Session, name, tracking_uri) -> None:
    """NAME's versions (aliases, key metrics, source run) and its alias history."""
    from maskunet_platform.registry.listing import show_model

    client, uri = registry_client(tracking_uri)
    model = show_model(client, name)
    summary = Summary(f"maskunet registry: {name} ({len(model['versions'])} versions)",
                      data={"tracking_uri": uri, **model}, show_timings=False, show_log=False)
    for alias, held in sorted(model["aliases"].items()):
        who = f", {held['action']} {held['at']} by {held['by']}" if "at" in held else ""
        summary.add(f"@{alias}:", f"v{held['version']}{who}")
    for v in model["versions"]:
        metrics = "  ".join(f"{k.split('/')[-1]} {value:.5g}" for k, value in v["metrics"].items())
        tags = " ".join(f"@{a}" for a in v["aliases"])
        summary.add(f"v{v['version']}:", f"{v['created']}  run {v['source_run']}  {metrics}  {tags}".rstrip())
    session.finish(summary)


@click.command()
@click.argument("name")
@click.option("--version", default=None, help="the challenger version (not with --rollback)")
@click.option("--alias", default="champion", show_default=True)
@click.option("--metric", "metrics", multiple=True,
              help="gate metric, eval/... or shapes/..., optional :min/:max (repeatable; default: "
                   "eval/masked_loss_overall, and shapes/masked/score when both have it)")
@click.option("--min-improvement", default=0.0, show_default=True, type=float,
              help="how much better (metric units) the challenger must be on the first gate metric")
@click.option("--force", is_flag=True, help="promote even if the gate refuses (recorded on the version)")
@click.option("--copy-to", default=None, help="also copy the promoted version into this registered model")
@click.option("--rollback", is_flag=True, help="move the alias back to its previous holder")
@click.option("--data", "data_uri", default=None, help="held-out data for a fresh evaluation (all its rows)")
@click.option("--address", envvar="RAY_ADDRESS", default=None, help="Ray cluster for fresh evaluations")
@tracking_option
@console_command("promote")
def promote(session: Session, name, version, alias, metrics, min_improvement, force, copy_to, rollback, data_uri,
            address, tracking_uri) -> None:
    """Move ALIAS of NAME to --version when it is at least as good as the current holder on the
    same evaluation (exit 3 and the alias unchanged when it is not), or --rollback."""
    from maskunet_platform.registry.promote import PromotionRequest, promote as run_promotion, rollback as run_rollback

    if rollback == bool(version):
        raise InvalidInput("give --version V to promote, or --rollback (not both)")
    if min_improvement < 0:
        raise InvalidInput(f"--min-improvement {min_improvement}: must be >= 0")
    client, uri = registry_client(tracking_uri)
    if rollback:
        result = run_rollback(client, name, alias, session.progress)
    else:
        request = PromotionRequest(name, version, alias, tuple(metrics), min_improvement, force, copy_to, data_uri,
                                   address)
        result = run_promotion(client, uri, request, session.progress)
    session.finish(_summary(result, uri))
    if result.action == "refused":
        raise click.exceptions.Exit(EXIT_REFUSED)


def _summary(result, uri: str) -> Summary:
    verdicts = {"promoted": "promoted", "forced": "promoted (forced)", "refused": "REFUSED",
                "unchanged": "unchanged", "rolled back": "rolled back"}
    summary = Summary(f"maskunet promote: {result.name} v{result.version} @{result.alias}: {verdicts[result.action]}",
                      data={"tracking_uri": uri, **result.to_json()})
    summary.add("holder before:", f"v{result.holder}" if result.holder else "none")
    summary.add("why:", result.reason)
    for c in result.checks:
        holder = "-" if c.holder is None else f"{c.holder:.6g}"
        delta = "" if c.improvement is None else f", better by {c.improvement:+.4g}"
        delta += f", noise {c.tolerance:.3g}" if c.tolerance else ""
        summary.add(f"{c.metric.name}:", f"challenger {c.challenger:.6g}  holder {holder}"
                                         f"  ({'pass' if c.passed else 'FAIL'}, {c.metric.mode}{delta})")
    summary.add("evidence:", ", ".join(f"{kind} {how}" for kind, how in result.sources.items()))
    if result.copy:
        summary.add("copied to:", f"{result.copy['name']} v{result.copy['version']} @{result.copy['alias']}")
    return summary
