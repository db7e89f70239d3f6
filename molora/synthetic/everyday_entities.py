"""Names, places, companies, dates, times, money, phone numbers and numbers for everyday sentences, written
the way people write them (digits for times, prices and phone numbers; words for small counts).

Sources (the ``everyday`` extra, offline): ``faker``'s en_US provider (first and last names weighted by how
common they are, street addresses, US states, company names, countries, and -- through its time-zone list --
real city names) and ``inflect`` (number words, ordinals, "a" / "an"). Every draw takes the caller's
``random.Random``, so a sentence is a function of the seed alone (for the locked package versions).
"""
from __future__ import annotations

import random
from functools import lru_cache

__all__ = ["Entities", "entities"]

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
TITLES = ("Mr.", "Mrs.", "Ms.", "Dr.")


class Entities:
    """Seeded draws of everyday entities (one per call; ``rng`` is the sentence's generator)."""

    def __init__(self):
        try:
            import inflect
            from faker import Faker
        except ImportError as e:
            raise ImportError(f"{e.name} is needed for the everyday-English corpus: pip install 'molora[everyday]'") \
                from e
        self._fake = Faker("en_US")
        self._inflect = inflect.engine()
        self.cities = _real_cities()

    def _with(self, rng: random.Random):
        self._fake.random = rng
        return self._fake

    # people and organisations
    def first_name(self, rng): return self._with(rng).first_name()
    def last_name(self, rng): return self._with(rng).last_name()
    def full_name(self, rng): return f"{self.first_name(rng)} {self.last_name(rng)}"
    def titled_name(self, rng): return f"{rng.choice(TITLES)} {self.last_name(rng)}"
    def company(self, rng): return self._with(rng).company()

    def person(self, rng) -> str:
        k = rng.random()
        return self.first_name(rng) if k < 0.6 else self.full_name(rng) if k < 0.85 else self.titled_name(rng)

    # places
    def city(self, rng): return rng.choice(self.cities)
    def state(self, rng): return self._with(rng).state()
    def country(self, rng): return self._with(rng).country()
    def street(self, rng): return self._with(rng).street_name()

    def address(self, rng) -> str:
        k = rng.random()
        if k < 0.5:
            return f"{rng.randint(1, 9999)} {self.street(rng)}"
        if k < 0.8:
            return f"{rng.randint(1, 999)} {self.street(rng)} in {self.city(rng)}"
        return self._with(rng).street_address()

    # numbers
    def words(self, n: int) -> str:
        return self._inflect.number_to_words(n)

    def ordinal(self, n: int, words: bool) -> str:
        return self._inflect.ordinal(self.words(n) if words else n)

    def article(self, phrase: str) -> str:
        """``a`` or ``an`` before ``phrase`` (inflect's rules: "an hour", "a university")."""
        return self._inflect.a(phrase)

    def count(self, rng) -> str:
        """A count before a plural noun: "two" .. "twelve" in words mostly, else digits."""
        k = rng.random()
        if k < 0.6:
            return self.words(rng.randint(2, 12))
        if k < 0.8:
            return self.words(rng.choice((15, 20, 25, 30, 40, 50, 60, 100)))
        return str(rng.randint(2, 500))

    def number(self, rng) -> str:
        k = rng.random()
        if k < 0.4:
            return str(rng.randint(0, 100))
        if k < 0.7:
            return str(rng.randint(100, 2000))
        if k < 0.85:
            return f"{rng.randint(1, 99)},{rng.randint(0, 999):03d}"
        return self.words(rng.randint(0, 100))

    def money(self, rng) -> str:
        k = rng.random()
        if k < 0.4:
            return f"${rng.randint(1, 99)}.{rng.choice((0, 25, 50, 75, 99, rng.randint(1, 98))):02d}"
        if k < 0.6:
            return f"${rng.randint(1, 100)}"
        if k < 0.7:
            return f"${rng.randint(1, 2000)}"
        if k < 0.85:
            return f"{self.words(rng.randint(2, 100))} dollars"
        return f"{rng.randint(5, 95)} cents"

    def phone(self, rng) -> str:
        # 555: the exchange kept for fictional numbers in North America
        a, b, c = rng.randint(200, 989), 555 if rng.random() < 0.5 else rng.randint(200, 999), rng.randint(0, 9999)
        return rng.choice((f"{b}-{c:04d}", f"{a}-{b}-{c:04d}", f"({a}) {b}-{c:04d}"))

    def percent(self, rng) -> str:
        return f"{rng.randint(1, 100)} percent" if rng.random() < 0.5 else f"{rng.randint(1, 100)}%"

    # time
    def clock(self, rng) -> str:
        h, m = rng.randint(1, 12), rng.choice((0, 0, 0, 5, 10, 15, 20, 30, 30, 45, rng.randint(1, 59)))
        k = rng.random()
        if k < 0.45:
            return f"{h}:{m:02d}" + rng.choice(("", "", " a.m.", " p.m.", " am", " pm"))
        if k < 0.65:
            return f"{h}" + rng.choice((" o'clock", " a.m.", " p.m.", " in the morning", " in the evening", ""))
        if k < 0.85:
            return rng.choice(("half past", "quarter past", "quarter to", "ten past", "twenty to")) + \
                f" {self.words(h)}"
        return rng.choice(("noon", "midnight", "lunchtime", "dinnertime"))

    def date(self, rng) -> str:
        month, day = rng.choice(MONTHS), rng.randint(1, 28)
        k = rng.random()
        if k < 0.3:
            return f"{month} {day}"
        if k < 0.5:
            return f"{month} {self.ordinal(day, False)}"
        if k < 0.65:
            return f"{rng.choice(DAYS)}, {month} {day}"
        if k < 0.8:
            return f"the {self.ordinal(day, rng.random() < 0.5)} of {month}"
        if k < 0.9:
            return f"{month} {day}, {rng.randint(1950, 2035)}"
        return f"{rng.randint(1, 12)}/{day}"

    def day(self, rng) -> str:
        return rng.choice(DAYS)

    def month(self, rng) -> str:
        return rng.choice(MONTHS)

    def year(self, rng) -> str:
        return str(rng.randint(1900, 2035))


def _real_cities() -> tuple[str, ...]:
    """Real city names from faker's country table: capitals and the cities that name time zones."""
    from faker.providers.date_time import Provider

    names = set()
    for c in Provider.countries:
        names.add(c.capital)
        names.update(z.split("/")[-1].replace("_", " ") for z in c.timezones)
    return tuple(sorted(n for n in names if n.replace(" ", "").isascii() and n.replace(" ", "").isalpha()))


@lru_cache(maxsize=1)
def entities() -> Entities:
    return Entities()
