"""Referring expressions for synthetic scenes that are checked to pick out exactly one object, and
group expressions that name every object of a kind ("all the red circles") or one that is absent.

An expression is a noun phrase ("the large blue circle"), optionally with a position ("the leftmost
circle", "the top right square") or a relation to a uniquely named anchor ("the red square left of
the blue circle"). ``referents`` evaluates an expression against a scene with a safety margin: an
object counts as a possible referent unless it is clearly ruled out, so an expression is only
emitted when a reader could not hesitate between two objects. ``explain`` writes the matching
templated reasoning: every shape of the scene in reading order with its centre, then the candidates
compared and why the target wins.

``choose_group_expressions`` adds the two kinds of ``GROUP_TYPES``: "multiple" names the two or more
objects that match a phrase ("all the circles", "the two red shapes"), "absent" a phrase that
matches no object ("the purple star"); ``explain_group`` writes their reasoning.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from training.data.synthetic_scenes import COLORS, SHAPES, SIZES, SceneObject

EXPRESSION_TYPES = ("shape", "color", "size", "position", "relation")  # one referent each
GROUP_TYPES = ("multiple", "absent")  # several referents, none
Axis = tuple[str, int]  # ("x" or "y", -1 for smaller-is-better / left-or-above, +1 for larger)
POSITIONS: dict[str, tuple[Axis, ...]] = {
    "leftmost": (("x", -1),),
    "rightmost": (("x", 1),),
    "top": (("y", -1),),
    "bottom": (("y", 1),),
    "top left": (("y", -1), ("x", -1)),
    "top right": (("y", -1), ("x", 1)),
    "bottom left": (("y", 1), ("x", -1)),
    "bottom right": (("y", 1), ("x", 1)),
}
RELATIONS: dict[str, Axis] = {"left of": ("x", -1), "right of": ("x", 1), "above": ("y", -1), "below": ("y", 1)}
# Attribute subsets tried for noun phrases; anchors use the first one that is unique.
ATTRIBUTE_SETS = (
    ("shape",),
    ("color", "shape"),
    ("size", "shape"),
    ("size", "color", "shape"),
    ("color",),
    ("size",),
    ("size", "color"),
    (),
)
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


@dataclass(frozen=True)
class Phrase:
    size: str | None = None
    color: str | None = None
    shape: str | None = None

    @classmethod
    def of(cls, obj: SceneObject, attributes: Sequence[str]) -> Phrase:
        return cls(**{name: getattr(obj, name) for name in attributes})

    def matches(self, obj: SceneObject) -> bool:
        return (
            (self.size is None or obj.size == self.size)
            and (self.color is None or obj.color == self.color)
            and (self.shape is None or obj.shape == self.shape)
        )

    def without(self, attribute: str) -> Phrase:
        return replace(self, **{attribute: None})

    @property
    def text(self) -> str:
        return " ".join(word for word in (self.size, self.color, self.shape or "shape") if word)

    @property
    def plural(self) -> str:
        return self.text + "s"


@dataclass(frozen=True)
class Expression:
    kind: str
    phrase: Phrase
    position: str | None = None
    relation: str | None = None
    anchor: Phrase | None = None
    count: int | None = None  # "multiple": the number word said ("the two ..."); None says "all the ..."

    @property
    def text(self) -> str:
        if self.kind == "multiple":
            return f"all the {self.phrase.plural}" if self.count is None else f"the {NUMBER_WORDS[self.count]} {self.phrase.plural}"
        if self.position is not None:
            return f"the {self.position} {self.phrase.text}"
        if self.relation is not None and self.anchor is not None:
            return f"the {self.phrase.text} {self.relation} the {self.anchor.text}"
        return f"the {self.phrase.text}"


def coordinate(obj: SceneObject, axis: str) -> float:
    return obj.center[0] if axis == "x" else obj.center[1]


def matching(phrase: Phrase, objects: Sequence[SceneObject]) -> list[int]:
    return [i for i, obj in enumerate(objects) if phrase.matches(obj)]


def referents(expression: Expression, objects: Sequence[SceneObject], margin: float) -> list[int]:
    """Every object a reader could take the expression to mean.

    Positions: candidates within ``margin`` of the best on any axis of the position. Relations:
    candidates on the named side of any object matching the anchor phrase, by however little.
    """
    candidates = matching(expression.phrase, objects)
    if expression.position is not None:
        possible: set[int] = set()
        for axis, sign in POSITIONS[expression.position]:
            scores = {i: sign * coordinate(objects[i], axis) for i in candidates}
            best = max(scores.values())
            possible |= {i for i, score in scores.items() if score > best - margin}
        return sorted(possible)
    if expression.relation is not None and expression.anchor is not None:
        axis, sign = RELATIONS[expression.relation]
        return sorted(
            {
                i
                for a in matching(expression.anchor, objects)
                for i in candidates
                if i != a and sign * (coordinate(objects[i], axis) - coordinate(objects[a], axis)) > 0
            }
        )
    return candidates


def is_unambiguous(expression: Expression, target: int, objects: Sequence[SceneObject], margin: float) -> bool:
    """Exactly one referent, the target; for a relation also a unique anchor the target is clearly beside."""
    if referents(expression, objects, margin) != [target]:
        return False
    if expression.relation is None or expression.anchor is None:
        return True
    anchors = matching(expression.anchor, objects)
    axis, sign = RELATIONS[expression.relation]
    return (
        len(anchors) == 1
        and sign * (coordinate(objects[target], axis) - coordinate(objects[anchors[0]], axis)) >= margin
    )


def candidate_expressions(
    target: int, objects: Sequence[SceneObject], kinds: Sequence[str], margin: float
) -> list[Expression]:
    """All unambiguous expressions of the requested kinds for one object. Colour and size must be
    informative (the phrase without them matches several objects); position and relation are only
    used on a phrase that alone matches several objects."""
    obj = objects[target]
    anchors = {i: _unique_phrase(i, objects) for i in range(len(objects)) if i != target} if "relation" in kinds else {}
    found: list[Expression] = []
    for attributes in ATTRIBUTE_SETS:
        phrase = Phrase.of(obj, attributes)
        matches = matching(phrase, objects)
        if "shape" in kinds and attributes == ("shape",) and matches == [target]:
            found.append(Expression("shape", phrase))
        for kind in ("color", "size"):
            if (
                kind in kinds
                and kind in attributes
                and matches == [target]
                and len(matching(phrase.without(kind), objects)) >= 2
            ):
                found.append(Expression(kind, phrase))
        if len(matches) < 2:
            continue
        if "position" in kinds:
            found += [
                e
                for e in (Expression("position", phrase, position=p) for p in POSITIONS)
                if is_unambiguous(e, target, objects, margin)
            ]
        for anchor_phrase in filter(None, anchors.values()):
            found += [
                e
                for e in (Expression("relation", phrase, relation=r, anchor=anchor_phrase) for r in RELATIONS)
                if is_unambiguous(e, target, objects, margin)
            ]
    return found


def choose_expressions(
    rng: np.random.Generator,
    target: int,
    objects: Sequence[SceneObject],
    kinds: Sequence[str],
    limit: int,
    margin: float,
) -> list[Expression]:
    """Up to ``limit`` expressions of different kinds, kinds and expressions picked at random."""
    by_kind: dict[str, list[Expression]] = {}
    for expression in candidate_expressions(target, objects, kinds, margin):
        by_kind.setdefault(expression.kind, []).append(expression)
    available = [kind for kind in EXPRESSION_TYPES if kind in by_kind]
    chosen: list[Expression] = []
    for kind_index in rng.permutation(len(available))[:limit]:
        options = [e for e in by_kind[available[kind_index]] if e.text not in {c.text for c in chosen}]
        if options:
            chosen.append(options[int(rng.integers(len(options)))])
    return chosen


def _unique_phrase(index: int, objects: Sequence[SceneObject]) -> Phrase | None:
    for attributes in ATTRIBUTE_SETS:
        phrase = Phrase.of(objects[index], attributes)
        if matching(phrase, objects) == [index]:
            return phrase
    return None


def describe(obj: SceneObject) -> str:
    return f"{obj.size} {obj.color} {obj.shape}"


def location(obj: SceneObject) -> str:
    return f"({round(obj.center[0])}, {round(obj.center[1])})"


READING_ROWS = 4  # the scene is read in this many horizontal bands, top to bottom, each left to right


def reading_order(objects: Sequence[SceneObject], image_size: int) -> list[SceneObject]:
    """Top band first, left to right within a band: a fixed order a reader (or a model scanning its
    image tokens in raster order) can reproduce, unlike the order the shapes were placed in."""
    return sorted(objects, key=lambda obj: _reading_key(obj, image_size))


def _reading_key(obj: SceneObject, image_size: int) -> tuple[int, float]:
    band = image_size / READING_ROWS
    return min(int(obj.center[1] // band), READING_ROWS - 1), obj.center[0]


def _series(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


LISTING_OPENING = "Row by row, the image shows "
LISTED_SHAPE = re.compile(r"a (\w+) (\w+) (\w+) at \((\d+), (\d+)\)")


@dataclass(frozen=True)
class ListedShape:
    size: str
    color: str
    shape: str
    center: tuple[int, int]


def scene_listing(objects: Sequence[SceneObject], image_size: int) -> str:
    described = [f"a {describe(obj)} at {location(obj)}" for obj in reading_order(objects, image_size)]
    return f"{LISTING_OPENING}{_series(described)}."


def parse_scene_listing(reasoning: str) -> list[ListedShape]:
    """The shapes named in the opening sentence of a reasoning written like ``scene_listing`` (a
    model's or the teacher's); [] when the reasoning does not open with a listing."""
    if not reasoning.startswith(LISTING_OPENING):
        return []
    sentence = reasoning.split(". ", 1)[0]
    return [ListedShape(m.group(1), m.group(2), m.group(3), (int(m.group(4)), int(m.group(5))))
            for m in LISTED_SHAPE.finditer(sentence)]


def _there_are(count: int, phrase: Phrase, suffix: str = "") -> str:
    if count == 1:
        return f"There is one {phrase.text}{suffix}"
    return f"There are {NUMBER_WORDS.get(count, str(count))} {phrase.plural}{suffix}"


def explain(expression: Expression, target: int, objects: Sequence[SceneObject], image_size: int) -> str:
    """Templated reasoning: the scene's shapes in reading order (so that each is described where it is
    seen), then the candidates compared and why the target is the one meant."""
    obj = objects[target]
    chosen = f"the {describe(obj)} at {location(obj)}"
    opening = _opening(expression, objects, image_size)

    def candidates(group: Sequence[SceneObject], phrase: Phrase, suffix: str = "") -> str:
        return _candidates(group, phrase, image_size, suffix)

    if expression.position is not None:
        group = [objects[i] for i in matching(expression.phrase, objects)]
        criteria = " and ".join(
            f"the {'smallest' if sign < 0 else 'largest'} {axis}" for axis, sign in POSITIONS[expression.position]
        )
        return f"{opening} {candidates(group, expression.phrase)}; {chosen} has {criteria}, so it is the target."
    if expression.relation is not None and expression.anchor is not None:
        anchor_index = matching(expression.anchor, objects)[0]
        anchor = objects[anchor_index]
        group = [objects[i] for i in matching(expression.phrase, objects) if i != anchor_index]
        besides = " besides it" if expression.phrase.matches(anchor) else ""
        axis, sign = RELATIONS[expression.relation]
        comparison = (
            f"{axis} {round(coordinate(obj, axis))} {'<' if sign < 0 else '>'} {round(coordinate(anchor, axis))}"
        )
        return (
            f"{opening} The reference is the {describe(anchor)} at {location(anchor)}. "
            f"{candidates(group, expression.phrase, besides)}; "
            f"only {chosen} is {expression.relation} it ({comparison}), so it is the target."
        )
    attribute = expression.kind  # shape, color or size
    base = expression.phrase.without(attribute)
    group = [objects[i] for i in matching(base, objects)]
    quality = f"a {obj.shape}" if attribute == "shape" else getattr(obj, attribute)
    return f"{opening} {candidates(group, base)}; only {chosen} is {quality}, so it is the target."


def _opening(expression: Expression, objects: Sequence[SceneObject], image_size: int) -> str:
    return f"{scene_listing(objects, image_size)} The query asks for {expression.text}."


def _candidates(group: Sequence[SceneObject], phrase: Phrase, image_size: int, suffix: str = "") -> str:
    points = _series([location(o) for o in reading_order(group, image_size)])
    return f"{_there_are(len(group), phrase, suffix)}, at {points}"


# Phrases of "multiple" expressions: every attribute set but the empty one ("all the shapes" would
# name the whole scene); of "absent" ones: a shape, alone or with colour (and size), never missing.
GROUP_ATTRIBUTE_SETS = tuple(attributes for attributes in ATTRIBUTE_SETS if attributes)
ABSENT_ATTRIBUTE_SETS = (("shape",), ("color", "shape"), ("size", "color", "shape"))
ATTRIBUTE_VALUES = {"shape": SHAPES, "color": tuple(COLORS), "size": SIZES}
ABSENT_TRIES = 20  # random phrases tried for one that matches nothing (a scene uses at most 3 shapes)


def group_targets(expression: Expression, objects: Sequence[SceneObject], image_size: int) -> list[int]:
    """The referents of a group expression in reading order (the order its reasoning and answer use)."""
    return sorted(matching(expression.phrase, objects), key=lambda i: _reading_key(objects[i], image_size))


def choose_group_expressions(
    rng: np.random.Generator, objects: Sequence[SceneObject], kinds: Sequence[str], shares: dict[str, float]
) -> list[Expression]:
    """At most one "multiple" and one "absent" expression for a scene, each with probability
    ``shares[kind]`` when the scene allows one. Every draw is made whatever ``kinds`` holds, so the
    expressions of one kind do not depend on whether the other is asked for."""
    chosen: list[Expression] = []
    groups = {p.text: p for attributes in GROUP_ATTRIBUTE_SETS for p in (Phrase.of(o, attributes) for o in objects)
              if len(matching(p, objects)) >= 2}
    wants_multiple, says_count = rng.random() < shares["multiple"], rng.random() < 0.5
    if groups:
        phrase = list(groups.values())[int(rng.integers(len(groups)))]
        count = len(matching(phrase, objects))
        if "multiple" in kinds and wants_multiple:
            chosen.append(Expression("multiple", phrase, count=count if says_count and count in NUMBER_WORDS else None))
    wants_absent = rng.random() < shares["absent"]
    for _ in range(ABSENT_TRIES):
        attributes = ABSENT_ATTRIBUTE_SETS[int(rng.integers(len(ABSENT_ATTRIBUTE_SETS)))]
        phrase = Phrase(**{a: str(rng.choice(ATTRIBUTE_VALUES[a])) for a in attributes})
        if not matching(phrase, objects):
            if "absent" in kinds and wants_absent:
                chosen.append(Expression("absent", phrase))
            break
    return chosen


def explain_group(expression: Expression, objects: Sequence[SceneObject], image_size: int) -> str:
    """Templated reasoning of a group expression: the listing, then every match or the lack of one."""
    opening = _opening(expression, objects, image_size)
    group = [objects[i] for i in group_targets(expression, objects, image_size)]
    if not group:
        return f"{opening} There is no {expression.phrase.text}, so nothing matches."
    every = "both" if len(group) == 2 else f"all {NUMBER_WORDS.get(len(group), str(len(group)))}"
    return f"{opening} {_candidates(group, expression.phrase, image_size)}, so {every} are the targets."
