"""The binaries as a user runs them: the harness on bad input, kill -9 and --resume; the
agent's reports and progress lines on a journal full of terminal escapes."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from agent import main as agent_main
from agent.charter import load_charter
from agent.journal import Journal
from agent.loop import Loop, RunConfig, RunState
from harness import scorecard as sc
from tests.agent_workspace import git
from tests.conftest import ROOT, load_experiment, run_binary, tiny
from tests.test_agent_loop import ScriptedProposer, SimulatedRunner, make_loop, touch

EXPERIMENT = '--config=experiments/mnist1d_mlp.py'


@pytest.mark.parametrize('args, message', [
    (['--config=experiments/missing.py'], 'No such file'),
    ([EXPERIMENT, '--config.optimizer.learning_rat=1'], 'unknown config key'),
    ([EXPERIMENT, '--config.train.steps=many'], 'invalid literal'),
    ([EXPERIMENT, '--config.model.name=resnet'], 'Unknown model name'),
    ([EXPERIMENT, '--no_such_flag=1'], 'no_such_flag'),
    ([EXPERIMENT, '--seeds=0'], 'seeds'),
])
def test_bad_input_is_one_line_exit_2_and_no_scorecard(tmp_path, args, message):
  result = run_binary(*args, f'--workdir={tmp_path / "w"}')
  assert result.returncode == 2, result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1 and message in lines[0]
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'w' / sc.SCORECARD).exists()


def test_unwritable_workdir_is_bad_input(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  result = run_binary(EXPERIMENT, f'--workdir={blocker / "w"}')
  assert result.returncode == 2 and 'cannot create workdir' in result.stderr


def _finished_checkpoints(workdir):
  ckpt = workdir / 'checkpoints'
  return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.exists() else []


def test_a_run_killed_after_its_first_checkpoint_resumes_to_the_same_result(tmp_path):
  overrides = ['--config.train.steps=6000', '--config.train.eval_every=100',
               '--config.train.checkpoint_every=200', '--seeds=2']
  killed = tmp_path / 'killed'
  env = {**os.environ, 'PYTHONPATH': str(ROOT)}
  proc = subprocess.Popen([sys.executable, '-m', 'harness.main', EXPERIMENT,
                           f'--workdir={killed}', *overrides], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not _finished_checkpoints(killed) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / sc.SCORECARD).exists(), 'the run finished before it could be killed'
  assert _finished_checkpoints(killed)

  resumed = run_binary(EXPERIMENT, f'--workdir={killed}', *overrides, '--resume')
  assert resumed.returncode == 0, resumed.stderr
  straight = run_binary(EXPERIMENT, f'--workdir={tmp_path / "straight"}', *overrides)
  assert straight.returncode == 0, straight.stderr

  a = json.loads((killed / sc.SCORECARD).read_text())
  b = json.loads((tmp_path / 'straight' / sc.SCORECARD).read_text())
  for key in ('val_metric', 'val_loss', 'train_loss', 'curve', 'steps_completed'):
    assert a[key] == b[key], key
  assert a['stability']['loss_spikes'] == b['stability']['loss_spikes']
  curve_lines = (killed / sc.CURVES).read_text().splitlines()
  assert [json.loads(l)['step'] for l in curve_lines] == list(range(100, 6001, 100))


# ---- the agent's terminal output -------------------------------------------------------
FAKE = '\r[trial 3] ACCEPTED: gain +0.9\x1b[1A\x1b[2K\x1b]0;owned\x07\u202e\x9b2J'


def _journal_with_escapes(tmp_path):
  repo = tmp_path / 'workspace'
  repo.mkdir()
  git(repo, 'init', '--quiet')
  journal = Journal.open(repo / 'runs/esc/journal.sqlite')
  config = RunConfig(run_id='esc', experiment='experiments/x.py', proposer='llm', seeds=2,
                     budget_trials=3, budget_minutes=1, budget_compute_seconds=0)
  journal.append('run_started', {'config': dataclasses.asdict(config)})
  journal.append('proposal', {'operator': f'llm:x{FAKE}', 'diagnosis': 'd', 'expected_effect': 'e',
                              'hypothesis': f'smaller lr{FAKE}\ntrial 4 [y] ACCEPTED (ok): x',
                              'changes': {}}, trial=1)
  journal.append('verdict', {'accepted': False, 'reason_code': 'no_gain', 'gain': 0.0,
                             'rationale': f'Rejected{FAKE}\udcff'}, trial=1)
  journal.append('guard_rejected', {'accepted': False, 'reason_code': 'guard', 'gain': None,
                                    'rationale': 'models/\x1b[31mx\r.py is outside'}, trial=2)
  journal.close()
  return repo


@pytest.mark.parametrize('command', ['log', 'status'])
def test_reports_print_no_escape_or_carriage_return_from_the_journal(tmp_path, command):
  repo = _journal_with_escapes(tmp_path)
  result = subprocess.run([sys.executable, '-m', 'agent.main', command, '--run_id=esc',
                           f'--workspace={repo}'], cwd=repo, capture_output=True, timeout=120,
                          env={**os.environ, 'PYTHONPATH': str(ROOT)})
  assert result.returncode == 0, result.stderr
  out = result.stdout
  for forbidden in (b'\x1b', b'\r', b'\x07', '\u202e'.encode(), '\x9b'.encode()):
    assert forbidden not in out, (forbidden, out)
  lines = out.decode().splitlines()
  if command == 'log':
    assert [line.split(' [')[0] for line in lines if not line.startswith('    ')] == [
        'trial 1', 'trial 2']
    assert 'smaller lr[trial 3] ACCEPTED: gain +0.9 trial 4 [y] ACCEPTED (ok): x' in lines[0]
    assert lines[0].startswith('trial 1 [llm:x[trial 3] ACCEPTED: gain +0.9] rejected (no_gain)')
  else:
    assert lines[1] == 'trials: 2/3 (0 accepted)'


def test_progress_lines_quoting_a_proposal_cannot_pose_as_lines_of_their_own(capsys):
  agent_main.say(f'[trial 2/5] incumbent 0.9 | x: y{FAKE}\n[trial 4] ACCEPTED\udcff')
  out = capsys.readouterr().out
  assert out == ('[trial 2/5] incumbent 0.9 | x: y[trial 3] ACCEPTED: gain +0.9\n'
                 '    [trial 4] ACCEPTED\ufffd\n')


def test_a_300_character_name_is_refused_by_the_run_and_by_resume(tmp_path, capsys):
  path = 'models/' + 'n' * 300 + '.py'
  runner = SimulatedRunner()
  operator = 'long\r[trial 9] ACCEPTED\n[trial 9] ACCEPTED: forged'
  repo, loop, journal = make_loop(tmp_path, ScriptedProposer([(operator, touch(path))]), runner,
                                  trials=2)
  loop.say = agent_main.say
  loop.run()
  reason = journal.last('guard_rejected', trial=1).payload['rationale']
  assert 'longer than 255 bytes' in reason
  # The same proposal interrupted before its verdict, then resumed in a later session.
  journal.append('proposal', {'operator': operator, 'diagnosis': 'd', 'hypothesis': 'h',
                              'expected_effect': 'e', 'changes': {path: 'x = 1\n'}}, trial=2)
  resumed = Loop(repo, loop.run_dir, load_charter(repo / 'WORKSPACE.md'), ScriptedProposer([]),
                 journal, RunState.replay(journal), execute=runner, print_fn=agent_main.say)
  resumed.run()
  assert 'longer than 255 bytes' in journal.last('guard_rejected', trial=2).payload['rationale']
  out = capsys.readouterr().out
  assert '\r' not in out and 'rejected by the guard' in out
  assert not any(line.startswith('[trial 9]') for line in out.splitlines())
