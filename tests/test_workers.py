"""Trials side by side (--workers): two in flight at once, each decided against the incumbent
it was proposed on; a win that comes after the incumbent moved on is not kept but judged
again on the new one; kill -9 with two in flight, then resume, loses nothing; bad flags."""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from absl import flags

from agent import main
from agent.charter import Charter, Trial
from agent.editing import config_edit, knobs
from agent.loop import default_workers
from agent.proposing.proposal import NoProposal, Observation, Proposal
from agent.recording import vcs
from agent.recording.audit import verify_run
from agent.recording.journal import Journal
from agent.recording.state import RunState
from agent.safety.executor import TrialOutcome
from tests.agent_workspace import (TINY_EXPERIMENT, fake_scorecard, git, make_workspace,
                                   write_scorecard)
from tests.test_agent_crash import _processes_mentioning
from tests.test_agent_e2e import _start, agent, verdict_trials
from tests.test_agent_loop import (SEED_NOISE, ScriptedProposer, SimulatedRunner, comment_only,
                                   make_loop, set_lr)
from tests.test_batches import SimulatedBatch
from tests.test_audit import _forge, _set


def set_wd(value):
  def edit(obs: Observation):
    text = obs.files[obs.experiment]
    return obs.experiment, config_edit.set_value(text, 'optimizer.weight_decay', value)
  return edit


class KnobRunner:
  """Accuracy = 0.80 + the effect of each knob value the experiment sets + seed noise; the
  screen of a trial with a gate waits for it (so the test, not timing, orders the trials)."""

  def __init__(self, effects: dict[tuple[str, float], float],
               gates: dict[int, threading.Event]):
    self.effects, self.gates = effects, gates

  def __call__(self, spec, scorer=None, on_curve=None) -> TrialOutcome:
    parts = spec.workdir.parts
    if parts[-1] == 'screen' and int(parts[-2]) in self.gates:
      assert self.gates[int(parts[-2])].wait(60), 'the gate never opened'
    values = {k.path: k.value for k in knobs.inventory(spec.worktree / spec.experiment)}
    effect = sum(e for (path, value), e in self.effects.items() if values.get(path) == value)
    run = np.random.default_rng(zlib.crc32(str(spec.workdir).encode()))
    per_seed = [0.80 + effect + SEED_NOISE * np.random.default_rng(s).standard_normal()
                + 0.003 * run.standard_normal()
                for s in range(spec.first_seed, spec.first_seed + spec.seeds)]
    card = fake_scorecard(per_seed)
    write_scorecard(spec.workdir, card)
    return TrialOutcome('ok', card, card['curve'], 1.0, 0, spec.workdir / 'trial.log', '', 'ok')


class Watching(ScriptedProposer):
  """Opens trial 2's gate once trial 1 is decided; keeps what each proposal saw in flight."""

  def __init__(self, steps, gate: threading.Event):
    super().__init__(steps)
    self.gate, self.saw_in_flight = gate, []

  def propose(self, observation: Observation):
    self.saw_in_flight.append([t.trial for t in observation.history
                               if t.reason_code == 'in_flight'])
    return super().propose(observation)

  def learn(self, proposal, accepted, gain):
    super().learn(proposal, accepted, gain)
    self.gate.set()


def test_a_win_against_a_replaced_incumbent_is_not_kept_but_judged_again_on_the_new_one(
    tmp_path):
  gate = threading.Event()
  proposer = Watching([('lr_up', set_lr(5e-3)), ('wd_up', set_wd(1e-4))], gate)
  runner = KnobRunner({('optimizer.learning_rate', 5e-3): 0.05,
                       ('optimizer.weight_decay', 1e-4): 0.05}, {2: gate})
  repo, loop, journal = make_loop(tmp_path, proposer, runner, trials=4)
  loop.workers = 2
  assert loop.run().startswith('the proposer has nothing left')
  records = journal.records()
  kinds = [(r.kind, r.trial) for r in records]
  assert kinds.index(('trial_started', 2)) < kinds.index(('verdict', 1))  # two in flight
  assert proposer.saw_in_flight[:2] == [[], [1]]  # trial 2 was proposed knowing 1 runs
  started = {r.trial: r.payload for r in journal.records('trial_started')}
  verdicts = {r.trial: r.payload for r in journal.records('verdict')}
  baseline = loop.config.start_commit
  kept = verdicts[1]['commit']
  assert verdicts[1]['accepted'] and started[1]['incumbent'] == started[2]['incumbent'] == baseline
  late = verdicts[2]
  assert not late['accepted'] and late['reason_code'] == 'stale'
  assert baseline[:10] in late['rationale'] and kept[:10] in late['rationale']
  assert git(repo, 'rev-parse', 'refs/agent/r1/rejected/2') == late['commit']
  again = journal.records('proposal', trial=3)[0].payload
  assert again['rejudges'] == 2 and again['operator'] == 'wd_up'
  assert started[3]['incumbent'] == kept and verdicts[3]['accepted']  # judged from scratch
  final = vcs.file_at(repo, loop.state.incumbent.commit, TINY_EXPERIMENT)
  assert 'learning_rate = 5e-3' in final and 'weight_decay = 1e-4' in final
  assert git(repo, 'rev-parse', 'agent/r1') == loop.state.incumbent.commit == verdicts[3]['commit']
  assert loop.state.trials_done == 3 and loop.state.stale == []
  assert verify_run(repo, journal) is None
  replayed = RunState.replay(journal)  # the interleaved records replay to the loop's state
  assert (replayed.incumbent, replayed.trials_done, replayed.last_trial, replayed.since_accept) \
      == (loop.state.incumbent, 3, 3, 0)
  # killed after the late verdict: resume judges it again; after its copy's proposal: runs that
  cut = lambda kind, trial: _prefix(journal, tmp_path / f'{kind}{trial}',
                                    kinds.index((kind, trial)))
  assert [(t, c) for t, _, c in RunState.replay(cut('verdict', 2)).stale] == [(2, late['commit'])]
  after = RunState.replay(cut('proposal', 3))
  assert after.stale == [] and after.pending.trial == 3 and after.pending.payload['rejudges'] == 2
  # a late win claimed as kept: verify names the incumbent it was judged against
  forged = _forge(journal, 'verdict', 2, _set(accepted=True, reason_code='improved'))
  assert f'kept, but judged against {baseline[:10]}' in verify_run(repo, forged)


class Groups(ScriptedProposer):
  """Proposes a group of script steps at a time (a batch where they may train together)."""

  def __init__(self, groups):
    super().__init__([])
    self.groups = list(groups)

  def propose_batch(self, observation: Observation, size: int) -> list[Proposal]:
    if not self.groups:
      raise NoProposal('script finished')
    self.steps = self.groups.pop(0)[:size]
    return [ScriptedProposer.propose(self, observation) for _ in range(len(self.steps))]

  def propose(self, observation: Observation) -> Proposal:
    return self.propose_batch(observation, 1)[0]


def test_a_batch_flies_in_one_slot_beside_a_trial_alone(tmp_path):
  effects = {2e-3: 0.0, 5e-3: 0.05}
  proposer = Groups([[('lr_up', set_lr(lr)) for lr in effects], [('note', comment_only(1))]])
  repo, loop, journal = make_loop(tmp_path, proposer, SimulatedRunner(effects), trials=4)
  loop.execute_batch, loop.workers = SimulatedBatch(effects), 2
  loop.run()
  kinds = [(r.kind, r.trial) for r in journal.records()]
  assert kinds.index(('trial_started', 3)) < min(kinds.index(('verdict', t)) for t in (1, 2))
  finished = {r.trial: r.payload.get('batch') for r in journal.records('trial_finished')}
  assert finished == {1: [1, 2], 2: [1, 2], 3: None}
  verdicts = {r.trial: r.payload for r in journal.records('verdict')}
  assert verdicts[2]['accepted'] and not verdicts[1]['accepted'] and not verdicts[3]['accepted']
  assert verdicts[3]['reason_code'] != 'stale'  # a loser: nothing to judge again
  assert verify_run(repo, journal) is None


def _prefix(journal: Journal, folder: Path, last: int) -> Journal:
  """A journal of the first records up to index `last`: the run as a kill there left it."""
  copy = Journal.open(folder / 'journal.sqlite')
  for record in journal.records()[:last + 1]:
    copy.append(record.kind, record.payload, trial=record.trial)
  return copy


def test_a_late_change_that_conflicts_with_the_new_incumbent_is_not_merged(tmp_path):
  repo = make_workspace(tmp_path)
  base = git(repo, 'rev-parse', 'HEAD')
  path = repo / TINY_EXPERIMENT
  text = path.read_text()

  def commit_on(parent: str, new_text: str) -> str:
    git(repo, 'checkout', '-q', parent)
    path.write_text(new_text)
    git(repo, 'commit', '-qam', 'x')
    return git(repo, 'rev-parse', 'HEAD')
  kept = commit_on(base, config_edit.set_value(text, 'optimizer.learning_rate', 5e-3))
  rival = commit_on(base, config_edit.set_value(text, 'optimizer.learning_rate', 1e-3))
  beside = commit_on(base, config_edit.set_value(text, 'optimizer.weight_decay', 1e-4))
  assert vcs.rebased_files(repo, kept, rival) is None
  merged = vcs.rebased_files(repo, kept, beside)[TINY_EXPERIMENT]
  assert 'learning_rate = 5e-3' in merged and 'weight_decay = 1e-4' in merged


@pytest.mark.parametrize('value', ['0', '-1', 'two'])
def test_bad_workers_flags_are_one_line_errors(value, capsys):
  with pytest.raises(SystemExit) as exit_:
    main.parse_flags(['agent.main', 'run', f'--workers={value}'])
  flags.FLAGS.unparse_flags()
  err = capsys.readouterr().err
  assert exit_.value.code == 2 and err.startswith(f'error: flag --workers={value}: ')
  assert err.count('\n') == 1


def test_the_default_is_the_cores_less_one_over_a_trials_cpus():
  cores = len(os.sched_getaffinity(0))
  charter = lambda cpus: dataclasses.replace(Charter(), trial=Trial(cpus=cpus))
  assert default_workers(charter(1.0)) == max(1, cores - 1)
  assert default_workers(charter(0.5)) == max(1, cores - 1)  # a JAX trial takes a core
  assert default_workers(charter(float(cores))) == 1


def _in_flight(journal_path: Path) -> int:
  """Trials started and not yet decided, read without writing (the agent may be writing)."""
  try:
    with sqlite3.connect(f'file:{journal_path}?mode=ro', uri=True, timeout=5) as db:
      rows = db.execute("SELECT kind, trial FROM records WHERE kind IN "
                        "('trial_started', 'verdict', 'guard_rejected')").fetchall()
  except sqlite3.Error:
    return 0
  started = {t for k, t in rows if k == 'trial_started'}
  return len(started - {t for k, t in rows if k != 'trial_started'})


def test_two_real_trials_in_flight_survive_kill_9_and_resume_loses_nothing(tmp_path):
  """A real --workers=2 run of the tiny experiment, killed (-9, the agent's PID alone) once
  two trials are in flight, then resumed to the end: no trial process outlives the agent,
  every trial has exactly one verdict, and the run verifies."""
  repo = make_workspace(tmp_path)
  charter = repo / 'WORKSPACE.md'
  text = charter.read_text().replace('\nbatch = 4 ', '\nbatch = 1 ')  # two trials, not a batch
  charter.write_text(text.replace('max_seeds = 6', 'max_seeds = 2'))  # decided at the screen
  git(repo, 'commit', '-qam', 'one candidate at a time, one look')
  journal_path = repo / 'runs/k/journal.sqlite'
  proc = _start(repo, 'run', f'--experiment={TINY_EXPERIMENT}', '--budget_trials=2',
                '--seeds=2', '--workers=2')
  deadline = time.time() + 240
  while _in_flight(journal_path) < 2 and time.time() < deadline and proc.poll() is None:
    time.sleep(0.1)
  assert _in_flight(journal_path) == 2, proc.communicate()[1][-2000:]
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  deadline = time.time() + 10
  while _processes_mentioning(str(repo / 'runs/k/trials')) and time.time() < deadline:
    time.sleep(0.1)
  assert _processes_mentioning(str(repo / 'runs/k/trials')) == []
  resumed = agent(repo, 'resume', '--run_id=k', '--nofinal_eval', '--workers=2')
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'resuming the interrupted trial' in resumed.stdout
  trials = verdict_trials(journal_path)
  assert sorted(trials) == [1, 2]  # none lost, none counted twice
  journal = Journal.open(journal_path)
  assert verify_run(repo, journal) is None
  journal.close()
