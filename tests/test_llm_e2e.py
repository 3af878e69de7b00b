"""`agent.main run --proposer=llm` end to end: the real CLI and SDK clients against a replay
server on 127.0.0.1, real (tiny) trials, for both APIs.

Trial 1: the model's first answer is malformed, its retry is a well-formed diff that runs
(and loses: a learning rate of 1e-5, so no confirmation runs are spent on it).
Trial 2: the endpoint answers 500, then a diff to harness/train.py, which the guard refuses.
"""

from __future__ import annotations

import json

import pytest

from agent.recording.journal import Journal
from tests.agent_workspace import TINY_EXPERIMENT, make_workspace
from tests.llm_replay_server import Reply, ReplayServer
from tests.test_agent_e2e import agent

KEY = 'sk-e2e-secret-7e57'
HEAD = """\
DIAGNOSIS: {d}
HYPOTHESIS: {h}
EXPECTED EFFECT: {e}
OPERATOR: {o}
"""
GOOD = HEAD.format(d='the val loss is noisy', h='a smaller step is steadier',
                   e='val accuracy up', o='lr_down') + f"""
{TINY_EXPERIMENT}
<<<<<<< SEARCH
  config.optimizer.learning_rate = 3e-3
=======
  config.optimizer.learning_rate = 1e-5
>>>>>>> REPLACE
"""
OUT_OF_SCOPE = HEAD.format(d='evaluation is sparse', h='evaluate every step',
                           e='smoother curves', o='eval_more') + """
```diff
--- a/harness/train.py
+++ b/harness/train.py
@@ -1,1 +1,1 @@
-x
+y
```
"""


@pytest.mark.parametrize('api', ['openai', 'anthropic'])
def test_llm_run_end_to_end(tmp_path, monkeypatch, api):
  repo = make_workspace(tmp_path)
  monkeypatch.setenv('E2E_LLM_KEY', KEY)
  with ReplayServer() as server:
    server.queue(Reply('Lower it, I think.', input_tokens=900, output_tokens=10),
                 Reply(GOOD, input_tokens=1000, output_tokens=80),
                 Reply('overloaded', status=500),
                 Reply(OUT_OF_SCOPE, input_tokens=1100, output_tokens=90))
    base = f'{server.url}/v1' if api == 'openai' else server.url
    result = agent(repo, 'run', f'--experiment={TINY_EXPERIMENT}', '--budget_trials=2',
                   '--seeds=2', '--run_id=llm', '--nofinal_eval', '--proposer=llm',
                   f'--llm_api={api}', f'--llm_base_url={base}', '--llm_model=replay',
                   '--llm_api_key_env=E2E_LLM_KEY', '--llm_price_input=3',
                   '--llm_price_output=15', '--budget_tokens=100000')
  assert result.returncode == 0, result.stderr[-2000:]
  assert all(r.key() == KEY for r in server.requests) and len(server.requests) == 4
  assert 'DIAGNOSIS' in server.requests[1].text() and 'Lower it' in server.requests[1].text()

  journal = Journal.open(repo / 'runs/llm/journal.sqlite')
  proposal = journal.last('proposal', trial=1).payload
  assert proposal['operator'] == 'llm:lr_down'
  assert journal.last('trial_finished', trial=1).payload['wall_seconds'] > 0  # it really ran
  rejected = journal.last('guard_rejected', trial=2).payload
  assert 'harness/train.py' in rejected['rationale']
  usage = [(r.trial, r.payload['outcome'], r.payload['input_tokens'])
           for r in journal.records('llm_usage')]
  assert usage == [(1, 'malformed', 900), (1, 'ok', 1000), (2, 'http_error', 0), (2, 'ok', 1100)]
  status = agent(repo, 'status', '--run_id=llm').stdout
  assert 'LLM: 4 calls, 3180 tokens (budget 100000)' in status
  assert agent(repo, 'verify', '--run_id=llm').returncode == 0

  # The key reached the endpoint and nothing else: not the journal, not a trial's files.
  for path in (repo / 'runs').rglob('*'):
    if path.is_file():
      assert KEY.encode() not in path.read_bytes(), path
  config = journal.records('run_started')[0].payload['config']
  assert config['llm']['key_env'] == 'E2E_LLM_KEY' and KEY not in json.dumps(config)


def test_an_llm_run_without_its_endpoint_is_one_line_and_exit_2(tmp_path):
  repo = make_workspace(tmp_path)
  result = agent(repo, 'run', f'--experiment={TINY_EXPERIMENT}', '--proposer=llm',
                 '--llm_model=m')
  assert result.returncode == 2 and result.stderr.count('\n') == 1
  assert 'needs --llm_base_url and --llm_model' in result.stderr
  assert not (repo / 'runs').exists()  # nothing was started, nothing to clean up
