"""Smoke test: every benchmark runs at toy size and renders its tables, so none can rot.

The benchmarks run in a few subprocesses, one per class below (their in-process trials patch
the harness's curve writer and compile many programs; neither should leak into this test
process), with the test process's JAX compilation cache so repeated programs compile once.
One class is one xdist work unit (`--dist loadscope`), so the two workers share the toy runs
instead of one worker running all of them while the other waits at the end.
Behaviour is asserted, never timings.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import pytest

from agent.editing import config_edit
from agent.safety.executor import TrialSpec
from benchmarks import report, space, trials
from benchmarks.run import BENCHMARKS
from tests.conftest import ROOT, cached_env

TOY = """
import sys
from pathlib import Path
from benchmarks import run
run.run_benchmarks(sys.argv[3].split(','), 'toy', Path(sys.argv[1]), Path(sys.argv[2]),
                   'toy size (tests/test_benchmarks.py)')
"""


def _env() -> dict[str, str]:
  return {**cached_env(), 'PYTHONPATH': str(ROOT)}


class Toy(NamedTuple):
  text: str  # the document rendered from this run's results only
  results: dict[str, dict[str, Any]]
  folder: Path


def run_toy(names: tuple[str, ...], tmp: Path) -> Toy:
  """The named benchmarks at toy size in one subprocess, in the order given."""
  out, results = tmp / 'BENCHMARKS.md', tmp / 'results'
  done = subprocess.run([sys.executable, '-c', TOY, str(out), str(results), ','.join(names)],
                        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  loaded = {name: json.loads((results / f'{name}.json').read_text()) for name in names}
  return Toy(out.read_text(), loaded, results)


def section(text: str, name: str) -> str:
  """The document's section of one benchmark, up to the next heading of its level."""
  heading = f'\n## {report.TITLES[name]}\n'
  assert heading in text, heading
  rest = text.split(heading, 1)[1]
  return rest.split('\n## ', 1)[0]


@pytest.fixture(scope='class')
def toy(request, tmp_path_factory) -> Toy:
  """The toy run of the requesting class's benchmarks, once per class."""
  return run_toy(request.cls.names, tmp_path_factory.mktemp('bench'))


class ToyRun:
  """One subprocess's benchmarks (`names`), checked by the tests of the subclass; every test
  here runs for each subclass. Not collected itself (its name does not start with Test)."""
  names: ClassVar[tuple[str, ...]] = ()

  def test_each_benchmark_writes_results_plots_and_a_section_with_a_table(self, toy):
    assert sorted(p.stem for p in toy.folder.glob('*.json')) == sorted(self.names)
    for name, result in toy.results.items():
      assert result['size'] == 'toy' and result['machine']['cores'] >= 1
      # ray_overhead and broken are tables: no plot by design
      assert result['plots'] or name in ('ray_overhead', 'broken')
      assert all((toy.folder / p).stat().st_size > 0 for p in result['plots'])
      assert '| ' in section(toy.text, name)  # a table, not prose only
    assert '## Targets' in toy.text and '## Machine' in toy.text and 'toy size (tests' in toy.text


def test_every_benchmark_is_in_exactly_one_toy_run():
  """So that a new benchmark cannot be left out of the smoke run."""
  names = [name for cls in ToyRun.__subclasses__() for name in cls.names]
  assert sorted(names) == sorted(BENCHMARKS)


class TestSearchAndRigor(ToyRun):
  """Rigor re-runs the changes the search kept, so it needs the search's results."""
  names = ('search', 'rigor')

  def test_search_runs_every_method_and_evaluates_each_once_on_fresh_seeds(self, toy):
    data = toy.results['search']['data']
    for task in data['tasks'].values():
      assert sorted(r['method'] for r in task['runs']) == ['agent', 'autoresearch', 'random',
                                                            'tpe']
      for run in task['runs']:
        assert run['points'][0]['what'] == 'baseline' and run['trials_used'] <= 1
        assert len(run['final']['test']) == data['final_seeds']

  def test_rigor_reports_rates_on_the_null_and_on_a_real_stream(self, toy):
    task = next(iter(toy.results['rigor']['data']['false_acceptance']['tasks'].values()))
    real = task['real']  # the same seeds on another data stream, paired with the incumbent
    assert real['stream'] == 1 and len(real['population']) == len(task['population'])
    assert real['population'] != task['population'] and real['paired_std'] > 0
    for rates in (task['rates'], real['rates']):
      assert set(rates['0']) == {'agent: sequential test', 'strictly better, 1 seed',
                                 'strictly better, mean of 3 seeds', 'agent seeds per arm'}
      assert 3 <= rates['0']['agent seeds per arm'] <= 24


# The classes after the first are grouped to take about the same time (toy runs at load ~3:
# search 46 s + rigor 8; ray_overhead 32 + search_large 15 + broken 8; overhead 10 + seeds
# 13 + batches 29 + early_stopping 8).
class TestRayOverheadSearchLargeBroken(ToyRun):
  names = ('search_large', 'ray_overhead', 'broken')


class TestOverheadSeedsBatchesEarlyStopping(ToyRun):
  names = ('overhead', 'seeds', 'early_stopping', 'batches')

  def test_overhead_and_seeds_report_ratios_against_their_targets(self, toy):
    case = next(iter(toy.results['overhead']['data']['cases'].values()))
    assert case['ratio'] > 0 and set(case['median_steps_per_second']) >= {
        'hand-written (jax.jit)', 'hand-written (nnx.jit)'}
    seeds = toy.results['seeds']['data']
    assert len(seeds['cases'][0]['separate']) == seeds['k']
    assert ('met: ' in toy.text or 'missed: ' in toy.text)
    assert '1. Harness overhead, digits MLP' in toy.text

  def test_early_stopping_reports_pairs(self, toy):
    pair = toy.results['early_stopping']['data']['pairs'][0]
    assert pair['on']['trials'] == pair['off']['trials'] == 1

  def test_batched_candidates_are_timed_against_one_process_each_with_equal_results(self, toy):
    row = toy.results['batches']['data']['rows'][0]
    assert row['candidates'] == 2 and len(row['alone']) == 2
    assert row['identical'] is True  # batched members score what they score alone
    assert row['cpu_ratio'] > 0 and row['batch']['cpu_seconds'] > 0


def test_unknown_benchmark_is_one_error_line_and_exit_2(tmp_path):
  done = subprocess.run([sys.executable, '-m', 'benchmarks.run', '--only=nope',
                         f'--results_dir={tmp_path}'], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 2 and done.stderr.strip().startswith("error: unknown benchmark 'nope'")
  done = subprocess.run([sys.executable, '-m', 'benchmarks.run', '--only=rigor',
                         f'--results_dir={tmp_path}'], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 2 and 'run the search first' in done.stderr


def test_verdicts_say_met_or_missed_plainly():
  assert report.verdict(0.81, 0.95, at_least=True) == 'missed: 0.81 < 0.95'
  assert report.verdict(1.38, 2.0, at_least=False) == 'met: 1.38 <= 2.00'
  assert report.spread([0.5, 0.7, 0.6], as_pct=True) == '60.0% [50.0%, 70.0%]'


def test_a_sampled_family_switch_renders_a_config_that_loads(tmp_path):
  experiment = ROOT / 'experiments' / 'mnist1d_mlp.py'
  dims, left_out = space.build(experiment, 'cnn1d')
  assert 'train.seed' in left_out and 'optimizer.learning_rate' in {d.path for d in dims}
  rng = np.random.default_rng(0)
  params = next(p for p in iter(lambda: space.sample(dims, rng), None)
                if p['model.name'] == 'cnn1d')
  path = tmp_path / 'experiment.py'
  path.write_text(space.render(experiment.read_text(), params))
  config = trials.load_config(path)
  assert config.model.name == 'cnn1d' and 'width' not in config.model
  assert config.model.channels == params['model.channels'] and not config.train.scan_steps


def test_an_in_process_batch_gives_each_member_what_it_gets_alone(tmp_path):
  """The benchmarks' agent trains batches in process (charged once): each member's per-seed
  results equal its run alone, and its scorecard says it was a batch."""
  experiment = 'experiments/digits_mlp.py'
  repo = trials.make_workspace(tmp_path / 'ws', experiment,
                               {'steps': 20, 'eval_every': 10, 'checkpoint_every': 20})
  rates = ({'optimizer.learning_rate': 1e-3}, {'optimizer.learning_rate': 3e-2})
  spec = TrialSpec(worktree=repo, experiment=experiment, workdir=tmp_path / 'batch', seeds=2,
                   first_seed=0, timeout_s=300, members=rates)
  batch = trials.execute_batch(spec)
  assert [o.status for o in batch] == ['ok', 'ok']
  assert len({o.wall_seconds for o in batch}) == 1 and batch[1].curve
  for index, (values, member) in enumerate(zip(rates, batch)):
    assert member.scorecard['batch'] == {'size': 2, 'member': index, 'values': values}
    path = repo / experiment
    path.write_text(config_edit.set_value(path.read_text(), 'optimizer.learning_rate',
                                          values['optimizer.learning_rate']))
    alone = trials.execute(dataclasses.replace(spec, workdir=tmp_path / f'alone-{index}',
                                               members=()))
    assert alone.scorecard['val_metric'] == member.scorecard['val_metric']
  assert batch[0].scorecard['val_metric'] != batch[1].scorecard['val_metric']
