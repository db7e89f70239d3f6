"""Open-class English words for the everyday-sentence generator, with their frequencies and inflections.

Built from two packages that ship their data (offline, the ``everyday`` extra):

- ``wordfreq``: the most frequent English words and their frequencies (many sources: subtitles,
  Wikipedia, news, books, web text), so the generator's word choice follows real usage;
- ``lemminflect``: a dictionary of English lemmas by part of speech (from the SPECIALIST lexicon) and their
  inflections (plurals, verb tenses, comparatives), so a word lands only in slots its part of speech fits and
  is inflected correctly (``child`` -> ``children``, ``go`` -> ``went``).

A word of wordfreq's list is a noun / verb / adjective / adverb lemma when lemminflect lists it as its own
lemma under that part of speech (proper nouns, abbreviations and non-words are not in lemminflect's
dictionary). Closed-class words (pronouns, determiners, prepositions, auxiliaries) come from the generator's
frames instead. Weights are frequency ** ``FLATTEN``: common words dominate as in real text, while the rarer
part of the list still appears.
"""
from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["Lexicon", "WeightedWords", "lexicon", "TOP_WORDS", "FLATTEN", "CLOSED_CLASS"]

TOP_WORDS = 25000  # the lexicon's words come from wordfreq's top-N English list
FLATTEN = 0.6      # weight = frequency ** FLATTEN (1: as frequent as in text; 0: uniform)

# Words the frames place themselves (and a few that lemminflect also files as nouns / verbs / adjectives but
# that read wrongly in an open slot); they never fill an open-class slot.
CLOSED_CLASS = frozenset("""
a an the this that these those my your his her its our their me him us them i you he she it we they who whom
whose which what where when why how all any some no none every each either neither both few many much more most
other another such one two three four five six seven eight nine ten first second third last next own same
and or but nor so yet for if than then because while although though unless until since as of in on at by to
from with without about above below under over into onto upon off out up down through across after before
between among around against along near behind beyond toward towards per via
be is am are was were been being have has had having do does did doing done will would shall should can could
may might must ought not yes ok okay oh hey hi hello please thanks thank well very too also just only even
still already here there now today tomorrow yesterday tonight ago else ever never always often sometimes
mr mrs ms dr st etc vs lol omg going gonna wanna
someone somebody something anyone anybody anything everyone everybody everything nobody nothing myself yourself
himself herself itself ourselves themselves whether due once like
""".split())

# Vulgar or offensive words that wordfreq's web and subtitle sources rank high: left out of every slot.
EXCLUDED = frozenset("""
fuck fucking fucked shit shitty damn dammit bitch bastard crap cunt dick cock pussy ass arse asshole twat
whore slut piss pissed bollocks wank wanker porn porno nude sexy rape rapist nigger nigga fag faggot
retard retarded suicide cocaine heroin meth
""".split())


@dataclass(frozen=True)
class WeightedWords:
    """Words with cumulative weights, for seeded frequency-weighted draws."""

    words: tuple[str, ...]
    cum: tuple[float, ...]

    @classmethod
    def of(cls, pairs) -> "WeightedWords":
        words, cum, total = [], [], 0.0
        for w, weight in pairs:
            total += weight
            words.append(w)
            cum.append(total)
        return cls(tuple(words), tuple(cum))

    def draw(self, rng: random.Random) -> str:
        return self.words[bisect.bisect_right(self.cum, rng.random() * self.cum[-1])]

    def __len__(self) -> int:
        return len(self.words)


@dataclass(frozen=True)
class Lexicon:
    nouns: WeightedWords          # lemmas that have a plural (count nouns)
    mass_nouns: WeightedWords     # lemmas without one (water, advice, ...)
    verbs: WeightedWords          # lemmas with every tense form
    adjectives: WeightedWords
    adverbs: WeightedWords        # -ly adverbs of manner and the like
    forms: dict                   # (lemma, tag) -> form, tags: NNS, VBD, VBN, VBG, VBZ, JJR, JJS

    def form(self, lemma: str, tag: str) -> str | None:
        return self.forms.get((lemma, tag))


def _good(word: str) -> bool:
    return word.isascii() and word.isalpha() and word.islower() and len(word) > 1 \
        and word not in CLOSED_CLASS and word not in EXCLUDED


EVIDENCE = 0.05  # a form must be at least this frequent relative to the lemma (see ``lexicon``)


@lru_cache(maxsize=4)
def lexicon(top: int = TOP_WORDS, flatten: float = FLATTEN) -> Lexicon:
    """The lexicon from wordfreq's ``top`` most frequent English words (a few seconds; cached).

    lemminflect files many words under several parts of speech ("eye" the verb, "old" the noun); a word fills
    a slot only when its text shows that use: a noun's plural, a verb's past or -ing form at least
    ``EVIDENCE`` times as frequent as the word itself. Nouns without a frequent plural that are not also
    adjectives are mass nouns ("water", "advice")."""
    try:
        import lemminflect
        import wordfreq
    except ImportError as e:  # the everyday extra is not installed
        raise ImportError(f"{e.name} is needed for the everyday-English corpus: pip install 'molora[everyday]'") from e

    def freq(w: str) -> float:
        return wordfreq.word_frequency(w, "en")

    def inflect(lemma: str, tag: str) -> str | None:
        got = lemminflect.getInflection(lemma, tag=tag)
        return got[0] if got and _good_form(got[0]) else None

    pools: dict[str, list] = {"NOUN": [], "MASS": [], "VERB": [], "ADJ": [], "ADV": []}
    forms: dict = {}
    for word in wordfreq.top_n_list("en", top):
        if not _good(word):
            continue
        f = freq(word)
        weight = f ** flatten
        poses = {pos for pos, lemmas in lemminflect.getAllLemmas(word).items() if word in lemmas}
        if "NOUN" in poses:
            plural = inflect(word, "NNS")
            if plural and plural != word and freq(plural) >= EVIDENCE * f:
                forms[(word, "NNS")] = plural
                pools["NOUN"].append((word, weight))
            elif not poses & {"ADJ", "ADV"}:
                pools["MASS"].append((word, weight))
        if "VERB" in poses:
            vf = {t: inflect(word, t) for t in ("VBD", "VBN", "VBG", "VBZ")}
            if all(vf.values()) and max(freq(vf["VBD"]), freq(vf["VBG"])) >= EVIDENCE * f:
                forms.update({(word, t): v for t, v in vf.items()})
                pools["VERB"].append((word, weight))
        if "ADJ" in poses and (word, "NNS") not in forms:
            pools["ADJ"].append((word, weight))
        if "ADV" in poses and word.endswith("ly"):  # the frames place the other adverbs (here, soon, again, ...)
            pools["ADV"].append((word, weight))
    return Lexicon(WeightedWords.of(pools["NOUN"]), WeightedWords.of(pools["MASS"]), WeightedWords.of(pools["VERB"]),
                   WeightedWords.of(pools["ADJ"]), WeightedWords.of(pools["ADV"]), forms)


def _good_form(form: str) -> bool:
    return form.isascii() and form.isalpha() and form not in EXCLUDED
