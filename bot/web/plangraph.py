"""A plan's dependency graph laid out for a phone (pure): each task in the row after its
deepest prerequisite, rows top to bottom, boxes spread across a 360-unit-wide SVG that the
page scales to its width. No front-end build, no layout library: at most 12 tasks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

WIDTH = 360
BOX_H = 34
ROW_GAP = 34
GAP = 6
MAX_BOX_W = 110


@dataclass(frozen=True)
class Box:
    key: int
    x: float
    y: float
    w: float
    h: float = BOX_H

    @property
    def cx(self) -> float:
        return self.x + self.w / 2


@dataclass(frozen=True)
class Edge:
    """From a prerequisite's bottom to its dependent's top."""

    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class Layout:
    boxes: dict[int, Box]
    edges: list[Edge]
    height: float
    width: int = WIDTH


def rows_of(keys: Sequence[int], after: Mapping[int, Sequence[int]]) -> list[list[int]]:
    """Tasks by depth: no prerequisite in the plan, row 0; else one below the deepest one.
    Prerequisites outside `keys` are ignored; a circle (never stored) cannot loop here."""
    known = set(keys)
    depth: dict[int, int] = {}

    def of(key: int, seen: frozenset[int]) -> int:
        if key in depth:
            return depth[key]
        before = [p for p in after.get(key, ()) if p in known and p not in seen]
        depth[key] = 1 + max((of(p, seen | {key}) for p in before), default=-1)
        return depth[key]

    for key in keys:
        of(key, frozenset())
    rows: list[list[int]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for key in keys:
        rows[depth[key]].append(key)
    return rows


def layout(keys: Sequence[int], after: Mapping[int, Sequence[int]]) -> Layout:
    rows = rows_of(keys, after)
    boxes: dict[int, Box] = {}
    for r, row in enumerate(rows):
        w = min(MAX_BOX_W, (WIDTH - GAP * (len(row) + 1)) / len(row))
        used = len(row) * w + GAP * (len(row) - 1)
        x = (WIDTH - used) / 2
        for key in row:
            boxes[key] = Box(key, x, GAP + r * (BOX_H + ROW_GAP), w)
            x += w + GAP
    edges = [
        Edge(boxes[p].cx, boxes[p].y + BOX_H, boxes[k].cx, boxes[k].y)
        for k in keys
        for p in after.get(k, ())
        if p in boxes
    ]
    height = GAP * 2 + len(rows) * BOX_H + max(0, len(rows) - 1) * ROW_GAP
    return Layout(boxes, edges, height)
