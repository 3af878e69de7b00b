"""Writes journal.sqlite and expected.json here with the agent of commit ea9747f (before the
typed records), so tests/test_records.py can check that journals written then still read.

Run from the repository root: `.venv/bin/python -m tests.data.journal_v1.make`. It runs the
simulated loop of tests/test_agent_loop.py in three sessions of one review-required run:
a failed proposal (with its LLM usage), a guard rejection, a winner rejected in review, a
winner approved in review, a change rejected on noise, a shared-code change that breaks
another experiment (judged elsewhere), then the final evaluation and run_finished.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
import tempfile
from pathlib import Path

from agent.charter import load_charter
from agent.editing import config_edit
from agent.loop import Loop
from agent.recording import report, review
from agent.recording.state import RunState
from tests.agent_workspace import TINY_EXPERIMENT
from tests.test_agent_loop import FailingThenScripted, ScriptedProposer, make_loop, set_lr, touch
from tests.test_audit import FinalRunner

HERE = Path(__file__).resolve().parent


class Runner(FinalRunner):
  """A candidate run on another experiment breaks there."""

  def __call__(self, spec, scorer=None, on_curve=None):
    outcome = super().__call__(spec, scorer, on_curve)
    if spec.experiment != TINY_EXPERIMENT and spec.workdir.name == 'candidate':
      return dataclasses.replace(outcome, status='invalid', scorecard=None,
                                 reason='invariant broken (probe_causal): reads ahead')
    return outcome


def shared(obs):
  return ('models/layers.py', obs.files['models/layers.py'] + '\n# shared note\n')


class SharedAndLr(ScriptedProposer):
  def propose(self, observation):
    proposal = super().propose(observation)
    if proposal.operator != 'shared':
      return proposal
    changes = {'models/layers.py': observation.files['models/layers.py'] + '\n# shared\n',
               observation.experiment: config_edit.set_value(
                   observation.files[observation.experiment], 'optimizer.learning_rate', 5e-2)}
    return dataclasses.replace(proposal, changes=changes)


def state_of(journal) -> dict:
  state = RunState.replay(journal)
  return json.loads(json.dumps(dataclasses.asdict(state), default=str))


def main() -> None:
  runner = Runner(effect_per_lr={1e-2: 0.05, 2e-2: 0.08, 2.1e-2: 0.0801, 5e-2: 0.12})
  with tempfile.TemporaryDirectory() as tmp:
    first = FailingThenScripted([('escape', touch('harness/train.py')), ('lr_up', set_lr(1e-2))],
                                tokens_per_call=100)
    repo, loop, journal = make_loop(Path(tmp), first, runner, trials=6, review='required')
    first.on_usage = loop.record_usage
    loop.end_session(loop.run())
    review.decide(journal, repo, loop.run_dir, 3, approved=False, why='too slow', reviewer='bob')
    for steps, decision in (([('lr_up_more', set_lr(2e-2))], True),
                            ([('lr_nudge', set_lr(2.1e-2)), ('shared', shared)], None)):
      loop = Loop(repo, loop.run_dir, load_charter(repo / 'WORKSPACE.md'), SharedAndLr(steps),
                  journal, RunState.replay(journal), execute=runner, print_fn=lambda _: None)
      reason = loop.run()
      if decision is None:
        loop.final_evaluation()
        journal.append('run_finished', {'reason': reason})
      loop.end_session(reason)
      if decision is not None:
        review.decide(journal, repo, loop.run_dir, 4, approved=True, why='fine',
                      reviewer='alice')
    expected = {'state': state_of(journal), 'status': report.status(journal),
                'log': report.log(journal),
                'summary': report.summary(journal, 'agent/r1', 'RUN'),
                'kinds': sorted({r.kind for r in journal.records()})}
    journal.close()
    source = loop.run_dir / 'journal.sqlite'
    sqlite3.connect(source).execute('PRAGMA wal_checkpoint(TRUNCATE)').connection.close()
    target = HERE / 'journal.sqlite'
    target.unlink(missing_ok=True)
    shutil.copy(source, target)
    (HERE / 'expected.json').write_text(json.dumps(expected, indent=1, sort_keys=True) + '\n')


if __name__ == '__main__':
  main()
