"""The charter parser: the shipped charter loads, and every mistake names its Markdown line."""

from pathlib import Path

import pytest

from agent.charter import Charter, CharterError, Scope, load_charter, parse_charter

ROOT = Path(__file__).resolve().parents[1]

PROSE = '# Charter\n\nSome prose.\n\n```python\nx = 1\n```\n\n'  # 8 lines; fence on line 9


def charter(toml: str) -> str:
  """A charter whose settings block starts on line 10."""
  return PROSE + '```toml\n' + toml + '```\n\nTrailing prose.\n'


def error_of(text: str) -> CharterError:
  with pytest.raises(CharterError) as info:
    parse_charter(text, 'WORKSPACE.md')
  assert '\n' not in str(info.value)
  return info.value


def test_shipped_workspace_loads_with_the_documented_defaults():
  loaded = load_charter(ROOT / 'WORKSPACE.md')
  assert loaded == Charter(path=loaded.path, prose=loaded.prose)
  assert loaded.trial.seeds == 3 and loaded.budget.minutes == 10.0
  assert (loaded.acceptance.false_accept, loaded.acceptance.power) == (0.01, 0.8)
  assert (loaded.acceptance.min_effect, loaded.acceptance.max_seeds) == (0.02, 24)
  assert 'What the agent may do' in loaded.prose and '[acceptance]' not in loaded.prose


def test_missing_keys_take_defaults_and_ints_are_fine_for_floats():
  loaded = parse_charter(charter('[acceptance]\nmin_effect = 1\n[trial]\ntimeout_minutes = 5\n'))
  assert loaded.acceptance.min_effect == 1.0 and isinstance(loaded.acceptance.min_effect, float)
  assert loaded.acceptance.false_accept == 0.01
  assert loaded.trial.timeout_minutes == 5.0 and loaded.trial.seeds == 3
  assert loaded.pruning.enabled is True


def test_empty_block_means_all_defaults():
  loaded = parse_charter(charter(''), 'W.md')
  assert loaded == Charter(path='W.md', prose=loaded.prose)


def test_unknown_key_names_its_line():
  text = charter('[trial]\nseeds = 4\n\n[acceptance]\npower = 0.9\nalfa = 0.05\n')
  assert str(error_of(text)) == "WORKSPACE.md:15: unknown key 'acceptance.alfa'"


def test_unknown_section_names_its_header_line():
  assert str(error_of(charter('[trial]\nseeds = 4\n[acceptence]\nalpha = 0.1\n'))) == (
      "WORKSPACE.md:12: unknown section 'acceptence'")


def test_dotted_keys_are_located_too():
  err = error_of(charter('trial.seeds = 4\nacceptance.alfa = 0.1\n'))
  assert str(err) == "WORKSPACE.md:11: unknown key 'acceptance.alfa'"


@pytest.mark.parametrize('line, message', [
    ('seeds = "3"', "'trial.seeds' must be an integer, got '3'"),
    ('seeds = 3.0', "'trial.seeds' must be an integer, got 3.0"),
    ('seeds = true', "'trial.seeds' must be an integer, got True"),
    ('seeds = 1', "'trial.seeds' must be >= 2 (a paired test needs two seeds), got 1"),
    ('timeout_minutes = 0', "'trial.timeout_minutes' must be > 0, got 0"),
    ('timeout_minutes = nan', "'trial.timeout_minutes' must be a finite number, got nan"),
])
def test_wrong_types_and_ranges_name_the_line(line, message):
  err = error_of(charter(f'[budget]\ntrials = 3\n\n[trial]\n{line}\n'))
  assert (err.line, str(err)) == (14, f'WORKSPACE.md:14: {message}')


@pytest.mark.parametrize('section, line', [
    ('acceptance', 'false_accept = 0.5'),
    ('acceptance', 'false_accept = 0'),
    ('acceptance', 'power = 1'),
    ('acceptance', 'power = 0.3'),
    ('acceptance', 'min_effect = 0'),
    ('acceptance', 'max_seeds = 1'),
    ('acceptance', 'max_seeds = 24.0'),
    ('acceptance', 'alpha = 0.05'),  # the fixed rule's keys are gone, not silently ignored
    ('objective', 'direction = "up"'),
    ('objective', 'metric = 3'),
    ('stop', 'patience = 0'),
    ('tradeoffs', 'reject_nonfinite = "yes"'),
    ('pruning', 'min_fraction = 1.5'),
    ('pruning', 'rungs = [0.5, 1.5]'),
    ('pruning', 'rungs = ["half"]'),
    ('pruning', 'rung_keep = 0'),
    ('acceptance', 'min_effect_of_error = 2'),
    ('scope', 'editable = ["/etc/**"]'),
    ('scope', 'protected = "harness/**"'),
    ('scope', 'editable = ["models/\\\\"]'),  # a trailing backslash: not a gitignore glob
])
def test_out_of_range_values_are_rejected(section, line):
  assert error_of(charter(f'[{section}]\n{line}\n')).line == 11


def test_toml_syntax_error_line_is_translated_into_the_file():
  err = error_of(charter('[trial]\nseeds = 3\ntimeout_minutes = = 4\n'))
  assert err.line == 12 and str(err).startswith('WORKSPACE.md:12: ')


def test_duplicate_table_is_a_syntax_error_on_its_line():
  assert error_of(charter('[trial]\nseeds = 3\n[trial]\nseeds = 4\n')).line == 12


def test_no_settings_block():
  assert str(error_of('# Charter\n\n```python\nx = 1\n```\n')) == (
      'WORKSPACE.md: no ```toml block of settings found')


def test_second_block_is_named():
  text = charter('[trial]\nseeds = 3\n') + '\n```toml\n[stop]\npatience = 2\n```\n'
  err = error_of(text)
  assert err.line == 16 and "more than one" in str(err)  # the second opening fence


def test_unterminated_block():
  assert error_of(PROSE + '```toml\n[trial]\nseeds = 3\n').line == 9


def test_toml_fence_inside_another_fence_is_prose():
  text = '````markdown\n```toml\n[trial]\nseeds = 1\n```\n````\n' + charter('')
  assert parse_charter(text).trial.seeds == 3


def test_missing_file_is_a_charter_error(tmp_path):
  with pytest.raises(CharterError, match='cannot read charter'):
    load_charter(tmp_path / 'WORKSPACE.md')


def test_multiline_arrays_become_tuples():
  loaded = parse_charter(charter('[scope]\neditable = [\n  "models/**",\n  "configs/*.py",\n]\n'))
  assert loaded.scope.editable == ('models/**', 'configs/*.py')


def test_lines_after_a_multiline_array_are_still_located():
  text = charter('[scope]\neditable = [\n  "models/**",\n  "x = 1",\n]\nbogus = 1\n')
  assert str(error_of(text)) == "WORKSPACE.md:15: unknown key 'scope.bogus'"


@pytest.mark.parametrize('path, editable', [
    ('models/mlp.py', True),
    ('models/sub/deep/block.py', True),
    ('experiments/digits_mlp.py', True),
    ('./models/mlp.py', True),
    ('models', False),
    ('harness/train.py', False),
    ('agent/charter.py', False),
    ('WORKSPACE.md', False),
    ('pyproject.toml', False),
    ('README.md', False),
    ('/work/main/models/mlp.py', False),
    ('models/../harness/train.py', False),
    ('../models/mlp.py', False),
    ('models\\..\\harness\\x.py', False),
    ('', False),
])
def test_is_editable_with_default_scope(path, editable):
  assert Charter().is_editable(path) is editable


def test_protected_wins_over_editable_and_matches_across_directories():
  scope = Scope(editable=('**',), protected=('**/secret*.py', 'data/**'))
  c = Charter(scope=scope)
  assert c.is_editable('models/mlp.py')
  assert not c.is_editable('models/deep/secret_sauce.py')
  assert not c.is_editable('data/x/y.npz')


def test_core_paths_stay_protected_whatever_the_charter_says():
  c = Charter(scope=Scope(editable=('**',), protected=()))
  for path in ('WORKSPACE.md', 'agent/loop.py', 'harness/train.py', 'tests/t.py', '.git/HEAD'):
    assert not c.is_editable(path), path
  assert not c.is_editable('Harness/train.py')  # case-insensitive file systems


def test_globs_are_gitignore_patterns_and_no_negation_reopens_the_core():
  c = Charter(scope=Scope(editable=('**', '!models/frozen.py', 'src/*.py'),
                          protected=('secret.py', '!agent/**', '!WORKSPACE.md')))
  assert c.is_editable('models/mlp.py') and not c.is_editable('models/frozen.py')
  assert not c.is_editable('models/deep/secret.py')  # no slash: matches at any depth
  assert not c.is_editable('agent/loop.py') and not c.is_editable('WORKSPACE.md')
  only_src = Charter(scope=Scope(editable=('src/*.py',)))
  assert only_src.is_editable('src/a.py') and not only_src.is_editable('src/sub/a.py')


def test_direction_auto_follows_the_scorecard():
  assert Charter().objective.resolve_direction('min') == 'min'
  assert parse_charter(charter('[objective]\ndirection = "max"\n')).objective.resolve_direction(
      'min') == 'max'
