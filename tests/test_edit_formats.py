"""Parsing a model's answer: the sections, diffs placed by context, search/replace blocks,
and errors precise enough to send back to the model."""

import pytest

from agent.editing import diffs
from agent.proposing.edit_formats import EditFormatError, parse_answer

CONFIG = """\
def get_config():
  config = ml_collections.ConfigDict()
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 1e-2
  config.optimizer.weight_decay = 0.0
  config.train = ml_collections.ConfigDict()
  config.train.steps = 3000
  return config
"""
MODEL = """\
class MLP:

  def __call__(self, x):
    x = self.hidden(x)
    return x

  def features(self, x):
    x = self.hidden(x)
    return x
"""
FILES = {'experiments/x.py': CONFIG, 'models/mlp.py': MODEL}
HEAD = """\
DIAGNOSIS: train loss 0.01 vs val loss 2.9:
  the MLP overfits.
HYPOTHESIS: a smaller step size generalises better
EXPECTED EFFECT: val accuracy up 1-2 points
OPERATOR: lr_down
"""


def answer(edit: str, head: str = HEAD) -> str:
  return head + edit


def test_sections_and_a_diff_with_wrong_line_numbers():
  parsed = parse_answer(answer("""
Here is the change:

```diff
--- a/experiments/x.py
+++ b/experiments/x.py
@@ -40,3 +40,3 @@
   config.optimizer = ml_collections.ConfigDict()
-  config.optimizer.learning_rate = 1e-2
+  config.optimizer.learning_rate = 3e-3
   config.optimizer.weight_decay = 0.0
```
That should help."""), FILES)
  assert parsed.diagnosis == 'train loss 0.01 vs val loss 2.9: the MLP overfits.'
  assert parsed.hypothesis == 'a smaller step size generalises better'
  assert parsed.expected_effect == 'val accuracy up 1-2 points'
  assert parsed.operator == 'lr_down'
  assert parsed.changes == {'experiments/x.py': CONFIG.replace('1e-2', '3e-3')}
  assert parsed.unseen == ()


def test_markdown_decorated_headers_and_operator_normalised():
  head = ('**Diagnosis:** overfits\n## Hypothesis: smaller lr\n**Expected effect**: up\n'
          'Operator: `LR-Down`\n')
  parsed = parse_answer(answer(SEARCH_REPLACE, head), FILES)
  assert (parsed.diagnosis, parsed.hypothesis, parsed.expected_effect, parsed.operator) == (
      'overfits', 'smaller lr', 'up', 'lr_down')


def test_reasoning_blocks_are_ignored():
  text = '<think>OPERATOR: not_this\nDIAGNOSIS: nor this</think>\n' + answer(SEARCH_REPLACE)
  assert parse_answer(text, FILES).operator == 'lr_down'


SEARCH_REPLACE = """
experiments/x.py
<<<<<<< SEARCH
  config.optimizer.learning_rate = 1e-2
=======
  config.optimizer.learning_rate = 3e-3
>>>>>>> REPLACE
"""


def test_search_replace_blocks_fenced_or_not_and_path_reused():
  fenced = """
`models/mlp.py`
```python
<<<<<<< SEARCH
  def features(self, x):
    x = self.hidden(x)
=======
  def features(self, x):
    x = self.hidden(x) * 2
>>>>>>> REPLACE
<<<<<<< SEARCH
class MLP:
=======
class MLP:  # doubled features
>>>>>>> REPLACE
```
"""
  parsed = parse_answer(answer(SEARCH_REPLACE + fenced), FILES)
  assert parsed.changes['experiments/x.py'] == CONFIG.replace('1e-2', '3e-3')
  model = parsed.changes['models/mlp.py']
  assert model.count('self.hidden(x) * 2') == 1 and model.endswith('* 2\n    return x\n')
  assert model.startswith('class MLP:  # doubled features\n')


def test_sections_after_the_edit_are_read_too():
  parsed = parse_answer(SEARCH_REPLACE + '\n' + HEAD, FILES)
  assert parsed.operator == 'lr_down' and list(parsed.changes) == ['experiments/x.py']


def test_hunks_in_order_disambiguate_repeated_context():
  diff = """```diff
--- a/models/mlp.py
+++ b/models/mlp.py
@@ -3,3 +3,3 @@
   def __call__(self, x):
-    x = self.hidden(x)
+    x = self.first(x)
@@ -8,3 +8,3 @@
-    x = self.hidden(x)
+    x = self.second(x)
     return x
```"""
  model = parse_answer(answer(diff), FILES).changes['models/mlp.py']
  assert model.index('self.first') < model.index('self.second') and 'hidden' not in model


def test_ambiguous_and_unmatched_hunks_name_file_and_hunk():
  ambiguous = """```diff
--- a/models/mlp.py
+++ b/models/mlp.py
@@ -1,2 +1,2 @@
-    x = self.hidden(x)
+    x = self.other(x)
```"""
  with pytest.raises(EditFormatError, match=r'models/mlp.py, hunk 1: .* match at lines 4, 8; '
                                            'add context'):
    parse_answer(answer(ambiguous), FILES)
  unmatched = """```diff
--- a/experiments/x.py
+++ b/experiments/x.py
@@ -1,1 +1,1 @@
   config.optimizer.learning_rate = 1e-2
@@ -2,1 +2,1 @@
-  config.optimizer.learning_rate = 0.5
+  config.optimizer.learning_rate = 0.1
```"""
  with pytest.raises(EditFormatError, match=r"experiments/x.py, hunk 2: .* do not match the "
                                            r"file \(first line '  config.optimizer"):
    parse_answer(answer(unmatched), FILES)
  with pytest.raises(EditFormatError, match='SEARCH/REPLACE block 1: .* do not match'):
    parse_answer(answer(SEARCH_REPLACE.replace('= 1e-2\n=', '= 5e-2\n=')), FILES)


def test_trailing_whitespace_and_stripped_blank_context_lines_still_match():
  diff = ('```diff\n--- a/models/mlp.py\n+++ b/models/mlp.py\n@@ -1,4 +1,4 @@\n'
          '-class MLP:   \n+class Net:\n\n   def __call__(self, x):\n\n```')
  assert parse_answer(answer(diff), FILES).changes['models/mlp.py'].startswith('class Net:\n\n')


def test_new_file_deletion_and_paths_passed_through_as_written():
  diff = """```diff
--- /dev/null
+++ b/models/tiny.py
@@ -0,0 +1,2 @@
+class Tiny:
+  pass
--- a/models/mlp.py
+++ /dev/null
@@ -1,2 +0,0 @@
-class MLP:
-
--- a/harness/train.py
+++ b/harness/train.py
@@ -10,2 +10,2 @@
 def train():
-  return 1
+  return 2
--- a/../outside.py
+++ b/../outside.py
@@ -1 +1 @@
-x = 1
+x = 2
--- /etc/passwd
+++ /etc/passwd
@@ -1 +1 @@
-root
+evil
```"""
  parsed = parse_answer(answer(diff), FILES)
  assert parsed.changes == {'models/tiny.py': 'class Tiny:\n  pass\n', 'models/mlp.py': None,
                            'harness/train.py': 'def train():\n  return 2\n',
                            '../outside.py': 'x = 2\n', '/etc/passwd': 'evil\n'}
  assert parsed.unseen == ('harness/train.py', '../outside.py', '/etc/passwd')


def test_creating_a_file_that_exists_is_an_error():
  diff = '```diff\n--- /dev/null\n+++ b/models/mlp.py\n@@ -0,0 +1 @@\n+x = 1\n```'
  with pytest.raises(EditFormatError, match='models/mlp.py already exists'):
    parse_answer(answer(diff), FILES)


@pytest.mark.parametrize('text, message', [
    ('', 'the answer is empty'),
    ('DIAGNOSIS: x\nOPERATOR: y\n' + SEARCH_REPLACE,
     'missing section\\(s\\) HYPOTHESIS, EXPECTED EFFECT'),
    (HEAD + 'I would lower the learning rate.', 'no edit found'),
    (HEAD.replace('OPERATOR: lr_down', 'OPERATOR: ???') + SEARCH_REPLACE,
     'OPERATOR must be a short snake_case name'),
    (HEAD + 'Change it like this:\n<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE',
     "block 1: the line before <<<<<<< SEARCH must be the file's path alone"),
    (HEAD + 'experiments/x.py\n<<<<<<< SEARCH\nx\n=======\ny\n',
     'block 1: expected <<<<<<< SEARCH, the old lines, =======, the new lines'),
    (HEAD + '```diff\n@@ -1 +1 @@\n-a\n+b\n```', 'hunk without a ---/\\+\\+\\+ file header'),
    (HEAD + '```diff\n--- a/m.py\n+++ b/n.py\n@@ -1 +1 @@\n-a\n+b\n```',
     'renames are not supported'),
    (HEAD + '```diff\n--- a/models/mlp.py\n+++ b/models/mlp.py\n@@ -1 +1 @@\n'
     '-class MLP:\n*class Net:\n```', 'models/mlp.py, hunk 1: line .* starts with none'),
])
def test_malformed_answers_get_one_line_errors(text, message):
  with pytest.raises(EditFormatError, match=message) as raised:
    parse_answer(text, FILES)
  assert '\n' not in str(raised.value)


@pytest.mark.parametrize('path, old, new', [
    ('models/mlp.py', MODEL, MODEL.replace('    x = self.hidden(x)\n    return x\n\n', '')),
    ('experiments/x.py', CONFIG, CONFIG.replace('3000', '6000') + '# more steps\n'),
    ('models/new.py', None, 'class New:\n  pass\n'),
    ('models/mlp.py', MODEL, None),
])
def test_git_style_diffs_round_trip(path, old, new):
  diff = diffs.unified_diff(path, old, new)
  assert diff.startswith('diff --git ')
  assert parse_answer(answer(f'```diff\n{diff}```\n'), FILES).changes == {path: new}
