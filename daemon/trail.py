"""The audit trail: an append-only, hash-chained log of what the daemon and its operators did
(syncs, audits, emails, exports, erasures, acknowledgements). Each entry holds the hash of
the one before, so an entry altered or removed breaks the chain where it happened.

Entries carry identifiers and counts, never personal values.

What the chain alone cannot show, and what covers it:
- A recomputed chain. Each hash is an HMAC-SHA256 under the trail key, which is kept out of
  the database ([ledger] trail_key, a secret reference, or the file trail.key in the state
  directory, made 0600 on first use): whoever edits the database cannot recompute it. The
  key file beside a SQLite ledger protects against an edit of the database (SQL access, a
  copied or restored file), not against the daemon's own user: keep the key in a systemd
  credential for that, and rely on the emailed head below.
- Removed newest entries, or all of them. The head (its hash and the number of entries) is
  anchored where an editor of the database cannot reach it: each committed entry rewrites
  the anchor file trail.anchor in the state directory (0600), and the morning email carries
  the head too. `verify-log` checks that the chain still reaches the anchor, and
  `verify-log --expect HASH --count N` that it reaches the head an email named.
- Ledgers from before the key: their entries were hashed with plain SHA-256. They verify the
  old way as long as they come first; the first keyed entry (a `trail.keyed` entry, written
  when a keyed append finds an unkeyed head) is the boundary, and after it every entry must
  be keyed. Moving the boundary means rewriting keyed entries, which needs the key.

A ledger opened without a seal (library use, tests) writes and checks unkeyed entries only;
the commands and the daemon always open it with the seal.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import event, func, select, text
from sqlalchemy.orm import Session

from daemon import logs
from daemon.files import RefusedPath, write_private
from daemon.ledger import AuditLogEntry, Ledger, LedgerError
from vocabulary import utcnow

if TYPE_CHECKING:
    from daemon.config import LedgerSettings

log = structlog.get_logger("daemon.trail")

GENESIS = "0" * 64
KEY_FILE = "trail.key"
ANCHOR_FILE = "trail.anchor"
MIN_KEY_LENGTH = 32
KEYED_ACTION = "trail.keyed"
_SEAL = "trail_seal"
_PENDING = "trail_pending_anchor"
_LISTENING = "trail_listening"


class TrailError(LedgerError):
    """The trail's key or anchor cannot be used; the message says which and what to do."""


@dataclass(frozen=True)
class Seal:
    """What keys the chain and keeps its head outside the database."""

    key: bytes = field(repr=False)
    # The file holding the last head this host committed; None: no anchor is kept.
    anchor: Path | None = None


@dataclass(frozen=True)
class Anchor:
    """The head of the chain at one moment: the number of entries and the newest hash."""

    entries: int
    hash: str
    id: int | None = None
    at: datetime | None = None
    # The ledger it belongs to (its URL without a password).
    ledger: str | None = None


# --------------------------------------------------------------------------- the key


def _checked_key(value: str, where: str) -> bytes:
    key = value.strip()
    if len(key) < MIN_KEY_LENGTH:
        raise TrailError(f"{where}: the trail key has {len(key)} characters; it needs at "
                         f"least {MIN_KEY_LENGTH} (make one with `openssl rand -hex 32`)")
    return key.encode()


def _key_file(path: Path) -> bytes:
    """The key in `path`, made (random, 0600) when the file does not exist yet."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists() and not path.is_symlink():
            try:
                write_private(path, secrets.token_hex(32) + "\n")
            except RefusedPath:
                pass  # another process made it first: read theirs
        value = path.read_text(encoding="utf-8")
    except RefusedPath as exc:
        raise TrailError(f"the trail key {exc}") from None
    except OSError as exc:
        raise TrailError(f"cannot read or create the trail key {path}: {exc.strerror}. Check "
                         "that the state directory ([ledger] state_dir) is writable, or set "
                         "[ledger] trail_key.") from None
    return _checked_key(value, str(path))


def seal_for(settings: LedgerSettings) -> Seal:
    """The trail's key (the configured secret, or the state directory's key file) and the
    anchor file in the state directory."""
    anchor = settings.state_dir / ANCHOR_FILE
    if settings.trail_key is not None:
        key = _checked_key(settings.trail_key.get_secret_value(), "[ledger] trail_key")
    else:
        key = _key_file(settings.state_dir / KEY_FILE)
    logs.add_secrets([key.decode()])
    return Seal(key, anchor)


def open_ledger(settings: LedgerSettings) -> Ledger:
    """The configured ledger, opened with the trail's seal (as the commands and the daemon
    open it)."""
    return Ledger.open(settings.database_url, seal=seal_for(settings))


# --------------------------------------------------------------------------- hashing


def _payload(prev_hash: str, at: datetime, actor: str, action: str, detail: str) -> bytes:
    return json.dumps([prev_hash, at.isoformat(), actor, action, detail],
                      separators=(",", ":"), ensure_ascii=False).encode()


def _digest(prev_hash: str, at: datetime, actor: str, action: str, detail: str) -> str:
    """The unkeyed hash of ledgers from before the trail key."""
    return hashlib.sha256(_payload(prev_hash, at, actor, action, detail)).hexdigest()


def _keyed(key: bytes, prev_hash: str, at: datetime, actor: str, action: str,
           detail: str) -> str:
    return hmac.new(key, _payload(prev_hash, at, actor, action, detail),
                    hashlib.sha256).hexdigest()


def _is_keyed(key: bytes, row: Any) -> bool:
    return hmac.compare_digest(row.hash, _keyed(key, row.prev_hash, row.at, row.actor,
                                                row.action, row.detail))


def _ledger_name(session: Session) -> str:
    return session.get_bind().engine.url.render_as_string(hide_password=True)


# --------------------------------------------------------------------------- appending


def _lock(session: Session) -> None:
    """Serialise appenders so that two never chain from the same entry."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(7106252271)"))
    else:
        # Any write statement takes SQLite's write lock for the rest of the transaction.
        session.execute(text("UPDATE audit_log SET id = id WHERE 0"))


def _add(session: Session, key: bytes | None, prev_hash: str, moment: datetime, actor: str,
         action: str, body: str) -> AuditLogEntry:
    digest = (_keyed(key, prev_hash, moment, actor, action, body) if key is not None
              else _digest(prev_hash, moment, actor, action, body))
    entry = AuditLogEntry(at=moment, actor=actor, action=action, detail=body,
                          prev_hash=prev_hash, hash=digest)
    session.add(entry)
    session.flush()
    return entry


def _body(detail: dict[str, Any]) -> str:
    return json.dumps(detail, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


def append(session: Session, actor: str, action: str, detail: dict[str, Any],
           *, at: datetime | None = None) -> AuditLogEntry:
    """Add one entry inside the caller's transaction (it commits with the work it records);
    once it commits, the new head is anchored outside the database."""
    _lock(session)
    seal: Seal | None = session.info.get(_SEAL)
    key = seal.key if seal is not None else None
    last = session.execute(
        select(AuditLogEntry.hash, AuditLogEntry.prev_hash, AuditLogEntry.at,
               AuditLogEntry.actor, AuditLogEntry.action, AuditLogEntry.detail)
        .order_by(AuditLogEntry.id.desc()).limit(1)).first()
    count = session.scalar(select(func.count()).select_from(AuditLogEntry)) or 0
    moment = (at or utcnow()).replace(microsecond=0)
    prev_hash = last.hash if last is not None else GENESIS
    if key is not None and last is not None and not _is_keyed(key, last):
        # The boundary after which every entry must be keyed (older ones verify unkeyed).
        marker = _add(session, key, prev_hash, moment, actor, KEYED_ACTION,
                      _body({"unkeyed_entries": count}))
        prev_hash, count = marker.hash, count + 1
    entry = _add(session, key, prev_hash, moment, actor, action, _body(detail))
    if seal is not None and seal.anchor is not None:
        session.info[_PENDING] = Anchor(entries=count + 1, hash=entry.hash, id=entry.id,
                                        at=moment, ledger=_ledger_name(session))
        _listen(session)
    return entry


def record(ledger: Ledger, actor: str, action: str, detail: dict[str, Any]) -> None:
    """Append one entry in a transaction of its own."""
    with ledger.session() as session:
        append(session, actor, action, detail)


def _listen(session: Session) -> None:
    if session.info.get(_LISTENING):
        return
    event.listen(session, "after_commit", _anchor_committed)
    event.listen(session, "after_rollback", lambda s: s.info.pop(_PENDING, None))
    session.info[_LISTENING] = True


def _anchor_committed(session: Session) -> None:
    pending: Anchor | None = session.info.pop(_PENDING, None)
    seal: Seal | None = session.info.get(_SEAL)
    if pending is None or seal is None or seal.anchor is None:
        return
    try:
        write_anchor(seal.anchor, pending)
    except (OSError, RefusedPath, TrailError) as exc:
        # The work is committed: a missing anchor weakens the next check, it loses nothing.
        log.warning("trail.anchor_failed", path=str(seal.anchor),
                    error=getattr(exc, "strerror", None) or str(exc))


# --------------------------------------------------------------------------- the anchor


def read_anchor(path: Path) -> Anchor | None:
    """The anchor kept in `path`; None when there is none yet."""
    try:
        if path.is_symlink():
            raise TrailError(f"the trail anchor {path} is a symbolic link: remove it")
        data = json.loads(path.read_text(encoding="utf-8"))
        return Anchor(entries=int(data["entries"]), hash=str(data["hash"]),
                      id=int(data["id"]) if data.get("id") is not None else None,
                      at=datetime.fromisoformat(data["at"]) if data.get("at") else None,
                      ledger=data.get("ledger"))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TrailError(f"cannot read the trail anchor {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError):
        raise TrailError(f"the trail anchor {path} is not an anchor this program wrote: it "
                         "was edited or damaged. Check the trail with --expect and the head "
                         "of the latest email, then delete the file.") from None


def write_anchor(path: Path, anchor: Anchor) -> None:
    """Keep `anchor` in `path` unless it already holds a newer head of the same ledger."""
    try:
        current = read_anchor(path)
    except TrailError:
        current = None  # a damaged anchor is replaced by a good one
    if current is not None and current.ledger == anchor.ledger and \
            current.entries >= anchor.entries:
        return
    write_private(path, json.dumps({
        "ledger": anchor.ledger, "entries": anchor.entries, "id": anchor.id,
        "hash": anchor.hash, "at": anchor.at.isoformat() if anchor.at else None,
    }) + "\n", replace=True)


def head(session: Session) -> Anchor | None:
    """The chain's head now (for the morning email); None for an empty trail."""
    last = session.execute(select(AuditLogEntry.id, AuditLogEntry.hash, AuditLogEntry.at)
                           .order_by(AuditLogEntry.id.desc()).limit(1)).first()
    if last is None:
        return None
    count = session.scalar(select(func.count()).select_from(AuditLogEntry)) or 0
    return Anchor(entries=count, hash=last.hash, id=last.id, at=last.at)


# --------------------------------------------------------------------------- verifying


@dataclass(frozen=True)
class Verification:
    entries: int
    ok: bool
    first_bad_id: int | None = None
    problem: str | None = None
    head: str | None = None
    # Entries at the start hashed without the key (written before it); None: no key used.
    unkeyed: int | None = None
    # What the chain was held against and reached, one line each.
    reached: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Target:
    """A head the chain must still reach: the anchor file's, or one given by the operator."""

    what: str
    anchor: Anchor
    found_at: int | None = None


def _fit(entry: AuditLogEntry, key: bytes | None, keyed_seen: bool) -> tuple[bool, str | None]:
    """Whether the entry is keyed, and None when its hash fits (else why not)."""
    if key is not None and _is_keyed(key, entry):
        return True, None
    legacy = hmac.compare_digest(entry.hash, _digest(entry.prev_hash, entry.at, entry.actor,
                                                     entry.action, entry.detail))
    if legacy and not keyed_seen:
        return False, None
    where = f"entry {entry.id} ({entry.action} at {entry.at.isoformat()})"
    if legacy:
        return False, (f"{where} is not keyed: it was written or recomputed without the "
                       "trail key, after keyed entries")
    if key is None:
        return False, f"{where} was altered (or is keyed, and this check has no trail key)"
    return False, f"{where} was altered (or was keyed with another trail key)"


def _stored_target(ledger: Ledger, notes: list[str]) -> _Target | None:
    seal: Seal | None = ledger.seal
    if seal is None or seal.anchor is None:
        return None
    stored = read_anchor(seal.anchor)
    if stored is None:
        return None
    name = ledger.engine.url.render_as_string(hide_password=True)
    if stored.ledger != name:
        notes.append(f"the anchor in {seal.anchor} is of another ledger ({stored.ledger}); "
                     "not compared")
        return None
    return _Target(f"the head anchored in {seal.anchor}", stored)


def _missed(target: _Target, entries: int, ids: dict[int, int]) -> tuple[str, int | None]:
    """Why the chain does not reach a target, and the entry where it stops fitting."""
    anchor = target.anchor
    if anchor.entries <= 0:
        return (f"the chain does not reach {target.what} ({anchor.hash}): entries were "
                "removed, or the chain was rewritten", None)
    if anchor.entries > entries:
        return (f"the chain has {entries} entries, fewer than the {anchor.entries} at "
                f"{target.what} ({anchor.hash}): the newest entries were removed "
                "(if the ledger was restored from a backup on purpose, the anchor file can "
                "go)", None)
    return (f"entry {anchor.entries} of the chain is not {target.what} ({anchor.hash}): "
            "the chain was rewritten up to there", ids.get(anchor.entries))


def verify(ledger: Ledger, *, expect: Anchor | None = None) -> Verification:
    """Recompute the chain from the first entry; name the first entry that does not fit,
    and check that the chain still reaches the anchor file's head and `expect` (a head
    noted elsewhere: its hash, and its number of entries when entries > 0)."""
    seal: Seal | None = ledger.seal
    key = seal.key if seal is not None else None
    notes: list[str] = []
    targets = [t for t in (_stored_target(ledger, notes),
                           _Target("the head given by --expect", expect) if expect else None) if t]
    expected_prev = GENESIS
    count = 0
    unkeyed = 0
    keyed_seen = False
    ids: dict[int, int] = {}  # position → entry id, only where a target looks
    positions = {t.anchor.entries for t in targets}
    hashes = {t.anchor.hash for t in targets if t.anchor.entries <= 0}
    found: dict[str, int] = {}
    with ledger.sessions() as session:
        rows = session.execute(select(AuditLogEntry).order_by(AuditLogEntry.id)
                               .execution_options(yield_per=1000)).scalars()
        for entry in rows:
            count += 1
            if entry.prev_hash != expected_prev:
                return Verification(count, False, entry.id,
                                    f"entry {entry.id} does not follow the entry before it: "
                                    "an entry before it was altered or removed")
            keyed, problem = _fit(entry, key, keyed_seen)
            if problem is not None:
                return Verification(count, False, entry.id, problem)
            keyed_seen = keyed_seen or keyed
            if not keyed_seen:
                unkeyed += 1
            if count in positions:
                ids[count] = entry.id
                found.setdefault(entry.hash, count)
            if entry.hash in hashes:
                found.setdefault(entry.hash, count)
            expected_prev = entry.hash
            session.expunge(entry)
    reached = []
    for target in targets:
        at = found.get(target.anchor.hash)
        wanted = target.anchor.entries
        if at is None or (wanted > 0 and at != wanted):
            problem, bad = _missed(target, count, ids)
            return Verification(count, False, bad, problem, head=expected_prev)
        reached.append(f"it reaches {target.what}: {target.anchor.hash} (entry {at} of "
                       f"{count})")
    return Verification(count, True, head=expected_prev if count else None,
                        unkeyed=unkeyed if key is not None else None,
                        reached=tuple(reached), notes=tuple(notes))
