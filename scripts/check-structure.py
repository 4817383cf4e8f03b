#!/usr/bin/env python3
"""Two structural rules of the code base, checked from the source text:

1. No import circle between the library's modules: the graph of `crate::a::b` references
   (in `use` lines and in paths in the code) between the files of src/, with each
   reference drawn to the module it names (a file or a folder's mod.rs), has no cycle.
   References to the crate root (`crate::Error`), between a folder's own files
   (`super::`) and in `#[cfg(test)]` items are left out: the root re-exports, a folder is
   one module to the rest, and tests may use anything.
2. No function over 80 lines outside tests (`#[cfg(test)]` modules and tests/ folders).

Prints what breaks a rule and exits with 1; prints a summary and exits with 0 otherwise.
Usage: python3 scripts/check-structure.py [ROOT]
"""
import re
import sys
from pathlib import Path

MAX_LINES = 80
root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)


def module_of(path: Path) -> str:
    """`src/train/state.rs` -> `train::state`, `src/train/mod.rs` -> `train`."""
    parts = list(path.relative_to(root / "src").with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return "::".join(parts)


def strip_comments(text: str) -> str:
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(\\.|[^"\\])*"', '""', text)


def without_tests(text: str) -> str:
    """The text without its `#[cfg(test)]` items (test modules may use anything)."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        j = text.find("{", m.end())
        depth, k = 0, j
        while k < len(text):
            depth += {"{": 1, "}": -1}.get(text[k], 0)
            if depth == 0:
                break
            k += 1
        i = k + 1
    out.append(text[i:])
    return "".join(out)


def import_graph():
    files = sorted((root / "src").rglob("*.rs"))
    modules = {module_of(f) for f in files}
    graph = {}
    for f in files:
        me = module_of(f)
        text = without_tests(strip_comments(f.read_text()))
        targets = set()
        # `use crate::{a::B, c}` groups and plain `crate::a::b` paths.
        for group in re.findall(r"crate::\{([^}]*)\}", text):
            for item in group.split(","):
                targets.add(item.strip())
        for path in re.findall(r"crate::((?:\w+::)*\w+)", text):
            targets.add(path)
        for t in targets:
            parts = [p for p in re.split(r"::", t) if p]
            # The longest prefix of the path that is a module.
            for n in range(len(parts), 0, -1):
                m = "::".join(parts[:n])
                if m in modules and m:
                    top_me, top_m = me.split("::")[0], m.split("::")[0]
                    if top_me != top_m:
                        graph.setdefault(top_me, set()).add(top_m)
                    break
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == "open":
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        state[n] = "done"
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def long_functions():
    found = []
    files = [f for d in ("src", "cli/src", "examples", "benches") for f in sorted((root / d).rglob("*.rs"))]
    for f in files:
        lines = f.read_text().split("\n")
        in_test = False
        depth_test = None
        depth = 0
        i = 0
        while i < len(lines):
            line = strip_comments(lines[i])
            if re.match(r"\s*#\[cfg\(test\)\]", lines[i]):
                in_test = True
                depth_test = depth
            m = re.match(r"\s*(pub(\([^)]*\))?\s+)?(const\s+)?(unsafe\s+)?fn\s+(\w+)", line)
            if m and not in_test and "{" in "".join(strip_comments(l) for l in lines[i:i + 12]):
                start, d, j, opened = i, 0, i, False
                while j < len(lines):
                    s = strip_comments(lines[j])
                    if ";" in s and not opened and "{" not in s:
                        break  # a declaration without a body
                    d += s.count("{") - s.count("}")
                    opened = opened or "{" in s
                    if opened and d <= 0:
                        break
                    j += 1
                n = j - start + 1
                if opened and n > MAX_LINES:
                    found.append(f"{f.relative_to(root)}:{start + 1} {m.group(5)} is {n} lines")
            depth += line.count("{") - line.count("}")
            if in_test and depth <= depth_test and "}" in line:
                in_test = False
            i += 1
    return found


graph = import_graph()
cycle = find_cycle(graph)
long = long_functions()
ok = True
if cycle:
    ok = False
    print("import circle: " + " -> ".join(cycle))
for entry in long:
    ok = False
    print(f"function over {MAX_LINES} lines: {entry}")
if ok:
    edges = sum(len(v) for v in graph.values())
    print(f"structure: {len(graph)} modules, {edges} imports between them, no circle; no function over {MAX_LINES} lines outside tests")
sys.exit(0 if ok else 1)
