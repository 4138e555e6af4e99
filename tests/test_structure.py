"""The layout the spec and STYLE.md ask for, checked on the source itself: imports flow one way, and the trainer
reads as a short script."""

import ast

from tests.conftest import ROOT


def imports(path):
    """The modules a file imports, at any depth (function-level imports included), as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_the_package_imports_nothing_above_it_and_no_two_modules_import_each_other():
    """s10/ is the ground floor: nothing in it imports hub/ or space/. Among s10/'s modules the import graph has no
    cycle (a module reaching itself through others), function-level imports included."""
    modules = {p.stem: p for p in (ROOT / "s10").glob("*.py") if p.stem != "__init__"}
    graph = {}
    for name, path in modules.items():
        found = imports(path)
        upward = sorted(m for m in found if m.split(".")[0] in ("hub", "space"))
        assert not upward, f"s10/{name}.py imports {upward}"
        graph[name] = {m.split(".")[1] for m in found if m.startswith("s10.") and m.split(".")[1] in modules} - {name}

    def reach(start, node, seen):
        for nxt in graph[node]:
            assert nxt != start, f"s10/{start}.py imports itself through s10/{node}.py"
            if nxt not in seen:
                seen.add(nxt)
                reach(start, nxt, seen)

    for name in graph:
        reach(name, name, set())


def test_the_trainer_is_a_short_script_of_named_phases():
    """fabric_train.py at most 450 lines, its phases in reading order: parse, Fabric, data, model, LR range test,
    fit, finish, then main calling them in that order."""
    source = (ROOT / "fabric_train.py").read_text()
    assert len(source.splitlines()) <= 450
    order = ["parse_args", "build_fabric", "load_data", "setup_model", "find_lr", "fit", "finish", "main"]
    defined = [n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)]
    assert [d for d in defined if d in order] == order
    main = source[source.index("def main("):]
    calls = [main.index(f"{name}(") for name in order[:-1]]
    assert calls == sorted(calls)
