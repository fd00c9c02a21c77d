"""Where the flow map puts its nodes: a layered left-to-right drawing of the topology.

Pure Python and pandas, as transforms.py; charts.py draws what this returns.
"""

from __future__ import annotations

import pandas as pd


def layout_nodes(nodes: dict[str, str], edges: pd.DataFrame) -> pd.DataFrame:
    """A layered left-to-right layout: cycles (retry loops, saga replies) are broken by a
    greedy feedback-arc ordering, each node goes one layer right of its furthest
    predecessor, and a few barycentre sweeps order each layer to cut crossings."""
    pairs = list(zip(edges["source"], edges["target"], strict=True))
    names = sorted(set(nodes) | {n for pair in pairs for n in pair})
    order = {n: i for i, n in enumerate(_feedback_order(names, pairs))}
    forward = [(s, t) for s, t in pairs if order[s] < order[t]]
    layer = dict.fromkeys(names, 0)
    for node in sorted(names, key=order.__getitem__):
        for source, target in forward:
            if source == node:
                layer[target] = max(layer[target], layer[node] + 1)
    rank = _order_layers(layer, pairs)
    frame = pd.DataFrame({"node": names, "layer": [layer[n] for n in names],
                          "rank": [rank[n] for n in names]})
    frame["kind"] = [nodes.get(n, "topic") for n in frame["node"]]
    frame = frame.sort_values(["layer", "rank"]).reset_index(drop=True)
    sizes = frame.groupby("layer")["node"].transform("count")
    frame["y"] = -(frame.groupby("layer").cumcount().astype(float) - (sizes - 1) / 2)
    frame["x"] = frame["layer"].astype(float)
    return frame.drop(columns=["rank"])


def _feedback_order(names: list[str], pairs: list[tuple[str, str]]) -> list[str]:
    """Eades-Lin-Smyth: peel sinks to the back and sources to the front, else the node with
    the most out- over in-edges; the edges that point backwards form a small feedback set."""
    left = set(names)
    front: list[str] = []
    back: list[str] = []
    while left:
        live = [(s, t) for s, t in pairs if s in left and t in left and s != t]
        ins = dict.fromkeys(left, 0)
        outs = dict.fromkeys(left, 0)
        for source, target in live:
            outs[source] += 1
            ins[target] += 1
        sinks = sorted(n for n in left if outs[n] == 0)
        sources = sorted(n for n in left if ins[n] == 0 and outs[n] > 0)
        if sinks:
            back = sinks + back
            left -= set(sinks)
        elif sources:
            front += sources
            left -= set(sources)
        else:
            placed = set(front)
            fed = {n: sum(1 for s, t in pairs if t == n and s in placed) for n in left}
            best = max(sorted(left), key=lambda n: (outs[n] - ins[n], fed[n]))
            front.append(best)
            left.remove(best)
    return front + back


def _order_layers(layer: dict[str, int], pairs: list[tuple[str, str]], sweeps: int = 4
                  ) -> dict[str, float]:
    """Order nodes within each layer by the mean position of their neighbours."""
    rank = {n: float(i) for i, n in enumerate(sorted(layer, key=lambda n: (layer[n], n)))}
    neighbours: dict[str, list[str]] = {n: [] for n in layer}
    for source, target in pairs:
        neighbours[source].append(target)
        neighbours[target].append(source)
    for _ in range(sweeps):
        for node in layer:
            if neighbours[node]:
                rank[node] = sum(rank[m] for m in neighbours[node]) / len(neighbours[node])
        for depth in set(layer.values()):
            members = sorted((n for n in layer if layer[n] == depth), key=lambda n: (rank[n], n))
            for position, node in enumerate(members):
                rank[node] = float(position)
    return rank
