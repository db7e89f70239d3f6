"""A seeded generator of everyday English sentences with a broad vocabulary, for the tiny preset's tokenizer,
language model and speech pretraining (``scripts/pretrain_tiny.py --corpus everyday``).

    from molora.synthetic.everyday import everyday_sentences
    everyday_sentences(3, seed=0)   # ['Did you send the invoice to Megan yesterday?', ...]

Each sentence comes from a grammatical frame (statements in several tenses, negations, questions, requests,
plans, opinions, errands and schedules, two clauses joined) whose open slots take frequency-weighted nouns,
verbs, adjectives and adverbs from ``everyday_lexicon`` (wordfreq x lemminflect, about 10,000 lemmas) and whose
entity slots take names, places, companies, dates, times, money, phone numbers and counts from
``everyday_entities`` (faker, inflect). Sentences are written as people write them: capitalised, punctuated,
digits for times, prices and phone numbers. The same seed gives the same sentences (for the locked versions of
the ``everyday`` extra); the words do not always make sense together, the grammar does.

``benchmarks/data/everyday_heldout.txt`` is written by hand and never produced here: the tests check that no
held-out sentence and none of its 6-word windows appear in a large sample (``tests/test_everyday.py``).
"""
from __future__ import annotations

import random

from .everyday_entities import entities
from .everyday_lexicon import CLOSED_CLASS, lexicon

__all__ = ["everyday_sentence", "everyday_sentences", "FRAMES"]

# Subjects: (text, person) with person "1s" (I), "3s" (he / she / it / a name), "pl" (you / we / they / plurals)
PRONOUNS = (("I", "1s"), ("you", "pl"), ("we", "pl"), ("they", "pl"), ("he", "3s"), ("she", "3s"))
KIN = ("mom", "dad", "mother", "father", "sister", "brother", "wife", "husband", "son", "daughter", "friend",
       "boss", "neighbor", "teacher", "doctor", "grandmother", "grandfather", "aunt", "uncle", "cousin",
       "roommate", "coworker", "manager", "landlord", "partner", "baby", "kids", "parents", "friends",
       "neighbors", "grandparents", "team")
PLURAL_KIN = {"kids", "parents", "friends", "neighbors", "grandparents"}
POSSESSIVES = ("my", "your", "our", "his", "her", "their")
DETERMINERS = ("the", "the", "the", "a", "my", "your", "our", "this", "that", "his", "her", "their")
PLURAL_DETERMINERS = ("the", "some", "these", "those", "my", "our", "all the", "a few", "two", "three")
PREPOSITIONS = ("in", "on", "at", "near", "behind", "under", "next to", "across from", "inside", "outside",
                "by", "around", "from", "into", "for", "with", "without", "about", "after", "before", "between",
                "over", "during", "along", "through", "across", "down", "past", "like", "as", "instead of")
WHEN = ("today", "tomorrow", "yesterday", "tonight", "this morning", "this afternoon", "this evening",
        "last night", "next week", "last week", "this weekend", "next month", "last year", "right now", "soon",
        "later", "in a minute", "in an hour", "every day", "every morning", "on weekends", "after lunch",
        "before dinner", "early", "again", "at the moment", "for a while", "all day", "then", "still", "anymore",
        "by then", "over the weekend", "during the week", "once a week", "twice a month", "as soon as possible")
WHERE = ("at home", "at work", "at school", "downtown", "upstairs", "downstairs", "outside", "in the car",
         "in the kitchen", "at the office", "at the store", "in the garden", "on the bus", "on the train",
         "at the station", "in town", "across the street", "around the corner", "on the phone", "online",
         "somewhere", "anywhere", "everywhere", "nearby", "over there", "back home", "abroad", "down the hall")
MODALS = ("can", "could", "should", "might", "must", "will", "would", "may")
ADVERBS = ("really", "probably", "usually", "always", "never", "sometimes", "just", "already", "still",
           "actually", "finally", "often", "maybe", "quickly", "carefully", "almost", "rarely", "hardly", "even",
           "also", "only", "both", "all", "each", "much", "then", "once")
FEELINGS = ("happy", "tired", "busy", "sorry", "sure", "glad", "worried", "excited", "ready", "hungry", "late",
            "sick", "bored", "surprised", "nervous", "fine", "cold", "hot", "early", "free", "lucky")
OPINIONS = ("I think", "I guess", "I hope", "I know", "I heard", "I'm sure", "I'm afraid", "It seems",
            "Apparently", "To be honest", "Honestly", "Luckily", "Unfortunately", "By the way", "Actually",
            "I wonder if", "I believe", "I feel like", "I forgot", "Don't worry,")
JOINERS = ("and", "but", "so", "because", "when", "while", "after", "before", "if", "although", "until", "since",
           "or")
WEATHER = ("sunny", "cloudy", "rainy", "windy", "foggy", "freezing", "warm", "hot", "cold", "humid", "chilly",
           "stormy", "snowing", "raining", "nice out", "clear")
PLACES = ("store", "bank", "post office", "pharmacy", "grocery store", "library", "gym", "park", "airport",
          "station", "hospital", "office", "restaurant", "cafe", "mall", "school", "beach", "hotel", "doctor's",
          "dentist", "bakery", "market", "museum", "theater", "gas station", "hair salon", "laundromat")
ERRANDS = ("pick up", "drop off", "return", "order", "buy", "bring", "grab", "get", "pay for", "fix", "clean",
           "wash", "check", "mail", "print", "book", "cancel", "renew", "charge", "find")
GREETINGS = ("Hi", "Hello", "Hey", "Good morning", "Good afternoon", "Good evening", "Thanks", "Thank you",
             "Excuse me", "Sorry", "Okay", "Yes", "No", "Well", "Oh", "Sure", "Great", "Alright")
NEGATIONS = ("don't", "do not", "can't", "won't", "shouldn't")
NEGATIONS_3S = ("doesn't", "does not", "can't", "won't", "shouldn't")
NEGATIONS_PAST = ("didn't", "did not", "couldn't", "wouldn't")
SUGGESTIONS = ("Let me", "Let's", "We should", "You'd better", "I'd like to", "We could")
WH = ("What", "Where", "When", "Why", "How", "Who", "Which")


class _Ctx:
    """Slot fillers bound to one sentence's ``rng``."""

    def __init__(self, rng: random.Random):
        self.rng, self.lex, self.ent = rng, lexicon(), entities()

    def pick(self, seq):
        return self.rng.choice(seq)

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    # words
    def noun(self, plural: bool = False) -> str:
        n = self.lex.nouns.draw(self.rng)
        return self.lex.form(n, "NNS") if plural else n

    def mass(self) -> str:
        return self.lex.mass_nouns.draw(self.rng)

    def adj(self) -> str:
        return self.lex.adjectives.draw(self.rng)

    def adv(self) -> str:
        return self.lex.adverbs.draw(self.rng) if self.chance(0.5) else self.pick(ADVERBS)

    def verb(self) -> str:
        return self.lex.verbs.draw(self.rng)

    def vform(self, lemma: str, tag: str) -> str:
        return lemma if tag == "VB" else self.lex.form(lemma, tag)

    # phrases
    def np(self, plural: bool | None = None) -> str:
        """A noun phrase: "the old printer", "an idea", "three blue umbrellas", "some advice", "Megan"."""
        k = self.rng.random()
        if k < 0.08:
            return self.ent.person(self.rng)
        if k < 0.18:
            return f"{self.pick(('some', 'the', 'more', 'enough', 'no', 'any'))} {self.mass()}"
        plural = self.chance(0.3) if plural is None else plural
        head = (self.adj() + " " if self.chance(0.35) else "") + self.noun(plural)
        if plural:
            det = self.ent.count(self.rng) if self.chance(0.3) else self.pick(PLURAL_DETERMINERS)
            return f"{det} {head}"
        det = self.pick(DETERMINERS)
        return self.ent.article(head) if det == "a" else f"{det} {head}"

    def subject(self) -> tuple[str, str]:
        k = self.rng.random()
        if k < 0.55:
            return self.pick(PRONOUNS)
        if k < 0.7:
            return self.ent.person(self.rng), "3s"
        if k < 0.85:
            kin = self.pick(KIN)
            return f"{self.pick(POSSESSIVES)} {kin}", "pl" if kin in PLURAL_KIN else "3s"
        plural = self.chance(0.4)
        return f"the {self.noun(plural)}", "pl" if plural else "3s"

    def pp(self) -> str:
        return f"{self.pick(PREPOSITIONS)} {self.np()}"

    def when(self) -> str:
        k = self.rng.random()
        if k < 0.6:
            return self.pick(WHEN)
        if k < 0.75:
            return f"at {self.ent.clock(self.rng)}"
        if k < 0.9:
            return f"on {self.ent.date(self.rng)}"
        return f"on {self.ent.day(self.rng)}" if self.chance(0.7) else f"in {self.ent.month(self.rng)}"

    def where(self) -> str:
        k = self.rng.random()
        if k < 0.5:
            return self.pick(WHERE)
        if k < 0.6:
            return f"in {self.ent.city(self.rng)}"
        if k < 0.7:
            return f"in {self.ent.state(self.rng) if self.chance(0.5) else self.ent.country(self.rng)}"
        if k < 0.85:
            return f"at the {self.pick(PLACES)}"
        return self.pp()

    def tail(self) -> str:
        """Optional adjuncts after a verb phrase."""
        parts = []
        if self.chance(0.3):
            parts.append(self.pp())
        if self.chance(0.25):
            parts.append(self.where())
        if self.chance(0.35):
            parts.append(self.when())
        return (" " + " ".join(parts)) if parts else ""

    def vp(self, person: str, tense: str | None = None) -> str:
        """A conjugated verb phrase with its object: "has already fixed the sink", "didn't call Tom"."""
        v = self.verb()
        obj = (" " + self.np()) if self.chance(0.8) else ""
        tense = tense or self.pick(("present", "past", "past", "future", "progressive", "perfect", "modal",
                                    "negative", "negative_past", "going_to", "want", "perfect_progressive",
                                    "past_perfect", "past_progressive", "used_to"))
        third = person == "3s"
        be = {"1s": "am", "3s": "is", "pl": "are"}[person]
        if tense == "present":
            return f"{self.vform(v, 'VBZ') if third else v}{obj}"
        if tense == "past":
            return f"{self.vform(v, 'VBD')}{obj}"
        if tense == "future":
            return f"will {v}{obj}"
        if tense == "progressive":
            return f"{be} {self.vform(v, 'VBG')}{obj}"
        if tense == "perfect":
            adv = self.pick(("", "", "already ", "just ", "never ", "finally "))
            return f"{'has' if third else 'have'} {adv}{self.vform(v, 'VBN')}{obj}"
        if tense == "modal":
            return f"{self.pick(MODALS)} {v}{obj}"
        if tense == "negative":
            return f"{self.pick(NEGATIONS_3S if third else NEGATIONS)} {v}{obj}"
        if tense == "negative_past":
            return f"{self.pick(NEGATIONS_PAST)} {v}{obj}"
        if tense == "perfect_progressive":
            return f"{'has' if third else 'have'} been {self.vform(v, 'VBG')}{obj}"
        if tense == "past_perfect":
            return f"had {self.pick(('', '', 'already ', 'never ', 'just '))}{self.vform(v, 'VBN')}{obj}"
        if tense == "past_progressive":
            return f"{'were' if person == 'pl' else 'was'} {self.vform(v, 'VBG')}{obj}"
        if tense == "used_to":
            return f"used to {v}{obj}"
        if tense == "going_to":
            return f"{be} going to {v}{obj}"
        return f"{'wants' if third else 'want'} to {v}{obj}"


def _statement(c: _Ctx) -> str:
    subj, person = c.subject()
    return f"{subj} {c.vp(person)}{c.tail()}."


def _question(c: _Ctx) -> str:
    subj, person = c.subject()
    v = c.verb()
    obj = c.np()
    k = c.rng.random()
    if k < 0.3:
        aux = "Does" if person == "3s" else c.pick(("Do", "Did"))
        return f"{aux} {subj} {v} {obj}{c.tail()}?"
    if k < 0.5:
        return f"{c.pick(('Can', 'Could', 'Would', 'Should', 'Will'))} {subj} {v} {obj}{c.tail()}?"
    if k < 0.7:
        wh = c.pick(WH)
        aux = "does" if person == "3s" else c.pick(("do", "did"))
        return f"{wh} {aux} {subj} {v}{c.tail()}?"
    if k < 0.85:
        be = {"1s": "am", "3s": "is", "pl": "are"}[person]
        return f"{c.pick(('Where', 'Why', 'When', 'How long'))} {be} {subj} {c.vform(v, 'VBG')} {obj}?"
    if k < 0.92:
        return f"{c.pick(('Is there', 'Have you seen', 'Do you have', 'Where is', 'Who has'))} {c.np(False)}?"
    return f"Are there any {c.noun(True)} {c.pp()}?"


def _request(c: _Ctx) -> str:
    v, obj = c.verb(), c.np()
    k = c.rng.random()
    if k < 0.3:
        return f"Please {v} {obj}{c.tail()}."
    if k < 0.5:
        return f"Don't forget to {v} {obj}{c.tail()}."
    if k < 0.7:
            return f"{c.pick(('Can you', 'Could you', 'Would you', 'Will you'))} {v} {obj}{c.tail()}?"
    if k < 0.8:
        return f"{c.pick(SUGGESTIONS)} {v} {obj}{c.tail()}."
    return f"{v.capitalize()} {obj} {c.pick(WHEN)}{c.pick(('.', ', please.', '!'))}"


def _errand(c: _Ctx) -> str:
    subj, person = c.subject()
    be = {"1s": "am", "3s": "is", "pl": "are"}[person]
    errand, place = c.pick(ERRANDS), c.pick(PLACES)
    k = c.rng.random()
    if k < 0.35:
        need = ("needs to", "has to") if person == "3s" else ("need to", "have to")
        return f"{subj} {c.pick(need + ('should', 'will', 'can'))} {errand} {c.np()} at the {place} " \
               f"{c.when()}."
    if k < 0.6:
        return f"{subj} {be} going to the {place} {c.when()}."
    if k < 0.8:
        return f"Can you {errand} {c.np()} on your way {c.pick(('home', 'back', 'to work', 'out'))}?"
    return f"The {place} {c.pick(('opens', 'closes'))} at {c.ent.clock(c.rng)} on {c.ent.day(c.rng)}s."


def _schedule(c: _Ctx) -> str:
    e, rng = c.ent, c.rng
    k = rng.random()
    event = f"{c.pick(('the', 'our', 'my', 'your'))} {c.pick(('meeting', 'appointment', 'flight', 'train', 'class', 'party', 'interview', 'game', 'concert', 'dinner', 'call', 'lesson', 'shift', 'exam', 'wedding'))}"
    if k < 0.3:
        return f"{event.capitalize()} is {c.pick(('on', 'moved to', 'set for'))} {e.date(rng)} at {e.clock(rng)}."
    if k < 0.5:
        return f"What time does {event} {c.pick(('start', 'end', 'leave', 'arrive'))}?"
    if k < 0.7:
        return f"{event.capitalize()} {c.pick(('starts', 'ends', 'leaves', 'arrives'))} at {e.clock(rng)} " \
               f"{c.pick(WHEN)}."
    if k < 0.85:
        return f"I was born on {e.date(rng)}, {e.year(rng)}." if rng.random() < 0.3 else \
            f"{c.subject()[0]} {c.pick(('moved here', 'started working', 'got married', 'graduated'))} in {e.year(rng)}."
    return f"It takes about {e.count(rng)} {c.pick(('minutes', 'hours', 'days', 'weeks'))} to get to {e.city(rng)}."


def _numbers(c: _Ctx) -> str:
    e, rng = c.ent, c.rng
    k = rng.random()
    if k < 0.2:
        return f"{c.pick(('It costs', 'That comes to', 'I paid', 'The bill was', 'She owes me', 'We spent', 'It was only'))} " \
               f"{e.money(rng)}."
    if k < 0.35:
        return f"{c.pick(('My number is', 'Call me at', 'You can reach him at', 'Their phone number is', 'Text me at'))} " \
               f"{e.phone(rng)}."
    if k < 0.5:
        return f"{c.pick(('There are', 'We have', 'I counted', 'They sold', 'We need'))} {e.count(rng)} " \
               f"{c.noun(True)}{c.tail()}."
    if k < 0.6:
        return f"{c.pick(('She lives on the', 'The office is on the', 'We parked on the', 'Take the elevator to the'))} " \
               f"{e.ordinal(rng.randint(1, 30), rng.random() < 0.7)} floor."
    if k < 0.7:
        return f"{c.pick(('About', 'Almost', 'Only', 'More than'))} {e.percent(rng)} of the {c.noun(True)} " \
               f"{c.pick(('are', 'were'))} {c.adj()}."
    if k < 0.8:
        return f"{c.pick(('The score was', 'The room number is', 'The code is', 'It weighs', 'The total is'))} " \
               f"{e.number(rng)}{c.pick(('', '', ' pounds', ' miles', ' kilos', ' points'))}."
    if k < 0.9:
        return f"{c.pick(('I live at', 'Send it to', 'The party is at', 'Meet me at', 'Their new address is'))} " \
               f"{e.address(rng)}."
    return f"{e.person(rng)} works for {e.company(rng)}{c.pick(('.', ' in ' + e.city(rng) + '.', ' now.'))}"


def _describe(c: _Ctx) -> str:
    k = c.rng.random()
    noun = c.noun()
    if k < 0.3:
        return f"{c.pick(('The', 'This', 'That', 'My', 'Your'))} {noun} {c.pick(('is', 'was', 'looks', 'seems', 'feels'))} " \
               f"{c.pick(('very ', 'really ', 'too ', 'so ', 'pretty ', ''))}{c.adj()}."
    if k < 0.45:
        a = c.adj()
        comp = c.lex.form(a, "JJR") if c.lex.form(a, "JJR") and len(a) < 7 else f"more {a}"
        return f"This {noun} is {comp} than {c.np()}."
    if k < 0.6:
        return f"It's {c.pick(WEATHER)} {c.pick(('today', 'outside', 'again', 'this morning', 'in ' + c.ent.city(c.rng)))}."
    if k < 0.8:
        subj, person = c.subject()
        be = {"1s": "am", "3s": "is", "pl": "are"}[person]
        return f"{subj} {be} {c.pick(('so ', 'a little ', 'really ', 'not ', ''))}{c.pick(FEELINGS)}" \
               f"{c.pick(('', '', ' today', ' about ' + c.np(), ' because of ' + c.np()))}."
    return f"There {c.pick(('is', 'was'))} {c.np(False)} {c.pp()}."


def _inner(c: _Ctx, sentence: str) -> str:
    """``sentence`` inside another one: its first word lower-cased unless it is "I" or a name."""
    first = sentence.split(" ", 1)[0]
    low = first.lower()
    if low in CLOSED_CLASS or low in ("it's", "don't", "let's", "let", "there") or c.lex.form(low, "VBD"):
        return low + sentence[len(first):]
    return sentence


def _opinion(c: _Ctx) -> str:
    return f"{c.pick(OPINIONS)} {_inner(c, _statement(c))}"


def _compound(c: _Ctx) -> str:
    a, b = _statement(c), _statement(c)
    return f"{a[:-1]}{',' if c.chance(0.5) else ''} {c.pick(JOINERS)} {_inner(c, b)}"


def _greeting(c: _Ctx) -> str:
    rest = c.pick((_question, _request, _statement, _describe))(c)
    name = f" {c.ent.first_name(c.rng)}" if c.chance(0.4) else ""
    return f"{c.pick(GREETINGS)}{name}, {_inner(c, rest)}"


FRAMES = ((_statement, 22), (_question, 16), (_request, 9), (_errand, 8), (_schedule, 9), (_numbers, 12),
          (_describe, 11), (_opinion, 6), (_compound, 5), (_greeting, 4))


def everyday_sentence(rng: random.Random) -> str:
    """One sentence (4-30 words) drawn with ``rng``."""
    frames, weights = zip(*FRAMES)
    c = _Ctx(rng)
    while True:
        s = rng.choices(frames, weights)[0](c)
        s = " ".join(s.split()).replace("..", ".").replace(".?", "?").replace(".!", "!")
        s = s[0].upper() + s[1:]
        if 4 <= len(s.split()) <= 30:
            return s


def everyday_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` sentences, deterministic for ``seed`` (a prefix of a longer list for the same seed)."""
    rng = random.Random(f"molora-everyday-{seed}")
    return [everyday_sentence(rng) for _ in range(n)]
