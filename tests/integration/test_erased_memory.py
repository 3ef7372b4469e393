"""The memory of who was erased, against the running twins over real HTTP, on SQLite and
PostgreSQL: a verified erasure leaves only a keyed hash and a date; a guest checkout that
puts the person back is the high finding erased-person-reappeared naming the system, the
record and the erasure date; `ack` with a reason records that they came back by choice."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select, text

from daemon import trail
from daemon.access import Systems, person_ref
from daemon.audit import acknowledge, current_findings, run_audit
from daemon.config import Settings
from daemon.erasure import apply_plan, make_plan
from daemon.ledger import Erasure, Ledger
from sandbox.demo import RunningEstate
from tests.integration.test_erase import (  # noqa: F401  (fixtures)
    NOW,
    everywhere,
    person,
    running,
    settings,
    sync,
    synced,
    systems,
)

RULE = "erased-person-reappeared"


def test_an_erased_person_put_back_by_a_guest_checkout_is_a_finding_until_acknowledged(
        running: RunningEstate, synced: Ledger, systems: Systems,  # noqa: F811
        settings: Settings) -> None:  # noqa: F811
    estate = running.estate
    p = person(estate, everywhere)
    plan = make_plan(synced, systems, settings.retention, p.email, now=NOW)
    # Applied now (the ledger's clock): what the plan kept was held before the erasure.
    before = datetime.now(UTC)
    result = apply_plan(synced, systems, plan, settings.retention)
    assert result.complete
    with synced.sessions() as session:
        (memory,) = session.scalars(select(Erasure))
        assert memory.person == person_ref(synced, p.email) and memory.erased_at >= before
        erased_at = memory.erased_at
        # Nothing but the hash in the memory and the trail (a subject row stays only while a
        # kept record, a Stripe charge, is still held).
        for table in ("audit_log", "erasures", "requests"):
            rows = session.execute(text(f"SELECT * FROM {table}")).all()  # noqa: S608
            assert p.email not in repr(rows), table
    # Nothing held again yet: no finding.
    run_audit(synced, settings.retention, rules=[RULE])
    assert current_findings(synced, rules=[RULE]) == []
    shop_name = "allmyink"
    order = estate.shops[shop_name].add_order(
        status="processing", billing={"email": p.email.upper(), "first_name": "Back"})
    chimp = estate.mailchimp
    audience = chimp.sources()[0].split(":", 1)[1]
    # A plugin syncing the buyer back into the newsletter audience.
    member = chimp.add_member(audience, p.email, status="transactional")
    sync(synced, settings)
    audit = run_audit(synced, settings.retention, rules=[RULE])
    assert audit.new == 2
    found = current_findings(synced, rules=[RULE])
    (again,) = [f for f in found if f.source == f"mailchimp:{audience}"]
    assert again.external_id == member
    label = chimp.audiences[audience].name
    assert again.detail is not None and again.detail.startswith(f"re-imported into {label} ")
    (finding,) = [f for f in found if f.source != f"mailchimp:{audience}"]
    days = (finding.first_detected - erased_at).days
    assert finding.severity == "high"
    assert (finding.source, finding.record_type, finding.external_id) == (
        f"woo:{shop_name}", "order", str(order))
    assert finding.detail == (f"re-imported into woo:{shop_name} {days} day(s) after erasure "
                              f"(erased {erased_at.date().isoformat()})")
    acknowledge(synced, RULE, f"woo:{shop_name}", str(order),
                reason="placed a new order of their own accord")
    run_audit(synced, settings.retention, rules=[RULE])
    statuses = {f.source: f.status for f in current_findings(synced, rules=[RULE])}
    assert statuses == {f"woo:{shop_name}": "acknowledged", f"mailchimp:{audience}": "open"}
    assert trail.verify(synced).ok


def test_erase_and_export_attach_to_the_persons_open_request_through_click(
        running: RunningEstate, tmp_path: Path, sqlite_url: str) -> None:  # noqa: F811
    from click.testing import CliRunner

    from daemon.cli import main

    config = running.write_config(tmp_path / "config", ledger_url=sqlite_url)

    def cli(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, ["--config", str(config), *args])
        return result.exit_code, result.output

    p = person(running.estate, everywhere)
    code, out = cli("request", "open", "erasure", p.email,
                    "--received", datetime.now(UTC).date().isoformat())
    assert code == 0, out
    request_id = out.split()[1]
    code, out = cli("erase", p.email, "--apply", "--yes")
    assert code == 0, out
    assert f"request {request_id}: due" in out
    code, out = cli("export", p.email, "--out", str(tmp_path / "copy"))
    assert code == 0, out
    access_id = out.split("request ")[1].split(":")[0]
    assert access_id != request_id
    code, out = cli("request", "list")
    assert request_id in out and access_id in out
    # open + attach for the erasure; open + attach for the access request made by export.
    assert "2 trail entries" in out
