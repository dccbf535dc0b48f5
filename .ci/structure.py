#!/usr/bin/env python3
"""The structure rules of ARCHITECTURE.md, checked: one room per job.

- no non-test Rust source file over FILE_LINES_MAX lines;
- no function over FN_LINES_MAX lines outside tests;
- no import cycle between the modules of a crate (an edge a -> b when a names `crate::b…`
  or a sibling through `super::`; a module and its own submodules do not count);
- the agent's routing crate does not depend on the cluster crate (nor, through it, openraft).

Prints every breach and exits 1 if there is one. Test code is `tests/` directories,
`tests.rs` files and `#[cfg(test)] mod tests { … }` blocks.
"""
import os
import re
import subprocess
import sys

FILE_LINES_MAX = 600
FN_LINES_MAX = 100
ROOTS = ["crates", "benches", "simulation"]

FN = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?(?:extern\s+\"C\"\s+)?fn\s+(\w+)")
TEST_MOD = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{")


RAW_STRING_START = re.compile(r'r(#*)"')
CHAR_LITERAL = re.compile(r"'(?:\\u\{[0-9a-fA-F]+\}|\\.|[^'\\\n])'")


def strip(text):
    """Comments and string/char literals blanked (newlines kept), so braces count and line
    numbers still match. One pass, because `//` may sit inside a string and `"` in a comment;
    a lifetime (`'a`) is not a char literal because no quote closes it."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        after_ident = i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")
        raw = c == "r" and not after_ident and RAW_STRING_START.match(text, i)
        char = c == "'" and CHAR_LITERAL.match(text, i)
        if text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
        elif raw:
            close = '"' + raw.group(1)
            end = text.find(close, raw.end())
            end = n if end < 0 else end + len(close)
        elif c == '"':
            end = i + 1
            while end < n and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            end += 1
        elif char:
            end = char.end()
        else:
            out.append(c)
            i += 1
            continue
        out.append(" " + "\n" * text.count("\n", i, end))
        i = end
    return "".join(out)


def block_end(lines, start):
    """Index of the line closing the first `{` at or after `start`, or None for `fn …;`."""
    depth, opened = 0, False
    for i in range(start, len(lines)):
        for ch in lines[i]:
            if ch == "{":
                depth, opened = depth + 1, True
            elif ch == "}":
                depth -= 1
            elif ch == ";" and not opened and depth == 0:
                return None
        if opened and depth == 0:
            return i
    return None


def is_test_file(path):
    return "/tests/" in path or path.endswith("/tests.rs") or "/tests_" in path


def sources():
    for root in ROOTS:
        for d, dirs, files in os.walk(root):
            dirs[:] = [x for x in dirs if x not in ("target", "tests")]
            for f in files:
                if f.endswith(".rs"):
                    yield os.path.join(d, f)


def without_test_blocks(lines):
    """Lines with inline `#[cfg(test)] mod … { … }` blocks blanked."""
    text = "\n".join(lines)
    out = list(lines)
    for m in TEST_MOD.finditer(text):
        first = text.count("\n", 0, m.start())
        end = block_end(lines, text.count("\n", 0, m.end() - 1))
        for i in range(first, (end if end is not None else len(lines) - 1) + 1):
            out[i] = ""
    return out


def long_functions(path, lines):
    i = 0
    while i < len(lines):
        m = FN.match(lines[i])
        if not m:
            i += 1
            continue
        end = block_end(lines, i)
        if end is None:
            i += 1
            continue
        length = end - i + 1
        if length > FN_LINES_MAX:
            yield f"{path}:{i + 1}: fn {m.group(1)} is {length} lines (at most {FN_LINES_MAX})"
        i = end + 1


def module_name(src, path):
    parts = os.path.relpath(path, src)[:-3].split("/")
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return "::".join(parts)


def related(a, b):
    return a == b or a.startswith(b + "::") or b.startswith(a + "::")


def cycles(src):
    mods = {}
    for d, _, files in os.walk(src):
        for f in files:
            if f.endswith(".rs"):
                path = os.path.join(d, f)
                mods[module_name(src, path)] = path
    edges = {m: set() for m in mods}
    for m, path in mods.items():
        if m.split("::")[-1] == "tests":
            continue
        text = "\n".join(without_test_blocks(strip(open(path).read()).split("\n")))
        named = re.findall(r"crate::((?:\w+::)*\w+)", text)
        for group in re.findall(r"crate::\{([^}]*)\}", text):
            named += [item.strip() for item in group.split(",")]
        for item in named:
            segs = item.split("::")
            for k in range(len(segs), 0, -1):
                cand = "::".join(segs[:k])
                if cand in mods:
                    if not related(cand, m):
                        edges[m].add(cand)
                    break
        parent = "::".join(m.split("::")[:-1])
        for name in re.findall(r"super::(\w+)", text):
            sib = f"{parent}::{name}".strip(":")
            if sib in mods and not related(sib, m):
                edges[m].add(sib)
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main():
    os.chdir(os.path.join(os.path.dirname(__file__), ".."))
    problems = []
    for path in sorted(sources()):
        if is_test_file(path):
            continue
        raw = open(path).read().split("\n")
        if raw and raw[-1] == "":
            raw = raw[:-1]
        if len(raw) > FILE_LINES_MAX:
            problems.append(f"{path}: {len(raw)} lines (at most {FILE_LINES_MAX})")
        lines = without_test_blocks(strip("\n".join(raw)).split("\n"))
        problems.extend(long_functions(path, lines))
    for root in ROOTS:
        for d, dirs, files in os.walk(root):
            dirs[:] = [x for x in dirs if x != "target"]
            if os.path.basename(d) == "src" and "Cargo.toml" in os.listdir(os.path.dirname(d)):
                for comp in cycles(d):
                    problems.append(f"{d}: import cycle between modules {', '.join(comp)}")
    tree = subprocess.run(
        ["cargo", "tree", "-p", "tailgate-routing", "-e", "normal", "--prefix", "none"],
        capture_output=True, text=True, check=True,
    ).stdout
    for forbidden in ("tailgate-cluster", "openraft"):
        if re.search(rf"^{forbidden} ", tree, re.M):
            problems.append(f"tailgate-routing depends on {forbidden}")
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} structure problem(s); see ARCHITECTURE.md")
        return 1
    print("structure: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
