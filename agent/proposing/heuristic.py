"""The offline proposer: diagnose the incumbent from its scorecard, then pick an edit.

It works the way a researcher reads a run: the symptoms (agent.proposing.diagnosis) each
nominate remedies (agent.proposing.operators) with a prior weight; a Thompson-sampling
bandit, whose counts persist across runs per task and model family, picks among them, so
the rules lead and experience corrects them. Numeric values are drawn around the
incumbent from a generator seeded by (seed, trial): a run replays exactly, and repeated
tries do not walk a fixed grid.

A model of the user's own is read the same way: its constructor's arguments (from the
registry's class, with libcst) and the config's model keys, each matched to the declared
knob it plays (`hidden` a width, `blocks` a depth: agent.editing.space.roles), so the
operators edit what the model has under its own names.

Every edit goes through agent.editing.config_edit (or agent.editing.source_edit for model
code) so that the diff a reviewer reads is exactly the change. Only knobs in the tunable
categories are touched (never data, never train.seed), the declared space's bounds keep
values sane, and a proposal whose resulting text equals the incumbent or an earlier trial
is never made. An operator is tried at most twice on one incumbent: a third draw of the
same idea is rarely worth a trial. Source edits come last, when every config operator is
spent; after that the proposer raises NoProposal.

A defect of training the diagnosis names (a step size far too large or too small, dropout or
weight decay far too strong, too few steps) has its own remedy, proposed first on an incumbent before the bandit draws: a
candidate inherits the incumbent's broken training, so no other edit can be judged until
it is fixed. After one try the remedy competes in the bandit with a strong prior.

Costs (agent.proposing.cost): each edit's training time is predicted from the incumbent's
before it is proposed. An edit whose trial cannot finish within what one trial may take
now (the per-trial timeout, or the budget left if less) is not proposed; a family switch
that does not fit is proposed at fewer channels that do, or not at all. Training steps
are never cut to fit: the screen would then judge a different candidate than the one
proposed, trained less than the incumbent. Among the edits that fit, a bandit draw is
scaled down by half the share of that time the edit would use (one that would use all of
it counts half: a cheaper idea gets more tries from the same budget, a promising costly
one still wins often), and a batch holds only as many members as fit in one process. A
trial that timed out, was killed (memory) or was rejected for train time, latency or
memory spends its operator on that incumbent and counts COST_FAILURE_WEIGHT more failures
in its prior for the rest of the run.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from absl import logging

from agent.editing import config_edit, knobs, space
from agent.editing.config_edit import ConfigEdit, EditError
from agent.proposing import cost
from agent.proposing.bandit import Bandit, Prior
from agent.proposing.diagnosis import diagnose, headline, input_kind
from agent.proposing.operators import OPERATORS, Change, Incumbent, Move, Operator, \
    constructor, run_families
from agent.proposing.proposal import NoProposal, Observation, Proposal
from agent.recording.state import TrialSummary

# Search discipline.
TRIES_PER_INCUMBENT = 2  # an operator rejected this often on the current incumbent is spent
DRAWS_PER_OPERATOR = 3  # fresh random values tried before an operator counts as a duplicate
PRIOR_STRENGTH = 8.0  # pseudo-trials behind a rule's prior weight
BASE_WEIGHT = 0.15  # prior weight of an applicable operator no symptom asked for
COST_FAILURES = frozenset({'timeout', 'killed', 'train_time', 'latency', 'memory'})
COST_FAILURE_WEIGHT = 2.0  # extra prior failures per trial that cost too much, for the run
STRONG = 0.9  # a pick nominated this strongly is proposed alone, never swept aside
SWEEP = ('lr_down', 'lr_up')  # a learning-rate sweep alternates both directions
TUNABLE = frozenset({'optimization', 'regularization', 'capacity', 'architecture',
                     'efficiency', 'schedule'})


# Which operators each symptom nominates, with a prior weight in (0, 1): the chance a
# researcher would give the remedy of being accepted.
RULES: dict[str, dict[str, float]] = {
    'nonfinite': {'lr_down': 0.9, 'clip': 0.85, 'warmup': 0.7, 'normalization_layernorm': 0.5},
    'step_too_large': {'lr_cut': 0.9, 'lr_down': 0.6, 'clip': 0.5, 'warmup': 0.45,
                       'normalization_layernorm': 0.35},
    'step_too_small': {'lr_boost': 0.9, 'lr_up': 0.6, 'steps_up': 0.4},
    'spikes': {'clip': 0.8, 'lr_down': 0.7, 'warmup': 0.6, 'warmup_cosine': 0.5},
    'overfitting': {'wd_up': 0.6, 'dropout_up': 0.6, 'augment_shift': 0.55,
                    'augment_noise': 0.45, 'label_smoothing': 0.4, 'width_down': 0.4,
                    'channels_down': 0.4, 'depth_down': 0.35, 'pooling_max': 0.3,
                    'pooling_mean': 0.25, 'batch_down': 0.3, 'batch_lr_down': 0.25, 'ema': 0.3},
    'underfitting': {'width_up': 0.6, 'channels_up': 0.6, 'depth_up': 0.5, 'lr_up': 0.45,
                     'kernel_up': 0.4, 'normalization_layernorm': 0.4, 'residual_on': 0.35,
                     'downsample': 0.3},
    'over_regularised': {'dropout_cut': 0.9, 'wd_cut': 0.9},
    'undertrained': {'steps_up': 0.7, 'lr_up': 0.5, 'schedule_cosine': 0.45, 'batch_up': 0.35,
                     'batch_lr_up': 0.3, 'schedule_constant': 0.3},
    'noisy_end': {'ema': 0.65, 'schedule_cosine': 0.55, 'schedule_linear': 0.45,
                  'warmup_cosine': 0.45, 'lr_down': 0.4, 'batch_lr_up': 0.4},
    'slow': {'dtype_bf16': 0.6, 'downsample': 0.4},
    'memory': {'remat_on': 0.6, 'batch_down': 0.5, 'dtype_bf16': 0.5},
    'on_accelerator': {'dtype_bf16': 0.55, 'batch_lr_up': 0.4, 'batch_up': 0.3},
    'signal_under_mlp': {'to_cnn1d': 0.95},
    'image_under_mlp': {'to_cnn2d': 0.9},
    'char_lm_transformer': {'width_up': 0.55, 'depth_up': 0.5, 'lr_up': 0.4, 'lr_down': 0.3},
}

# A defect of training the diagnosis names, in order, and its own remedies, tried first. A
# regulariser the config shows far too strong comes before the step size: it also leaves
# the loss at chance, and the config is firmer evidence than the curve's shape.
NAMED = {'over_regularised': ('dropout_cut', 'wd_cut'), 'step_too_large': ('lr_cut',),
         'step_too_small': ('lr_boost',), 'undertrained': ('steps_up',)}

# The purpose a symptom gives its remedies, completing the hypothesis sentence.
_WHY = {
    'nonfinite': 'so training stays finite',
    'step_too_large': 'so the loss can leave chance level',
    'step_too_small': 'so training makes progress at a normal pace',
    'spikes': 'to damp the loss spikes',
    'overfitting': 'to curb overfitting',
    'underfitting': 'so the model can fit the training set better',
    'undertrained': 'so training gets further before it stops',
    'over_regularised': 'so the regulariser stops holding the model back',
    'noisy_end': 'so the evaluated weights settle instead of wandering around the minimum',
    'slow': 'to cut step time',
    'memory': 'to cut peak memory',
    'on_accelerator': 'to use the accelerator\'s matrix units and memory better',
    'signal_under_mlp': 'to exploit the locality and shift structure of the 1-D signal',
    'image_under_mlp': 'to exploit the 2-D structure of the images',
    'char_lm_transformer': 'to give the language model a better capacity or step size',
}


def prior(weight: float, cost_failures: int = 0) -> Prior:
  """Beta prior with mean about `weight`, worth PRIOR_STRENGTH pseudo-trials, and
  COST_FAILURE_WEIGHT more failures per trial of this run that cost too much."""
  return (1.0 + PRIOR_STRENGTH * weight,
          1.0 + PRIOR_STRENGTH * (1.0 - weight) + COST_FAILURE_WEIGHT * cost_failures)


class HeuristicProposer:
  """Rule-based, bandit-steered proposer; no LLM, no network."""
  name = 'heuristic'

  def __init__(self, stats_path: Path | None = None, seed: int = 0):
    self.stats_path = Path(stats_path) if stats_path is not None else None
    self.seed = seed
    self.bandit = Bandit.load(self.stats_path) if self.stats_path else Bandit()
    self._contexts: dict[tuple, str] = {}  # proposal key -> bandit context it was chosen in
    self._context = ''
    self._first_steps: dict[str, int] = {}

  def propose(self, observation: Observation) -> Proposal:
    """A named defect's remedy, else the bandit's pick among the symptoms' remedies: the
    first that makes a change not yet tried and fits what one trial may take."""
    inc = self._incumbent(observation)
    dataset, findings = _diagnosis(observation, inc)
    self._context = f'{dataset}/{inc.family}'
    rng = np.random.default_rng([self.seed, observation.trial])
    weights = _weights(findings)
    tried = _tried_texts(observation)
    uses = _uses_on_incumbent(observation.history)
    forecast = _forecast(observation, inc)
    for named in (op for f in NAMED if f in findings for op in NAMED[f] if not uses[op]):
      made = _make(OPERATORS[named], inc, rng, tried, observation.experiment, forecast)
      if made:
        return self._proposal(named, made, findings, observation, forecast)
    failures = _cost_failures(observation.history)
    probe = np.random.default_rng([self.seed, observation.trial, 1])
    # Remedies the diagnosis nominates come first, then other config edits, then source
    # edits: a researcher acts on what the curves say before trying things at random.
    tiers = ((False, True), (False, False), (True, None))
    for source, nominated in tiers:
      pool = [op.name for op in OPERATORS.values() if op.source == source
              and uses[op.name] < TRIES_PER_INCUMBENT
              and (not op.requires or op.requires & findings.keys())
              and (nominated is None or (op.name in weights) == nominated)]
      room = _room(pool, inc, forecast, probe)
      while pool:
        name = self.bandit.choose(pool, rng, context=self._context, scale=room, priors={
            n: prior(weights.get(n, BASE_WEIGHT), failures[n]) for n in pool})
        made = _make(OPERATORS[name], inc, rng, tried, observation.experiment, forecast)
        if made:
          return self._proposal(name, made, findings, observation, forecast)
        pool.remove(name)
    within = f' or does not fit in {forecast.limit_seconds:.0f} s' if forecast else ''
    raise NoProposal(f'every applicable operator for {self._context} has been tried on the '
                     f'current incumbent{within}')

  def propose_batch(self, observation: Observation, size: int) -> list[Proposal]:
    """`propose`'s pick and, when it moves a traced knob (the learning rate, weight decay or
    clipping norm), up to size - 1 more draws of the same move: a sweep around the
    incumbent that the loop trains in one process. A pick no symptom strongly asks for
    gives way to a learning-rate sweep (both directions) while the incumbent's rate is
    untried. Other picks come alone."""
    pick = self.propose(observation)
    if size < 2:
      return [pick]
    inc = self._incumbent(observation)
    _, findings = _diagnosis(observation, inc)
    forecast = _forecast(observation, inc)
    estimate = forecast and forecast.estimate()  # traced values leave the cost as it is
    if estimate:
      size = min(size, forecast.members(estimate))
    if _traced(OPERATORS[pick.operator]):
      ops, batch = [pick.operator], [pick]
    elif _sweep_due(pick.operator, findings, observation.history):
      ops, batch = list(SWEEP), []
    else:
      return [pick]
    tried = _tried_texts(observation)
    rng = np.random.default_rng([self.seed, observation.trial, size])
    while len(batch) < size:
      for path, text in (batch[-1].changes.items() if batch else ()):
        tried[path].add(text)
      name = ops[len(batch) % len(ops)]
      made = _make(OPERATORS[name], inc, rng, tried, observation.experiment, forecast)
      if not made:
        break
      batch.append(self._proposal(name, made, findings, observation, forecast))
    return batch if len(batch) > 1 else [pick]

  def learn(self, proposal: Proposal, accepted: bool, gain: float | None) -> None:
    """Counts the verdict (accepted or not; `gain` is not used) in the context the operator
    was chosen in, and saves the stats."""
    context = self._contexts.pop(_key(proposal), self._context)
    self.bandit.update(proposal.operator, accepted, context=context)
    if self.stats_path:
      try:
        self.bandit.save(self.stats_path)
      except OSError as e:  # lost statistics are not worth a lost run
        logging.warning('Cannot save proposer stats to %s: %s', self.stats_path, e.strerror)

  def _proposal(self, name: str, made: tuple[Change, dict[str, str]],
                findings: Mapping[str, str], observation: Observation,
                forecast: cost.Forecast | None) -> Proposal:
    """The proposal, remembered with the bandit context it was chosen in."""
    change, changes = made
    estimate = forecast and forecast.estimate(change.edits)
    proposal = _proposal(name, change, changes, findings, observation,
                         estimate.describe(forecast.limit_seconds) if estimate else '')
    self._contexts[_key(proposal)] = self._context
    return proposal

  def _incumbent(self, observation: Observation) -> Incumbent:
    if observation.experiment not in observation.files:
      raise ValueError(f'observation.files lacks the experiment {observation.experiment}')
    values = {k.path: k.value for k in observation.knobs}
    family = str(values.get('model.name', ''))
    steps = values.get('train.steps')
    start = 0
    if _is_int(steps):
      first = self._first_steps.setdefault(observation.experiment, steps)
      earlier = [_steps_in(t.changes.get(observation.experiment)) for t in observation.history]
      start = min([first, steps, *(s for s in earlier if s)])
    families = run_families(observation.files)
    head, signature = constructor(observation.files, families, family)
    device = observation.scorecard.get('device')
    platform = str(device.get('platform', 'cpu')) if isinstance(device, Mapping) else 'cpu'
    model_keys = [p.partition('.')[2] for p in values if p.startswith('model.')]
    return Incumbent(observation.files[observation.experiment], values, family, signature,
                     observation.files, start, families, head, platform=platform,
                     input_kind=input_kind(observation.scorecard),
                     roles=space.roles([*model_keys, *signature]))


def _diagnosis(observation: Observation, inc: Incumbent) -> tuple[str, dict[str, str]]:
  """The dataset's name and the symptoms the incumbent's scorecard shows."""
  dataset = str(inc.values.get('dataset.name', observation.scorecard.get('task', '?')))
  return dataset, diagnose(observation.scorecard, dataset=dataset, family=inc.family,
                           memory_cap_mb=observation.charter.tradeoffs.max_memory_mb)


def _forecast(observation: Observation, inc: Incumbent) -> cost.Forecast | None:
  """Prices the incumbent's candidates; None when its scorecard cannot say."""
  limit = cost.trial_limit(observation.charter, observation.budget_left_seconds)
  return cost.Forecast.of(observation.scorecard, inc.values,
                          lambda family: constructor(inc.files, inc.families, family)[1], limit)


def _room(pool: Sequence[str], inc: Incumbent, forecast: cost.Forecast | None,
          probe: np.random.Generator) -> dict[str, float] | None:
  """Per operator, 1 - half the share of one trial's time its edit would use, from a draw of
  its own generator (so that the proposal's draws stay those made without a forecast)."""
  if forecast is None:
    return None
  room = {}
  for name in pool:
    op = OPERATORS[name]
    try:
      change = None if op.source else _fitting(op, inc, probe, op.build(inc, probe), forecast)
    except EditError:
      change = None
    room[name] = 1.0 - forecast.share(forecast.estimate(change.edits if change else ())) / 2
  return room


def _proposal(name: str, change: Change, changes: dict[str, str], findings: Mapping[str, str],
              observation: Observation, costs: str = '') -> Proposal:
  """The words around an edit: the symptoms that nominated it first, then the others, and
  its predicted cost."""
  card = observation.scorecard
  reasons = sorted((f for f in findings if name in RULES[f]), key=lambda f: -RULES[f][name])
  metric = (card.get('metric') or {}).get('name', 'metric')
  others = [findings[f] for f in findings if f not in reasons]
  if not reasons:
    others.append(f'no symptom points at a specific remedy, so {name} is exploration')
  better = 'up' if observation.direction == 'max' else 'down'
  return Proposal(
      operator=name,
      diagnosis='; '.join([headline(card), *(findings[f] for f in reasons), *others]),
      hypothesis=f'{change.what} {_WHY[reasons[0]] if reasons else change.why}',
      expected_effect=change.expected.format(
          metric=metric, better=better, unit=' points' if metric == 'accuracy' else '%')
      + (f'; {costs}' if costs else ''),
      changes=changes)


def _make(op: Operator, inc: Incumbent, rng: np.random.Generator,
          tried: Mapping[str, set[str]], experiment: str,
          forecast: cost.Forecast | None = None) -> tuple[Change, dict[str, str]] | None:
  """The operator's first draw whose result is new, or None (inapplicable, duplicate, or
  too costly to finish)."""
  for _ in range(DRAWS_PER_OPERATOR):
    try:
      change = _fitting(op, inc, rng, op.build(inc, rng), forecast)
      changes = change and _render(change, inc, experiment)
    except EditError:
      return None
    if not changes:
      return None
    if any(text not in tried.get(path, ()) for path, text in changes.items()):
      return change, changes
  return None


def _fitting(op: Operator, inc: Incumbent, rng: np.random.Generator, change: Change | None,
             forecast: cost.Forecast | None) -> Change | None:
  """The change if its trial fits; else a family switch at the most channels (multiples of
  8) that fit, or None. The family is the hypothesis and its width a detail; any other edit
  that does not fit is dropped, never trained for fewer steps than the incumbent."""
  if not change or not forecast or forecast.fits(forecast.estimate(change.edits)):
    return change
  channels = next((e.value for e in change.edits if e.path == 'model.channels'), None)
  if not (_is_int(channels) and any(e.path == 'model.name' for e in change.edits)):
    return None
  for fewer in range(channels - 8, 7, -8):
    narrow = op.build(dataclasses.replace(inc, channels=(fewer,)), rng)
    if narrow and forecast.fits(forecast.estimate(narrow.edits)):
      return narrow
  return None


def _render(change: Change, inc: Incumbent, experiment: str) -> dict[str, str] | None:
  """The changed files' full texts; None if an edit touches a knob outside TUNABLE."""
  if change.source:
    return {change.source[0]: change.source[1]}
  if any(knobs.categorize(e.path) not in TUNABLE for e in change.edits):
    return None
  return {experiment: _apply_edits(inc.text, change.edits)}


@functools.lru_cache(maxsize=512)
def _apply_edits(text: str, edits: tuple[ConfigEdit, ...]) -> str:
  """Memoised: a deterministic operator is re-rendered on every later proposal, and libcst
  edits cost tens of milliseconds each."""
  return config_edit.apply_edits(text, list(edits))


def _tried_texts(observation: Observation) -> dict[str, set[str]]:
  """Per path, every text a proposal must not reproduce: the incumbent's and earlier trials'."""
  tried: dict[str, set[str]] = collections.defaultdict(set)
  for path, text in observation.files.items():
    tried[path].add(text)
  for trial in observation.history:
    for path, text in trial.changes.items():
      if text is not None:
        tried[path].add(text)
  return tried


def _uses_on_incumbent(history: Sequence[TrialSummary]) -> collections.Counter[str]:
  """How often each operator was tried since the last accepted trial (the incumbent's); one
  whose trial cost too much counts as spent."""
  since = list(history)
  for i, trial in enumerate(history):
    if trial.accepted:
      since = list(history[i + 1:])
  uses: collections.Counter[str] = collections.Counter()
  for trial in since:
    uses[trial.operator] += TRIES_PER_INCUMBENT if trial.reason_code in COST_FAILURES else 1
  return uses


def _cost_failures(history: Sequence[TrialSummary]) -> collections.Counter[str]:
  """Per operator, the trials of this run that cost too much (timed out, killed, rejected
  for train time, latency or memory)."""
  return collections.Counter(t.operator for t in history if t.reason_code in COST_FAILURES)


def _traced(op: Operator) -> bool:
  return isinstance(op.build, Move) and op.build.path in space.TRACED


def _sweep_due(pick: str, findings: Mapping[str, str], history: Sequence[TrialSummary]) -> bool:
  """A learning-rate sweep replaces a pick no symptom strongly asks for while the incumbent's
  learning rate is untried: a batch of rates costs about one trial, and the rate that suited
  the last incumbent (another family, width or depth) is the first thing a researcher
  re-tunes."""
  if (_weights(findings).get(pick, BASE_WEIGHT) >= STRONG
      or any(pick in remedies for remedies in NAMED.values())):
    return False
  uses = _uses_on_incumbent(history)
  return not any(uses[name] for name in OPERATORS if _traced(OPERATORS[name])
                 and OPERATORS[name].build.path == 'optimizer.learning_rate')


def _weights(findings: Mapping[str, str]) -> dict[str, float]:
  """Each operator's strongest nomination among the symptoms found."""
  weights: dict[str, float] = {}
  for finding in findings:
    for op, weight in RULES[finding].items():
      weights[op] = max(weights.get(op, 0.0), weight)
  return weights


def _key(proposal: Proposal) -> tuple:
  return proposal.operator, tuple(sorted(proposal.changes.items(), key=lambda kv: kv[0]))


# ----------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=256)
def _steps_in(text: str | None) -> int | None:
  """train.steps of an experiment text, if it has a literal one."""
  if text is None:
    return None
  try:
    module = config_edit.parse_module(text)
    for path, stmt in config_edit.config_assignments(module):
      if path == 'train.steps':
        value = config_edit.literal_value(stmt.body[0].value)
        return value if _is_int(value) else None
  except EditError:
    return None
  return None


def _is_int(value: object) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)
