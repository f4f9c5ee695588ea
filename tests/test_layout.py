"""The package layout (DESIGN.md section 2): the library never imports the char-model application.
``import fastlstm`` loads no ``fastlstm.charlm`` module, and no library module (everything under
fastlstm/ but charlm/ and the ``python -m fastlstm`` entry point) has an import that names it.
"""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import fastlstm

PKG = Path(fastlstm.__file__).resolve().parent
APP = "charlm"
#: Library files allowed to name the application: the entry point of ``python -m fastlstm``.
ENTRY_POINTS = {"__main__.py"}


def library_files():
    for path in sorted(PKG.rglob("*")):
        rel = path.relative_to(PKG)
        if rel.parts[0] == APP or str(rel) in ENTRY_POINTS or "__pycache__" in rel.parts:
            continue
        if path.suffix in (".py", ".pyx", ".pxd"):
            yield rel, path


def imports_of_python(source):
    """Every module an import statement or an importlib/__import__ call with a literal names."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            yield base
            yield from (base + ("" if base.endswith(".") else ".") + alias.name for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__", "find_spec") and isinstance(node.args[0].value, str):
                yield node.args[0].value


def imports_of_cython(source):
    # Cython is not Python to ast: its import lines are read as text
    for m in re.finditer(r"^\s*(?:from\s+(\S+)\s+c?import\s+(.+)|c?import\s+(.+))$", source, re.MULTILINE):
        yield from (part for part in m.groups() if part)


def test_import_fastlstm_loads_no_application_module():
    code = ("import json, sys, fastlstm; "
            "print(json.dumps(sorted(m for m in sys.modules if m == 'fastlstm' or m.startswith('fastlstm.'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stdout.strip().splitlines()[-1])
    assert "fastlstm.layer" in loaded  # the probe really imported the library
    assert not [m for m in loaded if m.split(".")[1:2] == [APP]], loaded


def test_library_modules_do_not_import_the_application():
    files = list(library_files())
    assert any(rel.name == "layer.py" for rel, _ in files)
    offenders = []
    for rel, path in files:
        source = path.read_text(encoding="utf-8")
        names = imports_of_cython(source) if path.suffix in (".pyx", ".pxd") else imports_of_python(source)
        offenders += [f"{rel}: {name}" for name in names if APP in re.split(r"[.\s,]+", name)]
    assert not offenders, "library modules import the application:\n" + "\n".join(offenders)
