"""The journal must be append-only, survive reopening, and expose any edit made behind its back."""

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from agent.recording import records
from agent.recording.journal import GENESIS, Journal, canonical_json


@pytest.fixture
def journal(tmp_path):
  with Journal.open(tmp_path / 'run' / 'journal.sqlite') as opened:
    yield opened


def _fill(journal: Journal) -> None:
  journal.append('run_started', {'charter': 'mnist1d', 'seeds': [0, 1, 2]})
  journal.append('baseline', {'mean': 0.71, 'per_seed': [0.70, 0.71, 0.72]})
  for trial in (1, 2):
    journal.append('proposal', {'hypothesis': f'idea {trial}', 'note': 'caf\u00e9'}, trial=trial)
    journal.append('verdict', {'accepted': trial == 2, 'gain': 0.01 * trial}, trial=trial)


def _attacker(path) -> sqlite3.Connection:
  """What someone with the file would do: open it and drop the guards."""
  db = sqlite3.connect(path)
  db.execute('DROP TRIGGER IF EXISTS records_no_update')
  db.execute('DROP TRIGGER IF EXISTS records_no_delete')
  return db


def _tamper(path, sql: str, params=()) -> None:
  db = _attacker(path)
  db.execute(sql, params)
  db.commit()
  db.close()


def test_append_chains_and_reads_back(journal):
  _fill(journal)
  records = journal.records()
  assert [r.seq for r in records] == [1, 2, 3, 4, 5, 6]
  assert records[0].prev_hash == GENESIS
  assert all(b.prev_hash == a.hash for a, b in zip(records, records[1:]))
  assert records[1].payload == {'mean': 0.71, 'per_seed': [0.70, 0.71, 0.72]}
  assert journal.verify() is None


def test_filters_and_last(journal):
  _fill(journal)
  assert [r.trial for r in journal.records(kind='verdict')] == [1, 2]
  assert [r.kind for r in journal.records(trial=2)] == ['proposal', 'verdict']
  assert journal.records(kind='verdict', trial=1)[0].payload['accepted'] is False
  assert journal.last('verdict').trial == 2
  assert journal.last('verdict', trial=1).payload['gain'] == 0.01
  assert journal.last('final_eval') is None


def test_non_finite_floats_and_numpy_values_are_stored_as_json(journal):
  record = journal.append('trial_finished', {
      'loss': float('nan'), 'up': np.float32('inf'), 'down': -np.inf,
      'steps': np.int64(300), 'per_seed': (np.float64(0.5), 1)}, trial=np.int64(4))
  assert record.payload == {'loss': 'nan', 'up': 'inf', 'down': '-inf', 'steps': 300,
                            'per_seed': [0.5, 1]}
  assert record.trial == 4
  assert journal.records()[0].payload == record.payload
  assert journal.verify() is None


def test_canonical_json_is_key_order_independent():
  assert canonical_json({'b': 1, 'a': [1.5, None]}) == canonical_json({'a': [1.5, None], 'b': 1})
  assert canonical_json({'a': 1}) == '{"a":1}'
  with pytest.raises(TypeError):
    canonical_json({'a': object()})


def test_update_and_delete_are_refused(journal):
  _fill(journal)
  db = sqlite3.connect(journal.path)
  with pytest.raises(sqlite3.DatabaseError, match='append-only'):
    db.execute("UPDATE records SET payload = '{}' WHERE seq = 2")
  with pytest.raises(sqlite3.DatabaseError, match='append-only'):
    db.execute('DELETE FROM records WHERE seq = 6')
  db.close()
  assert len(journal.records()) == 6
  assert journal.verify() is None


def test_reopen_continues_the_chain(tmp_path):
  path = tmp_path / 'journal.sqlite'
  with Journal.open(path) as first:
    _fill(first)
  with Journal.open(path) as second:
    record = second.append('run_finished', {'best': 'abc'})
    assert record.seq == 7
    assert record.prev_hash == second.records()[5].hash
    assert second.verify() is None


def test_verify_detects_a_one_byte_edit_anywhere_in_a_payload(journal):
  _fill(journal)
  text = canonical_json(journal.records()[4].payload)  # seq 5: proposal, trial 2
  attacker = _attacker(journal.path)
  attacker.execute('PRAGMA synchronous=OFF')
  for position in range(len(text)):
    edited = text[:position] + chr(ord(text[position]) ^ 1) + text[position + 1:]
    attacker.execute('UPDATE records SET payload = ? WHERE seq = 5', (edited,))
    attacker.commit()
    problem = journal.verify()
    assert problem is not None and problem.startswith('record 5 (kind=proposal, trial 2): '), (
        position, edited, problem)
  attacker.close()


def test_verify_reports_the_first_bad_record(tmp_path):
  path = tmp_path / 'journal.sqlite'
  with Journal.open(path) as journal:
    _fill(journal)
  payload = json.dumps({'accepted': True, 'gain': 0.5}, sort_keys=True, separators=(',', ':'))
  _tamper(path, 'UPDATE records SET payload = ? WHERE seq = 4', (payload,))
  _tamper(path, "UPDATE records SET ts = 'yesterday' WHERE seq = 6")
  with Journal.open(path) as journal:
    assert journal.verify() == 'record 4 (kind=verdict, trial 1): hash mismatch'


def test_verify_detects_a_deleted_record_and_a_forged_hash(tmp_path):
  path = tmp_path / 'journal.sqlite'
  with Journal.open(path) as journal:
    _fill(journal)
  _tamper(path, 'DELETE FROM records WHERE seq = 3')
  with Journal.open(path) as journal:
    assert journal.verify() == 'record 4 (kind=verdict, trial 1): sequence gap (expected record 3)'
  _tamper(path, 'UPDATE records SET hash = ? WHERE seq = 1', ('f' * 64,))
  with Journal.open(path) as journal:
    assert journal.verify() == 'record 1 (kind=run_started): hash mismatch'


def test_a_killed_writer_keeps_every_committed_record(tmp_path):
  path = tmp_path / 'journal.sqlite'
  script = textwrap.dedent(f"""
      import os, signal
      from agent.recording.journal import Journal
      journal = Journal.open({str(path)!r})
      for i in range(20):
        journal.append('budget', {{'trials': i}})
      os.kill(os.getpid(), signal.SIGKILL)
  """)
  result = subprocess.run([sys.executable, '-c', script], capture_output=True,
                          cwd=Path(__file__).resolve().parents[1])
  assert result.returncode == -9
  with Journal.open(path) as journal:
    assert len(journal.records(kind='budget')) == 20
    assert journal.verify() is None


def test_the_anchor_follows_every_append_and_exposes_a_cut_or_a_rehash(tmp_path):
  path = tmp_path / 'journal.sqlite'
  anchors: list[str] = []
  with Journal.open(path) as journal:
    _fill(journal)
    journal.anchor_with(anchors.append)  # the head at once, then after every append
    for trial in (1, 2):
      journal.append('budget', {'trials': trial})
    head = journal.head()
    assert [a.split()[0] for a in anchors] == ['6', '7', '8']
    assert anchors[-1] == f'{head.seq} {head.hash}\n'
    assert journal.anchor_problem(anchors[-1]) is None
    assert journal.anchor_problem(anchors[1]) is None  # killed before it moved: one behind
    assert journal.anchor_problem(anchors[0]) == (
        'records 7..8 were written without moving the anchor (at record 6)')
  _tamper(path, 'DELETE FROM records WHERE seq > 5')
  with Journal.open(path) as journal:
    assert journal.verify() is None
    assert journal.anchor_problem(anchors[-1]) == (
        'the journal ends at record 5, but its anchor names record 8: records were removed')
  path.unlink()
  with Journal.open(path) as rewritten:  # the same records, new timestamps: a valid new chain
    _fill(rewritten)
    for trial in (1, 2):
      rewritten.append('budget', {'trials': trial})
    assert rewritten.verify() is None
    assert rewritten.anchor_problem(anchors[-1]).startswith(
        'record 8 does not have the hash its anchor names')
    assert 'not "<record number> <hash>"' in rewritten.anchor_problem('garbage')


def test_a_created_journal_exists_only_with_its_first_record(tmp_path):
  path = tmp_path / 'run' / 'journal.sqlite'
  (tmp_path / 'run').mkdir()
  (tmp_path / 'run' / '.journal.sqlite.new').write_bytes(b'left by a killed creation')
  first = records.SessionEnded('stopped', 1.0)
  journal = Journal.create(path, first)
  assert [r.kind for r in journal.records()] == [first.KIND]
  journal.close()
  assert sorted(p.name for p in path.parent.iterdir()) == ['journal.sqlite']
  with pytest.raises(FileExistsError):
    Journal.create(path, first)


def test_session_clock_counts_killed_sessions_to_their_last_sign_of_life():
  """An ended session counts what it said; a killed one from its start to its last record,
  or to the heartbeat when that is its own and later, never past the next session's start."""
  from agent.recording.journal import Record
  from agent.recording.state import _SessionClock
  def at(seq: int, second: float, kind: str, payload: dict) -> Record:
    ts = f'2026-01-01T00:00:{second:09.6f}+00:00'
    return Record(seq, ts, kind, None, payload, '', '')
  data = {'dataset': {}, 'fingerprints': {}}
  entries = [at(1, 0, 'session_started', {'pid': 1}),  # ended: says 7.5 s
             at(2, 9, 'session_ended', {'reason': 'done', 'elapsed_seconds': 7.5}),
             at(3, 10, 'session_started', {'pid': 2}),  # killed: 10 -> 13 (its last record)
             at(4, 13, 'data', data),
             at(5, 20, 'session_started', {'pid': 3}),  # killed: 20 -> 31 (its heartbeat)
             at(6, 21, 'data', data)]
  for heartbeat, expected in (({'session': 5, 'time': '2026-01-01T00:00:31+00:00'}, 7.5 + 3 + 11),
                              ({'session': 3, 'time': '2026-01-01T00:00:15+00:00'}, 7.5 + 5 + 1),
                              ({'session': 3, 'time': '2026-01-01T00:00:59+00:00'}, 7.5 + 10 + 1),
                              ({}, 7.5 + 3 + 1)):
    clock = _SessionClock(heartbeat)
    total = sum(clock.see(record) for record in entries) + clock.close()
    assert total == pytest.approx(expected), heartbeat
