"""The six demo tasks' items, and the training episodes the demo models learn from.

Each item is a document (`world.render_document`) followed by one query in the format of one of
the paper's six benchmarks; the answer depends on a fact stated somewhere in the document. Every
fact has one wording, and queries end by restating the words before the answer ("... answer : tom
owns a"), so answering is in-context recall: find where the document said "tom owns a" and read
the next word.

=====================  ==========================================================================
demo_lambada           "so in the end tom owns a" -> "dog" (greedy); also a friend's name or a
                       chest's key metal
demo_hellaswag         "on the next day , every morning tom" + 4 habit endings (7 words each)
demo_piqa              "question : how do you open the red chest ? answer :" + 2 solutions of 25
                       words that differ in the key's metal or in the number of turns
demo_arc_easy          "question : what animal does tom own ? answer : tom owns a" + 4 values
demo_arc_challenge     two hops: "question : what animal does the best friend of tom own ? answer :
                       the best friend of tom is" + 4 answers "sam , and sam owns a dog": the 2 x 2
                       of {the friend, another person} x {the friend's value, the other's value}
demo_winogrande        "at the fair , " + {tom | ann} scored on the shared ending "owns a dog ."
=====================  ==========================================================================

Wrong options are taken from the same document where possible (another person's value, another
chest's key), so a model that only knows which values occur in the text scores at chance.

`training_episode` writes a document followed by several answered queries of all six kinds, in
the same wording; that text (split "train") is what the models are trained on, and split
"calibration" of it is what `utrc.demo.calibration_texts` returns.
"""

from __future__ import annotations

import random
from functools import partial

from . import vocab as V
from .world import Entity, World, entity_count, random_habit, render_document, sample_world

MIN_CONTEXT = 200
MAX_CONTEXT = 1000


def context_length(rng: random.Random) -> int:
    """Context length of an item, in words: 200..1000, most of them short (mean about 360), which
    keeps a CPU evaluation of the six tasks under a minute."""
    return MIN_CONTEXT + int((MAX_CONTEXT - MIN_CONTEXT) * rng.random() ** 4)


def _claim(attr: str, name: str, value: str) -> str:
    """The fact without its full stop: "tom wears a red hat", "tom owns a dog"."""
    return V.ATTRIBUTES[attr]["fact"].format(n=name, v=value).removesuffix(" .")


def _prefix(attr: str, name: str) -> str:
    return V.ATTRIBUTES[attr]["prefix"].format(n=name)


def _other_values(rng, pool, exclude, k, fallback) -> list[str]:
    """k distinct values not in `exclude`: from `pool` (values in the document) first."""
    out: list[str] = []
    for v in list(dict.fromkeys(pool)) + rng.sample(fallback, len(fallback)):
        if v not in exclude and v not in out:
            out.append(v)
        if len(out) == k:
            return out
    raise ValueError("not enough distinct values")  # cannot happen: every list has >= 6 values


def _ensure_attr(e: Entity, attr: str, rng, avoid=()) -> str:
    if attr not in e.attrs or e.attrs[attr] in avoid:
        e.attrs[attr] = rng.choice([v for v in V.ATTRIBUTES[attr]["values"] if v not in avoid])
    return e.attrs[attr]


def _shuffled_choices(rng, correct: str, wrong: list[str]) -> tuple[list[str], int]:
    choices = [correct, *wrong]
    rng.shuffle(choices)
    return choices, choices.index(correct)


# --- one query per task: (world already adjusted) -> (query text, fields) ---------------------


def _lambada(world: World, rng):
    targets = [(e.name, a, v) for e in world.entities for a, v in e.attrs.items()]
    targets += [(e.name, "friend", e.friend) for e in world.entities if e.friend]
    targets += [(c.color, "chest", c.metal) for c in world.chests]
    n, attr, value = rng.choice(targets)
    if attr == "friend":
        prefix = V.FRIEND_PREFIX.format(n=n)
    elif attr == "chest":
        prefix = V.CHEST_PREFIX.format(c=n)
    else:
        prefix = _prefix(attr, n)
    return f"{V.RECALL_LEAD} {prefix}", {"target": value}


def _arc_easy(world: World, rng):
    pairs = [(e, a) for e in world.entities for a in e.attrs] + [(c, "chest") for c in world.chests]
    subject, attr = rng.choice(pairs)
    if attr == "chest":
        question, prefix = V.CHEST_KEY_QUESTION.format(c=subject.color), V.CHEST_PREFIX.format(c=subject.color)
        correct, pool, values = subject.metal, [c.metal for c in world.chests], V.METALS
    else:
        question, prefix = V.ATTRIBUTES[attr]["question"].format(who=subject.name), _prefix(attr, subject.name)
        correct = subject.attrs[attr]
        pool = [e.attrs[attr] for e in world.entities if attr in e.attrs]
        values = V.ATTRIBUTES[attr]["values"]
    choices, label = _shuffled_choices(rng, correct, _other_values(rng, pool, {correct}, 3, values))
    return f"{V.QUESTION.format(q=question)} {prefix}", {"choices": choices, "label": label}


def _arc_challenge_setup(world: World, rng):
    a, b, c = rng.sample(world.entities, 3)
    a.friend = b.name
    attr = rng.choice(sorted(V.ATTRIBUTES))
    vb = _ensure_attr(b, attr, rng)
    vc = _ensure_attr(c, attr, rng, avoid={vb})
    return a, b, c, attr, vb, vc


def _two_hop_answer(attr: str, who: str, value: str) -> str:
    return V.TWO_HOP_ANSWER.format(m=who, fact=_claim(attr, who, value))


def _arc_challenge(world: World, rng, setup):
    a, b, c, attr, vb, vc = setup
    question = V.ATTRIBUTES[attr]["question"].format(who=V.FRIEND_WHO.format(n=a.name))
    answers = [_two_hop_answer(attr, who, v) for who in (b.name, c.name) for v in (vb, vc)]
    choices, label = _shuffled_choices(rng, answers[0], answers[1:])
    query = f"{V.QUESTION.format(q=question)} {V.FRIEND_PREFIX.format(n=a.name)}"
    return query, {"choices": choices, "label": label}


def _hellaswag(world: World, rng):
    e = rng.choice(world.entities)
    if not e.habit:
        e.habit = random_habit(rng)
    pool = [x.habit for x in world.entities if x.habit]
    wrong = []
    while len(wrong) < 3:
        h = pool.pop() if pool else random_habit(rng)
        if h != e.habit and h not in wrong:
            wrong.append(h)
    choices, label = _shuffled_choices(rng, f"{e.habit} .", [f"{h} ." for h in wrong])
    return V.HABIT_PROMPT.format(n=e.name), {"choices": choices, "label": label}


def _piqa(world: World, rng):
    chest = rng.choice(world.chests)
    right = {"c": chest.color, "metal": chest.metal, "count": chest.count}
    slot = rng.choice(("metal", "count"))
    pool = [getattr(c, slot) for c in world.chests]
    wrong = dict(right)
    wrong[slot] = _other_values(rng, pool, {right[slot]}, 1, V.METALS if slot == "metal" else V.COUNTS)[0]
    choices, label = _shuffled_choices(rng, V.CHEST_SOLUTION.format(**right), [V.CHEST_SOLUTION.format(**wrong)])
    return V.QUESTION.format(q=V.CHEST_QUESTION.format(c=chest.color)), {"choices": choices, "label": label}


def _winogrande_setup(world: World, rng):
    p, q = rng.sample(world.entities, 2)
    attr = rng.choice(sorted(V.ATTRIBUTES))
    vp = _ensure_attr(p, attr, rng)
    _ensure_attr(q, attr, rng, avoid={vp})
    return p, q, attr, vp


def _winogrande(world: World, rng, setup):
    p, q, attr, vp = setup
    options, label = _shuffled_choices(rng, p.name, [q.name])
    ending = _claim(attr, "", vp).strip() + " ."  # "owns a dog ."
    return V.WINOGRANDE_PREFIX, {"options": options, "label": label, "ending": ending}


TASKS = ("demo_lambada", "demo_hellaswag", "demo_piqa", "demo_arc_easy", "demo_arc_challenge", "demo_winogrande")


def build_item(task: str, rng: random.Random, split: str) -> dict:
    """One item of `task` for `split` ("dev" or "test"), with a context of 200..1000 words.

    Fields: "context" (text the model reads; for demo_winogrande the text before the blank),
    "n_words" (words in the context) and, per task, "target" (lambada), "choices" + "label"
    (multiple choice), "options" + "label" + "ending" (winogrande).
    """
    while True:  # rejection keeps the context inside [MIN_CONTEXT, MAX_CONTEXT]
        length = context_length(rng)
        world = sample_world(rng, entity_count(length), split)
        setup = None
        if task == "demo_arc_challenge":
            setup = _arc_challenge_setup(world, rng)
        elif task == "demo_winogrande":
            setup = _winogrande_setup(world, rng)
        query, fields = {
            "demo_lambada": partial(_lambada, world, rng),
            "demo_hellaswag": partial(_hellaswag, world, rng),
            "demo_piqa": partial(_piqa, world, rng),
            "demo_arc_easy": partial(_arc_easy, world, rng),
            "demo_arc_challenge": partial(_arc_challenge, world, rng, setup),
            "demo_winogrande": partial(_winogrande, world, rng, setup),
        }[task]()
        doc = render_document(world, rng, length - len(query.split()) - 8)
        context = f"{doc} {query}"
        n_words = len(context.split()) + (1 if task == "demo_winogrande" else 0)
        if MIN_CONTEXT <= n_words <= MAX_CONTEXT:
            return {"context": context, "n_words": n_words, **fields}


# --- training text ----------------------------------------------------------------------------


def _answered_queries(world: World) -> dict[str, list[tuple[str, str]]]:
    """Every query the world supports, answered: format -> [(fact key, text)]."""
    out: dict[str, list[tuple[str, str]]] = {t: [] for t in TASKS}
    for e in world.entities:
        for attr, value in e.attrs.items():
            key, fact = f"{e.name}.{attr}", V.ATTRIBUTES[attr]["fact"].format(n=e.name, v=value)
            out["demo_lambada"].append((key, f"{V.RECALL_LEAD} {fact}"))
            q = V.ATTRIBUTES[attr]["question"].format(who=e.name)
            out["demo_arc_easy"].append((key, f"{V.QUESTION.format(q=q)} {fact}"))
            out["demo_winogrande"].append((key, f"{V.WINOGRANDE_PREFIX} {fact}"))
        if e.habit:
            out["demo_hellaswag"].append((f"{e.name}.habit", V.HABIT_PROMPT.format(n=e.name) + f" {e.habit} ."))
        if e.friend:
            key = f"{e.name}.friend"
            out["demo_lambada"].append((key, f"{V.RECALL_LEAD} " + V.FRIEND_FACT.format(n=e.name, m=e.friend)))
            friend = world.entity(e.friend)
            for attr, value in friend.attrs.items():
                q = V.ATTRIBUTES[attr]["question"].format(who=V.FRIEND_WHO.format(n=e.name))
                answer = f"{V.FRIEND_PREFIX.format(n=e.name)} {_two_hop_answer(attr, friend.name, value)} ."
                out["demo_arc_challenge"].append((key, f"{V.QUESTION.format(q=q)} {answer}"))
    for c in world.chests:
        key = f"{c.color}.chest"
        opens = f"{V.CHEST_PREFIX.format(c=c.color)} {c.metal} key ."
        out["demo_lambada"].append((key, f"{V.RECALL_LEAD} {opens}"))
        out["demo_arc_easy"].append((key, f"{V.QUESTION.format(q=V.CHEST_KEY_QUESTION.format(c=c.color))} {opens}"))
        solution = V.CHEST_SOLUTION.format(c=c.color, metal=c.metal, count=c.count)
        out["demo_piqa"].append((key, f"{V.QUESTION.format(q=V.CHEST_QUESTION.format(c=c.color))} {solution}"))
    return out


def _pick_queries(queries: dict[str, list[tuple[str, str]]], rng, n: int) -> list[str]:
    """Up to n queries, formats taken in turn (random order), no fact asked twice: a later query
    must not be answerable by copying an earlier answer instead of reading the document."""
    pools = {t: rng.sample(q, len(q)) for t, q in queries.items() if q}
    used: set[str] = set()
    picked: list[str] = []
    while pools and len(picked) < n:
        for task in rng.sample(sorted(pools), len(pools)):
            pool = pools[task]
            while pool and pool[-1][0] in used:
                pool.pop()
            if not pool:
                del pools[task]
                continue
            key, text = pool.pop()
            used.add(key)
            picked.append(text)
            if len(picked) == n:
                break
    return picked


def training_episode_parts(rng: random.Random, split: str = "train", n_queries: int = 8, short: float = 0.0):
    """(document, [answered queries]): up to `n_queries` queries of all six formats. With
    probability `short` the document is 40..200 words (more answers per word: cheaper training)."""
    if rng.random() < short:
        length = rng.randint(40, 200)
    else:
        length = context_length(rng) if rng.random() < 0.5 else rng.randint(MIN_CONTEXT, MAX_CONTEXT)
    world = sample_world(rng, entity_count(length), split)
    if rng.random() < 0.5:  # make two-hop and winogrande material common
        _arc_challenge_setup(world, rng)
    doc = render_document(world, rng, length)
    return doc, _pick_queries(_answered_queries(world), rng, n_queries)


def training_episode(rng: random.Random, split: str = "train", n_queries: int = 8) -> str:
    """A 200..1000-word document followed by up to `n_queries` answered queries (six formats)."""
    doc, queries = training_episode_parts(rng, split, n_queries)
    return " ".join([doc, *queries])
