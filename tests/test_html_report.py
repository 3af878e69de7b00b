"""The HTML run report: built from the journal of one small run, escaped, self-contained, and
as a person sees it in headless Chromium.

One run is built once (simulated trials, as in test_audit): a confirmed win whose hypothesis
carries a script, a noise-sized rejection, a guard rejection, and the final evaluation.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from html.parser import HTMLParser

import markupsafe
import pytest

from agent.editing import knobs
from agent.recording import html_report, vcs
from agent.recording.journal import Journal
from agent.recording.records import FinalEval
from tests.agent_workspace import git, write_scorecard
from tests.browser import Browser
from tests.conftest import ROOT
from tests.test_agent_e2e import agent
from tests.test_agent_loop import ScriptedProposer, make_loop, set_lr, touch
from tests.test_audit import FinalRunner

HOSTILE = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
VERSIONS = {'python': '3.11.2', 'jax': '0.4.99'}


class Runner(FinalRunner):
  """Scorecards with the versions and device a real one has, and a latency the
  learning rate sets, so the trade-off figures have something to show."""

  def __call__(self, spec, scorer=None, on_curve=None):
    outcome = super().__call__(spec, scorer, on_curve)
    lr = {k.path: k.value for k in knobs.inventory(spec.worktree / spec.experiment)}[
        'optimizer.learning_rate']
    card = {**outcome.scorecard, 'versions': VERSIONS, 'device': {'platform': 'cpu'},
            'step_latency_ms': {'p50': 1.0 + 100 * lr, 'p95': 2.0}}
    write_scorecard(spec.workdir, card)
    return dataclasses.replace(outcome, scorecard=card)


class Hostile(ScriptedProposer):
  """The first proposal's hypothesis and diff carry markup that would run if unescaped."""

  def propose(self, observation):
    proposal = super().propose(observation)
    if proposal.operator != 'lr_up':
      return proposal
    path, text = next(iter(proposal.changes.items()))
    return dataclasses.replace(proposal, hypothesis=f'faster {HOSTILE} learning',
                               changes={path: text + f'# {HOSTILE}\n'})


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """The run's repository, journal and written report (through the CLI)."""
  base = tmp_path_factory.mktemp('html')
  runner = Runner(effect_per_lr={1e-2: 0.05})
  proposer = Hostile([('lr_up', set_lr(1e-2)), ('lr_nudge', set_lr(1.1e-2)),
                      ('escape', touch('harness/train.py'))])
  repo, loop, journal = make_loop(base, proposer, runner, trials=3)
  reason = loop.run()
  loop.final_evaluation()
  journal.append('run_finished', {'reason': reason})
  loop.end_session(reason)
  journal.close()
  result = agent(repo, 'report', '--run_id=r1')
  assert result.returncode == 0, result.stderr[-2000:]
  path = repo / 'runs/r1' / html_report.REPORT
  assert str(path) in result.stdout
  journal = Journal.open(repo / 'runs/r1/journal.sqlite')
  yield repo, journal, path.read_text()
  journal.close()


class _Tags(HTMLParser):
  """Every start tag and its attributes, as a browser's parser would see them."""

  def __init__(self, text: str):
    super().__init__()
    self.tags: list[tuple[str, dict[str, str | None]]] = []
    self.feed(text)

  def handle_starttag(self, tag, attrs):
    self.tags.append((tag, dict(attrs)))


def _final(journal: Journal) -> FinalEval:
  final = journal.latest(FinalEval)
  assert final.baseline.status == final.final.status == 'ok'
  return final


def test_the_summary_shows_the_final_evaluation_the_journal_holds(run):
  repo, journal, text = run
  final = _final(journal)
  summary = text[text.index('id="summary"'):text.index('id="progress"')]
  for name in ('baseline', 'final'):
    arm = getattr(final, name)
    for split in (arm.val, arm.test):
      assert f"{split['mean']:.4f} ± {split['std']:.4f}" in summary
    assert ', '.join(map(str, arm.seeds)) in summary
    assert final.commit[name][:10] in summary
  assert final.final.test['mean'] != final.baseline.test['mean']  # two rows, not one twice


def test_proposer_text_is_escaped_never_markup(run):
  _, _, text = run
  assert HOSTILE not in text
  assert str(markupsafe.escape(HOSTILE)) in text  # in the hypothesis
  assert str(markupsafe.escape(f'+# {HOSTILE}')) in text  # in the diff
  tags = _Tags(text).tags
  assert not [t for t, _ in tags if t in ('script', 'iframe', 'object', 'embed')]
  assert not [(t, a) for t, attrs in tags for a in attrs if a.startswith('on')]


def test_the_page_asks_for_nothing_beyond_itself(run):
  _, _, text = run
  fetched = [(t, a, v) for t, attrs in _Tags(text).tags for a, v in attrs.items()
             if a in ('src', 'href', 'xlink:href', 'srcset', 'action', 'data', 'poster')]
  assert all(v.startswith(('data:', '#')) for _, _, v in fetched), fetched
  assert not [t for t, _ in _Tags(text).tags if t == 'link']
  assert not re.search(r'@import|url\(\s*["\']?(?!#|data:)', text)
  assert "default-src 'none'" in text  # the CSP: no script, no request
  assert text.count('<svg') == 3


def test_changes_ledger_and_reproduction_are_shown(run):
  repo, journal, text = run
  section = lambda name: text[text.index(f'<section id="{name}"'):].split('</section>')[0]
  accepted, rejected = section('accepted'), section('rejected')
  assert 'Trial 1: lr_up' in accepted and '+  config.optimizer.learning_rate = 1e-2' in accepted
  assert 'Trial 2' not in accepted and 'Trial 3' not in accepted
  assert re.search(r'<td class="n">2</td><td>lr_nudge</td>', rejected)
  assert re.search(r'<td class="n">3</td><td>escape</td>', rejected)
  assert '<code>guard</code>' in rejected and 'outside the charter' in rejected
  budget = section('budget')
  assert re.search(r'<td>trials</td><td class="n">3</td><td class="n">3</td>', budget)
  assert 'run verified' in section('verify')
  reproduce = section('reproduce')
  start = git(repo, 'rev-parse', 'main')
  assert f'git checkout {start}' in reproduce
  assert ('python -m agent.main run --experiment=experiments/digits_mlp.py --proposer=scripted '
          '--seeds=3 --budget_trials=3') in reproduce
  assert _final(journal).commit['final'] in reproduce
  assert 'jax 0.4.99' in reproduce and 'platform: cpu' in reproduce


def test_a_run_that_fails_verify_says_so(run):
  repo, journal, _ = run
  ref = vcs.anchor_ref('r1')
  anchor = git(repo, 'rev-parse', ref)
  git(repo, 'update-ref', '-d', ref)
  try:
    text = html_report.render(repo, journal)
  finally:
    git(repo, 'update-ref', ref, anchor)
  verify = text[text.index('<section id="verify"'):].split('</section>')[0]
  assert 'verify failed' in verify and 'journal anchor' in verify
  assert 'run verified' not in verify


def test_resuming_a_finished_run_writes_the_report_again(run):
  repo, _, _ = run
  path = repo / 'runs/r1' / html_report.REPORT
  path.unlink()
  result = agent(repo, 'resume', '--run_id=r1')
  assert result.returncode == 0, result.stderr[-2000:]
  assert f'Report: {path}' in result.stdout
  assert 'Trial 1: lr_up' in path.read_text()


_FIGURES = """[...document.querySelectorAll('figure svg')].map((svg) => {
  const box = svg.getBoundingClientRect();
  const drawn = [...svg.querySelectorAll('path')].filter((p) => {
    const b = p.getBoundingClientRect(); return b.width > 0 || b.height > 0; });
  return {section: svg.closest('section').id, width: box.width, height: box.height,
          drawn: drawn.length};
})"""


def test_a_browser_shows_the_report_with_its_figures_and_no_errors(run):
  repo, journal, _ = run
  final = _final(journal)
  with Browser() as browser:
    page = browser.open((repo / 'runs/r1' / html_report.REPORT).as_uri())
    assert page.console_errors == []
    assert all(url.startswith(('file:', 'data:')) for url in page.requests), page.requests
    figures = page.eval(_FIGURES)
    assert [f['section'] for f in figures] == ['progress', 'gains', 'tradeoffs']
    assert all(f['width'] > 300 and f['height'] > 150 and f['drawn'] > 20 for f in figures)
    summary = page.eval('document.getElementById("summary").innerText')
    assert f"{final.final.test['mean']:.4f}" in summary
    assert f"{final.baseline.val['mean']:.4f}" in summary
    hypotheses = page.eval('[...document.querySelectorAll(".hypothesis")].map(e => e.innerText)')
    assert f'faster {HOSTILE} learning' in hypotheses  # shown as text, not run
    assert page.eval('typeof window.pwned') == 'undefined'
    assert page.eval('document.scripts.length') == 0
    assert page.console_errors == []


def test_a_journal_with_reviews_and_llm_usage_reads_as_recorded(tmp_path):
  """tests/data/journal_v1: a winner rejected in review (trial 3), one approved (trial 4), a
  failed proposal with its LLM calls; its repository is gone, so verify fails."""
  run_dir = tmp_path / 'runs/r1'
  run_dir.mkdir(parents=True)
  shutil.copy(ROOT / 'tests/data/journal_v1/journal.sqlite', run_dir)
  with Journal.open(run_dir / 'journal.sqlite') as journal:
    text = html_report.render(tmp_path, journal)
  section = lambda name: text[text.index(f'<section id="{name}"'):].split('</section>')[0]
  accepted, rejected = section('accepted'), section('rejected')
  assert 'Trial 4: lr_up_more' in accepted and 'approved by alice: fine' in accepted
  assert re.search(r'<td class="n">3</td><td>lr_up</td>.*?<td>rejected in review</td>',
                   rejected, re.S)
  assert 'rejected by bob: too slow' in rejected
  assert re.search(r'<td>LLM tokens \(input \+ output\)</td><td class="n">300</td>',
                   section('budget'))
  assert 'verify failed' in section('verify')
