"""The shape of the code: sizes within limits, imports in the direction the data flows, the linter's
rules kept. Read as a newcomer would, a room that outgrows these limits is one to split."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "streamrnn"
MODULE, CLASS, FUNCTION = 300, 200, 50  # lines

# What may be longer, up to how long, and why. Each ceiling is its size today: it may shrink, never grow.
LONGER = {
    "cli": (356, "half of it is the parser, which declares every command and option"),
    "cli.parser": (155, "declares every command and option, one call each"),
    "daemon.metrics.Metrics": (
        215,
        "its __init__ declares every metric, one call each; the rest exports a value handed in (reading the parts: observe.py)",
    ),
    "daemon.metrics.Metrics.__init__": (145, "declares every metric, one call each"),
    "engine.engine.Engine": (
        223,
        "one concept, serving: a batch's step and the streams' rows coming, going and checkpointed, which every "
        "part (bank, rings, evaluator, contenders, health) keeps by the same row; retraining's half is retraining.py",
    ),
    "intake.frames.Assembler": (204, "every bound on a stream (pending, probation, resync, stuck clocks) acts on the same per-stream maps"),
    "offline.replay": (307, "a CSV read as a table (its times checked, each refusal naming its cell) and replayed through an engine"),
    "transport.mqtt.link.Link": (215, "paho's callbacks (connect, subscribe, message, disconnect, status) share the session's state"),
}

# The parts, upstream first: a module imports from its own part or those before it, never after
# (docs/development.md draws them). The top level's modules are parts of their own; each package is
# one part, its __init__ says what it is.
PARTS = [
    {"atomic", "environment", "logs", "delivery", "children"},
    {"config"},
    {"engine"},
    {"learning"},
    {"intake"},
    {"transport"},
    {"daemon"},
    {"fleet"},
    {"offline"},
    {"tools"},
    {"cli", "__main__"},
]
# what the engine never reaches, however indirectly
TRANSPORTS = {"transport", "daemon", "fleet", "tools", "paho", "nats", "prometheus_client"}


def modules() -> dict[str, ast.Module]:
    """Every module by its dotted name within the package (a package by its own: ``engine``)."""
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = f.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name or "streamrnn"] = ast.parse(f.read_text(), str(f))
    return out


def _module(dotted: str) -> bool:
    path = PACKAGE.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports(tree: ast.Module) -> set[str]:
    """What a module imports: streamrnn's modules by their dotted names within the package (the
    module itself where a name is one, ``from streamrnn.engine import gate``), others by their
    top-level name."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "streamrnn" or node.module.startswith("streamrnn."):
                base = node.module.removeprefix("streamrnn").removeprefix(".")
                for a in node.names:
                    sub = f"{base}.{a.name}" if base else a.name
                    if _module(sub):
                        out.add(sub)
                    elif base:
                        out.add(base)
            else:
                out.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            out |= {a.name.removeprefix("streamrnn.") if a.name.startswith("streamrnn.") else a.name.split(".")[0] for a in node.names}
    return out


def part(name: str) -> int:
    top = name.split(".")[0]
    return next(i for i, members in enumerate(PARTS) if top in members)


def test_sizes() -> None:
    over: list[tuple[str, int, str]] = []
    sizes: dict[str, int] = {}
    kinds: dict[str, int] = {}
    default = lambda name: kinds.get(name, MODULE)
    for name, tree in modules().items():
        lines = max((getattr(n, "end_lineno", 0) or 0 for n in ast.walk(tree)), default=0)
        sizes[name] = lines
        if lines > LONGER.get(name, (MODULE,))[0]:
            over.append((name, lines, f"module {name}: {lines} lines"))

        def walk(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    qual = f"{prefix}.{child.name}"
                    size = child.end_lineno - child.lineno + 1
                    kind = "class" if isinstance(child, ast.ClassDef) else "function"
                    sizes[qual], kinds[qual] = size, CLASS if kind == "class" else FUNCTION
                    if size > LONGER.get(qual, (CLASS if kind == "class" else FUNCTION,))[0]:
                        over.append((qual, size, f"{kind} {qual}: {size} lines"))
                    walk(child, qual)

        walk(tree, name)
    needless = [name for name in LONGER if name not in sizes or sizes[name] <= default(name)]
    assert not needless, f"within the limits, or gone: off the LONGER list: {needless}"
    assert not over, f"over the limits ({MODULE} a module, {CLASS} a class, {FUNCTION} a function): " + "; ".join(t for _, _, t in over)


def test_every_module_has_a_part_and_every_package_says_what_it_is() -> None:
    for name, tree in modules().items():
        if name != "streamrnn":
            part(name)  # StopIteration: a new module or package must be placed in PARTS
        if (PACKAGE / name.replace(".", "/") / "__init__.py").exists() and name.count(".") == 0 and name != "streamrnn":
            doc = ast.get_docstring(tree) or ""
            assert "may import" in doc, f"streamrnn/{name}/__init__.py: say what the part is and what it may import"


def wrong_arrows(trees: dict[str, ast.Module]) -> list[str]:
    wrong = []
    for name, tree in trees.items():
        if name == "streamrnn":
            continue
        for dep in imports(tree):
            if _module(dep) and part(dep) > part(name):
                wrong.append(f"{name} imports {dep}, which is downstream of it")
    return wrong


def circles(trees: dict[str, ast.Module]) -> list[list[str]]:
    """Every circle of imports between streamrnn's modules (types-only imports too: a circle is a
    circle however it is imported), each once."""
    graph = {name: sorted(d for d in imports(tree) if d in trees and d != name) for name, tree in trees.items()}
    found, state = [], dict.fromkeys(graph, 0)  # 0 unseen, 1 on the path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in graph[node]:
            if state[dep] == 1:
                found.append(path[path.index(dep) :] + [dep])
            elif state[dep] == 0:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in graph:
        if state[node] == 0:
            visit(node, [node])
    return found


def test_imports_run_downstream_only() -> None:
    wrong = wrong_arrows(modules())
    assert not wrong, "; ".join(wrong)


def test_no_circle_anywhere() -> None:
    found = circles(modules())
    assert not found, "; ".join(" -> ".join(c) for c in found)


def test_engine_reaches_no_transport() -> None:
    trees = modules()
    seen, todo = set(), ["engine.engine"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for dep in imports(trees[name]):
            assert dep.split(".")[0] not in TRANSPORTS, f"the engine reaches {dep} through {name}"
            if dep in trees:
                todo.append(dep)
    assert {"engine.frame", "engine.forecast", "engine.evaluator", "engine.bank"} <= seen  # the walk followed the engine's imports


def test_the_rules_catch_a_violation() -> None:
    bad = {
        "engine.gate": ast.parse(
            "from streamrnn.transport.mqtt import Link\nfrom streamrnn.daemon import metrics\nimport paho.mqtt.client\n"
        ),
        "daemon.metrics": ast.parse("from streamrnn.engine import ring\n"),
        "engine.bank": ast.parse("from streamrnn.engine.ring import Ring\n"),
        "engine.ring": ast.parse("from streamrnn.engine import bank\n"),
    }
    assert imports(bad["engine.gate"]) == {"transport.mqtt", "daemon.metrics", "paho"}
    assert sorted(wrong_arrows(bad)) == [
        "engine.gate imports daemon.metrics, which is downstream of it",
        "engine.gate imports transport.mqtt, which is downstream of it",
    ]
    assert circles(bad) == [["engine.ring", "engine.bank", "engine.ring"]]
    assert part("transport.mqtt") > part("engine.engine") and part("tools.bench.engine") > part("daemon.daemon")


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff(command: list[str]) -> None:
    """The linter's rules and the formatter's layout (pyproject.toml) hold everywhere."""
    out = subprocess.run([sys.executable, "-m", "ruff", *command, "streamrnn", "tests"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-1000:]
