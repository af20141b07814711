"""A rule-based toy translation pair: simple English -> "Toy German" (offline, deterministic, learnable).

Every sentence is drawn as a small syntax tree, then rendered twice: as English (the source) and as Toy German (the
target). `translate` parses an English sentence back into its tree, so the target is a function of the source text
alone: there is exactly one correct translation and BLEU 100 is reachable in principle.

Source grammar (English, lowercased, words separated by single spaces, a final period attached to the last word):

  sentence = clause ("and" clause)?                    at most one coordination; the second clause is a main clause
  clause   = NP verb NP [PP] [adverb] [subordinate]    subject, verb, object; a PP always belongs to its clause
  subordinate = conjunction NP verb NP [PP]            "because the dog likes the cats near the river"
  NP       = [determiner] adjective{0,2} noun          bare NPs are plural ("dogs"); numerals two..five are plural;
                                                       "a"/"an" is singular ("an" before a vowel); this/these and
                                                       that/those show number; the/possessives take either number
  PP       = preposition NP
  verb     = present ("sees" after a singular subject, "see" after a plural one) or past ("saw", no agreement)

  Sentences have 4..25 words (the period not counted). The lexicon: 50 nouns with regular and irregular plurals, 20
  adjectives, 20 verbs, 9 prepositions, 8 adverbs, 5 conjunctions, 10 determiners, 4 numerals.

Target rules (Toy German; its content words are made up from syllables by hashing the English lemma, see `_coin`):

  1. Gender. Every noun has a fixed grammatical gender m / f / n (listed in NOUNS; unrelated to meaning or form).
  2. Plural. A noun's plural adds a suffix chosen by its gender: m "-e", f "-en", n "-i" (English irregulars
     like mice/children become regular).
  3. Case. A subject is nominative, an object accusative; each preposition governs the dative or the accusative.
  4. Determiners inflect: stem + ending by case and gender/number (plural has one form for all genders):
        NOM: m -er  f -a   n -es  pl -i
        ACC: m -en  f -a   n -es  pl -i
        DAT: m -em  f -ar  n -em  pl -in
     stems: the "d" (der, da, des, di, den, ...), a "on", this/these "dis", that/those "jen", my "mor", your "tor",
     his "sen", her "hal", our "nur", their "vel". Numerals are single uninflected words; bare plurals have none.
  5. Contraction. "near", "from", "behind", "under" (not "with") + the definite dative of a masculine or neuter
     singular fuse into one word: the preposition + "m" (like German bei dem -> beim), with no separate article.
  6. Adjectives follow the noun, in the English order, with an ending agreeing in gender and number:
     m "-o", f "-a", n "-u", plural "-i".
  7. Verbs. Present: stem + "-et" (singular subject) or "-an" (plural subject). Past: the auxiliary "esa" (singular)
     / "esan" (plural) in the finite position plus the participle "ga" + stem.
  8. Main clause word order (verb second): subject, finite verb, object, PP, participle (the participle is always
     last in its clause). An adverb comes first and the subject moves behind the finite verb:
     adverb, finite verb, subject, object, PP, participle.
  9. Subordinate clauses are verb-final, preceded by a comma: conjunction, subject, object, PP, participle, finite verb
     (so a past subordinate clause ends "... ga<stem> esa").
  10. "and" is "un"; the sentence ends with a period attached to the last word (a comma too attaches to its word).

Examples (dog m, man m, cat f, girl n, house n, ball m; see tests/data/test_toy_translation.py for more):
  the man saw the woman.                  der gidrak esa da neifaun gavauprik.
  the woman sees the man.                 da neifaun vaupriket den gidrak.
  the cats see the man today.             zeibruk vauprikan di gluplumen den gidrak.
  the dog likes the cats because the man found a red ball.
  der duwan pedauret di gluplumen, nabrok der gidrak onen zibit plestauko gasketrim esa.
  the old dog saw two cats near the house yesterday because a girl likes the books.
  teihak esa der duwan tipolo spezei gluplumen krem spibram gavauprik, nabrok ones driglin di gekrauli pedauret.

Splits. `split(name, num)` draws from a per-split seed and keeps only sentences whose source hashes (crc32 mod 100)
into that split's buckets (train 0..89, validation 90..94, test 95..99). A source sentence, and so its pair, can
therefore never be in two splits, and this holds for any sizes with no need to generate train first; keeping
sentences by a hash of their text does not change the distribution. Exact repeats are rare anyway (a handful in 100k
pairs, all among the shortest sentences): the grammar has far more than 10^12 sentences.

A harder variant (`extra_words=N` in `generate_pairs`, `split`, `translate`, `parse`; 0, the default, is all of the
above unchanged). A small Transformer masters the default pair completely, so it cannot rank model variants. N coined
entries extend the open word classes (60% nouns, 20% adjectives, 20% verbs; see `lexicon`): made-up English words with
regular English morphology ("blorf"/"blorfs", "crandle"/"crandles"/"crandled") and made-up target words with a gender
and the regular target rules above. Nouns, adjectives and verbs are then drawn by a Zipf law within each class: the
i-th entry (base entries first) with probability proportional to 1 / (i + 1) (exponent ZIPF_EXPONENT = 1.0), so most
words are rare, as in real text, and a model must learn them from few examples. Closed classes (determiners,
prepositions, adverbs, conjunctions) stay uniform, and the grammar, rules, lengths and splits are unchanged.
"""
from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import zlib
from typing import NamedTuple

import numpy as np

MIN_WORDS, MAX_WORDS = 4, 25
NOM, ACC, DAT = "nom", "acc", "dat"

# ---------------------------------------------------------------------------------------------------------------------
# English lexicon (with the target genders and prepositional cases).

# (singular, plural, gender)
NOUN_TABLE = (
  ("dog", "dogs", "m"), ("cat", "cats", "f"), ("bird", "birds", "m"), ("horse", "horses", "n"), ("cow", "cows", "f"),
  ("mouse", "mice", "f"), ("child", "children", "n"), ("man", "men", "m"), ("woman", "women", "f"),
  ("boy", "boys", "m"), ("girl", "girls", "n"), ("teacher", "teachers", "m"), ("doctor", "doctors", "f"),
  ("farmer", "farmers", "m"), ("king", "kings", "m"), ("queen", "queens", "f"), ("friend", "friends", "n"),
  ("baker", "bakers", "m"), ("student", "students", "n"), ("soldier", "soldiers", "m"), ("fox", "foxes", "m"),
  ("wolf", "wolves", "m"), ("house", "houses", "n"), ("tree", "trees", "m"), ("car", "cars", "n"),
  ("boat", "boats", "n"), ("book", "books", "n"), ("table", "tables", "m"), ("chair", "chairs", "m"),
  ("window", "windows", "n"), ("door", "doors", "f"), ("garden", "gardens", "m"), ("river", "rivers", "m"),
  ("bridge", "bridges", "f"), ("city", "cities", "f"), ("village", "villages", "n"), ("apple", "apples", "m"),
  ("flower", "flowers", "f"), ("letter", "letters", "m"), ("box", "boxes", "f"), ("cup", "cups", "f"),
  ("ball", "balls", "m"), ("hat", "hats", "m"), ("key", "keys", "m"), ("lamp", "lamps", "f"), ("road", "roads", "f"),
  ("wall", "walls", "f"), ("stone", "stones", "m"), ("knife", "knives", "n"), ("mountain", "mountains", "m"),
)
ADJECTIVE_TABLE = ("old", "young", "big", "small", "red", "green", "blue", "happy", "sad", "tall", "quiet", "loud",
                   "fast", "slow", "strange", "dark", "bright", "clever", "lazy", "hungry")
# (base / plural present, singular present, past)
VERB_TABLE = (
  ("see", "sees", "saw"), ("like", "likes", "liked"), ("find", "finds", "found"), ("know", "knows", "knew"),
  ("follow", "follows", "followed"), ("carry", "carries", "carried"), ("take", "takes", "took"),
  ("help", "helps", "helped"), ("call", "calls", "called"), ("watch", "watches", "watched"),
  ("paint", "paints", "painted"), ("build", "builds", "built"), ("visit", "visits", "visited"),
  ("hear", "hears", "heard"), ("want", "wants", "wanted"), ("hold", "holds", "held"), ("bring", "brings", "brought"),
  ("push", "pushes", "pushed"), ("catch", "catches", "caught"), ("draw", "draws", "drew"),
)
# (preposition, governed case, contracts with the definite m/n singular dative)
PREPOSITION_TABLE = (("near", DAT, True), ("from", DAT, True), ("with", DAT, False), ("behind", DAT, True),
                     ("under", DAT, True), ("for", ACC, False), ("without", ACC, False), ("through", ACC, False),
                     ("around", ACC, False))
ADVERB_TABLE = ("today", "yesterday", "often", "now", "again", "sometimes", "soon", "later")
CONJUNCTION_TABLE = ("because", "while", "although", "when", "if")
NUMERAL_TABLE = ("two", "three", "four", "five")
# determiner key -> (English singular, English plural); None where that number is impossible
DETERMINERS = {"the": ("the", "the"), "a": ("a", None), "this": ("this", "these"), "that": ("that", "those"),
               "my": ("my", "my"), "your": ("your", "your"), "his": ("his", "his"), "her": ("her", "her"),
               "our": ("our", "our"), "their": ("their", "their")}
DETERMINERS.update({n: (None, n) for n in NUMERAL_TABLE})

# ---------------------------------------------------------------------------------------------------------------------
# Toy German morphology (rules 2, 4, 6, 7).

PLURAL_SUFFIX = {"m": "e", "f": "en", "n": "i"}
ADJ_ENDING = {"m": "o", "f": "a", "n": "u", "pl": "i"}
DET_ENDING = {NOM: {"m": "er", "f": "a", "n": "es", "pl": "i"},
              ACC: {"m": "en", "f": "a", "n": "es", "pl": "i"},
              DAT: {"m": "em", "f": "ar", "n": "em", "pl": "in"}}
DET_STEM = {"the": "d", "a": "on", "this": "dis", "that": "jen", "my": "mor", "your": "tor", "his": "sen",
            "her": "hal", "our": "nur", "their": "vel"}
PRESENT_ENDING = {False: "et", True: "an"}  # by subject plural
AUXILIARY = {False: "esa", True: "esan"}
PARTICIPLE_PREFIX = "ga"
CONTRACTION_SUFFIX = "m"
AND = "un"


def det_form(det: str, case: str, gn: str) -> str:
  """The inflected determiner (rule 4); gn is the noun's gender, or "pl"."""
  return DET_STEM[det] + DET_ENDING[case][gn]


_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
           "br", "dr", "gl", "kl", "pr", "sk", "st", "tr", "gr", "pl", "sp", "kr")
_VOWELS = ("a", "e", "i", "o", "u", "au", "ei")
_CODAS = ("k", "l", "m", "n", "r", "s", "t")


def _first_free(key: str, digest_size: int, build, forms, used: set[str]) -> str:
  """The first word `build(blake2b(key#attempt))` whose `forms(word)` are distinct and unused; claims those forms.
  blake2b, not an RNG, so the lexicon never changes."""
  for attempt in itertools.count():
    word = build(hashlib.blake2b(f"{key}#{attempt}".encode(), digest_size=digest_size).digest())
    fs = forms(word)
    if len(set(fs)) == len(fs) and not used.intersection(fs):
      used.update(fs)
      return word
  raise AssertionError("unreachable")


def _coin(key: str, syllables: int, closed: bool, forms, used: set[str]) -> str:
  """A made-up stem for `key`: CV syllables (+ a final consonant if closed) picked by hashing key; the first stem
  whose inflected `forms(stem)` are distinct and unused."""
  def build(h):
    stem = "".join(_ONSETS[h[2 * i] % len(_ONSETS)] + _VOWELS[h[2 * i + 1] % len(_VOWELS)] for i in range(syllables))
    return stem + (_CODAS[h[15] % len(_CODAS)] if closed else "")
  return _first_free(key, 16, build, forms, used)


class Noun(NamedTuple):
  sg: str
  pl: str
  gender: str
  tg_sg: str
  tg_pl: str


class Adjective(NamedTuple):
  en: str
  tg: dict  # gn -> form


class Verb(NamedTuple):
  base: str
  s3: str
  past: str
  tg_present: dict  # subject plural -> form
  tg_participle: str


class Preposition(NamedTuple):
  en: str
  case: str
  contracts: bool
  tg: str


class Word(NamedTuple):
  en: str
  tg: str


def _build_lexicon():
  """All target words, coined in a fixed order so that no two (lemma, features) share a surface form."""
  used = {det_form(d, c, gn) for d in DET_STEM for c in DET_ENDING for gn in ADJ_ENDING} | {*AUXILIARY.values(), AND}
  nouns = tuple(Noun(sg, pl, g, s, s + PLURAL_SUFFIX[g]) for sg, pl, g in NOUN_TABLE
                for s in [_coin("noun:" + sg, 2, True, lambda s, g=g: [s, s + PLURAL_SUFFIX[g]], used)])
  adjectives = tuple(Adjective(a, {gn: s + e for gn, e in ADJ_ENDING.items()}) for a in ADJECTIVE_TABLE
                     for s in [_coin("adj:" + a, 2, True, lambda s: [s + e for e in ADJ_ENDING.values()], used)])
  verb_forms = lambda s: [s + PRESENT_ENDING[False], s + PRESENT_ENDING[True], PARTICIPLE_PREFIX + s]
  verbs = tuple(Verb(b, s3, p, {pl: s + e for pl, e in PRESENT_ENDING.items()}, PARTICIPLE_PREFIX + s)
                for b, s3, p in VERB_TABLE for s in [_coin("verb:" + b, 2, True, verb_forms, used)])
  prepositions = tuple(Preposition(p, c, k, s) for p, c, k in PREPOSITION_TABLE
                       for s in [_coin("prep:" + p, 1, False, lambda s: [s, s + CONTRACTION_SUFFIX], used)])
  words = {kind: tuple(Word(w, _coin(f"{kind}:{w}", n, closed, lambda s: [s], used)) for w in table)
           for kind, table, n, closed in (("adv", ADVERB_TABLE, 2, True), ("conj", CONJUNCTION_TABLE, 2, True),
                                          ("num", NUMERAL_TABLE, 2, False))}
  return nouns, adjectives, verbs, prepositions, words["adv"], words["conj"], words["num"], frozenset(used)


NOUNS, ADJECTIVES, VERBS, PREPOSITIONS, ADVERBS, CONJUNCTIONS, NUMERALS, _BASE_TG_FORMS = _build_lexicon()
_NUMERAL_TG = {w.en: w.tg for w in NUMERALS}

# English word forms -> their meaning, for parsing (see `Lexicon` for the nouns, adjectives and verbs in use).
_DET_WORDS = {w: (key, num == 1) for key, forms in DETERMINERS.items() for num, w in enumerate(forms) if w}
_DET_WORDS["an"] = ("a", False)
_NOUN_WORDS = {**{n.sg: (i, False) for i, n in enumerate(NOUNS)}, **{n.pl: (i, True) for i, n in enumerate(NOUNS)}}
_ADJ_WORDS = {a.en: i for i, a in enumerate(ADJECTIVES)}
_VERB_WORDS = {**{v.base: (i, False) for i, v in enumerate(VERBS)}, **{v.s3: (i, False) for i, v in enumerate(VERBS)},
               **{v.past: (i, True) for i, v in enumerate(VERBS)}}
_PREP_WORDS = {p.en: i for i, p in enumerate(PREPOSITIONS)}
_ADV_WORDS = {a.en: i for i, a in enumerate(ADVERBS)}
_CONJ_WORDS = {c.en: i for i, c in enumerate(CONJUNCTIONS)}
_ALL_WORDS = [*_DET_WORDS, *_NOUN_WORDS, *_ADJ_WORDS, *_VERB_WORDS, *_PREP_WORDS, *_ADV_WORDS, *_CONJ_WORDS, "and"]
assert len(_ALL_WORDS) == len(set(_ALL_WORDS)), "an English word form is in two categories"

# ---------------------------------------------------------------------------------------------------------------------
# The extended lexicon (`extra_words`): coined English words with regular morphology, sampled by a Zipf law.

_EN_ONSETS = ("b", "bl", "br", "c", "cl", "cr", "d", "dr", "f", "fl", "fr", "g", "gl", "gr", "h", "j", "l", "m", "n",
              "p", "pl", "pr", "r", "s", "sc", "sk", "sl", "sn", "sp", "st", "str", "sw", "t", "th", "tr", "v", "w",
              "z", "sh", "ch", "", "")
_EN_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "u", "oo", "ea", "ai", "ou", "oa", "ee")
_EN_CODAS = ("b", "ck", "d", "g", "ll", "lk", "lt", "m", "mp", "n", "nd", "nk", "nt", "p", "rb", "rd", "rf", "rk",
             "rm", "rn", "rt", "sh", "sk", "st", "t", "tch", "x", "ng", "ff", "ss", "zz", "nch")
_EN_MEDIALS = ("b", "d", "g", "m", "n", "p", "t", "v", "l", "r", "nd", "mb", "ng", "ck", "tt", "pp", "bb", "dd", "gg",
               "st", "mp", "nk", "rd", "rt", "sk", "zz")
_EN_ENDINGS = ("le", "er", "et", "en", "on", "el", "it", "ock", "um", "ish", "ar", "ow")
# Doubled consonants are spelt single after a two-letter vowel ("fleek", not "fleeck").
_EN_SINGLE = {"ck": "k", "ll": "l", "ff": "f", "ss": "s", "zz": "z", "tch": "ch", "tt": "t", "pp": "p", "bb": "b",
              "dd": "d", "gg": "g"}
ZIPF_EXPONENT = 1.0


def en_plural(word: str) -> str:
  """Regular English "-s" / "-es" (noun plurals and verbs in the 3rd person singular)."""
  return word + ("es" if word.endswith(("s", "x", "z", "sh", "ch")) else "s")


def en_past(word: str) -> str:
  """Regular English "-ed" ("-d" after an "e")."""
  return word + ("d" if word.endswith("e") else "ed")


def _coin_en(key: str, forms, used: set[str]) -> str:
  """A pronounceable English-looking pseudo-word for `key` ("blorf": onset vowel coda; "crandle": onset vowel medial
  ending), picked by hashing key like `_coin`: the first whose `forms(word)` are distinct and unused."""
  def build(h):
    one_syllable, vowel = h[0] < 128, _EN_VOWELS[h[2] % len(_EN_VOWELS)]
    consonant = _EN_CODAS[h[3] % len(_EN_CODAS)] if one_syllable else _EN_MEDIALS[h[4] % len(_EN_MEDIALS)]
    consonant = _EN_SINGLE.get(consonant, consonant) if len(vowel) == 2 else consonant
    word = _EN_ONSETS[h[1] % len(_EN_ONSETS)] + vowel + consonant
    return word + ("" if one_syllable else _EN_ENDINGS[h[5] % len(_EN_ENDINGS)])
  return _first_free(key, 8, build, forms, used)


class Lexicon(NamedTuple):
  """The open word classes in use, their English forms for parsing, and how they are drawn."""
  nouns: tuple[Noun, ...]
  adjectives: tuple[Adjective, ...]
  verbs: tuple[Verb, ...]
  noun_words: dict  # English form -> (index, plural)
  adj_words: dict  # English form -> index
  verb_words: dict  # English form -> (index, past)
  cumulative: dict | None  # "noun"/"adj"/"verb" -> cumulative Zipf weights; None: uniform (the base lexicon)


@functools.lru_cache(maxsize=8)
def lexicon(extra_words: int = 0) -> Lexicon:
  """The base lexicon plus `extra_words` coined entries: entry k is a noun if k % 5 < 3, an adjective if k % 5 == 3,
  else a verb (60/20/20). Coined in order k = 0, 1, ... by hashing, so a smaller lexicon is a prefix of a larger one
  and no run's RNG is involved; every English and every target form is distinct from all others (base ones included).
  With extra_words > 0, the i-th noun / adjective / verb (base entries first) is drawn with probability proportional
  to 1 / (i + 1) ** ZIPF_EXPONENT within its class; the base lexicon alone is drawn uniformly, as it always was."""
  if extra_words < 0:
    raise ValueError(f"extra_words must be >= 0, got {extra_words}")
  nouns, adjectives, verbs = list(NOUNS), list(ADJECTIVES), list(VERBS)
  en_used, tg_used = set(_ALL_WORDS), set(_BASE_TG_FORMS)
  adj_forms = lambda s: [s + e for e in ADJ_ENDING.values()]
  verb_forms = lambda s: [s + PRESENT_ENDING[False], s + PRESENT_ENDING[True], PARTICIPLE_PREFIX + s]
  for k in range(extra_words):
    if k % 5 < 3:
      sg = _coin_en(f"en-noun:{k}", lambda w: [w, en_plural(w)], en_used)
      g = "mfn"[hashlib.blake2b(f"gender:{sg}".encode(), digest_size=1).digest()[0] % 3]
      s = _coin("noun:" + sg, 2, True, lambda s: [s, s + PLURAL_SUFFIX[g]], tg_used)
      nouns.append(Noun(sg, en_plural(sg), g, s, s + PLURAL_SUFFIX[g]))
    elif k % 5 == 3:
      a = _coin_en(f"en-adj:{k}", lambda w: [w], en_used)
      s = _coin("adj:" + a, 2, True, adj_forms, tg_used)
      adjectives.append(Adjective(a, {gn: s + e for gn, e in ADJ_ENDING.items()}))
    else:
      b = _coin_en(f"en-verb:{k}", lambda w: [w, en_plural(w), en_past(w)], en_used)
      s = _coin("verb:" + b, 2, True, verb_forms, tg_used)
      verbs.append(Verb(b, en_plural(b), en_past(b), {pl: s + e for pl, e in PRESENT_ENDING.items()},
                        PARTICIPLE_PREFIX + s))
  noun_words = {**{n.sg: (i, False) for i, n in enumerate(nouns)}, **{n.pl: (i, True) for i, n in enumerate(nouns)}}
  verb_words = {**{v.base: (i, False) for i, v in enumerate(verbs)}, **{v.s3: (i, False) for i, v in enumerate(verbs)},
                **{v.past: (i, True) for i, v in enumerate(verbs)}}
  zipf = lambda n: list(itertools.accumulate(1 / (i + 1) ** ZIPF_EXPONENT for i in range(n)))
  cumulative = None if extra_words == 0 else {"noun": zipf(len(nouns)), "adj": zipf(len(adjectives)),
                                               "verb": zipf(len(verbs))}
  return Lexicon(tuple(nouns), tuple(adjectives), tuple(verbs), noun_words, {a.en: i for i, a in enumerate(adjectives)},
                 verb_words, cumulative)

# ---------------------------------------------------------------------------------------------------------------------
# Syntax trees and their two renderings.


class NP(NamedTuple):
  det: str | None  # a DETERMINERS key, or None for a bare plural
  adjs: tuple[int, ...]  # indices into the lexicon's adjectives (ADJECTIVES, plus coined ones with extra_words)
  noun: int  # index into the lexicon's nouns
  plural: bool


class Clause(NamedTuple):
  subj: NP
  verb: int  # index into the lexicon's verbs
  past: bool
  obj: NP
  pp: tuple[int, NP] | None = None  # (index into PREPOSITIONS, NP)
  adv: int | None = None  # main clauses only
  sub: Clause | None = None  # main clauses only
  conj: int | None = None  # subordinate clauses only


def _en_np(np_: NP, lex: Lexicon) -> list[str]:
  noun = lex.nouns[np_.noun]
  words = [lex.adjectives[a].en for a in np_.adjs] + [noun.pl if np_.plural else noun.sg]
  if np_.det is None:
    return words
  det = DETERMINERS[np_.det][np_.plural]
  if det == "a" and words[0][0] in "aeiou":
    det = "an"
  return [det, *words]


def _en_clause(c: Clause, lex: Lexicon) -> list[str]:
  verb = lex.verbs[c.verb]
  out = [] if c.conj is None else [CONJUNCTIONS[c.conj].en]
  out += _en_np(c.subj, lex) + [verb.past if c.past else verb.base if c.subj.plural else verb.s3] + _en_np(c.obj, lex)
  if c.pp is not None:
    out += [PREPOSITIONS[c.pp[0]].en, *_en_np(c.pp[1], lex)]
  if c.adv is not None:
    out.append(ADVERBS[c.adv].en)
  if c.sub is not None:
    out += _en_clause(c.sub, lex)
  return out


def render_source(clauses: list[Clause], extra_words: int = 0) -> str:
  """The English sentence of a tree (a list of coordinated main clauses)."""
  lex = lexicon(extra_words)
  return " and ".join(" ".join(_en_clause(c, lex)) for c in clauses) + "."


def _tg_np(np_: NP, lex: Lexicon, case: str, prep: Preposition | None = None) -> list[str]:
  """Rules 1-6: [determiner] noun adjectives, or a contracted preposition + noun adjectives."""
  noun = lex.nouns[np_.noun]
  gn = "pl" if np_.plural else noun.gender
  words = [noun.tg_pl if np_.plural else noun.tg_sg] + [lex.adjectives[a].tg[gn] for a in np_.adjs]
  if prep is not None and prep.contracts and np_.det == "the" and case == DAT and gn in ("m", "n"):
    return [prep.tg + CONTRACTION_SUFFIX, *words]
  head = [] if prep is None else [prep.tg]
  if np_.det in _NUMERAL_TG:
    head.append(_NUMERAL_TG[np_.det])
  elif np_.det is not None:
    head.append(det_form(np_.det, case, gn))
  return head + words


def _tg_clause(c: Clause, lex: Lexicon) -> str:
  """Rules 7-9: verb second in main clauses (inverted after an adverb), verb-final in subordinate ones."""
  verb, plural = lex.verbs[c.verb], c.subj.plural
  finite = AUXILIARY[plural] if c.past else verb.tg_present[plural]
  subj, obj = _tg_np(c.subj, lex, NOM), _tg_np(c.obj, lex, ACC)
  rest = obj
  if c.pp is not None:
    prep = PREPOSITIONS[c.pp[0]]
    rest = rest + _tg_np(c.pp[1], lex, prep.case, prep)
  if c.past:
    rest = rest + [verb.tg_participle]
  if c.conj is not None:
    words = [CONJUNCTIONS[c.conj].tg, *subj, *rest, finite]
  elif c.adv is not None:
    words = [ADVERBS[c.adv].tg, finite, *subj, *rest]
  else:
    words = [*subj, finite, *rest]
  text = " ".join(words)
  return text if c.sub is None else text + ", " + _tg_clause(c.sub, lex)


def render_target(clauses: list[Clause], extra_words: int = 0) -> str:
  """The Toy German sentence of a tree."""
  lex = lexicon(extra_words)
  return f" {AND} ".join(_tg_clause(c, lex) for c in clauses) + "."


# ---------------------------------------------------------------------------------------------------------------------
# Parsing English back into a tree: makes `translate` a function of the source text.

class _Parser:
  def __init__(self, words: list[str], lex: Lexicon):
    self.words, self.i, self.lex = words, 0, lex

  def peek(self) -> str | None:
    return self.words[self.i] if self.i < len(self.words) else None

  def take(self, table: dict, what: str):
    word = self.peek()
    if word not in table:
      raise ValueError(f"expected {what} at word {self.i + 1}, got {word!r}")
    self.i += 1
    return table[word]

  def np(self) -> NP:
    det = self.take(_DET_WORDS, "")[0] if self.peek() in _DET_WORDS else None
    adjs = []
    while self.peek() in self.lex.adj_words:
      adjs.append(self.take(self.lex.adj_words, ""))
    noun, plural = self.take(self.lex.noun_words, "a noun")
    if (not plural) if det is None else DETERMINERS[det][plural] is None:
      raise ValueError(f"determiner {det!r} does not go with a {'plural' if plural else 'singular'} noun")
    return NP(det, tuple(adjs), noun, plural)

  def clause(self, main: bool) -> Clause:
    conj = None if main else self.take(_CONJ_WORDS, "a conjunction")
    subj = self.np()
    verb, past = self.take(self.lex.verb_words, "a verb")
    obj = self.np()
    pp = (self.take(_PREP_WORDS, ""), self.np()) if self.peek() in _PREP_WORDS else None
    adv = self.take(_ADV_WORDS, "") if main and self.peek() in _ADV_WORDS else None
    sub = self.clause(False) if main and self.peek() in _CONJ_WORDS else None
    return Clause(subj, verb, past, obj, pp, adv, sub, conj)


def parse(source: str, extra_words: int = 0) -> list[Clause]:
  """The tree of an English sentence of this grammar (and lexicon); ValueError for anything else (the sentence must
  re-render to exactly itself, which also checks verb agreement and a/an)."""
  if not source.endswith("."):
    raise ValueError("a sentence ends with a period")
  parser = _Parser(source[:-1].split(" "), lexicon(extra_words))
  clauses = [parser.clause(True)]
  while parser.peek() == "and":
    parser.i += 1
    clauses.append(parser.clause(True))
  if parser.peek() is not None:
    raise ValueError(f"unexpected {parser.peek()!r} at word {parser.i + 1}")
  if render_source(clauses, extra_words) != source:
    raise ValueError(f"not a well-formed sentence (agreement, a/an or spacing): {source!r}")
  return clauses


def translate(source: str, extra_words: int = 0) -> str:
  """The one correct Toy German translation of an English sentence of this grammar (and lexicon)."""
  return render_target(parse(source, extra_words), extra_words)


def words(sentence: str) -> list[str]:
  """Word tokens with "," and "." split off (what the length and vocabulary figures count)."""
  return sentence.replace(",", " ,").replace(".", " .").split()


# ---------------------------------------------------------------------------------------------------------------------
# Sampling.

_DET_CHOICES = [("the", .30), ("a", .12), ("this", .05), ("that", .05), *[(d, .04) for d in
                ("my", "your", "his", "her", "our", "their")], *[(n, .03) for n in NUMERAL_TABLE], (None, .12)]
_DET_KEYS = [k for k, _ in _DET_CHOICES]
_DET_CUMULATIVE = list(itertools.accumulate(p for _, p in _DET_CHOICES))
P_PLURAL, P_ADJ = 0.4, (0.55, 0.88)  # P(plural) where the determiner allows both; P(<=0 adjectives), P(<=1)
P_PAST, P_PP, P_ADVERB, P_SUBORDINATE, P_SUB_PP, P_AND = 0.5, 0.35, 0.25, 0.3, 0.25, 0.2


class _Uniforms:
  """Uniform floats drawn from a numpy Generator in blocks (one call per float would take seconds per 100k)."""

  def __init__(self, rng: np.random.Generator):
    self.rng, self.buf, self.i = rng, [], 0

  def __call__(self) -> float:
    if self.i == len(self.buf):
      self.buf, self.i = self.rng.random(8192).tolist(), 0
    self.i += 1
    return self.buf[self.i - 1]

  def index(self, n: int) -> int:
    return int(self() * n)


def _draw(u: _Uniforms, lex: Lexicon, kind: str) -> int:
  """An index into the lexicon's nouns / adjectives / verbs: uniform for the base lexicon, else Zipfian."""
  if lex.cumulative is None:
    return u.index(len(lex.nouns if kind == "noun" else lex.adjectives if kind == "adj" else lex.verbs))
  cumulative = lex.cumulative[kind]
  return min(bisect.bisect(cumulative, u() * cumulative[-1]), len(cumulative) - 1)


def _sample_np(u: _Uniforms, lex: Lexicon) -> NP:
  det = _DET_KEYS[min(bisect.bisect(_DET_CUMULATIVE, u() * _DET_CUMULATIVE[-1]), len(_DET_KEYS) - 1)]
  singular_form, plural_form = DETERMINERS[det] if det is not None else (None, "")  # bare NPs are plural
  plural = singular_form is None or (plural_form is not None and u() < P_PLURAL)
  x = u()
  adjs = () if x < P_ADJ[0] else (_draw(u, lex, "adj"),) if x < P_ADJ[1] else _two_distinct(u, lex)
  return NP(det, adjs, _draw(u, lex, "noun"), plural)


def _two_distinct(u: _Uniforms, lex: Lexicon) -> tuple[int, int]:
  """Two different adjective indices (two adjectives are never the same word); Zipfian ones by redrawing the second."""
  if lex.cumulative is None:
    n = len(lex.adjectives)
    a, b = u.index(n), u.index(n - 1)
    return a, b + (b >= a)
  a = b = _draw(u, lex, "adj")
  while b == a:
    b = _draw(u, lex, "adj")
  return a, b


def _sample_clause(u: _Uniforms, lex: Lexicon, main: bool) -> Clause:
  conj = None if main else u.index(len(CONJUNCTIONS))
  subj, verb, past, obj = _sample_np(u, lex), _draw(u, lex, "verb"), u() < P_PAST, _sample_np(u, lex)
  pp = (u.index(len(PREPOSITIONS)), _sample_np(u, lex)) if u() < (P_PP if main else P_SUB_PP) else None
  adv = u.index(len(ADVERBS)) if main and u() < P_ADVERB else None
  sub = _sample_clause(u, lex, False) if main and u() < P_SUBORDINATE else None
  return Clause(subj, verb, past, obj, pp, adv, sub, conj)


def _sample_pairs(rng: np.random.Generator, extra_words: int = 0):
  """Endless (source, target) pairs; sentences outside MIN_WORDS..MAX_WORDS are redrawn."""
  u, lex = _Uniforms(rng), lexicon(extra_words)
  while True:
    clauses = [_sample_clause(u, lex, True)]
    if u() < P_AND:
      clauses.append(_sample_clause(u, lex, True))
    source = render_source(clauses, extra_words)
    if MIN_WORDS <= source.count(" ") + 1 <= MAX_WORDS:
      yield source, render_target(clauses, extra_words)


def generate_pairs(num: int, seed: int, extra_words: int = 0) -> list[tuple[str, str]]:
  """`num` (English, Toy German) pairs, the same for the same seed; `extra_words` coined entries extend the lexicon
  (see `lexicon`; 0, the default, is the original 90-entry open-class lexicon drawn uniformly)."""
  return list(itertools.islice(_sample_pairs(np.random.default_rng(seed), extra_words), num))


# split -> (seed stream id, hash buckets out of 100)
SPLITS = {"train": (1, range(0, 90)), "validation": (2, range(90, 95)), "test": (3, range(95, 100))}


def split_of(source: str) -> str:
  """The only split a source sentence may appear in (by crc32 of its text)."""
  bucket = zlib.crc32(source.encode()) % 100
  return next(name for name, (_, buckets) in SPLITS.items() if bucket in buckets)


def split(name: str, num: int, seed: int = 0, extra_words: int = 0) -> list[tuple[str, str]]:
  """`num` pairs of split `name` ("train", "validation" or "test"); disjoint from the other splits by construction.
  Use the same `extra_words` for all splits of one data set."""
  if name not in SPLITS:
    raise ValueError(f"unknown split {name!r}; expected one of {sorted(SPLITS)}")
  stream, buckets = SPLITS[name]
  pairs = _sample_pairs(np.random.default_rng([seed, stream]), extra_words)
  pairs = (p for p in pairs if zlib.crc32(p[0].encode()) % 100 in buckets)
  return list(itertools.islice(pairs, num))
