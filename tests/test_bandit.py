"""The operator bandit: priors lead, verdicts correct them, memory survives runs, and
workspaces share it only when the user opts in."""

import dataclasses
import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from agent.proposing.bandit import POOLED_WEIGHT, Bandit, SharedBandit
from agent.recording.records import RunConfig, RunStarted
from agent.start import make_proposer


def share(bandit: Bandit, candidates: list[str], op: str, n: int = 200, **kwargs) -> float:
  rng = np.random.default_rng(0)
  return sum(bandit.choose(candidates, rng, **kwargs) == op for _ in range(n)) / n


def test_priors_steer_the_choice():
  priors = {'to_cnn1d': (20.0, 1.0), 'lr_up': (1.0, 20.0)}
  assert share(Bandit(), ['lr_up', 'to_cnn1d'], 'to_cnn1d', priors=priors) > 0.95
  assert share(Bandit(), ['lr_up', 'to_cnn1d'], 'lr_up', priors=priors) < 0.05


def test_updates_shift_the_choice():
  bandit = Bandit()
  priors = {'a': (4.0, 1.0), 'b': (1.0, 4.0)}
  assert share(bandit, ['a', 'b'], 'a', priors=priors, context='t/m') > 0.8
  for _ in range(20):
    bandit.update('a', False, context='t/m')
    bandit.update('b', True, context='t/m')
  assert share(bandit, ['a', 'b'], 'b', priors=priors, context='t/m') > 0.9


def test_contexts_are_separate_with_a_pooled_fallback():
  bandit = Bandit()
  for _ in range(4):
    bandit.update('wd_up', False, context='mnist1d/mlp')
  bandit.update('wd_up', True, context='digits/mlp')
  # Own counts only, once the context has any.
  assert bandit.posterior('wd_up', 'digits/mlp') == (2.0, 1.0)
  assert bandit.posterior('wd_up', 'mnist1d/mlp', (2.0, 2.0)) == (2.0, 6.0)
  # A fresh context sees the pooled counts at reduced weight.
  assert bandit.pooled('wd_up') == (1.0, 4.0)
  assert bandit.posterior('wd_up', 'charlm/transformer') == (
      1.0 + POOLED_WEIGHT * 1.0, 1.0 + POOLED_WEIGHT * 4.0)
  assert bandit.posterior('never_seen', 'charlm/transformer', (3.0, 5.0)) == (3.0, 5.0)


def test_same_rng_same_choices():
  draws = [[Bandit().choose(['a', 'b', 'c'], rng) for _ in range(20)]
           for rng in (np.random.default_rng(7), np.random.default_rng(7))]
  assert draws[0] == draws[1]


def test_choose_needs_candidates():
  with pytest.raises(ValueError, match='no candidate'):
    Bandit().choose([], np.random.default_rng(0))


def test_json_round_trip_and_file_persistence(tmp_path: Path):
  bandit = Bandit()
  bandit.update('to_cnn1d', True, context='mnist1d/mlp')
  bandit.update('lr_up', False, context='charlm/transformer')
  assert Bandit.from_json(json.loads(json.dumps(bandit.to_json()))).counts == bandit.counts
  path = tmp_path / 'nested' / 'stats.json'
  bandit.save(path)
  assert Bandit.load(path).counts == bandit.counts
  assert [p.name for p in path.parent.iterdir()] == ['stats.json']  # no temp file left


@pytest.mark.parametrize('content', ['{not json', '[]', '{"version": 99, "contexts": {}}',
                                     '{"version": 1, "contexts": {"t/m": {"a": {"successes": -1, '
                                     '"failures": 0}}}}'])
def test_corrupt_file_starts_fresh_with_a_warning(tmp_path: Path, caplog, content: str):
  path = tmp_path / 'stats.json'
  path.write_text(content)
  with caplog.at_level(logging.WARNING):
    bandit = Bandit.load(path)
  assert bandit.counts == {}
  assert any('starting fresh' in r.getMessage() for r in caplog.records)


def test_missing_file_starts_fresh(tmp_path: Path, caplog):
  with caplog.at_level(logging.WARNING):
    assert Bandit.load(tmp_path / 'absent.json').counts == {}
  assert any('starting fresh' in r.getMessage() for r in caplog.records)


# ---- sharing between workspaces (opt-in) ----------------------------------------------------
def workspace(tmp_path: Path, name: str, shared: Path | None) -> tuple[Bandit, Path]:
  """A workspace's bandit as agent.start.make_proposer builds it: its own file, and the
  shared one where the run opted in."""
  own = tmp_path / name / 'runs' / 'proposer_stats.json'
  return (SharedBandit(own, shared) if shared else Bandit.load(own)), own


def test_workspaces_share_their_counts_only_when_they_opt_in(tmp_path: Path):
  shared = tmp_path / 'team' / 'stats.json'
  before = Bandit()  # a's verdict from before it opted in: its own, counted once
  before.update('to_cnn1d', True, context='mnist1d/mlp')
  before.save(tmp_path / 'a' / 'runs' / 'proposer_stats.json')
  a, a_file = workspace(tmp_path, 'a', shared)
  for success in (True, False):
    a.update('to_cnn1d', success, context='mnist1d/mlp')
    a.save(a_file)
  assert a.posterior('to_cnn1d', 'mnist1d/mlp') == (3.0, 2.0)
  b, b_file = workspace(tmp_path, 'b', shared)  # opted in: sees what a shared
  assert b.posterior('to_cnn1d', 'mnist1d/mlp') == (2.0, 2.0)
  c, _ = workspace(tmp_path, 'c', None)  # the default: its own counts only
  assert c.posterior('to_cnn1d', 'mnist1d/mlp') == (1.0, 1.0)
  b.update('to_cnn1d', False, context='mnist1d/mlp')
  b.save(b_file)
  assert b.posterior('to_cnn1d', 'mnist1d/mlp') == (2.0, 3.0)
  a.update('lr_up', True, context='digits/mlp')  # a takes in b's verdict with its next one
  a.save(a_file)
  assert a.posterior('to_cnn1d', 'mnist1d/mlp') == (3.0, 3.0)  # every verdict once
  # each workspace's own file holds its own verdicts only; the shared one, counts only
  assert Bandit.load(a_file).counts == {'mnist1d/mlp': {'to_cnn1d': [2.0, 1.0]},
                                        'digits/mlp': {'lr_up': [1.0, 0.0]}}
  assert Bandit.load(b_file).counts == {'mnist1d/mlp': {'to_cnn1d': [0.0, 1.0]}}
  assert Bandit.load(shared).counts == {'mnist1d/mlp': {'to_cnn1d': [1.0, 2.0]},
                                        'digits/mlp': {'lr_up': [1.0, 0.0]}}
  assert json.loads(shared.read_text()).keys() == {'version', 'contexts'}
  assert not (tmp_path / 'c' / 'runs').exists()  # the default wrote nothing anywhere


def test_runs_at_once_lose_no_shared_verdict(tmp_path: Path):
  shared = tmp_path / 'stats.json'
  bandits = [workspace(tmp_path, name, shared)[0] for name in ('a', 'b')]
  def learn(bandit):
    for i in range(30):
      bandit.update('lr_up', i % 3 == 0, context='digits/mlp')
  threads = [threading.Thread(target=learn, args=(b,)) for b in bandits]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert Bandit.load(shared).counts == {'digits/mlp': {'lr_up': [20.0, 40.0]}}


def test_an_unreadable_shared_file_is_left_as_it_is(tmp_path: Path, caplog):
  shared = tmp_path / 'stats.json'
  shared.write_text('{not json')
  with caplog.at_level(logging.WARNING):
    bandit, own = workspace(tmp_path, 'a', shared)
    bandit.update('lr_up', True, context='digits/mlp')
  assert shared.read_text() == '{not json'
  assert bandit.posterior('lr_up', 'digits/mlp') == (2.0, 1.0)  # its own verdict still counts
  assert any('own counts are used' in r.getMessage() for r in caplog.records)


def test_the_run_opts_in_through_its_recorded_config(tmp_path: Path):
  """`--share_stats` reaches the proposer through the journal's run config (so a resumed run
  shares as it started), and a run that does not opt in records nothing new."""
  config = RunConfig(run_id='r', experiment='e.py', proposer='heuristic', seeds=2,
                     budget_trials=1, budget_minutes=1.0, budget_compute_seconds=0.0)
  assert 'share_stats' not in RunStarted(config=config).to_record()['config']
  assert type(make_proposer(config, tmp_path).bandit) is Bandit
  shared = dataclasses.replace(config, share_stats=str(tmp_path / 'team.json'))
  again = RunStarted.from_record(RunStarted(config=shared).to_record()).config
  assert isinstance(make_proposer(again, tmp_path).bandit, SharedBandit)
