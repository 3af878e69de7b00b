"""Headless Chromium for tests: load a page, read what a person would see, collect its errors.

    with Browser() as browser:          # skips the test (pytest.skip) when no Chromium
      page = browser.open(url)          # waits for the load event
      page.eval('document.title')       # any JS expression; promises are awaited
      page.query('svg')                 # every match, shadow roots included: tag, text, box
      page.wait_for('document.querySelectorAll("svg").length > 0')
      page.console_errors               # console.error, uncaught exceptions, Log errors
      page.requests                     # every URL the page asked for

It speaks the DevTools protocol over a websocket (websocket-client) to Debian's `chromium`
started with `--headless --remote-debugging-port=0` on 127.0.0.1 (the port it picked is
read from DevToolsActivePort, so parallel tests never race for one). By default the browser
resolves no host but 127.0.0.1/localhost: a page that reaches for the network at view time
(a CDN script, a web font) fails to load it, and the failure is a console error.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import websocket

BINARIES = ('chromium', 'chromium-browser', 'google-chrome', 'headless_shell')
START_TIMEOUT_S = 30.0

# Every element matching a selector, searching open shadow roots too (TensorBoard's
# Polymer and Angular components keep their content there).
_DEEP_QUERY = """(selector) => {
  const found = [];
  const visit = (root) => {
    root.querySelectorAll(selector).forEach((e) => found.push(e));
    root.querySelectorAll('*').forEach((e) => { if (e.shadowRoot) visit(e.shadowRoot); });
  };
  visit(document);
  return found.map((e) => {
    const box = e.getBoundingClientRect();
    return {tag: e.tagName.toLowerCase(), id: e.id, text: (e.textContent || '').trim(),
            width: box.width, height: box.height};
  });
}"""


class BrowserError(RuntimeError):
  """The browser did not start, or the protocol answered with an error."""


def chromium_binary() -> str | None:
  """The Chromium on PATH, or None (`.ci/run` and `make test` install Debian's)."""
  return next((path for path in map(shutil.which, BINARIES) if path), None)


class Page:
  """One tab, driven over its own DevTools websocket."""

  def __init__(self, ws_url: str, timeout_s: float):
    self.timeout_s = timeout_s
    self.console_errors: list[str] = []
    self.requests: list[str] = []
    self._ws = websocket.create_connection(ws_url, timeout=timeout_s, suppress_origin=True)
    self._next_id = 0
    self._events: list[str] = []
    for domain in ('Page', 'Runtime', 'Log', 'Network'):
      self.call(f'{domain}.enable')

  def call(self, method: str, **params: Any) -> dict[str, Any]:
    """Sends one protocol command and returns its result; events that arrive meanwhile are
    collected (console errors, requests)."""
    self._next_id += 1
    self._ws.send(json.dumps({'id': self._next_id, 'method': method, 'params': params}))
    while True:
      message = json.loads(self._ws.recv())
      if message.get('id') == self._next_id:
        if 'error' in message:
          raise BrowserError(f'{method}: {message["error"]}')
        return message.get('result', {})
      if 'method' in message:
        self._event(message['method'], message.get('params', {}))

  def _event(self, method: str, params: dict[str, Any]) -> None:
    self._events.append(method)
    if method == 'Runtime.consoleAPICalled' and params.get('type') in ('error', 'assert'):
      words = [str(a.get('value', a.get('description', ''))) for a in params.get('args', [])]
      self.console_errors.append('console.error: ' + ' '.join(words))
    elif method == 'Runtime.exceptionThrown':
      details = params.get('exceptionDetails', {})
      exception = details.get('exception', {})
      self.console_errors.append('exception: ' + str(exception.get('description')
                                                     or details.get('text')))
    elif method == 'Log.entryAdded' and params.get('entry', {}).get('level') == 'error':
      entry = params['entry']
      self.console_errors.append(f"{entry.get('source')}: {entry.get('text')} "
                                 f"{entry.get('url', '')}".strip())
    elif method == 'Network.requestWillBeSent':
      self.requests.append(params.get('request', {}).get('url', ''))

  def navigate(self, url: str) -> None:
    """Loads `url` and returns once its load event fired."""
    self._events.clear()
    result = self.call('Page.navigate', url=url)
    if result.get('errorText'):
      raise BrowserError(f'{url}: {result["errorText"]}')
    deadline = time.monotonic() + self.timeout_s
    while 'Page.loadEventFired' not in self._events:
      if time.monotonic() > deadline:
        raise BrowserError(f'{url}: no load event within {self.timeout_s:.0f} s')
      message = json.loads(self._ws.recv())
      if 'method' in message:
        self._event(message['method'], message.get('params', {}))

  def eval(self, expression: str) -> Any:
    """The value of a JS expression in the page (promises awaited); its exception raises."""
    result = self.call('Runtime.evaluate', expression=expression, returnByValue=True,
                       awaitPromise=True)
    if 'exceptionDetails' in result:
      details = result['exceptionDetails']
      raise BrowserError(f'{expression[:80]}: '
                         f"{details.get('exception', {}).get('description') or details}")
    return result.get('result', {}).get('value')

  def query(self, selector: str) -> list[dict[str, Any]]:
    """Every element matching a CSS selector, shadow roots included: tag, id, text, size."""
    return self.eval(f'({_DEEP_QUERY})({json.dumps(selector)})')

  def wait_for(self, expression: str, timeout_s: float | None = None) -> Any:
    """Polls a JS expression until it is truthy (a page that renders after load)."""
    deadline = time.monotonic() + (timeout_s or self.timeout_s)
    while not (value := self.eval(expression)):
      if time.monotonic() > deadline:
        raise BrowserError(f'not true within {timeout_s or self.timeout_s:.0f} s: '
                           f'{expression[:120]}')
      time.sleep(0.1)
    return value

  def close(self) -> None:
    self._ws.close()


class Browser:
  """A headless Chromium for the length of a `with` block, in a throwaway profile."""

  def __init__(self, offline: bool = True, timeout_s: float = 30.0,
               window: tuple[int, int] = (1280, 1024)):
    self.offline, self.timeout_s, self.window = offline, timeout_s, window
    self.pages: list[Page] = []

  def __enter__(self) -> Browser:
    binary = chromium_binary()
    if binary is None:
      pytest.skip('no Chromium on PATH (apt-get install chromium; `make test` does as root)')
    self._profile = tempfile.TemporaryDirectory(prefix='chromium-')
    profile = Path(self._profile.name)
    args = [binary, '--headless', '--remote-debugging-port=0',
            '--remote-debugging-address=127.0.0.1', f'--user-data-dir={profile}',
            '--no-first-run', '--no-default-browser-check', '--disable-gpu',
            '--disable-extensions', '--disable-dev-shm-usage', '--disable-background-networking',
            '--disable-component-update', '--disable-sync', '--mute-audio',
            f'--window-size={self.window[0]},{self.window[1]}']
    if self.offline:
      args.append('--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost')
    if os.geteuid() == 0:
      args.append('--no-sandbox')  # Chromium's own sandbox refuses to run as root
    self._log = open(profile / 'chromium.log', 'wb')
    self._process = subprocess.Popen([*args, 'about:blank'], stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
    try:
      self._port = self._wait_for_port(profile / 'DevToolsActivePort')
    except BaseException:
      self.__exit__(None, None, None)
      raise
    return self

  def _wait_for_port(self, path: Path) -> int:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
      if self._process.poll() is not None:
        raise BrowserError(f'chromium exited with {self._process.returncode}: '
                           f'{self._log_tail()}')
      lines = path.read_text().splitlines() if path.exists() else []
      if lines and lines[0].isdigit():
        return int(lines[0])
      time.sleep(0.05)
    raise BrowserError(f'chromium did not open its DevTools port: {self._log_tail()}')

  def _log_tail(self) -> str:
    self._log.flush()
    return (Path(self._profile.name) / 'chromium.log').read_text(errors='replace')[-2000:]

  def open(self, url: str) -> Page:
    """A new tab with `url` loaded."""
    request = urllib.request.Request(f'http://127.0.0.1:{self._port}/json/new?about:blank',
                                     method='PUT')
    with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
      target = json.load(response)
    page = Page(target['webSocketDebuggerUrl'], self.timeout_s)
    self.pages.append(page)
    page.navigate(url)
    return page

  def __exit__(self, *exc_info: object) -> None:
    for page in self.pages:
      page.close()
    if self._process.poll() is None:
      os.killpg(self._process.pid, 9)  # its own session: the renderers go with it
    self._process.wait()
    self._log.close()
    self._profile.cleanup()
