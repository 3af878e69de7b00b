"""One real (tiny) run, end to end, watched by its agent: the summary it prints, the record it
leaves (verified, then tampered with), its progress lines and its TensorBoard view. One run
serves them all: a real agent run is the suite's costliest fixture."""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import os
import re
import sqlite3

import pytest

from agent.recording import progress, tb_view
from agent.recording.journal import Journal
from agent.recording.state import RunState
from agent.start import JOURNAL
from tests.agent_workspace import TINY_EXPERIMENT, git, make_workspace
from tests.test_agent_e2e import agent, verdict_trials

LINE = re.compile(r'^\[p\] (.*?) \| .* \| incumbent (\S+) (\S+) \| (.*)$')


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  repo = make_workspace(tmp_path_factory.mktemp('progress'), max_seeds=4)  # two looks
  user_head = git(repo, 'rev-parse', 'HEAD')
  result = agent(repo, 'run', f'--experiment={TINY_EXPERIMENT}', '--budget_trials=2',
                 '--seeds=2', '--run_id=p')
  assert result.returncode == 0, result.stderr[-2000:]
  assert git(repo, 'rev-parse', 'HEAD') == user_head and git(repo, 'status', '--porcelain') == ''
  return repo, result.stdout


def test_the_run_prints_the_summary_and_leaves_a_verifiable_record(run):
  repo, out = run
  assert 'Evaluated once at the end, on fresh seeds' in out
  assert 'baseline' in out and 'final' in out and 'test' in out
  assert 'Branch: agent/p' in out
  journal = repo / 'runs/p/journal.sqlite'
  assert verdict_trials(journal) == [1, 2]
  assert agent(repo, 'verify', '--run_id=p').returncode == 0
  log = agent(repo, 'log', '--run_id=p').stdout
  assert log.count('trial ') == 2
  assert 'trials: 2/2' in agent(repo, 'status', '--run_id=p').stdout

  # One byte of one record changed behind the journal's back: verify names it (then the
  # journal is put back for the other tests).
  original = journal.read_bytes()
  db = sqlite3.connect(journal)
  for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
    db.execute(f'DROP TRIGGER {name}')
  db.execute("UPDATE records SET payload = replace(payload, '\"p\"', '\"q\"') WHERE seq = 1")
  db.commit()
  db.close()
  bad = agent(repo, 'verify', '--run_id=p')
  assert bad.returncode == 1 and 'record 1' in bad.stdout
  journal.write_bytes(original)
  assert agent(repo, 'verify', '--run_id=p').returncode == 0


def test_plain_lines_name_every_stage_in_order_with_the_incumbent(run):
  repo, out = run
  lines = [m.groups() for m in map(LINE.match, out.splitlines()) if m]
  phases = [phase for phase, *_ in lines]
  want = ['baseline run', 'trial 1/2 proposing', 'trial 1/2 checking', 'trial 1/2 screen',
          'trial 1/2 deciding', 'trial 2/2 proposing', 'trial 2/2 screen', 'trial 2/2 finished']
  at = [next(i for i, p in enumerate(phases) if p.startswith(w)) for w in want]
  assert at == sorted(at), phases
  assert len(phases) == len(set(lines)), 'a plain line repeats an unchanged phase'
  final = progress.Watcher(repo / 'runs/p', JOURNAL).look()
  assert lines[-1][2] == f'{final.incumbent:.4f}' and lines[-1][1] == 'accuracy'
  assert lines[-1][3] == 'not running' and not final.running
  assert progress.status_line(repo / 'runs/p', JOURNAL) is None  # finished: no live line


def test_the_view_is_written_by_the_watching_agent(run):
  repo, _ = run
  folder = repo / 'runs/p' / tb_view.FOLDER
  assert sorted(p.name for p in folder.iterdir()) == ['agent', 'baseline', 'trial-001',
                                                      'trial-002']


def _copy_until(source: Journal, target: Journal, kind: str, trial: int) -> int:
  """The records of `source` up to its first `kind` of `trial`; the last session's seq."""
  session = 0
  for record in source.records():
    copied = target.append(record.kind, record.payload, record.trial)
    session = copied.seq if record.kind == 'session_started' else session
    if record.kind == kind and record.trial == trial:
      return session
  raise AssertionError(f'no {kind} of trial {trial}')


def test_status_of_a_running_run_shows_the_trial_the_step_and_the_budget(run):
  repo, _ = run
  live = repo / 'runs/live'
  with Journal.open(repo / 'runs/p' / JOURNAL) as source, \
       Journal.open(live / JOURNAL) as target:
    session = _copy_until(source, target, 'trial_started', 2)
  output = live / 'trials/2/screen/output'
  output.mkdir(parents=True)
  (output / 'progress.jsonl').write_text('{"step": 20}\n{"step": 40, "train_loss": [1.0]}\n')
  now = datetime.datetime.now(datetime.timezone.utc).isoformat()
  (live / 'heartbeat.json').write_text(json.dumps({'session': session, 'time': now}))
  with Journal.open(live / JOURNAL) as copied:  # no worktree here: the incumbent's steps
    steps = RunState.replay(copied).incumbent.steps
  line = progress.status_line(live, JOURNAL)
  assert line is not None and line.startswith(f'[p] trial 2/2 screen: step 40/{steps} | ')
  assert 'compute ' in line and 'incumbent accuracy 0.' in line and 'ETA ' in line
  (output / 'report.json').write_text('{}')
  assert 'screen: evaluation' in progress.status_line(live, JOURNAL)
  shown = agent(repo, 'status', '--run_id=p').stdout
  assert 'trials: 2/2' in shown and 'now:' not in shown


class _Terminal(io.StringIO):
  def isatty(self) -> bool:
    return True


def test_a_terminal_gets_one_line_redrawn_and_plain_output_one_line_per_phase(run):
  repo, _ = run
  look = progress.Watcher(repo / 'runs/p', JOURNAL).look()
  plain = io.StringIO()
  display = progress.Display(plain)
  for _ in range(3):
    display.show(look)
  assert plain.getvalue() == look.line() + '\n'
  # A phase the trial returns to (deciding, between two looks) is not printed again; the
  # next trial's is.
  plain = io.StringIO()
  display = progress.Display(plain)
  deciding = dataclasses.replace(look, stage=progress.Stage(1, 'deciding'), part=('', ''))
  seeds = dataclasses.replace(look, stage=progress.Stage(1, 'more seeds', 'x'))
  for shown in (deciding, seeds, deciding, seeds, dataclasses.replace(
      deciding, stage=progress.Stage(2, 'deciding'))):
    display.show(shown)
  assert [line.split(' | ')[0] for line in plain.getvalue().splitlines()] == [
      '[p] trial 1/2 deciding', f'[p] trial 1/2 more seeds: {look.part[1]}' if look.part[1]
      else '[p] trial 1/2 more seeds', '[p] trial 2/2 deciding']
  terminal = _Terminal()
  display = progress.Display(terminal)
  display.show(look)
  display.close()
  assert '[p] trial 2/2' in terminal.getvalue() and '\x1b[' in terminal.getvalue()


def test_a_trials_progress_file_is_read_bounded_and_never_through_a_link(tmp_path):
  """The agent reads it outside the sandbox: a link to /dev/zero, a pipe or a huge file must
  neither hang nor flood it."""
  output = tmp_path / 'output'
  output.mkdir()
  (output / 'progress.jsonl').symlink_to('/dev/zero')
  assert progress._steps_done(output) is None
  (output / 'progress.jsonl').unlink()
  os.mkfifo(output / 'progress.jsonl')
  assert progress._steps_done(output) is None
  (output / 'progress.jsonl').unlink()
  (output / 'progress.jsonl').write_text('x' * 10_000_000 + '\n{"step": 250}\n')
  assert progress._steps_done(output) == 250


def test_transfer_runs_in_flight_show_as_their_own_stage(tmp_path):
  """The transfer check's runs (agent.transfer) have no record of their own until they end:
  the line names the experiment and the arm while one runs, its steps read as any run's."""
  def running(folder):
    (folder / 'output').mkdir(parents=True)
    (folder / 'output' / 'progress.jsonl').write_text('{"step": 30}\n')
    return folder
  proposing, deciding = progress.Stage(1, 'proposing'), progress.Stage(2, 'deciding')
  assert progress._newest(tmp_path, deciding) == deciding
  baseline = running(tmp_path / 'transfer_baseline' / 'mnist1d_shuffled_mlp')
  stage = progress._newest(tmp_path, proposing)
  assert stage == progress.Stage(1, 'transfer baseline: mnist1d_shuffled_mlp',
                                 'transfer_baseline/mnist1d_shuffled_mlp')
  assert progress.part(tmp_path, stage, None) == ('train', 'step 30')
  (baseline / 'scorecard.json').write_text('{}')
  assert progress._newest(tmp_path, proposing) == proposing
  arm = tmp_path / 'trials' / '2' / 'transfer' / 'digits_mlp'
  running(arm / 'candidate.code')  # a derived config's copy of the code, not a run
  assert progress._newest(tmp_path, deciding) == deciding
  running(arm / 'candidate')
  assert progress._newest(tmp_path, deciding) == progress.Stage(
      2, 'transfer: digits_mlp, candidate', 'trials/2/transfer/digits_mlp/candidate')
  running(tmp_path / 'final' / 'transfer' / 'digits_mlp' / 'final')
  assert progress._newest(tmp_path, progress.Stage(2, 'stopping')).name == (
      'final evaluation (final), transfer: digits_mlp')
