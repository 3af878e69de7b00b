"""The offline proposer: diagnose the incumbent from its scorecard, then pick an edit.

It works the way a researcher reads a run: the symptoms (agent.proposing.diagnosis) each
nominate remedies (agent.proposing.operators) with a prior weight; a Thompson-sampling
bandit, whose counts persist across runs per task and model family, picks among them, so
the rules lead and experience corrects them. Numeric values are drawn around the
incumbent from a generator seeded by (seed, trial): a run replays exactly, and repeated
tries do not walk a fixed grid.

Every edit goes through agent.editing.config_edit (or agent.editing.source_edit for model
code) so that the diff a reviewer reads is exactly the change. Only knobs in the tunable
categories are touched (never data, never train.seed), the declared space's bounds keep
values sane, and a proposal whose resulting text equals the incumbent or an earlier trial
is never made. An operator is tried at most twice on one incumbent: a third draw of the
same idea is rarely worth a trial. Source edits come last, when every config operator is
spent; after that the proposer raises NoProposal.
"""

from __future__ import annotations

import collections
import functools
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from absl import logging

from agent.editing import config_edit, knobs, space
from agent.editing.config_edit import ConfigEdit, EditError
from agent.proposing.bandit import Bandit, Prior
from agent.proposing.diagnosis import diagnose, headline
from agent.proposing.operators import OPERATORS, Change, Incumbent, Move, Operator, \
    constructor, run_families
from agent.proposing.proposal import NoProposal, Observation, Proposal
from agent.recording.state import TrialSummary

# Search discipline.
TRIES_PER_INCUMBENT = 2  # an operator rejected this often on the current incumbent is spent
DRAWS_PER_OPERATOR = 3  # fresh random values tried before an operator counts as a duplicate
PRIOR_STRENGTH = 8.0  # pseudo-trials behind a rule's prior weight
BASE_WEIGHT = 0.15  # prior weight of an applicable operator no symptom asked for
TUNABLE = frozenset({'optimization', 'regularization', 'capacity', 'architecture',
                     'efficiency', 'schedule'})


# Which operators each symptom nominates, with a prior weight in (0, 1): the chance a
# researcher would give the remedy of being accepted.
RULES: dict[str, dict[str, float]] = {
    'nonfinite': {'lr_down': 0.9, 'clip': 0.85, 'warmup': 0.7, 'normalization_layernorm': 0.5},
    'spikes': {'clip': 0.8, 'lr_down': 0.7, 'warmup': 0.6},
    'overfitting': {'wd_up': 0.6, 'dropout_up': 0.6, 'width_down': 0.4, 'depth_down': 0.35,
                    'batch_down': 0.3},
    'underfitting': {'width_up': 0.6, 'channels_up': 0.6, 'depth_up': 0.5, 'lr_up': 0.45,
                     'kernel_up': 0.4, 'normalization_layernorm': 0.4, 'residual_on': 0.35},
    'undertrained': {'steps_up': 0.7, 'lr_up': 0.5, 'schedule_cosine': 0.45, 'batch_up': 0.35},
    'slow': {'dtype_bf16': 0.6},
    'memory': {'remat_on': 0.6, 'batch_down': 0.5, 'dtype_bf16': 0.5},
    'signal_under_mlp': {'to_cnn1d': 0.95},
    'image_under_mlp': {'to_cnn2d': 0.9},
    'char_lm_transformer': {'width_up': 0.55, 'depth_up': 0.5, 'lr_up': 0.4, 'lr_down': 0.3},
}

# The purpose a symptom gives its remedies, completing the hypothesis sentence.
_WHY = {
    'nonfinite': 'so training stays finite',
    'spikes': 'to damp the loss spikes',
    'overfitting': 'to curb overfitting',
    'underfitting': 'so the model can fit the training set better',
    'undertrained': 'so training gets further before it stops',
    'slow': 'to cut step time',
    'memory': 'to cut peak memory',
    'signal_under_mlp': 'to exploit the locality and shift structure of the 1-D signal',
    'image_under_mlp': 'to exploit the 2-D structure of the images',
    'char_lm_transformer': 'to give the language model a better capacity or step size',
}


def prior(weight: float) -> Prior:
  """Beta prior with mean about `weight`, worth PRIOR_STRENGTH pseudo-trials."""
  return 1.0 + PRIOR_STRENGTH * weight, 1.0 + PRIOR_STRENGTH * (1.0 - weight)


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
    """The bandit's pick among the symptoms' remedies that make a change not yet tried."""
    inc = self._incumbent(observation)
    dataset, findings = _diagnosis(observation, inc)
    self._context = f'{dataset}/{inc.family}'
    rng = np.random.default_rng([self.seed, observation.trial])
    weights = _weights(findings)
    tried = _tried_texts(observation)
    uses = _uses_on_incumbent(observation.history)
    # Remedies the diagnosis nominates come first, then other config edits, then source
    # edits: a researcher acts on what the curves say before trying things at random.
    tiers = ((False, True), (False, False), (True, None))
    for source, nominated in tiers:
      pool = [op.name for op in OPERATORS.values() if op.source == source
              and uses[op.name] < TRIES_PER_INCUMBENT
              and (not op.requires or op.requires & findings.keys())
              and (nominated is None or (op.name in weights) == nominated)]
      while pool:
        name = self.bandit.choose(pool, rng, context=self._context,
                                  priors={n: prior(weights.get(n, BASE_WEIGHT)) for n in pool})
        made = _make(OPERATORS[name], inc, rng, tried, observation.experiment)
        if made:
          proposal = _proposal(name, *made, findings, observation)
          self._contexts[_key(proposal)] = self._context
          return proposal
        pool.remove(name)
    raise NoProposal(f'every applicable operator for {self._context} has been tried on the '
                     'current incumbent')

  def propose_batch(self, observation: Observation, size: int) -> list[Proposal]:
    """`propose`'s pick and, when it moves a traced knob (the learning rate, weight decay or
    clipping norm), up to size - 1 more draws of the same move: a sweep around the
    incumbent that the loop trains in one process. Other picks come alone."""
    first = self.propose(observation)
    op = OPERATORS[first.operator]
    if size < 2 or not (isinstance(op.build, Move) and op.build.path in space.TRACED):
      return [first]
    inc = self._incumbent(observation)
    _, findings = _diagnosis(observation, inc)
    tried = _tried_texts(observation)
    rng = np.random.default_rng([self.seed, observation.trial, size])
    batch = [first]
    while len(batch) < size:
      for path, text in batch[-1].changes.items():
        tried[path].add(text)
      made = _make(op, inc, rng, tried, observation.experiment)
      if not made:
        break
      batch.append(_proposal(first.operator, *made, findings, observation))
      self._contexts[_key(batch[-1])] = self._context
    return batch

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
    return Incumbent(observation.files[observation.experiment], values, family, signature,
                     observation.files, start, families, head)


def _diagnosis(observation: Observation, inc: Incumbent) -> tuple[str, dict[str, str]]:
  """The dataset's name and the symptoms the incumbent's scorecard shows."""
  dataset = str(inc.values.get('dataset.name', observation.scorecard.get('task', '?')))
  return dataset, diagnose(observation.scorecard, dataset=dataset, family=inc.family,
                           memory_cap_mb=observation.charter.tradeoffs.max_memory_mb)


def _proposal(name: str, change: Change, changes: dict[str, str], findings: Mapping[str, str],
              observation: Observation) -> Proposal:
  """The words around an edit: the symptoms that nominated it first, then the others."""
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
          metric=metric, better=better, unit=' points' if metric == 'accuracy' else '%'),
      changes=changes)


def _make(op: Operator, inc: Incumbent, rng: np.random.Generator,
          tried: Mapping[str, set[str]], experiment: str) -> tuple[Change, dict[str, str]] | None:
  """The operator's first draw whose result is new, or None (inapplicable or duplicate)."""
  for _ in range(DRAWS_PER_OPERATOR):
    try:
      change = op.build(inc, rng)
      changes = change and _render(change, inc, experiment)
    except EditError:
      return None
    if not changes:
      return None
    if any(text not in tried.get(path, ()) for path, text in changes.items()):
      return change, changes
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
  """How often each operator was tried since the last accepted trial (the incumbent's)."""
  since = list(history)
  for i, trial in enumerate(history):
    if trial.accepted:
      since = list(history[i + 1:])
  return collections.Counter(t.operator for t in since)


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
