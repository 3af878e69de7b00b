"""The bwrap sandbox against the attack that worked without it, with real processes.

One stdlib-only child (`python -S -I`) records what it can see and do; the tests below judge
its report. Separate children cover what needs its own run: the network, orphans, killing
bwrap, exit codes and JAX.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from pathlib import Path

import pytest

from agent.safety import sandbox

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ENV = {'PATH': os.environ.get('PATH', '/usr/bin:/bin')}  # no canary, nothing of the parent
needs_bwrap = pytest.mark.skipif(sandbox.available() is not None,
                                 reason=f'no bwrap sandbox here: {sandbox.available()}')

# Reports what the sandbox lets it see and do; every attempt becomes 'ok' or an errno name.
PROBE = r"""
import ctypes, errno, json, os, socket, sys
a = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)

def attempt(action):
  try:
    action()
    return 'ok'
  except OSError as e:
    return errno.errorcode.get(e.errno, str(e.errno))

def call(result):
  if result != 0:
    raise OSError(ctypes.get_errno(), 'failed')

def write(path, mode='w'):
  with open(path, mode) as f:
    f.write('written inside')

def environ(pid):
  try:
    with open(f'/proc/{pid}/environ', 'rb') as f:
      return f.read()
  except OSError:
    return b''

pids = [p for p in os.listdir('/proc') if p.isdigit()]
print(json.dumps({
    'exists': {p: os.path.exists(p) for p in a['absent']},
    'listing': {p: sorted(os.listdir(p)) if os.path.isdir(p) else None for p in a['listed']},
    'append_ro': attempt(lambda: write(a['ro_file'], 'a')),
    'create_ro': attempt(lambda: write(a['ro_dir'] + '/new')),
    'write_rw': attempt(lambda: write(a['rw_file'])),
    'write_tmp': attempt(lambda: write('/tmp/' + a['tmp_name'])),
    'hidden': {p: sorted(os.listdir(p)) if os.path.isdir(p) else attempt(lambda: open(p).read())
               for p in a['hidden']},
    'write_hidden': attempt(lambda: write(a['hidden'][0] + '/new')),
    'pids': pids,
    'canary_in': [p for p in pids if a['canary'].encode() in environ(p)],
    'mount': attempt(lambda: call(libc.mount(b'none', a['rw_dir'].encode(), b'tmpfs', 0, None))),
    'remount_rw': attempt(lambda: call(libc.mount(None, a['ro_dir'].encode(), None,
                                                  32 | 4096, None))),  # MS_REMOUNT | MS_BIND
    'umount': attempt(lambda: call(libc.umount2(a['hidden'][0].encode(), 0))),
    'userns': attempt(lambda: call(libc.unshare(0x10000000))),  # CLONE_NEWUSER
    'connect': attempt(lambda: socket.create_connection(('127.0.0.1', a['port']), 5).close()),
    'home': os.environ.get('HOME'), 'tmpdir': os.environ.get('TMPDIR'), 'cwd': os.getcwd(),
}))
"""
HEARTBEAT = """
import os, sys, time
beat, orphan = sys.argv[1], sys.argv[2] == 'orphan'
if not orphan or os.fork() == 0:
  if orphan:
    os.setsid()
  while True:
    with open(beat, 'a') as f:
      f.write('.')
    time.sleep(0.05)
while not os.path.exists(beat):
  time.sleep(0.01)
"""


def _run(code: str, mounts: sandbox.Mounts, *args: str, network: bool = False,
         env: dict[str, str] = ENV, flags: tuple[str, ...] = ('-S', '-I')
         ) -> subprocess.CompletedProcess:
  argv, _ = sandbox.wrap([PYTHON, *flags, '-c', code, *args], mounts, network=network)
  return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def _beating(path: Path, over_s: float = 0.4) -> bool:
  """Whether something still appends to path."""
  size = path.stat().st_size
  time.sleep(over_s)
  return path.stat().st_size != size


def _wait_for(path: Path, timeout_s: float = 30) -> None:
  deadline = time.monotonic() + timeout_s
  while not path.exists():
    assert time.monotonic() < deadline, f'{path} never appeared'
    time.sleep(0.02)


@pytest.fixture(scope='module')
def box(tmp_path_factory) -> dict:
  """Host folders for the mounts: ro/ (with a hidden secret/ inside), rw/."""
  base = tmp_path_factory.mktemp('box')
  (base / 'ro' / 'secret').mkdir(parents=True)
  (base / 'ro' / 'labels.txt').write_bytes(b'test labels\n')
  (base / 'ro' / 'secret' / 'key.txt').write_text('secret')
  (base / 'ro' / 'probe_mod.py').write_text('X = 7\n')
  (base / 'rw').mkdir()
  return {'ro': base / 'ro', 'rw': base / 'rw', 'secret': base / 'ro' / 'secret',
          'mounts': sandbox.Mounts((base / 'ro',), (base / 'rw',), (base / 'ro' / 'secret',))}


@pytest.fixture(scope='module')
def seen(box) -> dict:
  """What the probe child saw, with a canary process and a host /tmp file it must not see."""
  canary = f'SANDBOX_CANARY_{uuid.uuid4().hex}'
  host_tmp = Path('/tmp') / f'sandbox-host-{uuid.uuid4().hex}'
  host_tmp.write_text('host only')
  witness = subprocess.Popen(['sleep', '60'], env={**ENV, 'CANARY': canary})
  listener = socket.create_server(('127.0.0.1', 0))
  pydoc_data = Path(sysconfig.get_paths()['stdlib']) / 'pydoc_data'
  etc_secret = next((p for p in (Path('/etc/shadow'), Path('/etc/gshadow')) if p.exists()), None)
  checkout = [ROOT / 'harness' / 'steps.py', ROOT / '.git', ROOT / 'agent', ROOT / 'tests']
  args = {
      'absent': [str(p) for p in checkout if p.exists()] + [str(host_tmp)],
      'listed': ['/', '/tmp', str(Path.home()), str(ROOT)],
      'ro_dir': str(box['ro']), 'ro_file': str(box['ro'] / 'labels.txt'),
      'rw_dir': str(box['rw']), 'rw_file': str(box['rw'] / 'out.txt'),
      'tmp_name': f'sandbox-child-{uuid.uuid4().hex}',
      'hidden': [str(box['secret']), str(pydoc_data), *([str(etc_secret)] if etc_secret else [])],
      'canary': canary, 'port': listener.getsockname()[1]}
  mounts = sandbox.Mounts(box['mounts'].read_only, box['mounts'].writable,
                          (box['secret'], pydoc_data), chdir=box['ro'])
  try:
    deadline = time.monotonic() + 10  # the canary is in a host /proc, once sleep has started
    while canary.encode() not in Path(f'/proc/{witness.pid}/environ').read_bytes():
      assert time.monotonic() < deadline
      time.sleep(0.01)
    result = _run(PROBE, mounts, json.dumps(args))
  finally:
    witness.kill()
    witness.wait()
    listener.close()
    host_tmp.unlink()
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout)
  return {**report, 'args': args}


@needs_bwrap
def test_only_the_allow_list_is_visible(seen):
  assert str(ROOT / 'harness' / 'steps.py') in seen['exists']  # there on the host
  assert not any(seen['exists'].values()), seen['exists']
  visible = [p for path in (*sandbox._python_dirs(), Path(seen['args']['ro_dir']),
                            Path(seen['args']['rw_dir'])) for p in sandbox._names(path)]
  system = {'usr', 'bin', 'sbin', 'lib', 'lib32', 'lib64', 'libx32', 'etc', 'sys', 'proc',
            'dev', 'tmp'}
  for folder, listing in seen['listing'].items():  # '/', '/tmp', $HOME, the checkout
    expected = {p.relative_to(folder).parts[0] for p in visible
                if p != Path(folder) and p.is_relative_to(folder)}
    expected |= system if folder == '/' else set()
    assert listing is None or set(listing) <= expected, (folder, listing)


@needs_bwrap
def test_read_only_mounts_cannot_be_written(seen, box):
  assert seen['append_ro'] == 'EROFS' and seen['create_ro'] == 'EROFS'
  assert (box['ro'] / 'labels.txt').read_bytes() == b'test labels\n'
  assert not (box['ro'] / 'new').exists()


@needs_bwrap
def test_writable_mount_is_written_through(seen, box):
  assert seen['write_rw'] == 'ok'
  assert (box['rw'] / 'out.txt').read_text() == 'written inside'


@needs_bwrap
def test_tmp_is_private_and_home(seen):
  assert seen['write_tmp'] == 'ok'
  assert not (Path('/tmp') / seen['args']['tmp_name']).exists()  # and the host's isn't inside
  assert seen['home'] == seen['tmpdir'] == '/tmp'
  assert seen['cwd'] == seen['args']['ro_dir']


@needs_bwrap
def test_hidden_folders_look_empty_and_etc_secrets_are_unreadable(seen):
  hidden = seen['hidden']
  folders = {p: v for p, v in hidden.items() if not p.startswith('/etc/')}
  assert folders and all(v == [] for v in folders.values()), hidden
  assert all(v == 'EACCES' for p, v in hidden.items() if p.startswith('/etc/')), hidden
  assert seen['write_hidden'] == 'EROFS'


@needs_bwrap
def test_proc_shows_only_the_sandbox(seen):
  assert len(seen['pids']) <= 2, seen['pids']  # bwrap's PID 1 and the probe
  assert seen['canary_in'] == []


@needs_bwrap
def test_mounts_cannot_be_changed_nor_user_namespaces_created(seen):
  assert seen['mount'] == seen['remount_rw'] == 'EPERM'
  assert seen['umount'] in ('EPERM', 'EINVAL')
  if sandbox._bwrap()[1]:  # --disable-userns
    assert seen['userns'] != 'ok'


@needs_bwrap
def test_network_is_off_unless_asked_for(seen, box):
  assert seen['connect'] != 'ok'
  with socket.create_server(('127.0.0.1', 0)) as listener:
    code = ('import socket, sys\n'
            'socket.create_connection(("127.0.0.1", int(sys.argv[1])), 5).close()')
    result = _run(code, box['mounts'], str(listener.getsockname()[1]), network=True)
  assert result.returncode == 0, result.stderr


@needs_bwrap
def test_an_orphan_dies_with_the_child(box):
  beat = box['rw'] / 'orphan.beat'
  result = _run(HEARTBEAT, box['mounts'], str(beat), 'orphan')
  assert result.returncode == 0, result.stderr
  time.sleep(0.2)  # the namespace is torn down just after bwrap exits
  assert not _beating(beat)


@needs_bwrap
@pytest.mark.parametrize('sig', [signal.SIGKILL, signal.SIGTERM])
def test_killing_bwrap_kills_the_sandbox(box, sig):
  beat = box['rw'] / f'killed-{sig.name}.beat'
  argv, _ = sandbox.wrap([PYTHON, '-S', '-I', '-c', HEARTBEAT, str(beat), 'child'],
                         box['mounts'])
  proc = subprocess.Popen(argv, env=ENV, start_new_session=True)
  try:
    _wait_for(beat)
    assert _beating(beat)
    os.killpg(proc.pid, sig)  # as the executor does: --new-session keeps the child out of it
    assert proc.wait(30) == -sig
  finally:
    proc.kill()
    proc.wait()
  time.sleep(0.2)
  assert not _beating(beat)


@needs_bwrap
@pytest.mark.parametrize('code, returncode', [('raise SystemExit(3)', 3),
                                              ('import os; os.kill(os.getpid(), 9)', 128 + 9)])
def test_exit_status_comes_through(box, code, returncode):
  assert _run(code, box['mounts']).returncode == returncode


@needs_bwrap
def test_jax_runs_and_hidden_packages_do_not_import(box):
  purelib = Path(sysconfig.get_paths()['purelib'])
  assert (purelib / 'sklearn').is_dir() and (purelib / 'mnist1d').is_dir()  # dependencies
  mounts = sandbox.Mounts(box['mounts'].read_only, box['mounts'].writable,
                          (purelib / 'sklearn', purelib / 'mnist1d'), chdir=box['ro'])
  code = ('import probe_mod, jax\n'
          'print(float(jax.numpy.ones(3).sum()) + probe_mod.X)\n'
          'for name in ("sklearn.datasets", "mnist1d.data"):\n'
          '  try:\n'
          '    __import__(name)\n'
          '    print(name, "imported")\n'
          '  except ImportError:\n'
          '    pass\n')
  env = {**ENV, 'PYTHONPATH': str(box['ro']), 'JAX_PLATFORMS': 'cpu'}
  result = _run(code, mounts, env=env, flags=())
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ['10.0']


def test_wrap_refuses_without_bwrap(monkeypatch, box):
  monkeypatch.setattr(sandbox, '_bwrap', lambda: ('', False, 'bubblewrap (bwrap) is not installed'))
  assert sandbox.available() == 'bubblewrap (bwrap) is not installed'
  with pytest.raises(sandbox.Unavailable, match='not installed'):
    sandbox.wrap([PYTHON], box['mounts'])


def test_a_failing_bwrap_is_explained():
  assert sandbox._probe('/bin/false', hardened=True).startswith('bwrap fails here (exit code 1)')


@needs_bwrap
def test_missing_mounts_are_refused(tmp_path):
  with pytest.raises(ValueError, match='does not exist'):
    sandbox.wrap([PYTHON], sandbox.Mounts((tmp_path / 'absent',), ()))
