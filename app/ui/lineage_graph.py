"""The model lineage as a graph, laid out here for inline SVG: parent -> child from left to right.

Depth is the column. Leaves take rows in order (children by creation, ids being time-ordered) and a
parent sits on its first child's row, so a plain chain of versions is one straight line and a branch
(two jobs from the same parent) opens a row below."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

NODE_W, NODE_H = 168, 42
COLUMN_PITCH = NODE_W + 48
ROW_PITCH = NODE_H + 34  # room under each node for its alias tags
PAD = 12
MAX_LABEL_CHARS = 22


@dataclass(frozen=True)
class GraphNode:
    id: str
    label: str
    status: str  # accepted | rejected | candidate
    parent_id: str | None
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlacedNode:
    node: GraphNode
    x: int  # top-left corner
    y: int
    label: str  # clipped to fit the box

    @property
    def alias_text(self) -> str:
        return " ".join(f"⚑ {name}" for name in self.node.aliases)


@dataclass(frozen=True)
class Edge:
    path: str  # an SVG path from the parent's right side to the child's left side
    status: str  # the child's, so a rejected branch is drawn as one


@dataclass(frozen=True)
class LineageLayout:
    nodes: tuple[PlacedNode, ...]
    edges: tuple[Edge, ...]
    width: int
    height: int
    node_w: int = NODE_W
    node_h: int = NODE_H


def clip(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def layout_lineage(versions: Sequence[GraphNode]) -> LineageLayout:
    """Place every version; one whose parent is not among `versions` starts a tree of its own."""
    by_id = {v.id: v for v in versions}
    children: dict[str, list[GraphNode]] = defaultdict(list)
    roots: list[GraphNode] = []
    for version in sorted(versions, key=lambda v: v.id):
        if version.parent_id is not None and version.parent_id in by_id:
            children[version.parent_id].append(version)
        else:
            roots.append(version)
    depth: dict[str, int] = {}
    row: dict[str, int] = {}
    next_row = 0
    # Iterative depth-first walk (lineages can be deeper than Python's recursion limit): a node is
    # placed after its children, on its first child's row, or on a new row when it is a leaf.
    stack: list[tuple[GraphNode, int, bool]] = [(root, 0, False) for root in reversed(roots)]
    while stack:
        version, level, children_done = stack.pop()
        kids = children[version.id]
        if children_done:
            if kids:
                row[version.id] = row[kids[0].id]
            else:
                row[version.id] = next_row
                next_row += 1
            continue
        depth[version.id] = level
        stack.append((version, level, True))
        stack.extend((kid, level + 1, False) for kid in reversed(kids))
    placed = {
        v.id: PlacedNode(v, PAD + depth[v.id] * COLUMN_PITCH, PAD + row[v.id] * ROW_PITCH, clip(v.label))
        for v in versions
        if v.id in row
    }
    edges = []
    for node in placed.values():
        parent = placed.get(node.node.parent_id or "")
        if parent is None:
            continue
        x1, y1 = parent.x + NODE_W, parent.y + NODE_H // 2
        x2, y2 = node.x, node.y + NODE_H // 2
        bend = (x1 + x2) // 2
        edges.append(Edge(f"M{x1},{y1} C{bend},{y1} {bend},{y2} {x2},{y2}", node.node.status))
    columns = max(depth.values(), default=0) + 1
    width = 2 * PAD + (columns - 1) * COLUMN_PITCH + NODE_W
    height = 2 * PAD + max(next_row, 1) * ROW_PITCH - (ROW_PITCH - NODE_H) + 18
    ordered = tuple(sorted(placed.values(), key=lambda p: (p.y, p.x)))
    return LineageLayout(ordered, tuple(edges), width, height)
