"""The toy English -> Toy German pair: determinism, splits, lengths, vocabulary, and each target rule on constructed
sentences (built from the lexicon tables, so a broken rule fails here rather than only lowering BLEU); the extended
lexicon (`extra_words`): coined forms, Zipfian word choice, and the default left exactly as it was."""
import collections
import hashlib
import re

import pytest

from jaxformer.data import toy_translation as tt
from jaxformer.data.toy_translation import ACC, DAT, NOM, det_form, translate, words

NOUN = {n.sg: n for n in tt.NOUNS}
ADJ = {a.en: a for a in tt.ADJECTIVES}
VERB = {v.base: v for v in tt.VERBS}
PREP = {p.en: p for p in tt.PREPOSITIONS}
ADV = {a.en: a.tg for a in tt.ADVERBS}
CONJ = {c.en: c.tg for c in tt.CONJUNCTIONS}


def tg_words(source: str, extra_words: int = 0) -> list[str]:
  return words(translate(source, extra_words=extra_words))


@pytest.fixture(scope="module")
def pairs():
  return tt.generate_pairs(5000, seed=0)


def test_generation_is_deterministic_per_seed(pairs):
  assert tt.generate_pairs(300, seed=0) == pairs[:300]
  other = tt.generate_pairs(300, seed=1)
  assert other != pairs[:300]
  assert len({s for s, _ in other} & {s for s, _ in pairs[:300]}) < 5


def test_format_and_length_range(pairs):
  lengths = [len(words(s)) - 1 for s, _ in pairs]  # the period is not a word
  assert min(lengths) == tt.MIN_WORDS and max(lengths) == tt.MAX_WORDS
  assert 9 < sum(lengths) / len(lengths) < 14
  for source, target in pairs:
    assert source == source.lower() and source.endswith(".") and source.count(".") == 1 and "  " not in source
    assert target.endswith(".") and target.count(".") == 1 and "  " not in target and "," not in source


def test_translate_reproduces_every_generated_target(pairs):
  # The target is a function of the source text: parsing the English recovers the tree exactly.
  assert [translate(s) for s, _ in pairs] == [t for _, t in pairs]
  assert len({s for s, _ in pairs}) > 0.99 * len(pairs)


def test_golden_translations():
  # Pins the coined lexicon: a changed hash, syllable table or coining order shows up here.
  assert translate("the man saw the woman.") == "der gidrak esa da neifaun gavauprik."
  assert translate("the woman sees the man.") == "da neifaun vaupriket den gidrak."
  assert translate("the cats see the man today.") == "zeibruk vauprikan di gluplumen den gidrak."
  assert (translate("the old dog saw two cats near the house yesterday because a girl likes the books.")
          == "teihak esa der duwan tipolo spezei gluplumen krem spibram gavauprik, "
             "nabrok ones driglin di gekrauli pedauret.")


def test_lexicon_sizes_and_unique_target_forms():
  assert (len(tt.NOUNS), len(tt.ADJECTIVES), len(tt.VERBS), len(tt.PREPOSITIONS)) == (50, 20, 20, 9)
  assert {n.gender for n in tt.NOUNS} == {"m", "f", "n"}
  assert min(sum(n.gender == g for n in tt.NOUNS) for g in "mfn") >= 12
  forms = [f for n in tt.NOUNS for f in (n.tg_sg, n.tg_pl)] + [f for a in tt.ADJECTIVES for f in a.tg.values()]
  forms += [f for v in tt.VERBS for f in (*v.tg_present.values(), v.tg_participle)]
  forms += [f for p in tt.PREPOSITIONS for f in (p.tg, p.tg + tt.CONTRACTION_SUFFIX)]
  forms += [w.tg for w in (*tt.ADVERBS, *tt.CONJUNCTIONS, *tt.NUMERALS)] + [*tt.AUXILIARY.values(), tt.AND]
  assert len(forms) == len(set(forms))
  assert not set(forms) & {det_form(d, c, gn) for d in tt.DET_STEM for c in (NOM, ACC, DAT) for gn in "mfn"}


def test_vocabulary_covers_the_lexicon(pairs):
  src_vocab = {*tt._ALL_WORDS, "."}
  tgt_vocab = {det_form(d, c, gn) for d in tt.DET_STEM for c in (NOM, ACC, DAT) for gn in ("m", "f", "n", "pl")
               if not (d == "a" and gn == "pl")}
  tgt_vocab |= {f for n in tt.NOUNS for f in (n.tg_sg, n.tg_pl)} | {f for a in tt.ADJECTIVES for f in a.tg.values()}
  tgt_vocab |= {f for v in tt.VERBS for f in (*v.tg_present.values(), v.tg_participle)}
  tgt_vocab |= {p.tg for p in tt.PREPOSITIONS} | {p.tg + "m" for p in tt.PREPOSITIONS if p.contracts}
  tgt_vocab |= {w.tg for w in (*tt.ADVERBS, *tt.CONJUNCTIONS, *tt.NUMERALS)} | {*tt.AUXILIARY.values(), tt.AND}
  tgt_vocab |= {",", "."}
  assert (len(src_vocab), len(tgt_vocab)) == (221, 353)
  seen_src = {w for s, _ in pairs for w in words(s)}
  seen_tgt = {w for _, t in pairs for w in words(t)}
  assert seen_src <= src_vocab and seen_tgt <= tgt_vocab
  assert len(seen_src) > 0.97 * len(src_vocab) and len(seen_tgt) > 0.97 * len(tgt_vocab)


def test_generated_data_exercises_every_rule(pairs):
  targets = [words(t) for _, t in pairs]
  aux = set(tt.AUXILIARY.values())
  contractions = {p.tg + "m" for p in tt.PREPOSITIONS if p.contracts}
  counts = {
    "past": sum(bool(aux & set(t)) for t in targets),
    "subordinate": sum("," in t for t in targets),
    "adverb first": sum(t[0] in ADV.values() for t in targets),
    "coordination": sum(tt.AND in t for t in targets),
    "contraction": sum(bool(contractions & set(t)) for t in targets),
    "numeral": sum(bool({w.tg for w in tt.NUMERALS} & set(t)) for t in targets),
  }
  assert all(n > 0.04 * len(pairs) for k, n in counts.items() if k != "contraction"), counts
  assert counts["contraction"] > 0.015 * len(pairs), counts


@pytest.mark.parametrize("gender", ["m", "f", "n"])
def test_articles_agree_in_gender_number_and_case(gender):
  noun = next(n for n in tt.NOUNS if n.gender == gender)
  other = next(n for n in tt.NOUNS if n.gender != gender)
  see = VERB["see"]
  subj = tg_words(f"the {noun.sg} sees the {other.sg}.")
  assert subj == [det_form("the", NOM, gender), noun.tg_sg, see.tg_present[False], det_form("the", ACC, other.gender),
                  other.tg_sg, "."]
  obj = tg_words(f"the {other.sg} sees the {noun.sg}.")
  assert obj[3:5] == [det_form("the", ACC, gender), noun.tg_sg]
  plural = tg_words(f"my {noun.pl} see this {other.sg}.")
  assert plural[:3] == ["mori", noun.tg_pl, see.tg_present[True]]
  assert plural[3] == det_form("this", ACC, other.gender)
  assert tg_words(f"a {noun.sg} sees those {other.pl}.")[0] == "on" + {"m": "er", "f": "a", "n": "es"}[gender]


def test_nominative_and_accusative_differ_only_for_masculine():
  assert [det_form("the", NOM, g) for g in ("m", "f", "n", "pl")] == ["der", "da", "des", "di"]
  assert [det_form("the", ACC, g) for g in ("m", "f", "n", "pl")] == ["den", "da", "des", "di"]
  assert [det_form("the", DAT, g) for g in ("m", "f", "n", "pl")] == ["dem", "dar", "dem", "din"]


def test_plural_suffix_depends_on_gender():
  for noun in tt.NOUNS:
    assert noun.tg_pl == noun.tg_sg + {"m": "e", "f": "en", "n": "i"}[noun.gender]
  # English irregular plurals are regular in the target.
  mouse = NOUN["mouse"]
  assert tg_words("the mice see the dog.")[:2] == ["di", mouse.tg_pl]


def test_adjectives_follow_the_noun_and_agree():
  old, red = ADJ["old"], ADJ["red"]
  for gender in "mfn":
    noun = next(n for n in tt.NOUNS if n.gender == gender)
    out = tg_words(f"the old red {noun.sg} sees the dogs.")
    assert out[:4] == [det_form("the", NOM, gender), noun.tg_sg, old.tg[gender], red.tg[gender]]
    out = tg_words(f"the dog sees two red {noun.pl}.")
    assert out[3:6] == [tt.NUMERALS[0].tg, noun.tg_pl, red.tg["pl"]]
  assert len({old.tg[g] for g in ("m", "f", "n", "pl")}) == 4


def test_past_tense_auxiliary_second_and_participle_clause_final():
  dog, cat, house, see = NOUN["dog"], NOUN["cat"], NOUN["house"], VERB["see"]
  out = tg_words("the dog saw the cat near the house.")
  assert out == ["der", dog.tg_sg, "esa", "da", cat.tg_sg, PREP["near"].tg + "m", house.tg_sg, see.tg_participle, "."]
  out = tg_words("the dogs saw the cat.")
  assert out[2] == "esan" and out[-2] == see.tg_participle
  # Present tense: no auxiliary, no participle.
  assert tg_words("the dog sees the cat.")[2] == see.tg_present[False]


def test_adverb_comes_first_and_inverts_subject_and_verb():
  dog, cat, see = NOUN["dog"], NOUN["cat"], VERB["see"]
  assert tg_words("the dog sees the cat today.") == [ADV["today"], see.tg_present[False], "der", dog.tg_sg, "da",
                                                     cat.tg_sg, "."]
  assert tg_words("the dog saw the cat yesterday.") == [ADV["yesterday"], "esa", "der", dog.tg_sg, "da", cat.tg_sg,
                                                        see.tg_participle, "."]


def test_subordinate_clause_is_verb_final():
  like, find, man, ball = VERB["like"], VERB["find"], NOUN["man"], NOUN["ball"]
  out = translate("the dog sees the cat because the man likes the balls.")
  sub = words(out.split(", ")[1])
  assert sub == [CONJ["because"], "der", man.tg_sg, "di", ball.tg_pl, like.tg_present[False], "."]
  out = translate("the dog sees the cat while the men found a ball with the cat.")
  sub = words(out.split(", ")[1])
  assert sub[0] == CONJ["while"] and sub[-3:] == [find.tg_participle, "esan", "."]
  assert sub[1:5] == ["di", man.tg_pl, "onen", ball.tg_sg]


def test_prepositions_govern_case_and_contract():
  def pp(phrase: str) -> list[str]:
    return tg_words(f"the cat sees the cat {phrase}.")[5:-1]

  dog, cat, house = NOUN["dog"], NOUN["cat"], NOUN["house"]
  near, with_, for_ = PREP["near"].tg, PREP["with"].tg, PREP["for"].tg
  assert pp("near the dog") == [near + "m", dog.tg_sg]  # dative m, contracted
  assert pp("near the house") == [near + "m", house.tg_sg]  # dative n, contracted
  assert pp("near the cat") == [near, "dar", cat.tg_sg]  # dative f: no contraction
  assert pp("near the dogs") == [near, "din", dog.tg_pl]
  assert pp("near a dog") == [near, "onem", dog.tg_sg]  # only the definite article contracts
  assert pp("with the dog") == [with_, "dem", dog.tg_sg]  # dative, not a contracting preposition
  assert pp("for the dog") == [for_, "den", dog.tg_sg]  # accusative
  assert pp("for the house") == [for_, "des", house.tg_sg]


def test_coordination_joins_two_main_clauses():
  a, b = "the dog sees the cat", "the cats saw my old hat today"
  assert translate(f"{a} and {b}.") == f"{translate(a + '.')[:-1]} {tt.AND} {translate(b + '.')}"


def test_source_side_agreement_and_malformed_input():
  assert translate("an old dog sees an apple.").split()[0] == "oner"
  for bad in ["the dog see the cat.", "the dogs sees the cat.", "a dogs see the cat.", "dog sees the cat.",
              "two dog sees the cat.", "a old dog sees the cat.", "an dog sees the cat.", "the dog sees the cat",
              "the dog sees the unicorn.", "the dog sees the cat near.", "the dog  sees the cat.",
              "the dog sees the cat today because the man likes the cat today."]:
    with pytest.raises(ValueError):
      translate(bad)


def test_splits_are_deterministic_and_disjoint():
  train, validation, test = tt.split("train", 3000), tt.split("validation", 300), tt.split("test", 300)
  assert tt.split("test", 300) == test and tt.split("test", 300, seed=1) != test
  sources = [{s for s, _ in part} for part in (train, validation, test)]
  assert not (sources[0] & sources[1] or sources[0] & sources[2] or sources[1] & sources[2])
  for name, part in (("train", train), ("validation", validation), ("test", test)):
    assert len(part) == {"train": 3000}.get(name, 300)
    assert all(tt.split_of(s) == name for s, _ in part)
  # The buckets are not vacuous: a plain sample lands in all three splits in proportion.
  names = [tt.split_of(s) for s, _ in tt.generate_pairs(2000, seed=5)]
  assert 0.85 < names.count("train") / 2000 < 0.95 and names.count("test") > 50 and names.count("validation") > 50
  with pytest.raises(ValueError):
    tt.split("dev", 10)


# ---------------------------------------------------------------------------------------------------------------------
# The extended lexicon (extra_words).

EXTRA = 3000


def digest(pairs) -> str:
  return hashlib.sha256(repr(pairs).encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def ext_pairs():
  return tt.generate_pairs(20000, seed=0, extra_words=EXTRA)


def test_default_output_is_exactly_the_original():
  # Digests recorded before extra_words existed: the default data set (and so every trained model's data) is unchanged.
  assert digest(tt.generate_pairs(2000, seed=0)) == digest(tt.generate_pairs(2000, seed=0, extra_words=0))
  assert digest(tt.generate_pairs(2000, seed=0)) == "2f851c0e16ce40ec"
  assert digest(tt.generate_pairs(500, seed=7)) == "37d3d9199c43f9f0"
  assert digest(tt.split("train", 300)) == "10476b0c4e6f8efd"
  assert digest(tt.split("validation", 100, seed=3)) == "a8ce87150f66e62e"
  assert digest(tt.split("test", 100, extra_words=0)) == "6e56eb479499cabb"
  assert tt.generate_pairs(2, seed=0)[1] == ("our happy child wants a lamp.",
                                             "nures stustaun dreglasu tuzutet ona hubrol.")
  assert tt.lexicon(0).nouns == tt.NOUNS and tt.lexicon(0).cumulative is None


def test_extended_lexicon_sizes_forms_and_morphology():
  lex = tt.lexicon(EXTRA)
  assert (len(lex.nouns), len(lex.adjectives), len(lex.verbs)) == (50 + 1800, 20 + 600, 20 + 600)
  assert (lex.nouns[:50], lex.adjectives[:20], lex.verbs[:20]) == (tt.NOUNS, tt.ADJECTIVES, tt.VERBS)
  small = tt.lexicon(500)  # coined in a fixed order: a smaller lexicon is a prefix of a larger one
  assert (small.nouns, small.adjectives, small.verbs) == (lex.nouns[:350], lex.adjectives[:120], lex.verbs[:120])
  nouns, adjs, verbs = lex.nouns[50:], lex.adjectives[20:], lex.verbs[20:]
  en = [f for n in nouns for f in (n.sg, n.pl)] + [a.en for a in adjs]
  en += [f for v in verbs for f in (v.base, v.s3, v.past)]
  assert len(en) == len(set(en)) == 6000 and not set(en) & set(tt._ALL_WORDS)
  assert all(re.fullmatch(r"[a-z]*[aeiou][a-z]*", w) and 2 <= len(w) <= 14 for w in en)
  assert sum(w[0] in "aeiou" for w in en) > 100  # some take "an"
  tg = [f for n in lex.nouns for f in (n.tg_sg, n.tg_pl)] + [f for a in lex.adjectives for f in a.tg.values()]
  tg += [f for v in lex.verbs for f in (*v.tg_present.values(), v.tg_participle)]
  tg += [f for p in tt.PREPOSITIONS for f in (p.tg, p.tg + tt.CONTRACTION_SUFFIX)]
  tg += [w.tg for w in (*tt.ADVERBS, *tt.CONJUNCTIONS, *tt.NUMERALS)] + [*tt.AUXILIARY.values(), tt.AND]
  assert len(tg) == len(set(tg)) and not set(tg) & {det_form(d, c, gn) for d in tt.DET_STEM for c in (NOM, ACC, DAT)
                                                    for gn in ("m", "f", "n", "pl")}
  # Regular morphology on both sides.
  assert all(n.pl == n.sg + ("es" if n.sg.endswith(("s", "x", "z", "sh", "ch")) else "s") for n in nouns)
  assert all(v.s3 == tt.en_plural(v.base) and v.past == v.base + ("d" if v.base.endswith("e") else "ed") for v in verbs)
  assert all(n.tg_pl == n.tg_sg + tt.PLURAL_SUFFIX[n.gender] for n in nouns)
  assert min(collections.Counter(n.gender for n in nouns).values()) > 500
  # Pins the coining (hash, syllable tables, order): coined words never depend on a run.
  assert (nouns[0].sg, nouns[0].gender, nouns[0].tg_sg, adjs[0].en, verbs[0].past) == (
    "floaskle", "f", "grubit", "prouvle", "poagished")
  with pytest.raises(ValueError):
    tt.lexicon(-1)


def test_extended_generation_is_deterministic(ext_pairs):
  assert tt.generate_pairs(300, seed=0, extra_words=EXTRA) == ext_pairs[:300]
  assert tt.generate_pairs(300, seed=1, extra_words=EXTRA) != ext_pairs[:300]
  test = tt.split("test", 200, extra_words=EXTRA)
  assert tt.split("test", 200, extra_words=EXTRA) == test and all(tt.split_of(s) == "test" for s, _ in test)


def test_extended_data_keeps_the_grammar_and_translates(ext_pairs):
  lengths = [len(words(s)) - 1 for s, _ in ext_pairs]
  assert min(lengths) == tt.MIN_WORDS and max(lengths) == tt.MAX_WORDS and 9 < sum(lengths) / len(lengths) < 14
  assert [translate(s, extra_words=EXTRA) for s, _ in ext_pairs[:5000]] == [t for _, t in ext_pairs[:5000]]
  # The base lexicon is part of every extended one: old sentences translate the same.
  assert translate("the old dog saw two cats near the house yesterday.", extra_words=EXTRA) == translate(
    "the old dog saw two cats near the house yesterday.")
  source = next(s for s, _ in ext_pairs if not set(words(s)) <= set(tt._ALL_WORDS))
  with pytest.raises(ValueError):
    translate(source)  # coined words are unknown to the default lexicon


def test_extended_words_follow_the_target_rules():
  lex = tt.lexicon(EXTRA)
  noun = next(n for n in lex.nouns[50:] if n.gender == "m")
  vowel_noun = next(n for n in lex.nouns[50:] if n.sg[0] in "aeiou")
  adj, verb = lex.adjectives[-1], lex.verbs[-1]
  out = tg_words(f"the {adj.en} {noun.sg} {verb.past} {vowel_noun.pl} near the {noun.sg}.", extra_words=EXTRA)
  assert out == ["der", noun.tg_sg, adj.tg["m"], "esa", vowel_noun.tg_pl, PREP["near"].tg + "m", noun.tg_sg,
                 verb.tg_participle, "."]
  out = tg_words(f"an {vowel_noun.sg} {verb.s3} the cat because {noun.pl} {verb.base} the cat.", extra_words=EXTRA)
  assert out[:3] == [det_form("a", NOM, vowel_noun.gender), vowel_noun.tg_sg, verb.tg_present[False]]
  assert out[-3:] == ["gluplum", verb.tg_present[True], "."]
  with pytest.raises(ValueError):
    translate(f"a {vowel_noun.sg} {verb.s3} the cat.", extra_words=EXTRA)  # a/an agrees with coined words too


def test_word_choice_is_zipfian(ext_pairs):
  # Within a class the i-th entry has probability proportional to 1 / (i + 1) (base entries first).
  lex = tt.lexicon(EXTRA)
  tokens = [w for s, _ in ext_pairs for w in words(s)]
  noun_counts = collections.Counter(lex.noun_words[w][0] for w in tokens if w in lex.noun_words)
  verb_counts = collections.Counter(lex.verb_words[w][0] for w in tokens if w in lex.verb_words)
  total = sum(noun_counts.values())
  assert noun_counts.most_common(1)[0][0] == 0 and verb_counts.most_common(1)[0][0] == 0
  harmonic = sum(1 / (i + 1) for i in range(len(lex.nouns)))
  assert noun_counts[0] / total == pytest.approx(1 / harmonic, rel=0.05)
  expected = 1 / (sum(1 / (i + 1) for i in range(90, 110)) / 20)  # the 1st noun vs the 91st..110th
  assert noun_counts[0] / (sum(noun_counts[i] for i in range(90, 110)) / 20) == pytest.approx(expected, rel=0.2)
  assert sum(noun_counts[i] for i in range(50)) / total == pytest.approx(
    sum(1 / (i + 1) for i in range(50)) / harmonic, rel=0.05)  # the base nouns keep about half the mass
  # Most words are rare: in ~70k noun tokens the median coined noun is seen about 9 times, the 1st about 8500.
  assert sorted(noun_counts[i] for i in range(50, len(lex.nouns)))[900] < 15 and noun_counts[0] > 5000


def test_vocabulary_grows_with_the_lexicon(ext_pairs):
  lex = tt.lexicon(EXTRA)
  src_vocab = {*tt._ALL_WORDS, *lex.noun_words, *lex.adj_words, *lex.verb_words, "."}
  tgt_vocab = {det_form(d, c, gn) for d in tt.DET_STEM for c in (NOM, ACC, DAT) for gn in ("m", "f", "n", "pl")
               if not (d == "a" and gn == "pl")}
  tgt_vocab |= {f for n in lex.nouns for f in (n.tg_sg, n.tg_pl)} | {f for a in lex.adjectives for f in a.tg.values()}
  tgt_vocab |= {f for v in lex.verbs for f in (*v.tg_present.values(), v.tg_participle)}
  tgt_vocab |= {p.tg for p in tt.PREPOSITIONS} | {p.tg + "m" for p in tt.PREPOSITIONS if p.contracts}
  tgt_vocab |= {w.tg for w in (*tt.ADVERBS, *tt.CONJUNCTIONS, *tt.NUMERALS)}
  tgt_vocab |= {*tt.AUXILIARY.values(), tt.AND, ",", "."}
  assert (len(src_vocab), len(tgt_vocab)) == (221 + 6000, 353 + 7800)
  seen_src = {w for s, _ in ext_pairs for w in words(s)}
  seen_tgt = {w for _, t in ext_pairs for w in words(t)}
  assert seen_src <= src_vocab and seen_tgt <= tgt_vocab
  assert len(seen_src) > 0.9 * len(src_vocab) and len(seen_tgt) > 0.9 * len(tgt_vocab)
