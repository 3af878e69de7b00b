"""The operator bandit: priors lead, verdicts correct them, and memory survives runs."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from agent.proposing.bandit import POOLED_WEIGHT, Bandit


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
