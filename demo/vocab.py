"""The closed vocabulary of the demo world: word lists and sentence templates.

Every word the generator can write comes from this module, so the tokenizer's vocabulary is
`all_words()` and no generated text ever needs an unknown token (a test checks it). Words are
lower-case and separated by single spaces; punctuation is its own word (" ." " ," " ?" " :").

Changing any list or template changes the generated data and the trained models' inputs: bump
`world.GENERATOR_VERSION` and retrain (python -m demo.train).
"""

from __future__ import annotations

import re

NAMES = (
    "tom ann sam ben kim lee max eva joe amy dan zoe ray meg tim liz ned ivy rob sue ian fay gus "
    "kay hal mia ted ada leo nia rex uma vic wes yan bea cal dot eli flo gil hugo iris jack lola "
    "nick olga paul rosa"
).split()

# Attributes an entity can have. Each fact has ONE wording, and every query ends by restating the
# fact's prefix ("... answer : tom owns a"), so the answer is the word that followed the same words
# in the document: an in-context recall (induction) that a small recurrent model learns quickly,
# and that breaks when the fact's tokens are removed or merged away.
#   fact:     how a document states it ({n} = entity name, {v} = value)
#   question: arc-style question about {who} (a name, or "the best friend of NAME")
#   prefix:   the words before the value in the fact ("{n} owns a")
ATTRIBUTES = {
    "hat": {
        "values": "red blue green black white yellow pink brown gray purple".split(),
        "fact": "{n} wears a {v} hat .",
        "question": "what color is the hat of {who} ?",
        "prefix": "{n} wears a",
    },
    "pet": {
        "values": "dog cat bird fish horse goat rabbit mouse duck frog".split(),
        "fact": "{n} owns a {v} .",
        "question": "what animal does {who} own ?",
        "prefix": "{n} owns a",
    },
    "town": {
        "values": "ashby belmont corwin dunmore elstow fenwick glenmoor harrow ivydale jarrow".split(),
        "fact": "{n} lives in {v} .",
        "question": "where does {who} live ?",
        "prefix": "{n} lives in",
    },
    "job": {
        "values": "baker farmer doctor teacher sailor miner painter tailor guard singer".split(),
        "fact": "{n} works as a {v} .",
        "question": "what is the job of {who} ?",
        "prefix": "{n} works as a",
    },
    "fruit": {
        "values": "apple pear plum grape melon lemon cherry peach mango fig".split(),
        "fact": "{n} likes to eat {v} .",
        "question": "what fruit does {who} like to eat ?",
        "prefix": "{n} likes to eat",
    },
}

FRIEND_FACT = "the best friend of {n} is {m} ."
FRIEND_WHO = "the best friend of {n}"
FRIEND_PREFIX = "the best friend of {n} is"
TWO_HOP_ANSWER = "{m} , and {fact}"  # fact without its final " ." for hats: "sam , and sam wears a red hat"

# Habits (hellaswag endings): "{verb} the {adj} {noun} {prep} the {place}".
HABIT_VERBS = "walks paints cleans feeds carries washes fixes sells pulls builds".split()
HABIT_ADJS = "old small big new tall long short dark".split()
HABIT_NOUNS = "boat cart fence wagon ladder basket barrel gate table sled".split()
HABIT_PREPS = "by near behind under".split()
HABIT_PLACES = "river hill mill bridge well barn market lake".split()
HABIT_FACT = "every morning {n} {habit} ."
HABIT_PROMPT = "on the next day , every morning {n}"

# Chests (piqa): each opens with one key turned a number of times.
CHEST_COLORS = ATTRIBUTES["hat"]["values"]
METALS = "iron brass copper silver gold steel tin bronze".split()
COUNTS = "two three four five six seven".split()
CHEST_FACT = "the {c} chest opens with the {metal} key turned {count} times ."
CHEST_QUESTION = "how do you open the {c} chest ?"
CHEST_SOLUTION = (
    "the {c} chest opens with the {metal} key turned {count} times , so take the {metal} key , "
    "turn it {count} times and lift the lid ."
)
CHEST_KEY_QUESTION = "which key opens the {c} chest ?"
CHEST_PREFIX = "the {c} chest opens with the"

QUESTION = "question : {q} answer :"
RECALL_LEAD = "so in the end"
WINOGRANDE_PREFIX = "at the fair ,"

# Filler: sentences about nothing the questions ask for.
FILLER_NOUNS = "rain sky road tree bell cloud stone roof door path wind snow grass smoke song lamp".split()
FILLER_ADJS = "quiet cold warm grey bright dull soft loud calm wet dry strange".split()
FILLER_VERBS = "moved shook fell rang waited turned rested glowed faded changed".split()
FILLER_ADVS = "slowly again softly early late twice quickly suddenly".split()
FILLER_TIMES = "that evening|at noon|before dawn|after lunch|in the spring|for a while".split("|")
FILLER_PLACES = "square church school shop corner field garden station".split()
FILLER_TEMPLATES = (
    "the {fnoun} was {fadj} {ftime} .",
    "a {fadj} {fnoun} {fverb} {fadv} .",
    "the {fnoun} {fverb} {fadv} near the {fplace} .",
    "nobody knew why the {fnoun} {fverb} .",
    "{ftime} the {fnoun} by the {fplace} {fverb} .",
    "it was a {fadj} day and the {fnoun} {fverb} {fadv} .",
    "people in the {fplace} said the {fnoun} was {fadj} .",
)
# Distractors: names and attribute values in sentences that state no fact.
DISTRACTOR_TEMPLATES = (
    "{n} said hello to {m} {ftime} .",
    "{n} saw a {color} {fnoun} near the {fplace} .",
    "{n} talked about {town} for a while .",
    "someone gave {n} a {fruit} , but {n} did not eat it .",
    "a {pet} ran past the house of {n} .",
    "{n} met a {job} at the {fplace} .",
    "{n} and {m} walked to the {fplace} {ftime} .",
)

SPECIAL_TOKENS = ("<pad>", "<unk>", "<eos>")
PAD, UNK, EOS = SPECIAL_TOKENS

_SLOT = re.compile(r"\{[a-z_]+\}")


def _template_words(*templates: str) -> set[str]:
    return {w for t in templates for w in _SLOT.sub(" ", t).split()}


def all_words() -> list[str]:
    """Every word the generator writes, sorted (special tokens excluded)."""
    words: set[str] = set(NAMES)
    for spec in ATTRIBUTES.values():
        words |= set(spec["values"])
        words |= _template_words(spec["fact"], spec["question"], spec["prefix"])
    for group in (HABIT_VERBS, HABIT_ADJS, HABIT_NOUNS, HABIT_PREPS, HABIT_PLACES, METALS, COUNTS):
        words |= set(group)
    for group in (FILLER_NOUNS, FILLER_ADJS, FILLER_VERBS, FILLER_ADVS, FILLER_PLACES):
        words |= set(group)
    words |= _template_words(*FILLER_TIMES, *FILLER_TEMPLATES, *DISTRACTOR_TEMPLATES)
    words |= _template_words(
        FRIEND_FACT, FRIEND_WHO, FRIEND_PREFIX, TWO_HOP_ANSWER, HABIT_FACT, HABIT_PROMPT, CHEST_FACT,
        CHEST_QUESTION, CHEST_SOLUTION, CHEST_KEY_QUESTION, CHEST_PREFIX, QUESTION, RECALL_LEAD,
        WINOGRANDE_PREFIX,
    )
    return sorted(words)
