"""The agent's view of a run in TensorBoard, written from its journal (and the trusted
scorecards its records name) into `runs/<id>/tensorboard/`.

One TensorBoard run per trial (`trial-003`, and `baseline`): a text entry with the diagnosis,
hypothesis, diff, verdict and rationale; an HParams session whose columns are the trial's
config beside what the agent decided and measured (operator, verdict, paired gain and its
noise floor, costs); the screen's validation curve, whose last point is the session's
metric. One `agent` run: the incumbent's metric and the budget spent, by trial number.
HParams columns are the union over all trials (one experiment summary lists every key), so
a trial that adds a knob shows it and the others show a blank.

Everything a proposer or a trial wrote is shown as text: prose is HTML-escaped and its
Markdown syntax escaped, a diff sits in a code fence it cannot close. The folder is written
anew beside the old one and swapped in, so a reader never sees half of it; TensorBoard reads
a run's newer event file over the older one (same steps: the older data is purged).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import html
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from tensorboardX import SummaryWriter
from tensorboardX.proto.api_pb2 import DataType, Experiment, HParamInfo, MetricInfo, MetricName
from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData
from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboardX.proto.tensor_pb2 import TensorProto
from tensorboardX.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboardX.summary import hparams

from agent.recording import records
from agent.recording.journal import Journal, Record
from agent.recording.records import ArmRecord
from agent.untrusted import one_line, terminal_safe
from harness.scorecard import SCORECARD

FOLDER = 'tensorboard'
AGENT_RUN = 'agent'
MAX_DIFF_CHARS = 20_000
# The columns the agent adds beside the config's keys. TensorBoard orders columns by name and
# shows the first five: these names put the decision first (the trial's name is the run's).
COLUMNS = ('agent.operator', 'agent.verdict', 'agent.reason', 'agent.gain', 'agent.noise_floor',
           'cost.train_seconds', 'cost.step_ms_p50', 'cost.step_ms_p95', 'cost.peak_memory_mb',
           'cost.flops_per_step', 'cost.param_count', 'cost.nonfinite')
_MARKDOWN_SIGNS = re.compile(r'([\\`*_{}\[\]()#+\-.!|~>])')


def prose(text: Any) -> str:
  """Untrusted text as one line of Markdown that renders as exactly that text: no HTML,
  no link, no image, no emphasis it did not spell out."""
  return _MARKDOWN_SIGNS.sub(r'\\\1', html.escape(one_line('' if text is None else str(text)),
                                                  quote=False))


def code_block(text: str, language: str = 'diff') -> str:
  """Untrusted text in a fenced code block no line of it can close (the fence is longer
  than any run of backticks it holds)."""
  body = terminal_safe(text)
  if len(body) > MAX_DIFF_CHARS:
    body = body[:MAX_DIFF_CHARS] + f'\n[... {len(body) - MAX_DIFF_CHARS} characters cut ...]'
  longest = max((len(run) for run in re.findall(r'`+', body)), default=0)
  fence = '`' * max(3, longest + 1)
  return f'{fence}{language}\n{body}\n{fence}'


@dataclasses.dataclass
class Session:
  """One TensorBoard run of the view: a trial (or the baseline)."""
  name: str
  step: int  # the trial number; 0 for the baseline
  text: str
  hparams: dict[str, bool | int | float | str]
  curve: list[list[float]]  # [step, mean validation metric] of the run that was judged


@dataclasses.dataclass
class View:
  metric: str
  sessions: list[Session]
  agent: dict[int, dict[str, float]]  # trial number -> scalars of the `agent` run


def _scorecard(arm: ArmRecord | None) -> dict[str, Any]:
  """The trusted scorecard an arm names, only if it is still the one recorded."""
  if arm is None:
    return {}
  path = Path(arm.workdir) / SCORECARD
  try:
    data = path.read_bytes()
  except OSError:
    return {}
  if arm.scorecard_sha256 and hashlib.sha256(data).hexdigest() != arm.scorecard_sha256:
    return {}
  try:
    card = json.loads(data)
  except ValueError:
    return {}
  return card if isinstance(card, dict) else {}


def _flat(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  flat: dict[str, Any] = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flat(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def _value(value: Any) -> bool | int | float | str | None:
  """An HParams value: numbers and words as they are, anything else in words."""
  if value is None or isinstance(value, float) and value != value:
    return None
  if isinstance(value, (bool, int, float)):
    return value
  return one_line(value if isinstance(value, str) else json.dumps(value, default=str))[:200]


def _costs(arm: ArmRecord | None, card: dict[str, Any]) -> dict[str, Any]:
  if arm is None:
    return {}
  latency = card.get('step_latency_ms') if isinstance(card.get('step_latency_ms'), dict) else {}
  return {'cost.train_seconds': arm.train_seconds, 'cost.step_ms_p50': arm.step_latency_ms,
          'cost.step_ms_p95': latency.get('p95'), 'cost.peak_memory_mb': arm.peak_memory_mb,
          'cost.flops_per_step': card.get('flops_per_step'),
          'cost.param_count': card.get('param_count'), 'cost.nonfinite': arm.nonfinite}


def _hparams(columns: Mapping[str, Any], card: dict[str, Any]) -> dict[str, Any]:
  config = card.get('config') if isinstance(card.get('config'), dict) else {}
  values = {k: v for k, v in _flat(config).items() if k not in COLUMNS}
  values.update(columns)
  return {k: v for k, v in ((k, _value(v)) for k, v in values.items()) if v is not None}


def _word(end: records.TrialEnd, review: records.Review | None) -> str:
  if review is not None:
    return 'accepted in review' if review.approved else 'rejected in review'
  if getattr(end, 'awaiting_review', False):
    return 'awaiting review'
  return 'accepted' if end.accepted else 'rejected'


def _trial_text(trial: int, proposal: records.Proposed | None, diff: str | None,
                end: records.TrialEnd, review: records.Review | None) -> str:
  word = _word(end, review)
  lines = [f'### Trial {trial}: {prose(word)} ({prose(end.reason_code)})', '']
  if proposal is not None:
    lines += [f'**Operator:** {prose(proposal.operator)}  ',
              f'**Diagnosis:** {prose(proposal.diagnosis)}  ',
              f'**Hypothesis:** {prose(proposal.hypothesis)}  ',
              f'**Expected effect:** {prose(proposal.expected_effect)}', '']
  lines += [f'**Verdict:** {prose(word)}: {prose(end.rationale)}', '']
  if review is not None:
    lines += [f'**Review:** {prose(review.reviewer)}: {prose(review.why)}', '']
  if diff:
    lines += ['**Diff:**', '', code_block(diff)]
  return '\n'.join(lines)


class _Clock:
  """Wall time spent in the run's sessions at each record, as `RunState.replay` counts it
  (a killed session counts to its last record)."""

  def __init__(self) -> None:
    self.closed, self.open, self.last = 0.0, None, 0.0

  def see(self, record: Record) -> float:
    now = datetime.datetime.fromisoformat(record.ts).timestamp()
    if isinstance(record.body, records.SessionStarted):
      self.closed += max(0.0, self.last - self.open) if self.open is not None else 0.0
      self.open = now
    elif isinstance(record.body, records.SessionEnded) and self.open is not None:
      self.closed += float(record.body.elapsed_seconds)
      self.open = None
    self.last = now
    return self.closed + (max(0.0, now - self.open) if self.open is not None else 0.0)


def view(journal: Journal) -> View:
  """The view's content, from the journal's records in order."""
  entries = journal.records()
  reviews = {r.trial: r.body for r in entries if isinstance(r.body, records.Review)}
  proposals: dict[int, records.Proposed] = {}
  diffs: dict[int, str] = {}
  sessions: list[Session] = []
  agent: dict[int, dict[str, float]] = {}
  incumbent: ArmRecord | None = None
  waiting: dict[int, ArmRecord | None] = {}
  compute = tokens = 0.0
  clock, step, metric = _Clock(), 0, 'metric'
  for record in entries:
    body = record.body
    elapsed = clock.see(record)
    if isinstance(body, (records.TrialFinished, records.ConfirmFinished, records.Baseline)):
      compute += body.wall_seconds
    if isinstance(body, records.LlmUsage):
      tokens += body.input_tokens + body.output_tokens
    if isinstance(body, records.Proposed):
      proposals[record.trial] = body
    elif isinstance(body, records.TrialStarted):
      diffs[record.trial] = body.diff
    elif isinstance(body, records.Baseline):
      incumbent, card = body.arm, _scorecard(body.arm)
      metric = str((card.get('metric') or {}).get('name') or metric)
      sessions.append(Session('baseline', 0, '### Baseline\n\nThe start commit, on the '
                              'seeds every screen uses.',
                              _hparams({'agent.verdict': 'baseline',
                                        **_costs(body.arm, card)}, card), body.arm.curve))
    elif isinstance(body, records.TRIAL_ENDS):
      step, review = record.trial, reviews.get(record.trial)
      arm = getattr(body, 'candidate', None)
      card = _scorecard(arm)
      columns = {'agent.operator': getattr(proposals.get(step), 'operator', None),
                 'agent.verdict': _word(body, review), 'agent.reason': body.reason_code,
                 'agent.gain': body.gain, 'agent.noise_floor': getattr(body, 'noise_floor', None),
                 **_costs(arm, card)}
      sessions.append(Session(f'trial-{step:03d}', step, _trial_text(
          step, proposals.get(step), diffs.get(step), body, review),
          _hparams(columns, card), arm.curve if arm else []))
      if body.accepted:
        incumbent = arm
      elif getattr(body, 'awaiting_review', False):
        waiting[step] = arm
    elif isinstance(body, records.Review) and body.approved:
      incumbent = waiting.get(body.trial, incumbent)
    if incumbent is not None and isinstance(body, (records.Baseline, records.Review,
                                                   *records.TRIAL_ENDS)):
      agent[step] = {f'incumbent/{metric}': records.mean_of(list(incumbent.per_seed)),
                     'budget/minutes': elapsed / 60, 'budget/compute_seconds': compute,
                     **({'budget/tokens': tokens} if tokens else {})}
  return View(metric, sessions, agent)


_TYPES = ((bool, 'DATA_TYPE_BOOL'), ((int, float), 'DATA_TYPE_FLOAT64'), (str, 'DATA_TYPE_STRING'))


def _experiment(sessions: list[Session], metric: str) -> Summary:
  """One experiment summary over every session's keys: the union, so a key some trials
  lack is still a column, blank for them."""
  kinds: dict[str, type] = {}
  for session in sessions:
    for key, value in session.hparams.items():
      kinds.setdefault(key, type(value))
  infos = [HParamInfo(name=key, type=DataType.Value(
      next(name for types, name in _TYPES if issubclass(kinds[key], types))))
      for key in sorted(kinds)]
  experiment = Experiment(hparam_infos=infos,
                          metric_infos=[MetricInfo(name=MetricName(tag=f'val/{metric}'))])
  content = HParamsPluginData(experiment=experiment, version=0)
  return Summary(value=[Summary.Value(tag='_hparams_/experiment', metadata=SummaryMetadata(
      plugin_data=SummaryMetadata.PluginData(plugin_name='hparams',
                                             content=content.SerializeToString())))])


def _text(tag: str, markdown: str) -> Summary:
  """A text summary holding one string (a scalar tensor: TensorBoard renders it as
  Markdown, where add_text's one-element vector becomes a table)."""
  return Summary(value=[Summary.Value(
      tag=tag, metadata=SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
          plugin_name='text')),
      tensor=TensorProto(dtype='DT_STRING', string_val=[markdown.encode('utf-8')],
                         tensor_shape=TensorShapeProto()))])


def _write(folder: Path, result: View) -> None:
  for session in result.sessions:
    writer = SummaryWriter(str(folder / session.name))
    try:
      file_writer = writer._get_file_writer()  # tensorboardX's documented escape hatch
      _, start, end = hparams(session.hparams, {})
      file_writer.add_summary(start)
      for step, value in session.curve:
        if value == value:
          writer.add_scalar(f'val/{result.metric}', value, int(step))
      file_writer.add_summary(_text('trial', session.text), session.step)
      file_writer.add_summary(end)
    finally:
      writer.close()
  writer = SummaryWriter(str(folder / AGENT_RUN))
  try:
    writer._get_file_writer().add_summary(_experiment(result.sessions, result.metric))
    for step in sorted(result.agent):
      for tag, value in result.agent[step].items():
        if value == value:
          writer.add_scalar(tag, value, step)
  finally:
    writer.close()


def write(journal: Journal, run_dir: Path) -> Path:
  """Writes the view into `run_dir/tensorboard/`, replacing the one there; returns it."""
  target = run_dir / FOLDER
  fresh = Path(tempfile.mkdtemp(prefix=f'.{FOLDER}-', dir=run_dir))
  try:
    _write(fresh, view(journal))
    old = target.with_name(f'.{FOLDER}-old')
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
      target.rename(old)
    fresh.rename(target)
    shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(fresh, ignore_errors=True)
    raise
  return target


def trial_events(workdir: Path, card: dict[str, Any]) -> None:
  """The trusted validation curve of one trial, beside its own events in `output/`. No
  HParams session here: the view's trial runs hold them, one per trial, so the dashboard
  lists each trial once."""
  from harness.tb_writer import MetricsWriter
  writer = MetricsWriter(workdir)
  try:
    name = card['metric']['name']
    for point in card['curve']:
      writer.scalars(point['step'], {'val/loss': records.mean_of(point['val_loss']),
                                     f'val/{name}': records.mean_of(point['val_metric'])})
  finally:
    writer.close()
