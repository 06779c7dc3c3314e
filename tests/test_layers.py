"""The house rules of docs/architecture.md, checked on the source: imports run one way between the
stage subpackages, only the CLI imports the server, nobody imports the CLI or another module's
private names, and the text and store stages (and `yunque --help`) load without torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "yunque"
# Rank of each stage; a module may import its own stage and lower ranks. errors/fsutil are the floor.
RANK = {"errors": 0, "fsutil": 0.5, "text": 1, "model": 2, "infer": 3, "train": 4, "store": 5, "apps": 6, "learn": 6, "cluster": 6, "server": 7, "cli": 8}


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(encoding="utf-8"))
    return out


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import anywhere in the tree, lazy ones included."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("yunque")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("yunque") and node.level == 0:
            found.append((node.module, [a.name for a in node.names]))
    return found


def test_imports_run_one_way_between_stages():
    broken = []
    for module, tree in _modules().items():
        here = _stage(module)
        if here not in RANK:
            continue  # yunque/__init__ and __main__: the lazy public names and the entry point
        for target, names in _imports(tree):
            for full in [target] + [f"{target}.{n}" for n in names]:
                there = _stage(full)
                if there is None or there not in RANK or there == here:
                    continue
                if RANK[there] > RANK[here] or (RANK[there] == RANK[here] and there != here):
                    broken.append(f"{module} imports {full}")
                if there == "server" and here != "cli":
                    broken.append(f"{module} imports the server (only cli may)")
    assert not broken, "\n".join(sorted(set(broken)))


def test_no_module_imports_another_modules_private_names():
    broken = [f"{module} takes {name} from {target}" for module, tree in _modules().items()
              for target, names in _imports(tree) for name in names
              if name.startswith("_") and target != module]
    assert not broken, "\n".join(broken)


def test_every_stage_says_what_it_holds_and_may_import():
    for stage in ("text", "model", "infer", "train", "store", "server", "cli"):
        doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text()))
        assert doc and "import" in doc.lower(), f"yunque/{stage}/__init__.py needs a docstring saying what it may import"


@pytest.mark.parametrize("code", [
    "import yunque.text.tokenizer, yunque.text.chat_template, yunque.text.shards, yunque.text.corpus",
    "import yunque.store.entries, yunque.store.chat, yunque.store.modelfile",
    "import sys; sys.argv = ['yunque', '--help']\nfrom yunque.cli.app import main\ntry:\n    main()\nexcept SystemExit:\n    pass",
])
def test_text_store_and_help_load_without_torch(code):
    probe = code + "\nimport sys; assert 'torch' not in sys.modules, 'torch was imported'"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
