"""The chat client against a local replay server: real SDKs, real HTTP, no network."""

import socket
import sys

import pytest

from agent.proposing.llm_client import (FailedAttempt, LLMClient, LLMFatalError, LLMUnavailable,
                                        PLACEHOLDER_KEY)
from tests.llm_replay_server import Reply, ReplayServer

KEY = 'sk-test-0123456789abcdef'


@pytest.fixture
def server():
  with ReplayServer() as s:
    yield s


def client(server: ReplayServer, api: str = 'openai', **kwargs) -> LLMClient:
  base = f'{server.url}/v1' if api == 'openai' else server.url
  options = {'key_env': 'TEST_LLM_KEY', 'timeout_s': 2.0, 'max_attempts': 3,
             'backoff_s': 0.01} | kwargs
  return LLMClient(api, base, 'replay-model', **options)


def test_openai_answer_tokens_and_key_header(server, monkeypatch):
  monkeypatch.setenv('TEST_LLM_KEY', KEY)
  server.queue(Reply('an answer', input_tokens=321, output_tokens=45))
  result = client(server).chat('the system', [{'role': 'user', 'content': 'the question'}])
  assert (result.text, result.input_tokens, result.output_tokens) == ('an answer', 321, 45)
  [request] = server.requests
  assert request.path == '/v1/chat/completions'
  assert request.headers['authorization'] == f'Bearer {KEY}'  # OpenAI's way
  assert request.body['model'] == 'replay-model'
  assert request.body['messages'] == [{'role': 'system', 'content': 'the system'},
                                      {'role': 'user', 'content': 'the question'}]


@pytest.mark.parametrize('suffix', ['', '/v1'])
def test_anthropic_answer_tokens_and_key_header(server, monkeypatch, suffix):
  monkeypatch.setenv('TEST_LLM_KEY', KEY)
  server.queue(Reply('an answer', input_tokens=7, output_tokens=3))
  chat = LLMClient('anthropic', server.url + suffix, 'replay-model', key_env='TEST_LLM_KEY')
  result = chat.chat('the system', [{'role': 'user', 'content': 'the question'}])
  assert (result.text, result.input_tokens, result.output_tokens) == ('an answer', 7, 3)
  [request] = server.requests
  assert request.path == '/v1/messages'
  assert request.key() == KEY
  assert request.body['system'] == 'the system'
  assert request.body['messages'] == [{'role': 'user', 'content': 'the question'}]
  assert request.body['max_tokens'] > 0


def test_default_key_variable_and_placeholder_when_unset(server, monkeypatch):
  monkeypatch.setenv('OPENAI_API_KEY', KEY)
  monkeypatch.delenv('ANTHROPIC_API_KEY', raising=False)
  server.queue('one', 'two')
  LLMClient('openai', f'{server.url}/v1', 'm').chat('s', [{'role': 'user', 'content': 'q'}])
  LLMClient('anthropic', server.url, 'm').chat('s', [{'role': 'user', 'content': 'q'}])
  assert server.requests[0].key() == KEY
  assert server.requests[1].key() == PLACEHOLDER_KEY


@pytest.mark.parametrize('api', ['openai', 'anthropic'])
def test_server_error_then_success_is_retried_and_reported(server, api):
  server.queue(Reply('boom', status=500), Reply('rate limited', status=429), 'ok')
  failures: list[FailedAttempt] = []
  result = client(server, api).chat('s', [{'role': 'user', 'content': 'q'}], failures.append)
  assert result.text == 'ok' and len(server.requests) == 3
  assert [f.outcome for f in failures] == ['http_error', 'http_error']
  assert 'HTTP 500' in failures[0].error and 'boom' in failures[0].error


def test_timeout_then_success(server):
  server.queue(Reply('late', delay_s=1.0), 'on time')
  failures: list[FailedAttempt] = []
  result = client(server, timeout_s=0.3).chat('s', [{'role': 'user', 'content': 'q'}],
                                              failures.append)
  assert result.text == 'on time'
  assert [f.outcome for f in failures] == ['timeout']


def test_persistent_server_error_gives_up_after_max_attempts(server):
  server.queue(*[Reply(status=503)] * 5)
  failures: list[FailedAttempt] = []
  with pytest.raises(LLMUnavailable, match=r'failed 3 time\(s\); last: HTTP 503'):
    client(server).chat('s', [{'role': 'user', 'content': 'q'}], failures.append)
  assert len(server.requests) == 3 and len(failures) == 3


def test_connection_refused_is_retryable():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]  # closed when the block ends: nothing listens there
  failures: list[FailedAttempt] = []
  chat = LLMClient('openai', f'http://127.0.0.1:{port}/v1', 'm', max_attempts=2,
                   backoff_s=0.01, timeout_s=2.0)
  with pytest.raises(LLMUnavailable, match='connection failed'):
    chat.chat('s', [{'role': 'user', 'content': 'q'}], failures.append)
  assert [f.outcome for f in failures] == ['http_error', 'http_error']


@pytest.mark.parametrize('api', ['openai', 'anthropic'])
@pytest.mark.parametrize('status', [400, 401, 403, 404])
def test_client_errors_are_fatal_at_once_and_never_show_the_key(server, monkeypatch, api,
                                                                status):
  monkeypatch.setenv('TEST_LLM_KEY', KEY)
  server.queue(Reply(f'Incorrect API key provided: {KEY}.\nSee the docs.', status=status))
  with pytest.raises(LLMFatalError) as raised:
    client(server, api).chat('s', [{'role': 'user', 'content': 'q'}])
  message = str(raised.value)
  assert len(server.requests) == 1
  assert KEY not in message and '\n' not in message
  assert f'HTTP {status}' in message and 'replay-model' in message
  if status in (401, 403):
    assert '$TEST_LLM_KEY' in message


def test_unset_key_is_named_in_an_auth_error(server, monkeypatch):
  monkeypatch.delenv('TEST_LLM_KEY', raising=False)
  server.queue(Reply('no key', status=401))
  with pytest.raises(LLMFatalError, match=r'\$TEST_LLM_KEY is unset'):
    client(server).chat('s', [{'role': 'user', 'content': 'q'}])


def test_key_is_not_kept_where_it_could_be_shown(server, monkeypatch):
  monkeypatch.setenv('TEST_LLM_KEY', KEY)
  chat = client(server)
  assert KEY not in repr(chat) and KEY not in str(vars(chat).values())


def test_bad_arguments_are_one_line_errors():
  with pytest.raises(ValueError, match="unknown LLM API 'gemini'"):
    LLMClient('gemini', 'http://127.0.0.1:1', 'm')
  with pytest.raises(ValueError, match='base URL is empty'):
    LLMClient('openai', '', 'm')
  with pytest.raises(ValueError, match='model name is empty'):
    LLMClient('openai', 'http://127.0.0.1:1/v1', '')


@pytest.mark.parametrize('api', ['openai', 'anthropic'])
def test_a_missing_sdk_names_the_extra_to_install(monkeypatch, api):
  monkeypatch.setitem(sys.modules, api, None)  # import fails as if not installed
  with pytest.raises(ValueError, match=f"the {api} SDK is not installed; .* 'llm' extra: "
                                       f'pip install {api}$'):
    LLMClient(api, 'http://127.0.0.1:1', 'm')
