"""Benchmarks run only when named (benchmarks.run.ON_REQUEST) run and render at toy size
here, so they work the day they are run: the accelerator smoke run (benchmark 9) and a
trial over 4 virtual devices (benchmark 11). Benchmark 10 (trials in flight) is real agent
runs of minutes each; tests/test_workers.py covers what it runs."""

from pathlib import Path

import pytest

from benchmarks import run


def test_they_run_only_when_named():
  assert not set(run.ON_REQUEST) & set(run.selected(''))
  assert run.selected('accelerator,overhead') == ['overhead', 'accelerator']


@pytest.fixture(scope='module')
def toy(tmp_path_factory) -> tuple[str, dict]:
  tmp = tmp_path_factory.mktemp('on-request')
  out = tmp / 'BENCHMARKS.md'
  loaded = run.run_benchmarks(['accelerator', 'mesh'], 'toy', out, tmp / 'results', 'toy',
                              say=lambda _: None)
  return out.read_text(), loaded


def test_the_smoke_run_names_the_device_and_claims_nothing_on_a_cpu(toy):
  text, loaded = toy
  data = loaded['accelerator']['data']
  assert data['device']['platform'] == 'cpu' and data['device']['count'] >= 1
  [row] = data['harness']
  assert row['exit'] == 0 and 0 <= row['val_metric'] <= 1 and row['device']['platform'] == 'cpu'
  assert '## 9. Accelerator smoke run' in text
  assert '| cpu (cpu): no accelerator, nothing measured | - |' in text
  assert 'experiments/mnist1d_mlp.py | 0 |' in text


def test_a_trial_over_four_devices_equals_one_device(toy):
  text, loaded = toy
  data = loaded['mesh']['data']
  assert [r['mesh'] for r in data['rows']] == [r['mesh'] for r in data['short']] == [
      '', 'seeds=4', 'data=4']
  assert all(r['difference'] <= data['tolerance'] for r in data['short'])
  assert all(r['train_seconds'] > 0 for r in data['rows'])
  assert '## 11. A trial over several devices' in text and 'equal: yes' in text
