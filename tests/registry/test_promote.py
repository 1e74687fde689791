"""`maskunet promote` and `maskunet registry` against a real MLflow server: the gate, forced
promotions, rollback, copies, evidence reuse vs. fresh evaluation, and a promotion race."""
import json
import threading
from contextlib import contextmanager

import pytest
from click.testing import CliRunner

from maskunet_platform.cli import main

pytestmark = pytest.mark.slow
LOSS = "eval/masked_loss_overall"


def cli(world, *args):
    """(exit code, the --json object or None, all output)."""
    result = CliRunner().invoke(main, [*args, "--tracking-uri", world.tracking_uri, "--json"])
    out = result.stdout.strip()
    return result.exit_code, (json.loads(out.splitlines()[-1]) if out.startswith("{") else None), result.output


def client(world):
    from mlflow import MlflowClient

    return MlflowClient(world.tracking_uri)


def holder(world, name, alias="champion"):
    return client(world).get_registered_model(name).aliases.get(alias)


def tags(world, name, version):
    return client(world).get_model_version(name, version).tags


def test_gate_promotes_better_refuses_worse_forces_and_rolls_back(registry_world, monkeypatch):
    world = registry_world
    monkeypatch.setenv("MASKUNET_USER", "alice")
    medium, bad, identity = (world.register("gate", label) for label in ("medium", "bad", "identity"))

    code, report, _ = cli(world, "promote", "gate", "--version", medium)  # no holder yet
    assert code == 0 and report["action"] == "promoted" and holder(world, "gate") == medium, report
    assert tags(world, "gate", medium)["maskunet.promotion.champion.by"] == "alice"
    assert tags(world, "gate", medium)["maskunet.promotion.champion.previous"] == ""

    code, report, output = cli(world, "promote", "gate", "--version", bad)  # worse: refused
    assert code == 3 and report["action"] == "refused" and holder(world, "gate") == medium
    loss = next(c for c in report["checks"] if c["metric"] == LOSS)
    assert loss["challenger"] == pytest.approx(world.evidence["bad"]["heldout"].metrics[LOSS])
    assert loss["holder"] == pytest.approx(world.evidence["medium"]["heldout"].metrics[LOSS])
    assert not loss["passed"] and report["evidence"] == {"heldout": "logged", "shapes": "logged"}
    assert "not better than the holder" in report["reason"]

    code, report, _ = cli(world, "promote", "gate", "--version", identity, "--min-improvement", "1.0")
    assert code == 3 and holder(world, "gate") == medium  # better, but not by 1.0

    code, report, _ = cli(world, "promote", "gate", "--version", identity)  # better: promoted
    assert code == 0 and report["action"] == "promoted" and holder(world, "gate") == identity, json.dumps(report)
    assert next(c for c in report["checks"] if c["metric"] == LOSS)["improvement"] > 0
    assert {c["metric"] for c in report["checks"]} == {LOSS, "shapes/masked/score"}
    promoted = tags(world, "gate", identity)
    assert promoted["maskunet.promotion.champion.previous"] == medium
    assert json.loads(promoted["maskunet.promotion.champion.checks"])[0]["passed"] is True

    code, report, _ = cli(world, "promote", "gate", "--version", bad, "--force")
    assert code == 0 and report["action"] == "forced" and holder(world, "gate") == bad
    assert tags(world, "gate", bad)["maskunet.promotion.champion.forced"] == "true"

    code, report, _ = cli(world, "promote", "gate", "--rollback")
    assert code == 0 and report["action"] == "rolled back" and holder(world, "gate") == identity
    code, _, _ = cli(world, "promote", "gate", "--rollback")
    assert code == 0 and holder(world, "gate") == medium

    code, shown, _ = cli(world, "registry", "show", "gate")
    assert code == 0 and shown["aliases"]["champion"]["version"] == medium
    assert shown["aliases"]["champion"]["by"] == "alice" and shown["aliases"]["champion"]["action"] == "rolled back"
    assert [h["action"] for h in shown["history"]] == ["promoted", "promoted", "forced", "rolled back", "rolled back"]
    by_version = {v["version"]: v for v in shown["versions"]}
    assert by_version[bad]["metrics"][LOSS] > by_version[identity]["metrics"][LOSS]
    code, listed, _ = cli(world, "registry", "list")
    assert code == 0 and {"name": "gate", "versions": 3} .items() <= next(
        m for m in listed["models"] if m["name"] == "gate").items()


def test_copy_to_another_registered_model_keeps_tags_and_sets_the_alias(registry_world):
    world = registry_world
    version = world.register("staging", "medium")
    code, report, _ = cli(world, "promote", "staging", "--version", version, "--copy-to", "prod")
    assert code == 0 and report["copy"]["name"] == "prod"
    copied = report["copy"]["version"]
    assert holder(world, "prod") == copied
    source, copy = tags(world, "staging", version), tags(world, "prod", copied)
    for key in ("run_id", "base_model", "maskunet.evidence.heldout", "maskunet.evidence.shapes"):
        assert copy[key] == source[key], key
    assert copy["maskunet.promotion.champion.copied_from"] == f"staging/{version}"


def test_logged_evidence_is_reused_only_when_the_fingerprints_match(registry_world):
    """Same settings: the logged numbers decide (previous test). Different eval rows: both
    versions are evaluated now, with the challenger's settings."""
    from maskunet_platform.registry.evaluate import score
    from tests.registry.conftest import eval_job

    world = registry_world
    held = world.register("fresh", "medium")
    assert cli(world, "promote", "fresh", "--version", held)[0] == 0
    eight_rows = score(eval_job(world.data, rows=8), world.base, world.generators["identity"], world.data, "all",
                       ["heldout"])
    challenger = world.register("fresh", "identity", {**world.evidence["identity"], **eight_rows})
    code, report, _ = cli(world, "promote", "fresh", "--version", challenger)
    assert code == 0 and report["evidence"] == {"heldout": "evaluated now", "shapes": "logged"}
    loss = next(c for c in report["checks"] if c["metric"] == LOSS)
    medium_on_eight = score(eval_job(world.data, rows=8), world.base, world.generators["medium"], world.data, "all",
                            ["heldout"])["heldout"].metrics[LOSS]
    assert loss["holder"] == pytest.approx(medium_on_eight, rel=1e-5)  # re-scored on the challenger's 8 rows
    assert loss["holder"] != pytest.approx(world.evidence["medium"]["heldout"].metrics[LOSS], rel=1e-6)
    assert loss["challenger"] == pytest.approx(eight_rows["heldout"].metrics[LOSS], rel=1e-5)


def test_embedded_store_promotes_then_reports_unchanged(registry_world, tmp_path):
    """The embedded sqlite store (as `make run` uses) returns alias versions as ints: same result."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    version = registry_world.register("local", "identity", tracking_uri=store)
    for expected in ("promoted", "unchanged"):
        result = CliRunner().invoke(main, ["promote", "local", "--version", version, "--tracking-uri", store, "--json"])
        assert result.exit_code == 0 and json.loads(result.stdout)["action"] == expected, result.output


class BarrierProgress:
    """Console progress whose "move" stage waits until both promotions reach it, so the two
    decide on the same (then stale) holder and race for the alias."""

    def __init__(self, barrier: threading.Barrier):
        self.barrier = barrier

    @contextmanager
    def stage(self, name: str):
        if name.startswith("move @"):
            self.barrier.wait(timeout=120)
        yield


def test_two_concurrent_promotions_exactly_one_wins(registry_world):
    from maskunet_platform.registry.promote import PromotionRequest, promote

    world = registry_world
    bad, medium, identity = (world.register("race", label) for label in ("bad", "medium", "identity"))
    assert cli(world, "promote", "race", "--version", bad)[0] == 0
    barrier, results = threading.Barrier(2), {}

    def attempt(version):
        try:
            results[version] = promote(client(world), world.tracking_uri, PromotionRequest("race", version),
                                       BarrierProgress(barrier))
        except Exception as e:  # a thread's exception would otherwise only reach stderr
            results[version] = e

    threads = [threading.Thread(target=attempt, args=(v,)) for v in (medium, identity)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not [r for r in results.values() if isinstance(r, Exception)], results
    actions = sorted(r.action for r in results.values())
    assert actions == ["promoted", "refused"], {v: (r.action, r.reason) for v, r in results.items()}
    winner = next(v for v, r in results.items() if r.action == "promoted")
    loser = next(r for r in results.values() if r.action == "refused")
    assert holder(world, "race") == winner
    assert "concurrent promotion" in loser.reason or "moved" in loser.reason


@pytest.mark.parametrize("args, message", [
    (["promote", "gate2", "--version", "1", "--rollback"], "not both"),
    (["promote", "nope", "--version", "1"], "nope v1"),
    (["promote", "bad-input", "--version", "99"], "bad-input v99"),
    (["promote", "bad-input", "--version", "1", "--alias", "v2"], "--alias 'v2'"),
    (["promote", "bad-input", "--version", "1", "--metric", "loss"], "--metric 'loss'"),
    (["promote", "bad-input", "--version", "1", "--metric", "eval/x:up"], ":min or :max"),
    (["promote", "bad-input", "--version", "1", "--min-improvement", "-1"], "--min-improvement"),
    (["promote", "bad-input", "--rollback", "--alias", "nobody"], "has no holder"),
    (["registry", "show", "nope"], "registered model 'nope'"),
])
def test_bad_input_exits_2_naming_the_problem(registry_world, args, message):
    if not client(registry_world).search_registered_models(filter_string="name='bad-input'"):
        registry_world.register("bad-input", "medium")
    code, _, output = cli(registry_world, *args)
    assert code == 2, output
    assert message in output and "Traceback" not in output


def _methods_world(world) -> dict[str, str]:
    """Model `methods`: a bad mask generator as champion, then a full export and a LoRA
    (versions registered once per session)."""
    if not client(world).search_registered_models(filter_string="name='methods'"):
        versions = {label: world.register("methods", label) for label in ("bad", "full", "lora")}
        assert cli(world, "promote", "methods", "--version", versions["bad"])[0] == 0
        code, report, output = cli(world, "promote", "methods", "--version", versions["full"])
        assert code == 0 and report["action"] == "promoted", output
        world.methods = versions
    return world.methods


def test_the_gate_compares_every_method_like_with_like(registry_world):
    """LoRA and full exports carry the same evidence as masks, and the gate weighs a challenger
    of one method against a champion of another on the same held-out rows and prompts."""
    world = registry_world
    versions = _methods_world(world)
    for label in ("full", "lora"):
        version_tags = tags(world, "methods", versions[label])
        assert version_tags["method"] == label
        assert {"maskunet.evidence.heldout", "maskunet.evidence.shapes"} <= version_tags.keys()
    assert holder(world, "methods") == versions["full"]  # a full export beat the masks champion
    full_loss = world.evidence["full"]["heldout"].metrics[LOSS]
    assert full_loss < world.evidence["bad"]["heldout"].metrics[LOSS]
    code, report, _ = cli(world, "promote", "methods", "--version", versions["lora"])  # a worse LoRA: refused
    assert code == 3 and report["action"] == "refused" and holder(world, "methods") == versions["full"]
    assert report["evidence"] == {"heldout": "logged", "shapes": "logged"}
    loss = next(c for c in report["checks"] if c["metric"] == LOSS)
    assert loss["holder"] == pytest.approx(full_loss) and not loss["passed"]
    assert loss["challenger"] == pytest.approx(world.evidence["lora"]["heldout"].metrics[LOSS])


@pytest.mark.long
def test_every_methods_registered_version_generates_and_serves_in_a_fresh_process(registry_world, tmp_path):
    import signal
    import subprocess
    import sys

    from tests.fixtures.cli import maskunet_env, run_maskunet
    from tests.fixtures.services import free_port
    from tests.serve.conftest import post_json
    from tests.serve.test_cli_serve import _wait_healthy

    world = registry_world
    versions = _methods_world(world)
    env = maskunet_env(MLFLOW_TRACKING_URI=world.tracking_uri)
    for ref, mode in (("models:/methods@champion", "full on"), (f"models:/methods/{versions['lora']}", "lora on"),
                      (f"models:/methods/{versions['bad']}", "masks on")):
        out = tmp_path / f"{mode}.png"
        done = run_maskunet(["generate", "a red circle", "--model", ref, "--steps", "2", "--out", str(out)], env)
        assert done.returncode == 0 and mode in done.stdout and out.stat().st_size > 100, done.stderr
    for ref in ("models:/methods@champion", f"models:/methods/{versions['lora']}"):  # full, then the LoRA
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "maskunet_platform.cli", "serve", "--model", ref, "--port",
                                 str(port), "--set", "serve.cpus_per_replica=0", "--set", "serve.limits.default_steps=2"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL)
        try:
            _wait_healthy(proc, f"http://127.0.0.1:{port}")
            answer = post_json(f"http://127.0.0.1:{port}/v1/generate", {"prompt": "a blue square", "seed": 1})
            assert answer.status == 200 and answer.json()["images"][0].startswith("iVBOR"), answer.body[:300]
        finally:
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
