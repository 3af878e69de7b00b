"""A model the proposers have never seen (examples/own_model: a residual MLP whose knobs are
`hidden`, `blocks`, `drop_rate`, `act`, `use_norm`): the offline proposer finds and edits
them under their own names, and the LLM sees every file the charter's scope names (an LLM run
on it end to end: tests/test_workspace.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from agent.charter import load_charter
from agent.editing import knobs
from agent.proposing import heuristic as h
from agent.proposing.heuristic import HeuristicProposer
from agent.proposing.llm import LLMProposer, scoped_files
from agent.proposing.llm_client import ChatResult
from agent.proposing.proposal import Observation
from tests.agent_workspace import git
from tests.test_heuristic_proposer import card
from tests.test_workspace import EXAMPLE, EXPERIMENT, MODEL, answer

CHARTER = load_charter(EXAMPLE.parents[1] / 'WORKSPACE.md')
FILES = {p: (EXAMPLE / p).read_text() for p in (EXPERIMENT, 'models/__init__.py', MODEL)}
UNDERFIT = card([(100, 1.6, 1.6), (200, 1.5, 1.5), (300, 1.45, 1.45)], task='digits',
                model='resmlp', val_metric=0.5)


def observation(files: dict[str, str] = FILES) -> Observation:
  return Observation(CHARTER, EXPERIMENT, files, knobs.inventory(EXAMPLE / EXPERIMENT),
                     UNDERFIT, 'max', [], 1)


def change(name: str, files: dict[str, str] = FILES):
  inc = HeuristicProposer()._incumbent(observation(files))
  return h.OPERATORS[name].build(inc, np.random.default_rng(0))


def test_the_models_own_knobs_are_found():
  inc = HeuristicProposer()._incumbent(observation())
  assert inc.family == 'resmlp' and inc.head == 'ResidualMLP'
  assert inc.signature == {'hidden': 32, 'blocks': 1, 'expand': 2, 'act': 'relu',
                           'drop_rate': 0.0, 'use_norm': False}
  assert inc.roles == {'model.width': 'model.hidden', 'model.depth': 'model.blocks',
                       'model.activation': 'model.act', 'model.dropout': 'model.drop_rate',
                       'model.normalization': 'model.use_norm'}
  categories = {k.path: k.category for k in observation().knobs if k.section == 'model'}
  assert categories == {'model.name': 'architecture', 'model.hidden': 'capacity',
                        'model.blocks': 'capacity', 'model.act': 'architecture'}


def test_the_operators_edit_them_under_their_own_names():
  edits = {name: [(e.path, e.value, e.op) for e in change(name).edits]
           for name in ('width_up', 'depth_up', 'dropout_up', 'normalization_layernorm',
                        'activation_gelu')}
  assert edits['width_up'][0][:1] == ('model.hidden',) and edits['width_up'][0][1] in (48, 56, 64)
  assert edits['depth_up'][0][0] == 'model.blocks' and edits['depth_up'][0][1] in (2, 3)
  assert edits['dropout_up'][0][0] == 'model.drop_rate' and edits['dropout_up'][0][2] == 'add'
  assert edits['normalization_layernorm'] == [('model.use_norm', True, 'add')]
  assert edits['activation_gelu'] == [('model.act', 'gelu', 'set')]
  proposal = HeuristicProposer(seed=3).propose(observation())
  assert set(proposal.changes) <= {EXPERIMENT, MODEL}


def test_names_and_layers_the_model_does_not_have_are_left_alone():
  no_gelu = {**FILES, MODEL: FILES[MODEL].replace("'gelu': jax.nn.gelu, ", '')}
  assert change('activation_gelu', no_gelu) is None  # it would be a KeyError in the model
  assert change('head_zero_init') is None  # the head class also holds the input projection
  path, text = change('init_he').source
  assert path == MODEL
  block = text[text.index('class Block'):text.index('class ResidualMLP')]
  assert block.count('kernel_init=nnx.initializers.he_normal()') == 2
  assert 'he_normal' not in text[text.index('class ResidualMLP'):]


class Recorder:
  """An LLM client that records the prompt and answers with an edit of a scoped file."""
  api, model = 'openai', 'recorder'

  def __init__(self, answer: str):
    self.answer, self.prompts = answer, []

  def chat(self, system: str, messages: list[dict], on_failure=None) -> ChatResult:
    self.prompts.append(messages[0]['content'])
    return ChatResult(self.answer, 10, 10)


def test_the_llm_sees_every_file_the_charter_scope_names(tmp_path: Path):
  root = tmp_path / 'worktree'
  files = {**FILES, 'models/parts/norms.py': 'SCALE = 1.0\n', 'lib/losses.py': 'EPS = 1e-6\n',
           'experiments/other.py': 'X = 1\n', 'README.md': 'mine\n', 'lib/big.py': 'x\n' * 30000}
  for path, text in files.items():
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(text)
  (root / 'models' / 'untracked.py').write_text('Y = 2\n')
  git(root, 'init', '--quiet')
  git(root, 'add', *files)
  charter = dataclasses.replace(CHARTER, scope=dataclasses.replace(
      CHARTER.scope, editable=(*CHARTER.scope.editable, 'lib/**')))
  scoped = {*FILES, 'models/parts/norms.py', 'lib/losses.py', 'experiments/other.py'}
  assert set(scoped_files(root, charter)) == scoped  # not untracked, out of scope or too big

  client = Recorder(answer('lib/losses.py', 'EPS = 1e-6', 'EPS = 1e-7'))
  proposer = LLMProposer(client)
  proposer.worktree = root
  given = Observation(charter, EXPERIMENT, {EXPERIMENT: FILES[EXPERIMENT]},
                      observation().knobs, UNDERFIT, 'max', [], 1)
  proposal = proposer.propose(given)
  assert all(f'### {path}\n' in client.prompts[0] for path in scoped)
  assert 'README.md' not in client.prompts[0] and 'untracked' not in client.prompts[0]
  assert proposal.changes == {'lib/losses.py': 'EPS = 1e-7\n'}
