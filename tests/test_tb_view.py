"""The agent's TensorBoard view, read back by a real TensorBoard and seen in Chromium."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from agent.recording import records, tb_view
from agent.recording.journal import Journal
from agent.recording.records import ArmRecord, RunConfig
from tests.agent_workspace import fake_scorecard, write_scorecard
from tests.browser import Browser

HOSTILE = '<img src=x onerror=alert(1)> [click](javascript:alert(1)) **bold**'
DIFF = ('--- a/experiments/x.py\n+++ b/experiments/x.py\n@@ -1 +1 @@\n-a = 1\n'
        '+b = "```\\n<script>alert(1)</script>"\n```\n')


def _arm(folder: Path, per_seed: list[float], model: dict) -> ArmRecord:
  card = fake_scorecard(per_seed) | {'config': {'model': model, 'train': {'steps': 60}}}
  card['step_latency_ms'] = {'p50': 1.0, 'p95': 2.5}
  card |= {'flops_per_step': 1e6, 'param_count': 1234}
  write_scorecard(folder, card)
  return ArmRecord.from_scorecard('c' * 40, folder, card)


def _journal(run_dir: Path) -> Journal:
  """A run of three trials: rejected, refused by the guard, accepted with a new model (keys
  the others lack); hostile text in a hypothesis and a diff."""
  journal = Journal.open(run_dir / 'journal.sqlite')
  journal.write(records.RunStarted(RunConfig('v', 'experiments/x.py', 'heuristic', 2, 3,
                                             10.0, 0.0)))
  journal.write(records.SessionStarted(pid=1))
  mlp = {'name': 'mlp', 'width': 64}
  journal.write(records.Baseline(arm=_arm(run_dir / 'baseline', [0.5, 0.6], mlp),
                                 wall_seconds=2.0))
  for trial, operator, hypothesis in ((1, 'lr_up', 'raise the rate'), (2, 'dropout', 'drop'),
                                      (3, 'to_cnn', HOSTILE)):
    journal.write(records.Proposed(operator, 'diag ' + operator, hypothesis, 'up',
                                   {'experiments/x.py': 'x'}), trial=trial)
  journal.write(records.TrialStarted('c' * 40, DIFF.replace('b = ', 'lr = ')), trial=1)
  journal.write(records.TrialFinished('ok', wall_seconds=3.0), trial=1)
  journal.write(records.Verdict(False, 'below_noise', 'Rejected: below the noise floor.',
                                gain=0.01, noise_floor=0.05,
                                candidate=_arm(run_dir / 't1', [0.5, 0.62],
                                               mlp | {'width': 128})), trial=1)
  journal.write(records.GuardRejected('edits a protected file'), trial=2)
  journal.write(records.TrialStarted('c' * 40, DIFF), trial=3)
  journal.write(records.TrialFinished('ok', wall_seconds=3.0), trial=3)
  journal.write(records.Verdict(True, 'improved', 'Accepted: <b>clear</b> gain.', gain=0.3,
                                noise_floor=0.05,
                                candidate=_arm(run_dir / 't3', [0.8, 0.9],
                                               {'name': 'cnn', 'channels': 16})), trial=3)
  return journal


@pytest.fixture(scope='module')
def view(tmp_path_factory) -> Path:
  run_dir = tmp_path_factory.mktemp('view')
  with _journal(run_dir) as journal:
    tb_view.write(journal, run_dir)
    tb_view.write(journal, run_dir)  # again: replaces, leaves nothing beside it
  assert sorted(p.name for p in run_dir.glob('*tensorboard*')) == ['tensorboard']
  return run_dir / tb_view.FOLDER


@pytest.fixture(scope='module')
def server(view):
  """A real TensorBoard on a free port over the view."""
  process = subprocess.Popen(
      [str(Path(sys.executable).with_name('tensorboard')), '--logdir', str(view), '--host',
       '127.0.0.1', '--port', '0', '--load_fast', 'false'],
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
  try:
    for line in process.stderr:  # it names its address once it serves
      found = re.search(r'http://127\.0\.0\.1:(\d+)/', line)
      if found:
        yield f'http://127.0.0.1:{found.group(1)}'
        break
    else:
      pytest.fail('tensorboard did not start')
  finally:
    process.kill()
    process.wait()


def _get(url: str, body: dict | None = None):
  data = None if body is None else json.dumps(body).encode()
  request = urllib.request.Request(url, data=data, headers={'Content-Type': 'application/json'})
  with urllib.request.urlopen(request, timeout=60) as response:
    text = response.read().decode()
  return json.loads(text)


def test_hparams_list_every_trial_with_its_verdict_over_the_union_of_keys(server):
  experiment = _get(f'{server}/data/plugin/hparams/experiment', {'experimentName': ''})
  columns = [h['name'] for h in experiment['hparamInfos']]
  assert {'model.width', 'model.channels', 'agent.verdict', 'agent.gain', 'agent.noise_floor',
          'cost.step_ms_p95', 'cost.flops_per_step', 'cost.param_count',
          'cost.nonfinite'} <= set(columns)
  assert columns[:5] == ['agent.gain', 'agent.noise_floor', 'agent.operator', 'agent.reason',
                         'agent.verdict']  # what the dashboard shows first
  groups = _get(f'{server}/data/plugin/hparams/session_groups', {
      'experimentName': '', 'allowedStatuses': ['STATUS_SUCCESS', 'STATUS_UNKNOWN'],
      'colParams': [], 'startIndex': 0, 'sliceSize': 100})['sessionGroups']
  rows = {g['name']: g['hparams'] for g in groups}
  assert {n: r['agent.verdict'] for n, r in rows.items()} == {
      'baseline': 'baseline', 'trial-001': 'rejected', 'trial-002': 'rejected',
      'trial-003': 'accepted'}
  assert rows['trial-001']['model.width'] == 128 and 'model.channels' not in rows['trial-001']
  assert rows['trial-003']['model.channels'] == 16 and rows['trial-003']['agent.gain'] == 0.3
  metric = {g['name']: g['metricValues'][0]['value'] for g in groups if g['metricValues']}
  assert metric['trial-003'] == pytest.approx(0.85)
  scalars = _get(f'{server}/data/plugin/scalars/tags')
  assert set(scalars['agent']) == {'incumbent/accuracy', 'budget/minutes',
                                   'budget/compute_seconds'}
  assert not [t for tags in scalars.values() for t in tags if t.startswith('hparams/')]
  incumbent = _get(f'{server}/data/plugin/scalars/scalars?run=agent&tag=incumbent/accuracy')
  assert [(step, round(value, 3)) for _, step, value in incumbent] == [
      (0, 0.55), (1, 0.55), (2, 0.55), (3, 0.85)]


def test_text_renders_untrusted_words_as_text_and_the_diff_as_code(server):
  html = _get(f'{server}/data/plugin/text/text?run=trial-003&tag=trial')[0]['text']
  assert '<img' not in html and '<script' not in html and '<a ' not in html
  assert '&lt;img src=x onerror=alert(1)&gt;' in html and '**bold**' in html
  assert '&lt;b&gt;clear&lt;/b&gt;' in html
  code = re.search(r'<pre><code[^>]*>(.*?)</code></pre>', html, re.S).group(1)
  assert '&lt;script&gt;alert(1)&lt;/script&gt;' in code and code.rstrip().endswith('```')
  assert 'Trial 3: accepted (improved)' in html and 'to_cnn' in html


_DEEP_TEXT = """(selector) => { const found = []; const visit = (root) => {
  root.querySelectorAll(selector).forEach((e) => found.push(e.textContent.trim()));
  root.querySelectorAll('*').forEach((e) => { if (e.shadowRoot) visit(e.shadowRoot); }); };
  visit(document); return found; }"""


def test_the_dashboards_list_the_trials_with_their_verdicts_in_a_browser(server):
  with Browser() as browser:
    text = browser.open(f'{server}/#text')
    headings = f'({_DEEP_TEXT})("h3")'
    text.wait_for(f'{headings}.length >= 4', timeout_s=60)
    assert {'Trial 1: rejected (below_noise)', 'Trial 2: rejected (guard)',
            'Trial 3: accepted (improved)'} <= set(text.eval(headings))
    assert not text.query('img') or all('onerror' not in i['text'] for i in text.query('img'))
    table = browser.open(f'{server}/#hparams')
    cells = f'({_DEEP_TEXT})("vaadin-grid-cell-content")'
    table.wait_for(f'{cells}.includes("trial-003")', timeout_s=60)
    shown = table.eval(cells)
    row = shown[shown.index('trial-003'):shown.index('trial-003') + 8]
    assert 'accepted' in row and 'to_cnn' in row
    assert 'agent.verdict' in shown and not text.console_errors + table.console_errors
