"""Voice-assistant sentences for the synthetic corpus: templates with slot filling.

Every sentence is already in the normalized transcript form (lowercase ``a-z``, apostrophes, single
spaces): numbers, times, dates and temperatures are spelled out as words ("twenty three", "seven
thirty p m"), so the text given to the TTS engine is exactly the transcript and no engine-specific
number or abbreviation expansion can make the audio disagree with the label. ``a m`` is never used
(engines read a lone "a" as the article); mornings are "in the morning".

Word lists live in ``data_prep/synth/words_*.txt`` (one entry per line, multi-word entries allowed).
``SentenceGenerator.vocabulary()`` is the closed set of words any generated sentence can contain.
"""

from __future__ import annotations

import re
import string
from functools import cached_property
from importlib import resources
from typing import Callable

import numpy as np

from asr_kd.errors import AsrKdError

_ENTRY_RE = re.compile(r"^[a-z']+( [a-z']+)*$")

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
        "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
ORDINALS = ["zeroth", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
            "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth",
            "seventeenth", "eighteenth", "nineteenth", "twentieth"]
TENS_ORDINAL = {20: "twentieth", 30: "thirtieth"}
MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september",
          "october", "november", "december"]
WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


class WordListError(AsrKdError):
    """A word list file of the sentence generator is malformed."""


def number_words(n: int) -> str:
    """Spell out ``0 <= n < 1_000_000`` in English words ("three hundred and five")."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number_words supports 0..999999, got {n}")
    if n < 20:
        return ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return TENS[tens] + ("" if ones == 0 else " " + ONES[ones])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return ONES[hundreds] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))
    thousands, rest = divmod(n, 1000)
    head = number_words(thousands) + " thousand"
    if rest == 0:
        return head
    return head + (" and " if rest < 100 else " ") + number_words(rest)


def ordinal_words(n: int) -> str:
    """Spell out an ordinal ``1 <= n <= 31`` ("twenty first")."""
    if not 1 <= n <= 31:
        raise ValueError(f"ordinal_words supports 1..31, got {n}")
    if n <= 20:
        return ORDINALS[n]
    if n in TENS_ORDINAL:
        return TENS_ORDINAL[n]
    tens, ones = divmod(n, 10)
    return TENS[tens] + " " + ORDINALS[ones]


def load_word_list(name: str) -> list[str]:
    """Entries of ``data_prep/synth/words_<name>.txt``; a malformed entry raises ``WordListError``."""
    filename = f"words_{name}.txt"
    text = resources.files("data_prep.synth").joinpath(filename).read_text(encoding="utf-8")
    entries: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry:
            continue
        if not _ENTRY_RE.match(entry):
            raise WordListError(f"{filename}:{lineno}: entry {entry!r} must be lowercase a-z/apostrophe words separated by single spaces")
        entries.append(entry)
    if not entries:
        raise WordListError(f"{filename}: empty word list")
    return entries


# Templates per domain. ``{slot}`` names a filler in SentenceGenerator._fillers.
TEMPLATES: dict[str, list[str]] = {
    "alarm": [
        "set an alarm for {time}",
        "wake me up at {time}",
        "set an alarm for {time} {day}",
        "cancel my alarm for {time}",
        "change my {time} alarm to {time}",
        "turn off all my alarms",
        "what alarms do i have {day}",
        "snooze for {minutes}",
        "set a recurring alarm every {weekday} at {time}",
    ],
    "timer": [
        "set a timer for {duration}",
        "start a {duration} timer",
        "set a {duration} timer for the {food}",
        "how much time is left on my timer",
        "add {minutes} to the timer",
        "cancel the {food} timer",
        "pause the timer",
    ],
    "weather": [
        "what's the weather like in {city}",
        "what's the weather {day}",
        "will it rain in {city} {day}",
        "do i need an umbrella {day}",
        "how cold will it be {day}",
        "what's the temperature in {city} right now",
        "is it going to snow {day}",
        "what's the forecast for {city} this weekend",
        "how windy is it outside",
    ],
    "music": [
        "play {song} by {artist}",
        "play some {genre} music",
        "play {artist}",
        "play the song {song}",
        "play my {adj} playlist",
        "shuffle songs by {artist}",
        "skip this song",
        "turn the volume up to {level}",
        "set the volume to {level}",
        "play {genre} in the {room}",
        "who sings {song}",
        "add this song to my {adj} playlist",
        "pause the music",
        "play the next episode of the {adj} {noun} podcast",
    ],
    "call": [
        "call {name}",
        "call {fullname} on speaker",
        "call {name}'s mobile",
        "phone {fullname}",
        "video call {name}",
        "dial {phone}",
        "redial the last number",
        "hang up",
        "who called me {day}",
    ],
    "message": [
        "send a message to {name} saying i'll be there at {time}",
        "text {name} that i'm running {minutes} late",
        "send {fullname} a message saying happy birthday",
        "tell {name} i'm on my way",
        "read my new messages",
        "reply to {name} saying sounds good",
        "send an email to {fullname} about the {event}",
        "text {name} that dinner is at {time}",
    ],
    "navigation": [
        "navigate to {place}",
        "how long will it take to get to {place}",
        "how far is {place} from here",
        "give me directions to {place}",
        "find a route to {place} avoiding tolls",
        "what's the traffic like on the way to {place}",
        "take me to {place}",
        "how long is the drive from {city} to {city}",
        "find the nearest {store}",
    ],
    "shopping": [
        "add {item} to my shopping list",
        "add {item} and {item} to the shopping list",
        "remove {item} from my shopping list",
        "what's on my shopping list",
        "put {count} {item} on the grocery list",
        "do i have {item} on my list",
        "order more {item}",
        "clear my shopping list",
    ],
    "smart_home": [
        "turn on the {device}",
        "turn off the {device} in the {room}",
        "switch off the {room} {device}",
        "dim the {room} lights to {level}",
        "set the thermostat to {temperature}",
        "set the {room} to {temperature}",
        "is the {device} on",
        "lock the front door",
        "open the garage door",
        "close the {room} blinds",
        "turn the {device} off in {minutes}",
        "make the {room} lights {color}",
        "start the {device}",
    ],
    "calendar": [
        "what's on my calendar {day}",
        "schedule a {event} {day} at {time}",
        "add {event} to my calendar on {date}",
        "when is my next {event}",
        "move my {event} to {weekday} at {time}",
        "cancel my {event} on {date}",
        "remind me to buy {item} {day}",
        "remind me to call {name} at {time}",
        "remind me about the {event} {minutes} before it starts",
        "am i free {day} at {time}",
        "create an event called {adj} {noun} on {date}",
    ],
    "question": [
        "what time is it",
        "what time is it in {city}",
        "what's today's date",
        "what day is {date}",
        "how many days until {date}",
        "what is {number} plus {number}",
        "what is {number} times {small}",
        "how much is {number} divided by {small}",
        "how tall is a {animal}",
        "how long does a {animal} live",
        "what does a {animal} eat",
        "where do {animal}s live",
        "what's the capital of {country}",
        "how far is {city} from {city}",
        "who won the {sport} game last night",
        "when does the {sport} season start",
        "tell me a joke about a {animal}",
        "spell the word {noun}",
        "what does the word {adj} mean",
        "how do you say {noun} in spanish",
        "convert {number} miles to kilometers",
        "how many ounces are in {small} cups",
        "what's the population of {city}",
        "tell me a fun fact about {animal}s",
        "how much is {money} in euros",
        "what's the score of the {sport} game",
    ],
}
POLITE_PREFIX = ["", "", "", "", "please ", "hey ", "can you ", "could you please ", "i'd like you to ", "okay "]
POLITE_SUFFIX = ["", "", "", "", "", " please", " thanks", " thank you", " right now"]
# prefixes that only make sense before an imperative (not before "what's ...", "who ...")
_QUESTION_START = ("what", "how", "who", "when", "where", "will", "do ", "is ", "am ", "tell ", "spell")
COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "pink", "white", "warm white", "cool white"]
STORES = ["gas station", "coffee shop", "pharmacy", "supermarket", "parking lot", "hospital", "cash machine",
          "restaurant", "bookstore", "hardware store", "bakery", "charging station"]
TIME_WORDS = ["noon", "midnight"]
DAY_REFS = ["today", "tonight", "tomorrow", "tomorrow morning", "tomorrow night", "this afternoon",
            "this evening", "this weekend", "next week", "on monday", "on friday", "next tuesday",
            "on saturday morning", "on sunday evening", "the day after tomorrow"]
COUNTRIES = ["france", "spain", "italy", "germany", "canada", "mexico", "brazil", "argentina", "chile", "peru",
             "japan", "china", "india", "australia", "ireland", "norway", "sweden", "finland", "denmark",
             "poland", "greece", "egypt", "kenya", "morocco", "jamaica", "iceland", "portugal", "austria",
             "switzerland", "belgium"]


class SentenceGenerator:
    """Draws normalized voice-assistant sentences from templates, deterministically for a given RNG.

    ``sentence(rng)`` consumes only ``rng`` (a ``numpy.random.Generator``), so a sentence is a pure
    function of the RNG state; the corpus generator derives one RNG per utterance.
    """

    def __init__(self) -> None:
        self.first_names = load_word_list("first_names")
        self.last_names = load_word_list("last_names")
        places = load_word_list("places")
        self.cities = [p for p in places if not p.startswith("the ") and p not in ("home", "work")
                       and p not in COUNTRIES]
        self.places = places
        self.adjectives = load_word_list("adjectives")
        self.nouns = load_word_list("nouns")
        self.items = load_word_list("shopping")
        self.devices = load_word_list("devices")
        self.rooms = load_word_list("rooms")
        self.animals = load_word_list("animals")
        self.genres = load_word_list("genres")
        self.sports = load_word_list("sports")
        self.events = load_word_list("events")
        self.domains = sorted(TEMPLATES)
        self._fillers: dict[str, Callable[[np.random.Generator], str]] = {
            "time": self._time, "day": lambda r: self._pick(r, DAY_REFS), "weekday": lambda r: self._pick(r, WEEKDAYS),
            "date": self._date, "duration": self._duration, "minutes": self._minutes,
            "city": lambda r: self._pick(r, self.cities), "place": lambda r: self._pick(r, self.places),
            "country": lambda r: self._pick(r, COUNTRIES), "name": lambda r: self._pick(r, self.first_names),
            "fullname": lambda r: self._pick(r, self.first_names) + " " + self._pick(r, self.last_names),
            "song": self._song, "artist": self._artist, "genre": lambda r: self._pick(r, self.genres),
            "adj": lambda r: self._pick(r, self.adjectives), "noun": lambda r: self._pick(r, self.nouns),
            "item": lambda r: self._pick(r, self.items), "food": lambda r: self._pick(r, self.items),
            "device": lambda r: self._pick(r, self.devices), "room": lambda r: self._pick(r, self.rooms),
            "animal": lambda r: self._pick(r, self.animals), "sport": lambda r: self._pick(r, self.sports),
            "event": lambda r: self._pick(r, self.events), "store": lambda r: self._pick(r, STORES),
            "color": lambda r: self._pick(r, COLORS), "level": self._level, "temperature": self._temperature,
            "number": lambda r: number_words(int(r.integers(0, 1000))),
            "small": lambda r: number_words(int(r.integers(2, 13))),
            "count": lambda r: number_words(int(r.integers(2, 13))), "phone": self._phone, "money": self._money,
        }
        for domain, templates in TEMPLATES.items():
            for template in templates:
                for slot in self._slots(template):
                    if slot not in self._fillers:
                        raise WordListError(f"template {template!r} of domain {domain!r} uses unknown slot {{{slot}}}")

    # ------------------------------------------------------------------------------- fillers

    @staticmethod
    def _pick(rng: np.random.Generator, items: list[str]) -> str:
        return items[int(rng.integers(0, len(items)))]

    def _time(self, rng: np.random.Generator) -> str:
        hour = int(rng.integers(1, 13))
        style = int(rng.integers(0, 8))
        h = number_words(hour)
        if style == 0:
            return self._pick(rng, TIME_WORDS)
        if style == 1:
            return f"{h} o'clock"
        if style == 2:
            return "half past " + h
        if style == 3:
            return self._pick(rng, ["quarter past ", "quarter to "]) + h
        minute = int(rng.integers(1, 60))
        mm = ("oh " + ONES[minute]) if minute < 10 else number_words(minute)
        suffix = self._pick(rng, ["", " p m", " in the morning", " in the evening", " at night"])
        return f"{h} {mm}{suffix}"

    def _date(self, rng: np.random.Generator) -> str:
        day = ordinal_words(int(rng.integers(1, 29)))
        month = self._pick(rng, MONTHS)
        return f"{month} {day}" if rng.random() < 0.5 else f"the {day} of {month}"

    def _minutes(self, rng: np.random.Generator) -> str:
        n = int(rng.integers(2, 60))
        return f"{number_words(n)} minutes"

    def _duration(self, rng: np.random.Generator) -> str:
        style = int(rng.integers(0, 5))
        if style == 0:
            n = int(rng.integers(2, 60))
            return f"{number_words(n)} seconds"
        if style == 1:
            return self._pick(rng, ["one hour", "an hour and a half", "half an hour", "a minute", "ninety seconds"])
        if style == 2:
            n = int(rng.integers(2, 6))
            return f"{number_words(n)} hours"
        return self._minutes(rng)

    def _level(self, rng: np.random.Generator) -> str:
        if rng.random() < 0.5:
            return number_words(int(rng.integers(1, 11)))
        return number_words(int(rng.integers(1, 11)) * 10) + " percent"

    def _temperature(self, rng: np.random.Generator) -> str:
        return number_words(int(rng.integers(16, 80))) + " degrees"

    def _phone(self, rng: np.random.Generator) -> str:
        return " ".join(ONES[int(d)] for d in rng.integers(0, 10, size=int(rng.integers(7, 11))))

    def _money(self, rng: np.random.Generator) -> str:
        return number_words(int(rng.integers(2, 1000))) + self._pick(rng, [" dollars", " pounds"])

    def _song(self, rng: np.random.Generator) -> str:
        if rng.random() < 0.5:
            return f"{self._pick(rng, self.adjectives)} {self._pick(rng, self.nouns)}"
        return f"the {self._pick(rng, self.nouns)} of {self._pick(rng, self.places)}"

    def _artist(self, rng: np.random.Generator) -> str:
        style = int(rng.integers(0, 3))
        if style == 0:
            return f"the {self._pick(rng, self.adjectives)} {self._pick(rng, self.nouns)}s"
        if style == 1:
            return f"{self._pick(rng, self.first_names)} {self._pick(rng, self.last_names)}"
        return f"{self._pick(rng, self.first_names)} and the {self._pick(rng, self.animals)}s"

    # ------------------------------------------------------------------------------- sentences

    @staticmethod
    def _slots(template: str) -> list[str]:
        return [f[1] for f in string.Formatter().parse(template) if f[1] is not None]

    def sentence(self, rng: np.random.Generator) -> str:
        """One normalized sentence (lowercase words, apostrophes, single spaces), drawn with ``rng``."""
        domain = self.domains[int(rng.integers(0, len(self.domains)))]
        templates = TEMPLATES[domain]
        template = templates[int(rng.integers(0, len(templates)))]
        parts: list[str] = []
        for literal, slot, _, _ in string.Formatter().parse(template):
            parts.append(literal)
            if slot is not None:
                parts.append(self._fillers[slot](rng))
        core = "".join(parts)
        if core.startswith(_QUESTION_START):
            prefix = self._pick(rng, ["", "", "", "hey ", "okay "])
            suffix = ""
        else:
            prefix = self._pick(rng, POLITE_PREFIX)
            suffix = self._pick(rng, POLITE_SUFFIX)
            if "please" in prefix and "please" in suffix:
                suffix = ""
        return " ".join((prefix + core + suffix).split())

    @cached_property
    def vocabulary(self) -> frozenset[str]:
        """Every word any sentence can contain: template literals, word lists and number words."""
        words: set[str] = set()

        def add(phrases: list[str] | tuple[str, ...]) -> None:
            for phrase in phrases:
                words.update(phrase.split())

        for templates in TEMPLATES.values():
            for template in templates:
                add([lit for lit, _, _, _ in string.Formatter().parse(template)])
        for lst in (POLITE_PREFIX, POLITE_SUFFIX, COLORS, STORES, TIME_WORDS, DAY_REFS, COUNTRIES, MONTHS,
                    WEEKDAYS, ONES, TENS, ORDINALS, list(TENS_ORDINAL.values()), self.first_names,
                    self.last_names, self.places, self.adjectives, self.nouns, self.items, self.devices,
                    self.rooms, self.animals, self.genres, self.sports, self.events):
            add(lst)
        # words only produced by fillers' literals, and plural "s" forms made by templates/fillers
        add(["o'clock half past quarter to oh p m in the morning evening at night seconds minutes hours hour",
             "one an and a minute ninety percent degrees hundred thousand dollars pounds of by"])
        words.update(n + "s" for n in self.nouns + self.animals)
        words.update(n + "'s" for n in self.first_names)
        # tokens glued to a slot in a template ("{name}'s", "{animal}s") are covered above; a bare
        # literal fragment such as "s" or "'s" is not a word
        words.discard("s")
        words.discard("'s")
        words.discard("")
        return frozenset(words)
