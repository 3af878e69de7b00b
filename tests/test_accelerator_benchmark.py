"""The accelerator smoke run (benchmark 9, on request) runs and renders at toy size here, so
it works the day a GPU or TPU machine runs it."""

from pathlib import Path

from benchmarks import run


def test_it_runs_only_when_named():
  assert 'accelerator' not in run.selected('')
  assert run.selected('accelerator,overhead') == ['overhead', 'accelerator']


def test_the_smoke_run_names_the_device_and_renders(tmp_path: Path):
  out, results = tmp_path / 'BENCHMARKS.md', tmp_path / 'results'
  loaded = run.run_benchmarks(['accelerator'], 'toy', out, results, 'toy', say=lambda _: None)
  data = loaded['accelerator']['data']
  assert data['device']['platform'] == 'cpu' and data['device']['count'] >= 1
  [row] = data['harness']
  assert row['exit'] == 0 and 0 <= row['val_metric'] <= 1 and row['device']['platform'] == 'cpu'
  text = out.read_text()
  assert '## 9. Accelerator smoke run' in text
  assert '| cpu (cpu): no accelerator, nothing measured | - |' in text  # no claim on a CPU
  assert 'experiments/mnist1d_mlp.py | 0 |' in text
