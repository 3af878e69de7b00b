"""The binary as a user runs it: bad input, kill -9 and --resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from harness import scorecard as sc
from tests.conftest import ROOT, load_experiment, run_binary, tiny

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
