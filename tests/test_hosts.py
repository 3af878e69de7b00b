"""A run over several hosts: two processes of this machine joined by jax.distributed (the
way a multi-host TPU VM runs one process per host) train what one process trains over two
devices; process 0 alone writes the outputs."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness import hosts
from tests.conftest import ROOT

EXPERIMENT = """
import importlib.util
def get_config():
  spec = importlib.util.spec_from_file_location('base', {base!r})
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.train.mesh = 'seeds=2'
  config.train.steps, config.train.eval_every, config.train.checkpoint_every = 40, 20, 20
  config.optimizer.warmup_steps = 5
  return config
"""


def test_one_process_unless_the_environment_asks():
  assert hosts.requested({}) is None
  assert hosts.requested({hosts.TPU_HOSTS: 'only-one'}) is None


def test_a_cluster_named_in_the_environment_is_joined():
  env = {hosts.ADDRESS: '10.0.0.1:1234', hosts.COUNT: '4', hosts.INDEX: '3'}
  assert hosts.requested(env) == {'coordinator_address': '10.0.0.1:1234', 'num_processes': 4,
                                  'process_id': 3}
  assert hosts.requested({hosts.TPU_HOSTS: 'h0,h1'}) == {}  # JAX reads the TPU slice itself


@pytest.mark.parametrize('env, match', [
    ({'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '0'}, 'missing: JAX_COORDINATOR_ADDRESS'),
    ({'JAX_COORDINATOR_ADDRESS': 'h:1', 'JAX_NUM_PROCESSES': 'two', 'JAX_PROCESS_ID': '0'},
     'must be integers'),
    ({'JAX_COORDINATOR_ADDRESS': 'h:1', 'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '2'},
     'is not a process of'),
])
def test_a_request_that_cannot_be_right_is_one_line(env, match):
  with pytest.raises(ValueError, match=match) as raised:
    hosts.requested(env)
  assert '\n' not in str(raised.value)


def _harness(config: Path, workdir: Path, env: dict[str, str]) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, '-m', 'harness.main', f'--config={config}', f'--workdir={workdir}',
       '--seeds=2'], cwd=ROOT, env={**os.environ, 'PYTHONPATH': str(ROOT), **env},
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished(process: subprocess.Popen) -> str:
  out, err = process.communicate(timeout=300)
  assert process.returncode == 0, err[-3000:]
  return out


@pytest.fixture(scope='module')
def runs(tmp_path_factory) -> dict[str, Path]:
  root = tmp_path_factory.mktemp('hosts')
  config = root / 'experiment.py'
  config.write_text(EXPERIMENT.format(base=str(ROOT / 'experiments' / 'mnist1d_mlp.py')))
  _finished(_harness(config, root / 'one', {
      'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}))
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  private_tmp = root / 'tmp'
  private_tmp.mkdir()
  cluster = {hosts.ADDRESS: f'127.0.0.1:{port}', hosts.COUNT: '2', 'TMPDIR': str(private_tmp)}
  processes = [_harness(config, root / 'two', {**cluster, hosts.INDEX: str(i)}) for i in (0, 1)]
  outs = [_finished(p) for p in processes]
  return {'one': root / 'one', 'two': root / 'two', 'tmp': private_tmp, 'out1': outs[1]}


def test_two_hosts_train_what_one_process_trains_on_two_devices(runs):
  one = json.loads((runs['one'] / 'scorecard.json').read_text())
  two = json.loads((runs['two'] / 'scorecard.json').read_text())
  assert two['status'] == 'ok'
  assert two['val_loss']['per_seed'] == pytest.approx(one['val_loss']['per_seed'], rel=1e-5)
  assert two['val_metric']['per_seed'] == pytest.approx(one['val_metric']['per_seed'])


def test_process_0_alone_writes_and_every_process_checkpoints(runs):
  names = lambda d: sorted(p.name for p in d.iterdir() if not p.name.startswith('events.'))
  assert names(runs['two']) == names(runs['one'])
  assert len(list(runs['two'].glob('events.out.tfevents.*'))) == 1
  assert sorted(p.name for p in (runs['two'] / 'checkpoints').iterdir()) == ['20', '40']
  assert list(runs['tmp'].iterdir()) == []  # process 1's private outputs are gone
  assert 'process 1: trained; process 0 wrote the outputs' in runs['out1']
