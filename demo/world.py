"""The synthetic world of the demo: entities with attributes and relations, and documents that state
their facts scattered through filler and distractor sentences.

A `World` is drawn afresh for every document (the facts are in the context, not in the model's
weights), so a question can only be answered by reading the document, and removing or merging the
tokens that state a fact can change the answer. Documents are plain text in the closed vocabulary
of `vocab`.

Splits never share a document: which split a document may belong to is decided by the set of
entity names in it (`split_of`), so training text, calibration text, dev items and test items are
disjoint by construction, on top of being drawn from separate seeds.

Everything takes an explicit `random.Random`; string seeds are hashed with SHA-512 by Python, so
the output does not depend on PYTHONHASHSEED, the platform or the process.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field

from . import vocab as V

GENERATOR_VERSION = 1
"""Bump when the generated text changes (the models were trained on version 1)."""

SPLITS = ("train", "calibration", "dev", "test")
DISTRACTOR_SHARE = 0.3  # of the non-fact sentences


def split_of(names) -> str:
    """The only split a document whose entities are `names` may belong to."""
    key = " ".join(sorted(names)).encode()
    return SPLITS[zlib.crc32(key) % len(SPLITS)]


@dataclass
class Entity:
    name: str
    attrs: dict[str, str] = field(default_factory=dict)  # attribute -> value
    habit: str | None = None
    friend: str | None = None  # name of another entity of the same world


@dataclass
class Chest:
    color: str
    metal: str
    count: str


@dataclass
class World:
    entities: list[Entity]
    chests: list[Chest]

    def entity(self, name: str) -> Entity:
        return next(e for e in self.entities if e.name == name)

    def names(self) -> list[str]:
        return [e.name for e in self.entities]

    def facts(self, rng: random.Random) -> list[str]:
        """One sentence per fact, in a random order."""
        out = []
        for e in self.entities:
            for attr, value in e.attrs.items():
                out.append(V.ATTRIBUTES[attr]["fact"].format(n=e.name, v=value))
            if e.habit:
                out.append(V.HABIT_FACT.format(n=e.name, habit=e.habit))
            if e.friend:
                out.append(V.FRIEND_FACT.format(n=e.name, m=e.friend))
        for c in self.chests:
            out.append(V.CHEST_FACT.format(c=c.color, metal=c.metal, count=c.count))
        rng.shuffle(out)
        return out


def random_habit(rng: random.Random) -> str:
    return "{} the {} {} {} the {}".format(
        rng.choice(V.HABIT_VERBS),
        rng.choice(V.HABIT_ADJS),
        rng.choice(V.HABIT_NOUNS),
        rng.choice(V.HABIT_PREPS),
        rng.choice(V.HABIT_PLACES),
    )


def entity_count(doc_tokens: int) -> int:
    """More entities (more distractors) in longer documents: 3 at 200 tokens, 7 at 1000."""
    return 2 + max(1, doc_tokens // 200)


def sample_world(rng: random.Random, n_entities: int, split: str) -> World:
    """A random world of `n_entities` people (names drawn until `split_of` gives `split`)."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    while True:
        names = rng.sample(V.NAMES, n_entities)
        if split_of(names) == split:
            break
    entities = []
    for name in names:
        attrs = rng.sample(sorted(V.ATTRIBUTES), rng.randint(1, 3))
        entities.append(Entity(name, {a: rng.choice(V.ATTRIBUTES[a]["values"]) for a in attrs}))
    for e in entities:
        if rng.random() < 0.5:
            e.habit = random_habit(rng)
        if rng.random() < 0.4:
            e.friend = rng.choice([n for n in names if n != e.name])
    colors = rng.sample(V.CHEST_COLORS, rng.randint(1, 2))
    chests = [Chest(c, rng.choice(V.METALS), rng.choice(V.COUNTS)) for c in colors]
    return World(entities, chests)


def filler_sentence(rng: random.Random, names: list[str]) -> str:
    slots = {
        "fnoun": rng.choice(V.FILLER_NOUNS),
        "fadj": rng.choice(V.FILLER_ADJS),
        "fverb": rng.choice(V.FILLER_VERBS),
        "fadv": rng.choice(V.FILLER_ADVS),
        "ftime": rng.choice(V.FILLER_TIMES),
        "fplace": rng.choice(V.FILLER_PLACES),
    }
    if rng.random() >= DISTRACTOR_SHARE:
        return rng.choice(V.FILLER_TEMPLATES).format(**slots)
    n, m = rng.sample(names, 2) if len(names) > 1 else (names[0], rng.choice(V.NAMES))
    values = {a: rng.choice(spec["values"]) for a, spec in V.ATTRIBUTES.items()}
    color = values.pop("hat")
    return rng.choice(V.DISTRACTOR_TEMPLATES).format(n=n, m=m, color=color, **values, **slots)


def render_document(world: World, rng: random.Random, doc_tokens: int) -> str:
    """The world's facts, scattered uniformly through filler, about `doc_tokens` words long."""
    facts = world.facts(rng)
    sentences: list[str] = []
    length = sum(len(f.split()) for f in facts)
    names = world.names()
    while length < doc_tokens:
        s = filler_sentence(rng, names)
        sentences.append(s)
        length += len(s.split())
    for fact in facts:  # each fact at a uniformly random sentence boundary
        sentences.insert(rng.randint(0, len(sentences)), fact)
    return " ".join(sentences)
