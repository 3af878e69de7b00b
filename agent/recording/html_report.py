"""One self-contained HTML page per run (`runs/<id>/report.html`): the summary, the search's
progress against trials and compute, each trial's paired gains against the noise floor, the
cost trade-offs, every change with its evidence, the budget ledger, `verify`'s result and how
to reproduce the run.

Every number comes from the journal, or from a scorecard the journal names whose sha256 still
matches the record (a scorecard edited afterwards is not read; `verify` names it). Whatever a
proposer or a trial wrote (hypotheses, rationales, diffs, reasons) is text to the page:
jinja2 escapes it, the figures never show it, and the page's Content-Security-Policy allows
no script and no request beyond the page itself, so it reads the same offline.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import platform
import shlex
import statistics
from pathlib import Path
from typing import Any

import jinja2

from agent.charter import Objective
from agent.recording import audit, records
from agent.recording import report_plots as plots
from agent.recording.journal import Journal, Record
from agent.recording.records import ArmRecord, RunConfig
from agent.recording.state import RunState
from harness.scorecard import SCORECARD

REPORT = 'report.html'
TEMPLATES = Path(__file__).resolve().parent / 'templates'


@dataclasses.dataclass
class TrialRow:
  """One trial as the page shows it."""
  trial: int
  outcome: str  # 'kept', 'rejected', 'awaits review' or 'rejected in review'
  operator: str = '?'
  diagnosis: str = ''
  hypothesis: str = ''
  expected_effect: str = ''
  reason_code: str = ''
  rationale: str = ''
  review: str = ''
  gain: float | None = None
  noise_floor: float = math.nan
  p_value: float = math.nan
  commit: str = ''
  diff: str = ''
  candidate: float | None = None  # the candidate's mean on the screen seeds
  confirm_seeds: list[int] = dataclasses.field(default_factory=list)
  transfer: dict[str, records.TransferResult] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Walk:
  """What one pass over the journal gathers for the figures and the tables."""
  direction: str
  steps: list[plots.Step] = dataclasses.field(default_factory=list)
  gains: list[plots.Gains] = dataclasses.field(default_factory=list)
  points: list[plots.Point] = dataclasses.field(default_factory=list)
  rows: list[TrialRow] = dataclasses.field(default_factory=list)
  baseline: ArmRecord | None = None
  incumbent: ArmRecord | None = None
  compute_seconds: float = 0.0
  compute_saved: float = 0.0
  candidates: dict[int, ArmRecord] = dataclasses.field(default_factory=dict)  # by trial
  proposals: dict[int, records.Proposed] = dataclasses.field(default_factory=dict)
  diffs: dict[int, str] = dataclasses.field(default_factory=dict)

  def see(self, record: Record) -> None:
    body = record.body
    if isinstance(body, (records.Baseline, records.TrialFinished, records.ConfirmFinished)):
      self.compute_seconds += body.wall_seconds
    if isinstance(body, records.Proposed):
      self.proposals[record.trial] = body
    elif isinstance(body, records.TrialStarted):
      self.diffs[record.trial] = body.diff
    elif isinstance(body, records.Baseline):
      self.baseline = self.incumbent = body.arm
      self.steps.append(plots.Step(0, self.compute_seconds, *_mean_std(body.arm), None, True))
      self.points.append(_point('baseline', body.arm, True))
    elif isinstance(body, records.TRIAL_ENDS):
      self.trial_ended(record.trial, body)
    elif isinstance(body, records.Review):
      self.reviewed(body)

  def trial_ended(self, trial: int, body: records.TrialEnd) -> None:
    waiting = isinstance(body, records.Verdict) and body.awaiting_review
    row = TrialRow(trial, 'kept' if body.accepted else 'awaits review' if waiting
                   else 'rejected', reason_code=body.reason_code, rationale=body.rationale,
                   gain=body.gain, diff=self.diffs.get(trial, ''))
    proposal = self.proposals.get(trial)
    if proposal:
      row.operator, row.diagnosis = proposal.operator, proposal.diagnosis
      row.hypothesis, row.expected_effect = proposal.hypothesis, proposal.expected_effect
    if isinstance(body, records.Verdict):
      row.noise_floor, row.p_value, row.commit = body.noise_floor, body.p_value, body.commit
      row.confirm_seeds = body.confirm_seeds or []
      row.transfer = body.transfer or {}
      self.compute_saved += body.compute_saved_seconds or 0.0
      if body.candidate is not None:
        row.candidate = _mean_std(body.candidate)[0]
        self.candidates[trial] = body.candidate
        self.points.append(_point(str(trial), body.candidate, body.accepted))
        self.gains.append(plots.Gains(
            trial, _paired(self.incumbent, body.candidate, self.direction),
            _fresh_gains(body, self.direction), body.noise_floor, body.accepted))
      if body.accepted:
        self.incumbent = body.candidate
    self.rows.append(row)
    self.steps.append(plots.Step(trial, self.compute_seconds, *_mean_std(self.incumbent),
                                 row.candidate, body.accepted))

  def reviewed(self, review: records.Review) -> None:
    """A person's decision on the waiting winner: the last trial, since the run stopped."""
    row = next(r for r in self.rows if r.trial == review.trial)
    row.outcome = 'kept' if review.approved else 'rejected in review'
    row.review = (f"{'approved' if review.approved else 'rejected'} by {review.reviewer}: "
                  f'{review.why}')
    if not review.approved:
      return
    self.incumbent = self.candidates[review.trial]
    best, best_std = _mean_std(self.incumbent)
    self.steps[-1] = dataclasses.replace(self.steps[-1], best=best, best_std=best_std, kept=True)
    self.gains = [dataclasses.replace(g, kept=True) if g.trial == review.trial else g
                  for g in self.gains]
    self.points = [dataclasses.replace(p, kept=True) if p.label == str(review.trial) else p
                   for p in self.points]


def _point(label: str, arm: ArmRecord, kept: bool) -> plots.Point:
  return plots.Point(label, _mean_std(arm)[0], arm.step_latency_ms, arm.peak_memory_mb, kept)


def _mean_std(arm: ArmRecord | None) -> tuple[float, float]:
  values = [v for v in (arm.per_seed if arm else []) if math.isfinite(v)]
  if not values or len(values) < len(arm.per_seed):
    return math.nan, 0.0
  return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _paired(incumbent: ArmRecord | None, candidate: ArmRecord | None,
            direction: str) -> list[float]:
  if incumbent is None or candidate is None or len(incumbent.per_seed) != len(candidate.per_seed):
    return []
  sign = 1.0 if direction == 'max' else -1.0
  return [sign * (c - i) for i, c in zip(incumbent.per_seed, candidate.per_seed)
          if math.isfinite(c - i)]


def _fresh_gains(verdict: records.Verdict, direction: str) -> list[float]:
  """The paired gains on fresh seeds: every look after the screen's (or, in a journal of
  the fixed rule, its one confirmation)."""
  looks = verdict.looks or ([verdict.confirm_arms] if verdict.confirm_arms else [])
  return [gain for arms in looks
          for gain in _paired(arms.get('incumbent'), arms.get('candidate'), direction)]


def trusted_scorecard(arm: ArmRecord | None) -> dict[str, Any] | None:
  """The arm's scorecard file, only while it is the one the journal recorded."""
  if arm is None or not arm.scorecard_sha256:
    return None
  try:
    data = (Path(arm.workdir) / SCORECARD).read_bytes()
  except OSError:
    return None
  if hashlib.sha256(data).hexdigest() != arm.scorecard_sha256:
    return None
  card = json.loads(data)
  return card if isinstance(card, dict) else None


def _objective(started: records.RunStarted, card: dict[str, Any] | None) -> tuple[str, str]:
  """The metric's name and direction, as the run judged it."""
  metric = (card or {}).get('metric') or {}
  objective = Objective(**((started.charter or {}).get('objective') or {}))
  return (str(metric.get('name', objective.metric)),
          objective.resolve_direction(metric.get('direction', 'max')))


def _limits(settings: dict[str, Any], baseline: ArmRecord | None) -> dict[str, list]:
  """The charter's cost limits, where the trade-off figures draw them."""
  tradeoffs, trial = settings.get('tradeoffs') or {}, settings.get('trial') or {}
  limits: dict[str, list] = {'latency': [], 'memory': []}
  ratio = tradeoffs.get('max_latency_ratio')
  if ratio and baseline and baseline.step_latency_ms > 0:
    limits['latency'].append((ratio * baseline.step_latency_ms,
                              f'{ratio:g}x baseline latency (max_latency_ratio)'))
  if tradeoffs.get('max_memory_mb'):
    limits['memory'].append((tradeoffs['max_memory_mb'], 'max_memory_mb'))
  if trial.get('memory_mb'):
    limits['memory'].append((trial['memory_mb'], 'trial memory_mb (RLIMIT_DATA)'))
  return limits


def command(config: RunConfig) -> str:
  """The `agent.main run` command line that starts this run again, with its recorded
  settings."""
  flags = {'experiment': config.experiment, 'proposer': config.proposer,
           'seeds': config.seeds, 'budget_trials': config.budget_trials,
           'budget_minutes': config.budget_minutes,
           'budget_compute_seconds': config.budget_compute_seconds,
           'budget_tokens': config.budget_tokens, 'review': config.review,
           'run_id': config.run_id}
  llm = config.llm or {}
  for key, flag in (('api', 'llm_api'), ('base_url', 'llm_base_url'), ('model', 'llm_model'),
                    ('key_env', 'llm_api_key_env'), ('price_input', 'llm_price_input'),
                    ('price_output', 'llm_price_output'), ('timeout_s', 'llm_timeout_s')):
    if llm.get(key) is not None:
      flags[flag] = llm[key]
  return ' '.join(['python -m agent.main run'] +
                  [f'--{k}={shlex.quote(str(v))}' for k, v in flags.items()])


def _ledger(state: RunState, walk: _Walk, usage: list[records.LlmUsage]) -> list[dict]:
  config = state.config
  limit = lambda value, unit='': f'{value:g}{unit}' if value else 'unlimited'
  rows = [('trials', f'{state.trials_done}', f'{config.budget_trials}'),
          ('wall minutes (all sessions)', f'{state.elapsed_before / 60:.1f}',
           limit(config.budget_minutes)),
          ('trial compute seconds', f'{state.compute_seconds:.1f}',
           limit(config.budget_compute_seconds)),
          ('compute saved by early stopping (s)', f'{walk.compute_saved:.1f}', '')]
  if usage or config.proposer == 'llm':
    rows += [('LLM calls', f'{len(usage)}', ''),
             ('LLM tokens (input + output)', f'{state.tokens}', limit(config.budget_tokens)),
             ('LLM cost (USD)', f'{state.cost_usd:.4f}', '')]
  return [dict(zip(('what', 'spent', 'budget'), row)) for row in rows]


def _final(journal: Journal) -> dict[str, Any] | None:
  final = journal.latest(records.FinalEval)
  if final is None:
    return None
  arms = {name: getattr(final, name) for name in ('baseline', 'final')}
  return {'arms': arms, 'commit': final.commit, 'transfer': final.transfer or {}}


def context(repo: Path, journal: Journal) -> dict[str, Any]:
  """Everything the template shows, read from the journal and the scorecards it names."""
  entries = journal.records()
  started = entries[0].body
  state = RunState.replay(journal)
  baseline = journal.latest(records.Baseline)
  metric, direction = _objective(started, trusted_scorecard(baseline.arm if baseline else None))
  walk = _Walk(direction)
  for record in entries:
    walk.see(record)
  card = trusted_scorecard(walk.incumbent) or trusted_scorecard(walk.baseline) or {}
  finished = journal.latest(records.RunFinished)
  settings = started.charter or {}
  figures = {}
  if walk.steps:
    figures['best'] = plots.best_so_far(walk.steps, metric, direction)
    figures['gains'] = plots.paired_gains(walk.gains, metric)
    figures['tradeoffs'] = plots.tradeoffs(walk.points, metric, direction,
                                           _limits(settings, walk.baseline))
  head = journal.head()
  return {
      'config': state.config, 'metric': metric, 'direction': direction,
      'state': ('finished: ' + finished.reason if finished else
                f'trial {state.awaiting_review.trial} awaits review' if state.awaiting_review
                else 'not finished'),
      'baseline': _mean_std(walk.baseline), 'incumbent': _mean_std(walk.incumbent),
      'incumbent_commit': walk.incumbent.commit if walk.incumbent else '',
      'search_seeds': card.get('seeds') or [], 'final': _final(journal),
      'kept': [r for r in walk.rows if r.outcome == 'kept'],
      'rejected': [r for r in walk.rows if r.outcome != 'kept'],
      'figures': figures, 'ledger': _ledger(state, walk, journal.read(records.LlmUsage)),
      'verify': audit.verify_run(repo, journal),
      'command': command(state.config), 'versions': card.get('versions') or {},
      'device': card.get('device') or {}, 'code': card.get('code') or {},
      'acceptance': settings.get('acceptance') or {}, 'tradeoffs': settings.get('tradeoffs') or {},
      'report_machine': f'{platform.node()} ({platform.machine()}, Python '
                        f'{platform.python_version()})',
      'head': head, 'generated': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
  }


def _number(value: Any, digits: int = 4, signed: bool = False) -> str:
  if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
    return 'n/a'
  return f'{value:+.{digits}f}' if signed else f'{value:.{digits}f}'


def _environment() -> jinja2.Environment:
  env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                           undefined=jinja2.StrictUndefined, trim_blocks=True,
                           lstrip_blocks=True)
  env.filters['num'] = _number
  return env


def render(repo: Path, journal: Journal) -> str:
  """The report's HTML."""
  return _environment().get_template('report.html.j2').render(**context(repo, journal))


def write(repo: Path, journal: Journal, run_dir: Path) -> Path:
  """Writes `run_dir/report.html` whole (a temporary file renamed over it); returns its path."""
  path = run_dir / REPORT
  temporary = path.with_suffix('.tmp')
  temporary.write_text(render(repo, journal), encoding='utf-8')
  temporary.replace(path)
  return path
