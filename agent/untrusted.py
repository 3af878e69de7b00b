"""Text the agent did not write itself: what a trial printed, what a proposer proposed.

Such text reaches two readers that it could fool. A terminal obeys escape codes, so a
hypothesis could move the cursor, or return to the start of a line and print a fake
"ACCEPTED" over it: `terminal_safe` leaves only printable text. A language model reads
instructions anywhere, so text shown to it is `fence`d between markers the system prompt
declares to hold data, and nothing inside can pass for a marker, not even one spelt with
no-break spaces, fullwidth forms or Cyrillic letters.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

# The one source of the marker words: prompts (the system prompt's rule, the blocks) and
# the defusing below all build on these.
WORD = 'UNTRUSTED'
BEGIN, END = 'BEGIN', 'END'
_RULE = '-----'
BEGIN_MARKER = _RULE + ' ' + BEGIN + ' ' + WORD + ' {label} {tag} ' + _RULE
END_MARKER = _RULE + ' ' + END + ' ' + WORD + ' {label} {tag} ' + _RULE
MAX_FENCED_CHARS = 8000
TAB = '    '

# Escape sequences: CSI (ESC [ or 8-bit 0x9b), OSC/DCS/SOS/PM/APC strings up to their
# terminator (or the end of the text), and the short ESC forms (ESC ( B, ESC 7, ...).
_ESCAPES = re.compile(
    r'(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?'
    r'|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?'
    r'|\x1b[ -/]*[0-~]?')
_HIDDEN = ('Cc', 'Cf', 'Zl', 'Zp')  # controls, format characters, line separators
# Invisible letters and selectors that hide or smuggle text (their category is not C*).
_INVISIBLE = {0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x2800, 0x3164, 0xFFA0,
              *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)}


def terminal_safe(text: str, indent: str = '') -> str:
  """`text` with nothing a terminal would act on: escape sequences, control characters
  but newline (a tab becomes spaces; a lone CR goes, so nothing can overwrite a line),
  Unicode line separators, bidi overrides and other invisible format characters; lone
  surrogates become U+FFFD so that printing cannot fail. With `indent`, every line after
  the first starts with it, so that text embedded in one line cannot pose as a line of its
  own."""
  text = _ESCAPES.sub('', str(text).replace('\r\n', '\n'))
  kept = []
  for char in text.replace('\t', TAB):
    category = unicodedata.category(char)
    if char == '\n' or not (category in _HIDDEN or ord(char) in _INVISIBLE):
      kept.append('\ufffd' if category == 'Cs' else char)
  safe = ''.join(kept)
  return safe.replace('\n', '\n' + indent) if indent else safe


def one_line(text: str) -> str:
  """`terminal_safe` text on one line (line breaks and runs of spaces become one space):
  for a field printed inside a line of a report, which it must not end early."""
  return ' '.join(terminal_safe(text).split())


def fence(text: str, label: str, max_chars: int = MAX_FENCED_CHARS) -> str:
  """`text` between BEGIN and END markers that carry `label` (a fixed phrase of capitals,
  never the caller's data) and a hash of the body, which the text cannot predict.

  The body is `terminal_safe`, cut to its last `max_chars` characters, and every line
  that would read as a marker once look-alikes are folded away (any Unicode space or
  dash, invisible characters, fullwidth and small-capital forms, Cyrillic or Greek
  letters, digits for letters) is rewritten in plain letters with its dashes broken and
  the marker word removed.
  """
  if not re.fullmatch(r'[A-Z][A-Z ]{0,39}', label) or WORD in label:
    raise ValueError(f'a fence label is a short phrase of capitals, got {label!r}')
  body = terminal_safe(text)
  if len(body) > max_chars:
    body = f'[... {len(body) - max_chars} earlier characters cut ...]\n' + body[-max_chars:]
  body = '\n'.join(_defuse(line) for line in body.split('\n'))
  tag = hashlib.sha256(body.encode('utf-8')).hexdigest()[:12]
  return (f'{BEGIN_MARKER.format(label=label, tag=tag)}\n{body}\n'
          f'{END_MARKER.format(label=label, tag=tag)}')


# ---- marker look-alikes ---------------------------------------------------------------
def _letters(pairs: str) -> dict[int, str]:
  """'АA ВB' -> {ord('А'): 'A', ord('В'): 'B'}."""
  return {ord(pair[0]): pair[1] for pair in pairs.split()}


# Letters that look like Latin ones (Cyrillic, Greek, Armenian, Cherokee, Lisu, small
# capitals); NFKC already folds fullwidth, circled, mathematical and superscript forms.
_LOOKALIKES = _letters(
    'АA ВB ЕE ЅS ІI ЈJ КK МM НH ОO РP СC ТT ХX УY ҮY ԌG ԚQ ԜW ӀI Ԁd '
    'аa вB еe ѕs іi јj кk мM нH оo рp сc тT хx уy үy ԁd ԛq ԝw һh ӏl пn ґr ѵv '
    'ΑA ΒB ΕE ΖZ ΗH ΙI ΚK ΜM ΝN ΟO ΡP ΤT ΥY ΧX ϹC ϺM '
    'αa βB εe ηn ιi κk νv οo ρp τt υu χx ϲc ϳj '
    'ՍU ՏS Օo սu օo ոn '
    'ᎠD ᎬE ᏀG ᎻH ᎫJ ᏦK ᏞL ᎷM ᏢP ᏚS ᎢT ᏔW ᎳW '
    'ꓮA ꓐB ꓚC ꓓD ꓰE ꓝF ꓖG ꓧH ꓲI ꓙJ ꓗK ꓡL ꓟM ꓠN ꓳO ꓑP ꓣR ꓢS ꓔT ꓴU ꓦV ꓪW ꓫX ꓬY ꓜZ '
    'ᴀA ʙB ᴄC ᴅD ᴇE ꜰF ɢG ʜH ɪI ᴊJ ᴋK ʟL ᴍM ɴN ᴏO ᴘP ʀR ꜱS ᴛT ᴜU ᴠV ᴡW ʏY ᴢZ ıi ȷj')
_LEET = str.maketrans('0134578$@|!', 'OIEASTBSAII')  # digits and signs posing as letters
# Dashes that are not in category Pd: minus signs, macrons, overlines, box-drawing rules,
# the katakana prolonged sound mark and the CJK 'one'.
_DASHES = {0x2212, 0x2796, 0x23AF, 0x23E4, 0x2043, 0x02D7, 0x02C9, 0x02CD, 0x203E, 0x30FC,
           0x4E00, 0x2500, 0x2501, 0x2504, 0x2505, 0x2508, 0x2509, 0x254C, 0x254D, 0x2550,
           0x2574, 0x2576, 0x2578, 0x257A, 0x257C, 0x257E, 0x2CBA}
# The words as letters with up to three non-letters between them ('U.N.T.R.U.S.T.E.D'),
# found anywhere, even glued to other letters: a false alarm only rewrites a line.
_GAP = '[^A-Z]{0,3}'
_WORD_RE = re.compile(_GAP.join(WORD), re.IGNORECASE)
_EDGE_RE = re.compile('|'.join(_GAP.join(w) for w in (BEGIN, END)), re.IGNORECASE)
_RULE_RE = re.compile(r'-(?:\s*-){2,}')
_DASH_RUN = re.compile(r'-(?:\s*-)+')


def _fold(line: str) -> str:
  """`line` as plain Latin text: NFKC, accents and invisible characters dropped, every
  space a plain space, every dash a '-', every look-alike letter its Latin twin."""
  out = []
  for char in unicodedata.normalize('NFKD', unicodedata.normalize('NFKC', line)):
    category = unicodedata.category(char)
    if category in ('Mn', 'Me', 'Cf', 'Cc'):
      continue
    if category.startswith('Z') or char.isspace():
      out.append(' ')
    elif category == 'Pd' or ord(char) in _DASHES:
      out.append('-')
    else:
      out.append(_LOOKALIKES.get(ord(char), char))
  return unicodedata.normalize('NFC', ''.join(out))


def _defuse(line: str) -> str:
  """The line as is, unless its folded form names the marker word or has a BEGIN or END
  next to a rule of dashes: then the folded form, dashes broken, marker word removed."""
  folded = _fold(line)
  probe = folded.translate(_LEET)  # one character for one: spans carry over to `folded`
  words = [m.span() for m in _WORD_RE.finditer(probe)]
  if not (words or (_EDGE_RE.search(probe) and _RULE_RE.search(probe))):
    return line
  for start, end in reversed(words):
    folded = folded[:start] + '[marker removed]' + folded[end:]
  return _DASH_RUN.sub('~', folded)
