"""Typed journal records: a journal written before they existed still reads, replays and
reports the same, and each record reads back into the payload it was written from.

tests/data/journal_v1 was written by commit ea9747f (see make.py there): a review-required
run with every record kind the loop, review and main write but baseline_failed.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from agent.recording import records, report
from agent.recording.journal import Journal, canonical_json
from agent.recording.state import RunState
from tests.agent_workspace import fake_scorecard, write_scorecard

FIXTURE = Path(__file__).parent / 'data' / 'journal_v1'


@pytest.fixture
def old(tmp_path):
  """The fixture journal, copied: opening one writes its WAL files beside it."""
  shutil.copy(FIXTURE / 'journal.sqlite', tmp_path / 'journal.sqlite')
  journal = Journal.open(tmp_path / 'journal.sqlite')
  yield journal, json.loads((FIXTURE / 'expected.json').read_text())
  journal.close()


def test_every_old_record_reads_typed_and_back_into_its_payload(old):
  journal, expected = old
  assert journal.verify() is None
  stored = journal.records()
  assert sorted({r.kind for r in stored}) == expected['kinds']
  for record in stored:
    assert isinstance(record.body, records.KINDS[record.kind])
    assert canonical_json(record.body.to_record()) == canonical_json(record.payload), record.seq


def test_an_old_journal_replays_to_the_state_it_gave_then(old):
  journal, expected = old
  state, then = RunState.replay(journal), expected['state']
  assert state.pending is None and state.awaiting_review is None and then['pending'] is None
  now = {**dataclasses.asdict(state), 'data': state.data.to_record(), 'pending': None,
         'awaiting_review': None}
  assert now.pop('later') == []  # proposals of an interrupted batch: none in this journal
  # what trials side by side (--workers) added; this journal's run had them one at a time
  assert (now.pop('last_trial'), now.pop('bases'), now.pop('stale')) == (6, {}, [])
  assert now['config'].pop('share_stats') == ''  # added since: --share_stats, off then
  assert canonical_json(now) == canonical_json(then)


@pytest.mark.parametrize('view', ['status', 'log', 'summary'])
def test_an_old_journal_reports_as_it_did_then(old, view):
  journal, expected = old
  text = (report.summary(journal, 'agent/r1', 'RUN') if view == 'summary' else
          getattr(report, view)(journal))
  assert text == expected[view]


def test_a_record_written_and_read_back_is_the_same_record(tmp_path):
  journal = Journal.open(tmp_path / 'journal.sqlite')
  failed = records.BaselineFailed(status='timeout', reason='ran long')
  verdict = records.Verdict(accepted=False, reason_code='pruned', rationale='Stopped early',
                            gain=float('nan'), compute_saved_seconds=2.5, status='pruned')
  for body, trial in ((failed, None), (verdict, 3)):
    stored = journal.write(body, trial=trial)
    assert journal.latest(type(body), trial) == stored.body
  assert journal.latest(records.Verdict).gain != journal.latest(records.Verdict).gain  # nan
  assert set(journal.last(records.Verdict).payload) == {
      'accepted', 'reason_code', 'rationale', 'gain', 'noise_floor', 'p_value', 'checks',
      'commit', 'ran_commit', 'candidate', 'compute_saved_seconds', 'status'}
  journal.close()


def test_fields_an_older_journal_lacks_take_their_defaults():
  verdict = records.Verdict.from_record({'accepted': False, 'reason_code': 'no_gain',
                                         'gain': 0.0, 'rationale': 'Rejected'})
  assert verdict.candidate is None and verdict.commit == '' and not verdict.awaiting_review
  usage = records.LlmUsage.from_record({'input_tokens': 5, 'output_tokens': 2})
  assert usage.cost_usd is None and usage.input_tokens == 5


@pytest.mark.parametrize('kind, payload, named', [
    ('verdict', {'accepted': 'yes', 'reason_code': 'x', 'rationale': ''},
     'verdict.accepted: expected bool'),
    ('review', {'trial': 1, 'approved': True, 'why': '', 'reviewer': 'a'},
     'review: commit is missing'),
    ('llm_usage', {'input_tokens': 1.5}, 'llm_usage.input_tokens: expected int'),
    ('baseline', {'arm': {'commit': 'c'}}, 'baseline.arm: workdir is missing'),
    ('run_finished', {'reason': 'done', 'best': 'abc'}, "unknown field 'best'"),
    ('budget', {'trials': 1}, "unknown record kind 'budget'"),
])
def test_a_payload_that_does_not_fit_its_kind_is_named(kind, payload, named):
  with pytest.raises(records.RecordError, match=named):
    records.parse(kind, payload)


@pytest.mark.parametrize('device_peak, trusted_rss, expected', [
    (None, 150.0, 150.0),  # CPU: the host's resident peak (the trusted measure when larger)
    (3 * 2**30, 150.0, 3072.0),  # GPU/TPU: the accelerator's allocator peak
])
def test_peak_memory_is_the_accelerators_where_it_reports_one(tmp_path, device_peak,
                                                              trusted_rss, expected):
  card = fake_scorecard([0.5, 0.6])
  card['memory']['device_peak_bytes'] = device_peak
  card['trusted'] = {'max_rss_mb': trusted_rss}
  write_scorecard(tmp_path, card)
  arm = records.ArmRecord.from_scorecard('c' * 40, tmp_path, card)
  assert arm.peak_memory_mb == expected
