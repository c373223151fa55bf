"""The layout's rules, checked on the source: no import cycles, stages that only look down, a domain
without Prefect, and function-local imports only where they keep start-up fast.

The rules (docs/design.md, "Layout"):

- ``tasks/`` is the domain, in pipeline order: the ground (``tasks.config``, ``tasks.errors``) < store <
  audio < features < dataset < ingest < model < generation < the store-wide reports (``tasks.check``,
  ``tasks.status``). A module imports only from its own stage or a lower one.
- ``tasks/`` never imports Prefect, ``flows``, ``deployments`` or ``musicflow``; ``flows/`` never imports
  ``deployments`` or ``musicflow``; ``deployments/`` never imports ``musicflow`` (the CLI is the top).
- No cycle between modules, counting the imports inside functions too.
- A function-local import of one of our modules is there to keep start-up fast (``musicflow --help``
  imports none of the DSP/ML stack nor Prefect) and says so: a comment with ``start-up`` on its line or
  the line above.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import ROOT

PACKAGES = ("tasks", "flows", "deployments", "musicflow")
# The domain's stages, lowest first; a module of tasks/ not named here is in the last one.
STAGES = (
    ("tasks.config", "tasks.errors"),
    ("tasks.store",),
    ("tasks.audio",),
    ("tasks.features",),
    ("tasks.dataset",),
    ("tasks.ingest",),
    ("tasks.model",),
    ("tasks.generation",),
    ("tasks.check", "tasks.status"),
)
# What each top-level package may not import (besides the stage order inside tasks/).
FORBIDDEN = {
    "tasks": ("prefect", "prefect_aws", "prefect_dask", "flows", "deployments", "musicflow"),
    "flows": ("deployments", "musicflow"),
    "deployments": ("musicflow",),
    "musicflow": (),
}


@dataclass(frozen=True)
class Import:
    importer: str  # the module that imports
    target: str  # what it names: one of our modules, or a third-party module
    line: int
    local: bool  # inside a function
    comment: str  # the comments on its line and the line above


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path) -> dict[str, Path]:
    return {
        module_name(path, root): path
        for package in PACKAGES
        for path in sorted((root / package).rglob("*.py"))
    }


def _comments(lines: list[str], line: int) -> str:
    return " ".join(text.partition("#")[2] for text in lines[max(line - 2, 0) : line] if "#" in text)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every import in the module, with whether it sits inside a function."""
    source = path.read_text()
    lines = source.splitlines()
    found: list[Import] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(
                        Import(name, alias.name, child.lineno, inside, _comments(lines, child.lineno))
                    )
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for alias in child.names:
                    submodule = f"{child.module}.{alias.name}"
                    target = submodule if submodule in modules else child.module
                    found.append(Import(name, target, child.lineno, inside, _comments(lines, child.lineno)))
            visit(child, inside)

    visit(ast.parse(source), False)
    return found


def ours(target: str, modules: dict[str, Path]) -> str | None:
    """The module of ours that ``target`` names (``tasks.store.store.Store`` -> ``tasks.store.store``)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def stage(module: str) -> int:
    for rank, prefixes in enumerate(STAGES):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return rank
    return len(STAGES) - 1


def import_graph(root: Path) -> tuple[dict[str, Path], list[Import]]:
    modules = project_modules(root)
    return modules, [i for name, path in modules.items() for i in imports_of(name, path, modules)]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def violations(root: Path) -> dict[str, list[str]]:
    """Every broken rule in the tree under ``root``, by rule."""
    modules, imports = import_graph(root)
    edges: dict[str, set[str]] = {name: set() for name in modules}
    broken: dict[str, list[str]] = {"cycles": [], "stages": [], "forbidden": [], "local imports": []}
    for i in imports:
        where = f"{modules[i.importer].relative_to(root)}:{i.line}"
        target = ours(i.target, modules)
        package = i.importer.split(".")[0]
        if i.target.split(".")[0] in FORBIDDEN[package]:
            broken["forbidden"].append(f"{where}: {i.importer} imports {i.target}")
        if target is None or target == i.importer:
            continue
        edges[i.importer].add(target)
        if package == "tasks" and target.startswith("tasks") and stage(target) > stage(i.importer):
            broken["stages"].append(f"{where}: {i.importer} imports the later stage {target}")
        if i.local and "start-up" not in i.comment:
            broken["local imports"].append(
                f"{where}: {i.importer} imports {target} inside a function with no `start-up` comment"
            )
    broken["cycles"] = [" -> ".join(cycle) for cycle in cycles(edges)]
    return broken


def test_the_tree_keeps_the_layout_rules() -> None:
    broken = {rule: found for rule, found in violations(ROOT).items() if found}
    assert not broken, "\n".join(f"{rule}:\n  " + "\n  ".join(found) for rule, found in broken.items())


def _write(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in PACKAGES:
        (root / package).mkdir(exist_ok=True)
    return root


@pytest.mark.parametrize(
    ("files", "rule", "fragment"),
    [
        (  # a cycle hidden behind a function-local import, even one that says start-up
            {
                "tasks/model/train.py": "from tasks.model.checkpoints import Checkpointer\n",
                "tasks/model/checkpoints.py": "def f():\n    # start-up\n    from tasks.model.train import a",
            },
            "cycles",
            "tasks.model.checkpoints -> tasks.model.train",
        ),
        (  # a stage looking up the pipeline
            {
                "tasks/dataset/repository.py": "from tasks.model.train import CARD_FILE\n",
                "tasks/model/train.py": "",
            },
            "stages",
            "tasks.dataset.repository imports the later stage tasks.model.train",
        ),
        (  # the domain importing Prefect, even lazily
            {"tasks/store/credentials.py": "def load():\n    from prefect.blocks.core import Block\n"},
            "forbidden",
            "tasks.store.credentials imports prefect.blocks.core",
        ),
        (  # the domain reaching for the CLI package
            {"tasks/model/train.py": "import musicflow\n"},
            "forbidden",
            "tasks.model.train imports musicflow",
        ),
        (  # a flow reaching for the CLI
            {"flows/ingest.py": "from musicflow.server import ensure_prefect_api\n"},
            "forbidden",
            "flows.ingest imports musicflow.server",
        ),
        (  # a function-local import that does not say why
            {
                "tasks/generation/generate.py": "def f():\n    from tasks.audio.decode import decode_audio\n",
                "tasks/audio/decode.py": "",
            },
            "local imports",
            "tasks.generation.generate imports tasks.audio.decode inside a function",
        ),
    ],
)
def test_each_rule_catches_its_break(tmp_path: Path, files: dict[str, str], rule: str, fragment: str) -> None:
    broken = violations(_write(tmp_path, files))
    assert any(fragment in found for found in broken[rule]), broken


def test_a_commented_lazy_import_down_the_stages_is_allowed(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "musicflow/cli.py": "def ingest():\n    # lazy: keeps start-up fast\n    import flows.ingest\n",
            "flows/ingest.py": "from tasks.ingest.worker import ingest_batch\n",
            "tasks/ingest/worker.py": "from tasks.dataset.repository import commit_batch\n",
            "tasks/dataset/repository.py": "from tasks.config import FeatureConfig\n",
            "tasks/config.py": "",
        },
    )
    assert violations(root) == {"cycles": [], "stages": [], "forbidden": [], "local imports": []}
