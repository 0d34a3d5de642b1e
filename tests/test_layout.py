"""The code's layout, as the package docstring draws it: imports run one way, leaves first;
nothing imports the entry module; runtime code is the standard library and our own; each file
can be read in one sitting."""

import ast
import os
import re
import sys

import pytest

import friendlyhello
from helpers import ROOT

PACKAGE = os.path.join(ROOT, "friendlyhello")
MODULES = sorted(f[:-3] for f in os.listdir(PACKAGE) if f.endswith(".py"))
# The order the package docstring lists its modules in: each may import only those above it.
ORDER = re.findall(r"^    ([a-z_0-9]+) ", friendlyhello.__doc__, re.M)
LOCAL = {"hello_server", "resp_client", "friendlyhello"}


def read(path):
    with open(path) as file:
        return file.read()


def imports(path):
    """(module, line) for every import in a file, package-relative ones as friendlyhello.X."""
    found = []
    for node in ast.walk(ast.parse(read(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level and node.module:  # from .x import Y
                found.append((f"friendlyhello.{node.module}", node.lineno))
            elif node.level:  # from . import X: a module, or a name the package itself defines
                found += [(f"friendlyhello.{a.name}" if a.name in MODULES else "friendlyhello", node.lineno)
                          for a in node.names]
            else:
                found.append((node.module, node.lineno))
    return found


def runtime_files():
    return [os.path.join(ROOT, "hello_server.py"), os.path.join(ROOT, "resp_client.py")] + [
        os.path.join(PACKAGE, m + ".py") for m in MODULES]


def drawn_imports():
    """What the package docstring says each module imports (its arrows), by module."""
    drawn, module = {}, None
    for line in friendlyhello.__doc__.splitlines():
        named = re.match(r"^    ([a-z_0-9]+) ", line)
        if named:
            module = named.group(1)
            drawn[module] = set()
        if module and "  -> " in line:
            drawn[module] |= {name.strip() for name in line.split("  -> ", 1)[1].split(",")}
    return drawn


def test_the_package_docstring_draws_every_module_s_imports_truly():
    drawn = drawn_imports()
    for name in MODULES:
        if name == "__init__":
            continue
        real = {module.split(".")[-1] for module, _ in imports(os.path.join(PACKAGE, name + ".py"))
                if module.startswith("friendlyhello.") or module == "resp_client"}
        assert drawn[name] == real, name


def test_the_package_docstring_lists_every_module_once():
    assert sorted(ORDER) == sorted(m for m in MODULES if m != "__init__")
    assert len(set(ORDER)) == len(ORDER)


def test_each_module_imports_only_modules_above_it_and_never_the_entry():
    upward = []
    for position, module in enumerate(ORDER):
        allowed = {"friendlyhello", *(f"friendlyhello.{m}" for m in ORDER[:position])}
        for name, line in imports(os.path.join(PACKAGE, module + ".py")):
            if name == "hello_server" or name.startswith("friendlyhello") and name not in allowed:
                upward.append(f"friendlyhello/{module}.py:{line} imports {name}")
    assert upward == []


def test_resp_client_knows_nothing_of_the_server():
    assert not [name for name, _ in imports(os.path.join(ROOT, "resp_client.py"))
                if name.split(".")[0] in LOCAL]


def test_runtime_code_imports_only_the_standard_library_and_our_own():
    foreign = [f"{path}:{line} imports {name}" for path in runtime_files() for name, line in imports(path)
               if name.split(".")[0] not in sys.stdlib_module_names | LOCAL]
    assert foreign == []


# Readable in one sitting: a few hundred lines a module, a class a screenful or four, a
# function a screenful. What is longer says why here.
LONGER = {
    "resp_client.py": "one job, a client, read top to bottom (the brief lets it stay whole)",
    "resp_client.py:parse_url": "one URL, one pass: each part's check beside the part",
}
MODULE_LINES, CLASS_LINES, FUNCTION_LINES, COLUMNS = 450, 200, 50, 100


def test_no_module_class_or_function_is_too_long_to_read_in_one_sitting():
    too_long = []
    for path in runtime_files():
        name = os.path.basename(path)
        source = read(path)
        if source.count("\n") > MODULE_LINES and name not in LONGER:
            too_long.append(f"{name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                limit = CLASS_LINES if isinstance(node, ast.ClassDef) else FUNCTION_LINES
                size = node.end_lineno - node.lineno + 1
                if size > limit and f"{name}:{node.name}" not in LONGER:
                    too_long.append(f"{name}:{node.name}: {size} lines")
    assert too_long == []


def test_no_runtime_line_is_wider_than_a_reader_reads():
    wide = [f"{os.path.basename(path)}:{n}" for path in runtime_files()
            for n, line in enumerate(read(path).splitlines(), 1) if len(line) > COLUMNS]
    assert wide == []


DOCUMENTS = ["README.md", "bench/README.md", *(f"docs/{name}" for name in sorted(os.listdir(os.path.join(ROOT, "docs")))
                                                if name.endswith(".md"))]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_relative_link_of_the_docs_resolves(document):
    text = read(os.path.join(ROOT, document))
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    here = os.path.dirname(os.path.join(ROOT, document))
    broken = []
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue  # an address elsewhere
        path, _, anchor = link.partition("#")
        target = os.path.normpath(os.path.join(here, path)) if path else os.path.join(ROOT, document)
        if not os.path.exists(target):
            broken.append(link)
        elif anchor and target.endswith(".md"):
            titles = re.findall(r"^#+ (.*)$", read(target), re.M)
            slugs = {re.sub(r"[^a-z0-9 -]", "", t.lower()).replace(" ", "-") for t in titles}
            if anchor not in slugs:
                broken.append(link)
    assert broken == []


def test_the_readme_is_a_door_not_the_house():
    lines = read(os.path.join(ROOT, "README.md")).splitlines()
    assert len(lines) <= 250
    assert "## What it serves" in lines[:120] and "## Settings" in lines
