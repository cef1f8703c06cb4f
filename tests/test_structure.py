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
    "cli": (353, "half of it is the parser, which declares every command and option"),
    "cli.parser": (155, "declares every command and option, one call each"),
    "metrics.Metrics": (
        215,
        "its __init__ declares every metric, one call each; the rest exports a value handed in (reading the parts: observe.py)",
    ),
    "metrics.Metrics.__init__": (145, "declares every metric, one call each"),
    "engine": (405, "the one object every caller asks (see engine.Engine); the work is in bank, ring, evaluator, contenders, adoption"),
    "engine.Engine": (
        369,
        "serving, the retrain cadence, verdicts and the checkpoint form are one object's state: they share the "
        "streams' rows, and every caller (daemon, replay, tests, tools) asks one engine",
    ),
    "evaluator": (315, "the evaluator: pending forecasts per stream, scoring in batches, the checkpoint form"),
    "evaluator.Evaluator": (
        278,
        "scoring needs the pending forecasts, the queue and the totals together in one pass; the bands and "
        "the gate's evidence are classes of their own",
    ),
    "frames": (306, "the frame, the per-stream assembly and the assembler's bounds, documented in one place"),
    "frames.Assembler": (204, "every bound on a stream (pending, probation, resync, stuck clocks) acts on the same per-stream maps"),
    "replay": (306, "a CSV read as a table (its times checked, each refusal naming its cell) and replayed through an engine"),
    "mqtt.link.Link": (218, "paho's callbacks (connect, subscribe, message, disconnect, status) share the session's state"),
    "config": (564, "the settings model: one declared field per setting, each with its bounds and its meaning"),
}

# The layers, upstream first: a module imports from its own layer or those before it, never after.
LAYERS = [
    {
        "atomic",
        "delivery",
        "children",
        "environment",
        "logs",
        "notify",
        "ring",
        "windows",
        "readout",
        "linear",
        "gate",
        "trust",
        "migrations",
        "scores",
        "payload",
        "forecast",
        "soundness",
        "channelstats",
    },
    {"ridgeform", "faults", "config", "plant", "model", "simulator", "snapshot", "transport", "ownership", "lease"},
    {"frames", "bank", "health", "bands", "evidence", "evaluator", "contenders", "examples", "trainer", "checkpoint", "journal", "inbox"},
    {"adoption"},
    {"engine"},
    {"judge"},
    {"retrainer"},
    {"mqtt", "jetstream", "natsconn", "consumer", "fleetstore", "fleet", "metrics", "observe", "endpoint", "httpd"},
    {"service", "daemon", "intake", "durability", "cycle", "champion", "replay", "plot", "protocol", "faultreport", "partition", "shard"},
    {"tools"},
    {"cli", "__main__"},
]
# what the engine never reaches, however indirectly
TRANSPORTS = {
    "transport",
    "mqtt",
    "jetstream",
    "consumer",
    "lease",
    "fleetstore",
    "fleet",
    "shard",
    "nats",
    "metrics",
    "endpoint",
    "daemon",
    "service",
    "tools",
    "paho",
    "prometheus_client",
}


def modules() -> dict[str, ast.Module]:
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(f.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__").removesuffix("__init__")
        out[name or "streamrnn"] = ast.parse(f.read_text(), str(f))
    return out


def imports(tree: ast.Module) -> set[str]:
    """What a module imports: streamrnn's modules by their names within the package, others by
    their top-level name."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "streamrnn":
                out |= {a.name for a in node.names if a.name != "__version__"}
            elif node.module.startswith("streamrnn."):
                out.add(node.module.removeprefix("streamrnn."))
            else:
                out.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            out |= {a.name.removeprefix("streamrnn.") if a.name.startswith("streamrnn.") else a.name.split(".")[0] for a in node.names}
    return out


def layer(name: str) -> int:
    top = name.split(".")[0]
    return next(i for i, members in enumerate(LAYERS) if top in members or name in members)


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


def test_every_module_has_a_layer() -> None:
    for name in modules():
        if name != "streamrnn":
            layer(name)  # StopIteration: a new module must be placed in LAYERS


def test_imports_run_downstream_only() -> None:
    wrong = []
    for name, tree in modules().items():
        if name == "streamrnn":
            continue
        for dep in imports(tree):
            if (PACKAGE / dep.split(".")[0]).exists() or (PACKAGE / f"{dep.split('.')[0]}.py").exists():
                if layer(dep) > layer(name):
                    wrong.append(f"{name} imports {dep}, which is downstream of it")
    assert not wrong, "; ".join(wrong)


def test_engine_reaches_no_transport() -> None:
    trees = modules()
    seen, todo = set(), ["engine"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for dep in imports(trees[name]):
            assert dep.split(".")[0] not in TRANSPORTS, f"the engine reaches {dep} through {name}"
            if dep in trees:
                todo.append(dep)
    assert {"frames", "forecast", "evaluator", "bank"} <= seen  # the walk followed the engine's imports


def test_the_rules_catch_a_violation(tmp_path) -> None:
    tree = ast.parse("from streamrnn.mqtt import Link\nfrom streamrnn import daemon\nimport paho.mqtt.client\n")
    assert imports(tree) == {"mqtt", "daemon", "paho"}
    assert layer("mqtt") > layer("engine") and layer("tools.bench.engine") > layer("daemon")


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff(command: list[str]) -> None:
    """The linter's rules and the formatter's layout (pyproject.toml) hold everywhere."""
    out = subprocess.run([sys.executable, "-m", "ruff", *command, "streamrnn", "tests"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-1000:]
