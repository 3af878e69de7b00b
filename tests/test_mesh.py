"""A trial over several devices (`train.mesh`): checked on CPU with 4 forced host devices."""

import json
import os
import subprocess
import sys

import pytest

from harness import mesh
from tests.conftest import ROOT

SCRIPT = r"""
import json, sys, tempfile
from pathlib import Path
import jax
from harness import mesh, train
from harness.runners import SeedRunner
from harness.steps import SeedKeys
from tests.conftest import load_experiment, tiny

results, placed = {}, {}
for spec in ('', 'seeds=4', 'seeds=2,data=2'):
  config = tiny(load_experiment('mnist1d_mlp'), steps=20, every=20, checkpoint_every=20)
  config.train.mesh = spec
  card = train.train_and_evaluate(config, Path(tempfile.mkdtemp()) / 'w', num_seeds=4)
  results[spec] = card['val_loss']['per_seed']
  layout = mesh.layout(spec, 4, config.train.batch_size)
  if layout is not None:
    _, _, program, _, _ = train._setup(config, None, False, [0, 1, 2, 3], None)
    runner = SeedRunner(program, SeedKeys.for_seeds([0, 1, 2, 3]),
                        {k: [1e-2] * 4 for k in ('learning_rate', 'weight_decay',
                                                 'grad_clip_norm')},
                        scan=True, vmapped=False, layout=layout)
    leaf = jax.tree.leaves(runner.init()[0])[0]
    placed[spec] = [len(leaf.sharding.device_set), leaf.addressable_shards[0].data.shape[0]]
print(json.dumps({'devices': jax.device_count(), 'results': results, 'placed': placed}))
"""


@pytest.fixture(scope='module')
def four_devices() -> dict:
  env = {**os.environ, 'PYTHONPATH': str(ROOT),
         'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  done = subprocess.run([sys.executable, '-c', SCRIPT], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


def test_each_mesh_trains_the_same_seeds_as_one_device_within_float_tolerance(four_devices):
  assert four_devices['devices'] == 4
  one = four_devices['results']['']
  for spec, per_seed in four_devices['results'].items():
    assert per_seed == pytest.approx(one, rel=1e-4), spec


def test_the_members_are_placed_over_the_devices(four_devices):
  placed = four_devices['placed']
  assert placed['seeds=4'] == [4, 1]  # each device holds one member's parameters
  assert placed['seeds=2,data=2'] == [4, 2]  # two members per device, replicated over data


@pytest.mark.parametrize('spec, members, batch, match', [
    ('seeds=many', 4, 100, 'axis=size'),
    ('model=2', 4, 100, 'axis=size'),
    ('seeds=2', 4, 100, 'needs 2 devices, 1 are visible'),
])
def test_a_mesh_that_cannot_be_built_is_refused_in_one_line(spec, members, batch, match):
  with pytest.raises(ValueError, match=match):
    mesh.layout(spec, members, batch)


def test_no_mesh_is_one_device():
  assert mesh.layout('', 3, 100) is None and mesh.parse('seeds=2, data=4') == {
      'seeds': 2, 'data': 4}
