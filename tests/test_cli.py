"""The binaries as a user runs them: the harness on bad input, kill -9 and --resume, a workdir
already in use and a full disk (each error one line, the last on stderr); the agent's reports
and progress lines on a journal full of terminal escapes."""

import dataclasses
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import main as agent_main
from agent.charter import load_charter
from agent.loop import Loop
from agent.recording.journal import Journal
from agent.recording.records import RunConfig
from agent.recording.state import RunState
from harness import scorecard as sc
from tests.agent_workspace import git
from tests.conftest import ROOT, cached_env, load_experiment, run_binary, tiny
from tests.test_agent_loop import ScriptedProposer, SimulatedRunner, make_loop, touch
from tests.test_train import temporary_files

EXPERIMENT = '--config=experiments/mnist1d_mlp.py'
TINY = ['--config.train.steps=40', '--config.train.eval_every=20',
        '--config.train.checkpoint_every=40']
# The harness's own progress line (absl's format): the only line of ours an error may follow.
PROGRESS = re.compile(r'I\d{4} [\d:.]+ +\d+ train\.py:\d+\] '
                      r'(step \d+: train loss |Resumed from step \d+$)')


def assert_one_error_line(stderr: str, *, progress: bool = False) -> str:
  """stderr ends with one `error:` line and holds nothing else: no traceback, no library
  log lines, and progress lines only from a run that trained before it failed."""
  lines = stderr.splitlines()
  assert lines and lines[-1].startswith('error: '), stderr
  before = lines[:-1]
  assert all(progress and PROGRESS.match(line) for line in before), stderr
  return lines[-1]


def _tree(folder: Path) -> dict[str, bytes | None]:
  return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
          for p in sorted(folder.rglob('*'))}


@pytest.mark.parametrize('args, message', [
    (['--config=experiments/missing.py'], 'No such file'),
    ([EXPERIMENT, '--config.optimizer.learning_rat=1'], 'unknown config key'),
    ([EXPERIMENT, '--config.train.steps=many'], 'invalid literal'),
    ([EXPERIMENT, '--config.model.name=resnet'], 'Unknown model name'),
    ([EXPERIMENT, '--no_such_flag=1'], 'no_such_flag'),
    ([EXPERIMENT, '--seeds=0'], 'seeds'),
    ([EXPERIMENT, '--inputs=/nonexistent/inputs'], 'not a folder of trial inputs'),
])
def test_bad_input_is_one_line_exit_2_and_no_scorecard(tmp_path, args, message):
  result = run_binary(*args, f'--workdir={tmp_path / "w"}')
  assert result.returncode == 2, result.stderr
  assert message in assert_one_error_line(result.stderr)
  assert not (tmp_path / 'w' / sc.SCORECARD).exists()


def test_unwritable_workdir_is_bad_input(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  result = run_binary(EXPERIMENT, f'--workdir={blocker / "w"}')
  assert result.returncode == 2
  assert 'cannot create workdir' in assert_one_error_line(result.stderr)


def _finished_checkpoints(workdir):
  ckpt = workdir / 'checkpoints'
  return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.exists() else []


def test_a_run_killed_after_its_first_checkpoint_resumes_to_the_same_result(tmp_path):
  overrides = ['--config.train.steps=2000', '--config.train.eval_every=100',
               '--config.train.checkpoint_every=200', '--seeds=2']
  killed = tmp_path / 'killed'
  # The session's compilation cache: the resumed and the straight run load what it compiled.
  env = {**cached_env(), 'PYTHONPATH': str(ROOT)}
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
  assert [json.loads(l)['step'] for l in curve_lines] == list(range(100, 2001, 100))


@pytest.mark.parametrize('earlier, flag', [
    ({sc.SCORECARD: '{"status": "ok"}'}, None),  # a finished run that kept no checkpoints
    ({'predictions/val-000000020.npy': 'x'}, None),
    ({'checkpoints': None}, None),
    ({'events.out.tfevents.1.host': 'x'}, None),
    ({'notes.txt': 'mine'}, None),
    ({sc.SCORECARD: '{"status": "ok"}', 'notes.txt': 'mine'}, '--overwrite'),
])
def test_a_workdir_that_is_not_empty_is_refused_and_left_as_it_was(tmp_path, earlier, flag):
  workdir = tmp_path / 'w'
  for name, text in earlier.items():
    (workdir / name).parent.mkdir(parents=True, exist_ok=True)
    if text is None:
      (workdir / name).mkdir()
    else:
      (workdir / name).write_text(text)
  before = _tree(workdir)
  result = run_binary(EXPERIMENT, f'--workdir={workdir}', *([flag] if flag else []), *TINY)
  assert result.returncode == 2, result.stderr
  line = assert_one_error_line(result.stderr)
  if flag:  # --overwrite deletes what a run writes, never a file of the user's
    assert "'notes.txt'" in line and 'new workdir' in line
  else:
    assert '--resume' in line and '--overwrite' in line
  assert _tree(workdir) == before


def test_overwrite_replaces_an_earlier_run_and_resume_is_not_combined_with_it(tmp_path):
  workdir = tmp_path / 'w'
  assert run_binary(EXPERIMENT, f'--workdir={workdir}', '--eval_test', *TINY).returncode == 0
  both = run_binary(EXPERIMENT, f'--workdir={workdir}', '--resume', '--overwrite', *TINY)
  assert both.returncode == 2 and 'pass one' in assert_one_error_line(both.stderr)
  shorter = ['--config.train.steps=20', '--config.train.eval_every=20',
             '--config.train.checkpoint_every=20']
  again = run_binary(EXPERIMENT, f'--workdir={workdir}', '--overwrite', *shorter)
  assert again.returncode == 0, again.stderr
  assert sorted(workdir.glob('predictions/val-*')) == [workdir / 'predictions/val-000000020.npy']
  assert not (workdir / sc.TEST_SCORECARD).exists()
  assert len(list(workdir.glob('events.out.tfevents.*'))) == 1
  assert os.listdir(workdir / 'checkpoints') == ['20']
  assert json.loads((workdir / sc.SCORECARD).read_text())['steps_completed'] == 20


# A run whose writes fail as on a filling disk: fsync of the named files reports ENOSPC.
ENOSPC_AT = """
import errno, os, runpy, sys
names, calls, real = sys.argv.pop(1).split(','), [], os.fsync
def fsync(fd):
  path = os.readlink(f'/proc/self/fd/{fd}')
  calls.append(path)
  if any(path.endswith(f'.{n}.tmp') and calls.count(path) >= int(k) for n, k in
         (name.split(':') for name in names)):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  real(fd)
os.fsync = fsync
runpy.run_module('harness.main', run_name='__main__', alter_sys=True)
"""


def test_a_failed_write_after_the_scorecard_leaves_no_ok_scorecard(tmp_path):
  """The ok scorecard is written, the test scorecard is not (the disk fills), and then not
  even the failed scorecard: none is left rather than one that says ok."""
  workdir = tmp_path / 'w'
  result = subprocess.run(
      [sys.executable, '-c', ENOSPC_AT, f'{sc.TEST_SCORECARD}:1,{sc.SCORECARD}:2', EXPERIMENT,
       f'--workdir={workdir}', '--eval_test', *TINY], cwd=ROOT, capture_output=True, text=True,
      env={**cached_env(), 'PYTHONPATH': str(ROOT)}, timeout=300)
  assert result.returncode == 1, result.stderr
  line = assert_one_error_line(result.stderr, progress=True)
  assert 'No space left on device' in line and sc.TEST_SCORECARD in line
  assert 'no scorecard could be written' in line and 'error.log' in line
  assert not (workdir / sc.SCORECARD).exists() and not (workdir / sc.TEST_SCORECARD).exists()
  assert 'Traceback' in (workdir / 'error.log').read_text()
  assert temporary_files(workdir) == []


@pytest.fixture
def small_disk(tmp_path):
  """A real 2 MB filesystem (tmpfs; needs root), unmounted afterwards."""
  mount = tmp_path / 'disk'
  mount.mkdir()
  if shutil.which('mount') is None:
    pytest.skip('no mount command here')
  done = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', str(mount)],
                        capture_output=True, text=True)
  if done.returncode != 0:
    pytest.skip(f'cannot mount a tmpfs here: {done.stderr.strip()}')
  try:
    yield mount
  finally:
    subprocess.run(['umount', '--lazy', str(mount)], check=True)


def _fill(disk: Path) -> None:
  with (disk / 'filler').open('wb', buffering=0) as f:
    with pytest.raises(OSError) as full:
      while True:
        f.write(b'\0' * 4096)
  assert full.value.errno == errno.ENOSPC


def test_a_full_disk_is_one_error_line_and_never_a_stale_ok_scorecard(small_disk):
  workdir = small_disk / 'w'
  first = run_binary(EXPERIMENT, f'--workdir={workdir}', '--seeds=3', *TINY)
  assert first.returncode == 0, first.stderr
  _fill(small_disk)
  longer = ['--config.train.steps=80', *TINY[1:]]
  result = run_binary(EXPERIMENT, f'--workdir={workdir}', '--seeds=3', '--resume', *longer)
  assert result.returncode == 1, result.stderr
  line = assert_one_error_line(result.stderr, progress=True)
  assert line.startswith('error: training failed: ') and 'No space left on device' in line
  card = workdir / sc.SCORECARD
  if card.exists():  # when the disk had room for it
    assert json.loads(card.read_text())['status'] == 'failed'
  assert temporary_files(workdir) == []


def test_a_disk_full_from_the_start_is_one_error_line(small_disk):
  _fill(small_disk)
  result = run_binary(EXPERIMENT, f'--workdir={small_disk / "w"}', *TINY, timeout=120)
  assert result.returncode == 1, result.stderr
  assert 'No space left on device' in assert_one_error_line(result.stderr, progress=True)
  assert temporary_files(small_disk) == []


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
