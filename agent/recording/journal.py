"""The run's journal: an append-only, hash-chained SQLite log of everything the agent did.

Why SQLite: embedded, crash-safe, queryable by a person with the `sqlite3` shell. Why a hash
chain: a reviewer signing off on a run must be able to tell that nobody edited a verdict after
the fact; SQL triggers stop accidental edits, the chain exposes deliberate ones (`verify`).
A chain can be cut short or re-hashed wholesale, so the head's number and hash are also kept
outside the file, in the run's git (`anchor_with`), and `verify` compares the two.

Each record hashes `prev_hash + canonical_json([seq, ts, kind, trial, payload])`; the first
record's prev_hash is GENESIS. Payloads are stored as canonical JSON (sorted keys, no spaces,
ASCII); non-finite floats are stored as the strings 'nan', 'inf' and '-inf', so they read back
as strings.

Every record kind, its payload and its typed form are defined in agent.recording.records;
`write` stores one, `read`, `latest` and `Record.body` give them back typed. The journal itself
stores any kind (`append`): the chain does not depend on what the payloads mean.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import math
import numbers
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, TypeVar

from agent.recording import records as records_lib

GENESIS = '0' * 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
  seq INTEGER PRIMARY KEY,
  ts TEXT NOT NULL,
  kind TEXT NOT NULL,
  trial INTEGER NULL,
  payload TEXT NOT NULL,
  prev_hash TEXT NOT NULL,
  hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_kind_trial ON records (kind, trial);
CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
BEGIN SELECT RAISE(ABORT, 'journal is append-only: UPDATE is forbidden'); END;
CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
BEGIN SELECT RAISE(ABORT, 'journal is append-only: DELETE is forbidden'); END;
"""

_COLUMNS = 'seq, ts, kind, trial, payload, prev_hash, hash'
Kind = TypeVar('Kind', bound=records_lib.Body)


@dataclasses.dataclass(frozen=True)
class Record:
  """One journal entry as stored; payload is the decoded JSON object."""
  seq: int
  ts: str
  kind: str
  trial: int | None
  payload: dict[str, Any]
  prev_hash: str
  hash: str

  @functools.cached_property
  def body(self) -> records_lib.Body:
    """The typed record (records_lib.RecordError if the payload does not fit its kind)."""
    return records_lib.parse(self.kind, self.payload)


def _jsonable(value: Any) -> Any:
  """Maps a payload to plain JSON types; non-finite floats become strings, not invalid JSON."""
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (str, bool)) or value is None:
    return value
  if isinstance(value, numbers.Integral):
    return int(value)
  if isinstance(value, numbers.Real):
    number = float(value)
    if math.isnan(number):
      return 'nan'
    if math.isinf(number):
      return 'inf' if number > 0 else '-inf'
    return number
  raise TypeError(f'journal payloads hold JSON-like values only, got {type(value).__name__}')


def canonical_json(value: Any) -> str:
  """One byte-exact text per value, so hashes are reproducible across runs and machines."""
  return json.dumps(_jsonable(value), sort_keys=True, separators=(',', ':'),
                    ensure_ascii=True, allow_nan=False)


def record_hash(prev_hash: str, seq: int, ts: str, kind: str, trial: int | None,
                payload: dict[str, Any]) -> str:
  """The chain link: covers every column but the hash itself."""
  body = canonical_json([seq, ts, kind, trial, payload])
  return hashlib.sha256((prev_hash + body).encode('utf-8')).hexdigest()


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='microseconds')


def _describe(seq: int, kind: str, trial: int | None) -> str:
  trial_part = '' if trial is None else f', trial {trial}'
  return f'record {seq} (kind={kind}{trial_part})'


def anchor_text(record: Record) -> str:
  """What an anchor outside the journal holds: the head record's number and hash."""
  return f'{record.seq} {record.hash}\n'


def _to_record(row: tuple) -> Record:
  seq, ts, kind, trial, payload, prev_hash, digest = row
  return Record(seq, ts, kind, trial, json.loads(payload), prev_hash, digest)


def _row_problem(row: tuple, expected_seq: int, expected_prev: str) -> str | None:
  """Why a stored row breaks the chain, or None if it is intact."""
  seq, ts, kind, trial, payload_text, prev_hash, digest = row
  if seq != expected_seq:
    return f'sequence gap (expected record {expected_seq})'
  if prev_hash != expected_prev:
    return 'prev_hash does not match the previous record'
  try:
    payload = json.loads(payload_text)
  except ValueError:
    return 'payload is not valid JSON'
  if not isinstance(payload, dict) or canonical_json(payload) != payload_text:
    return 'payload is not in canonical form'
  if record_hash(prev_hash, seq, ts, kind, trial, payload) != digest:
    return 'hash mismatch'
  return None


class Journal:
  """Append-only journal over one SQLite file; every append is durable when it returns.

  One connection, shared by the loop's threads (trials judged in parallel write their runs'
  records as they end): a lock serialises every statement, and an append holds it until its
  anchor is written, so records and anchors go out in one order."""

  def __init__(self, connection: sqlite3.Connection, path: Path):
    self._db = connection
    self.path = path
    self._anchor: Callable[[str], None] | None = None
    self._lock = threading.RLock()

  def _rows(self, sql: str, params: tuple | list = ()) -> list[tuple]:
    with self._lock:
      return self._db.execute(sql, params).fetchall()

  @classmethod
  def open(cls, path: str | Path) -> Journal:
    """Creates the journal (and its folder) or opens an existing one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, isolation_level=None,  # explicit transactions only
                                 check_same_thread=False)  # `_lock` serialises
    connection.execute('PRAGMA journal_mode=WAL')
    connection.execute('PRAGMA synchronous=FULL')
    connection.executescript(_SCHEMA)
    return cls(connection, path)

  @classmethod
  def create(cls, path: str | Path, first: records_lib.Body) -> Journal:
    """A new journal that exists only with its first record in it: written beside, then
    renamed into place, so an agent killed while creating it leaves no journal (the run was
    never started) rather than an empty one that cannot be resumed."""
    path = Path(path)
    if path.exists():
      raise FileExistsError(f'{path} already exists')
    beside = path.with_name(f'.{path.name}.new')
    for stale in (beside, *(beside.with_name(beside.name + s) for s in ('-wal', '-shm'))):
      stale.unlink(missing_ok=True)  # a creation killed earlier
    journal = cls.open(beside)
    journal.write(first)
    journal.close()  # the last connection: the WAL is checkpointed into the file
    os.replace(beside, path)
    return cls.open(path)

  def append(self, kind: str, payload: dict[str, Any], trial: int | None = None) -> Record:
    """Writes one record and commits it; BEGIN IMMEDIATE serialises concurrent writers."""
    trial = None if trial is None else int(trial)
    payload_text = canonical_json(payload)
    stored_payload = json.loads(payload_text)
    with self._lock:
      self._db.execute('BEGIN IMMEDIATE')
      try:
        row = self._db.execute('SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1').fetchone()
        seq, prev_hash = (row[0] + 1, row[1]) if row else (1, GENESIS)
        ts = _now()
        digest = record_hash(prev_hash, seq, ts, kind, trial, stored_payload)
        self._db.execute(f'INSERT INTO records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)',
                         (seq, ts, kind, trial, payload_text, prev_hash, digest))
        self._db.execute('COMMIT')
      except BaseException:
        self._db.execute('ROLLBACK')
        raise
      record = Record(seq, ts, kind, trial, stored_payload, prev_hash, digest)
      if self._anchor is not None:
        self._anchor(anchor_text(record))
    return record

  def write(self, record: records_lib.Body, trial: int | None = None) -> Record:
    """Appends a typed record in its journal form."""
    return self.append(record.KIND, record.to_record(), trial)

  def anchor_with(self, write: Callable[[str], None]) -> None:
    """Hands `write` the head's number and hash now and after every append, to keep outside
    this file (the run's git: vcs.write_text_ref). The chain proves no record was edited in
    place; the anchor shows one cut off the end or a chain re-hashed wholesale
    (`anchor_problem`). It is written after the record commits, so a kill between the two
    leaves it one record behind, never ahead."""
    self._anchor = write
    head = self.head()
    if head is not None:
      write(anchor_text(head))

  def anchor_problem(self, text: str) -> str | None:
    """Why the journal does not match an anchor's text, or None when it does: it holds the
    record the anchor names, with that hash, and at most one record after it (the one a
    process killed before it moved the anchor may have left). Assumes the chain holds."""
    try:
      number, digest = text.split()
      seq = int(number)
    except ValueError:
      return f'the anchor is not "<record number> <hash>": {text[:80]!r}'
    head = self.head()
    count = head.seq if head else 0
    if count < seq:
      return (f'the journal ends at record {count}, but its anchor names record {seq}: '
              f'records were removed')
    rows = self._rows('SELECT hash FROM records WHERE seq = ?', (seq,))
    row = rows[0] if rows else None
    if row is None or row[0] != digest:
      return (f'record {seq} does not have the hash its anchor names ({digest[:12]}): the '
              f'journal was rewritten')
    if count > seq + 1:
      return (f'records {seq + 1}..{count} were written without moving the anchor (at record '
              f'{seq})')
    return None

  def head(self) -> Record | None:
    """The last record, or None in an empty journal."""
    rows = self._rows(f'SELECT {_COLUMNS} FROM records ORDER BY seq DESC LIMIT 1')
    return _to_record(rows[0]) if rows else None

  def records(self, kind: str | type[records_lib.Body] | None = None,
              trial: int | None = None) -> list[Record]:
    """Records in order, optionally filtered by kind (its name or its record class) and/or
    trial."""
    clauses, params = [], []
    if kind is not None:
      clauses.append('kind = ?')
      params.append(getattr(kind, 'KIND', kind))
    if trial is not None:
      clauses.append('trial = ?')
      params.append(trial)
    where = f' WHERE {" AND ".join(clauses)}' if clauses else ''
    rows = self._rows(f'SELECT {_COLUMNS} FROM records{where} ORDER BY seq', params)
    return [_to_record(row) for row in rows]

  def last(self, kind: str | type[records_lib.Body],
           trial: int | None = None) -> Record | None:
    """The latest record of a kind (of that trial, if given); what resume reads."""
    query = f'SELECT {_COLUMNS} FROM records WHERE kind = ?'
    params: list[Any] = [getattr(kind, 'KIND', kind)]
    if trial is not None:
      query += ' AND trial = ?'
      params.append(trial)
    rows = self._rows(query + ' ORDER BY seq DESC LIMIT 1', params)
    return _to_record(rows[0]) if rows else None

  def read(self, kind: type[Kind], trial: int | None = None) -> list[Kind]:
    """The typed records of one kind, in order."""
    return [record.body for record in self.records(kind, trial)]

  def latest(self, kind: type[Kind], trial: int | None = None) -> Kind | None:
    """The latest typed record of one kind, or None."""
    record = self.last(kind, trial)
    return None if record is None else record.body

  def verify(self) -> str | None:
    """None if the whole chain holds, else a one-line description of the first bad record."""
    expected_prev = GENESIS
    rows = self._rows(f'SELECT {_COLUMNS} FROM records ORDER BY seq')
    for expected_seq, row in enumerate(rows, start=1):
      problem = _row_problem(row, expected_seq, expected_prev)
      if problem:
        return f'{_describe(row[0], row[2], row[3])}: {problem}'
      expected_prev = row[6]
    return None

  def close(self) -> None:
    self._db.close()

  def __enter__(self) -> Journal:
    return self

  def __exit__(self, *exc_info: object) -> None:
    self.close()
