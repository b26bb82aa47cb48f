"""The package layout: one import namespace, and imports that only point downwards.

Layers, bottom to top: `sauce_jax.errors` (anything may import it), `sauce_jax.ports`, the
core (the other modules of `sauce_jax/`), `sauce_jax.train`, `sauce_jax.eval`, `sauce_jax.cli`,
and the facade `sauce_jax/__init__.py`, which may re-export from any layer. Imports inside
functions count: they hide a dependency from a reader, not from the graph.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the folder of each package of the namespace
FOLDERS = {"sauce_jax": ROOT / "sauce_jax", "sauce_jax.ports": ROOT / "ports",
           "sauce_jax.train": ROOT / "train", "sauce_jax.eval": ROOT / "eval"}
LAYERS = ("errors", "ports", "core", "train", "eval", "cli", "facade")


def _modules() -> dict[str, Path]:
    """Every module of the namespace: dotted name -> file."""
    found = {}
    for package, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            found[name] = path
    return found


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The namespace modules that `name` imports anywhere in its file."""
    package = name if _is_package(path) else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                          for alias in node.names]
        else:
            continue
        for target in candidates:
            while target and target not in modules:  # `import a.b.c` of a name inside a module
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
    return targets


def _layer(name: str) -> str:
    if name == "sauce_jax":
        return "facade"
    if name == "sauce_jax.errors":
        return "errors"
    second = name.split(".")[1]
    return second if second in ("ports", "train", "eval", "cli") else "core"


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walker_sees_function_level_and_relative_imports(tmp_path):
    """The checks below are only as good as the walker: it must see an import inside a
    function, a relative import and `from package import submodule`."""
    modules = {"sauce_jax.eval.a": tmp_path / "a.py", "sauce_jax.eval.b": tmp_path / "b.py",
               "sauce_jax.eval.pkg": tmp_path / "pkg" / "__init__.py",
               "sauce_jax.eval.pkg.c": tmp_path / "pkg" / "c.py", "sauce_jax.train": tmp_path / "t.py"}
    modules["sauce_jax.eval.a"].write_text(textwrap.dedent("""
        from .pkg import c
        def f():
            from sauce_jax.train import loop
    """))
    assert _imports("sauce_jax.eval.a", modules["sauce_jax.eval.a"], modules) == {"sauce_jax.eval.pkg.c",
                                                                                  "sauce_jax.train"}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _layer("sauce_jax.ports.clip") == "ports" and _layer("sauce_jax.scoring") == "core"


def test_no_import_cycle():
    cycles = _cycles(_graph())
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_imports_only_point_downwards():
    upward = []
    for name, targets in _graph().items():
        for target in targets:
            if target == "sauce_jax.errors" or name == "sauce_jax":
                continue
            if LAYERS.index(_layer(target)) > LAYERS.index(_layer(name)):
                upward.append(f"{name} ({_layer(name)}) imports {target} ({_layer(target)})")
    assert not upward, "\n".join(sorted(upward))


def test_a_users_train_and_eval_modules_do_not_shadow_ours(tmp_path):
    """In a folder holding its own train.py and eval.py (the most common file names in ML
    projects), a script trains a tiny SAE through `sauce_jax.train_sae` and the CLI's entry
    point answers `eval --help`; nothing named ports, train or eval is importable from the
    installed package."""
    for own in ("train.py", "eval.py", "ports.py"):
        (tmp_path / own).write_text("raise SystemExit('the user module was imported')\n")
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import sys
        import numpy as np
        import sauce_jax
        from sauce_jax.cli import main

        acts = np.random.default_rng(0).standard_normal((256, 8)).astype(np.float32)
        config = sauce_jax.TrainConfig(steps=3, batch_size=64, geometric_median_samples=64)
        sae = sauce_jax.train_sae(sys.argv[1], activations=acts, train_config=config, expansion=2, progress=False)
        assert sae.config.d_sae == 16
        try:
            main(["eval", "--help"])
        except SystemExit as done:
            assert done.code == 0, done.code
        print("ok")
    """))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "sae"), str(tmp_path)], cwd=tmp_path,
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert run.stdout.strip().endswith("ok")
    # and from an empty folder, no top-level ports, train or eval is importable at all
    empty = tmp_path / "empty"
    empty.mkdir()
    probe = "import importlib.util as u; print([n for n in ('ports', 'train', 'eval') if u.find_spec(n)])"
    run = subprocess.run([sys.executable, "-c", probe], cwd=empty, capture_output=True, text=True, env=env)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr


def test_no_private_name_crosses_a_module_boundary():
    """`from module import _name` couples a module to another's internals: what two modules
    share is public in its home."""
    modules = _modules()
    crossing = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                private = [alias.name for alias in node.names
                           if alias.name.startswith("_") and not alias.name.startswith("__")]
                if private and (node.level or (node.module or "").startswith("sauce_jax")):
                    crossing.append(f"{name}: from {'.' * node.level}{node.module or ''} import {', '.join(private)}")
    assert not crossing, "\n".join(crossing)


def _calls(path: Path) -> dict[str, set[str]]:
    """{function name: the names it calls (f(...) and obj.f(...))} of every function in a file."""
    found = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names = set()
            for call in ast.walk(node):
                if isinstance(call, ast.Call):
                    func = call.func
                    names.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
            found[node.name] = names
    return found


def test_each_sauce_step_has_one_home():
    """The steps every evaluation stack shares are written once: "load the finished SAE, else
    train" in `sauce_jax.train` (`train_or_load`); eq. 4's scoring in the core (`scoring`:
    `select_features`, `select_one_vs_rest`, `control_sets`); choosing an answerer by the
    checkpoint's family in `eval/vlm/registry.py`; ConceptWorld's studies under
    `conceptworld/experiments/`."""
    repeated = []
    for name, path in _modules().items():
        calls = _calls(path)
        if _layer(name) != "train":
            repeated += [f"{name}.{f}: trains and loads an SAE itself (use train_or_load)"
                         for f, called in calls.items() if {"train_sae", "load_sae"} <= called]
        if name != "sauce_jax.scoring":
            repeated += [f"{name}.{f}: scores eq. 4 itself (use sauce_jax.scoring)"
                         for f, called in calls.items() if called & {"score_features", "top_features"}]
        if not name.startswith("sauce_jax.eval.vlm"):
            imported = _imports(name, path, _modules())
            if {"sauce_jax.eval.vlm.llava_answerer", "sauce_jax.eval.vlm.mllama_answerer"} <= imported:
                repeated.append(f"{name}: chooses between answerers (use sauce_jax.eval.vlm.registry)")
    studies = [p.name for p in (ROOT / "eval" / "conceptworld").glob("*.py")
               if p.stem in ("demo", "selective") or p.stem.startswith("table2")]
    repeated += [f"eval/conceptworld/{s}: a study outside conceptworld/experiments/" for s in studies]
    assert not repeated, "\n".join(repeated)
