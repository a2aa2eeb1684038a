"""Loading the user's pipeline factory, and naming the user's code when it breaks.

`--pipeline module:build` or `--pipeline path/to/file.py:build` imports and runs the user's code,
by design, the way pytest runs a conftest.py. Anything that goes wrong in that code (a syntax
error, an exception in the factory, a wrong return type) is the user's to fix, so it becomes one
RecipeError line naming the file, the line and the exception; `--debug` shows the traceback.
`user_sources` lists the files that make up the user's pipeline, for the preflight's fingerprint.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
import sysconfig
import traceback
from pathlib import Path
from typing import Callable

from recipe.errors import RecipeError

HARNESS_ROOT = Path(__file__).resolve().parents[1]  # the folder holding recipe/ and checks/


def where(err: BaseException) -> str:
    """'file.py:12' of the innermost frame outside the harness (the user's line), else the innermost."""
    if isinstance(err, SyntaxError) and err.filename:
        return f"{Path(err.filename).name}:{err.lineno}"
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return "?"
    return user_line(err) or f"{Path(frames[-1].filename).name}:{frames[-1].lineno}"


def user_line(err: BaseException) -> str | None:
    """'file.py:12' of the innermost frame in the user's own code (outside the harness and the installed
    libraries), or None when the error never passed through it."""
    frames = [f for f in traceback.extract_tb(err.__traceback__)  # "<string>", "<eval_with_key>": generated code
              if not f.filename.startswith("<") and not _is_harness_or_library(Path(f.filename))]
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else None


def describe(err: BaseException) -> str:
    text = str(err.msg if isinstance(err, SyntaxError) else err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _is_harness_or_library(path: Path) -> bool:
    try:
        path = path.resolve()
    except OSError:
        return True
    if path.is_relative_to(HARNESS_ROOT / "recipe") or path.is_relative_to(HARNESS_ROOT / "checks"):
        return True
    return any(path.is_relative_to(root) for root in _library_roots())


def _library_roots() -> list[Path]:
    paths = sysconfig.get_paths()
    roots = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")} | {sys.prefix, sys.base_prefix}
    return [Path(r).resolve() for r in roots if r]


def load_factory(spec: str) -> Callable:
    """Import `module:attribute` (or `path/to/file.py:attribute`) and return the attribute."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise RecipeError(f"--pipeline {spec!r} must look like 'package.module:factory' or 'file.py:factory'")
    try:
        module = _import(module_name)
    except RecipeError:
        raise
    except ModuleNotFoundError as err:
        if err.name and module_name.split(".")[0] == err.name.split(".")[0]:
            raise RecipeError(f"--pipeline {spec!r}: no module named {err.name!r} (run from the folder that "
                              "holds it, or give a file path: my_pipeline.py:build)") from err
        raise RecipeError(f"--pipeline {spec!r}: importing it failed at {where(err)}: {describe(err)}") from err
    except Exception as err:  # the user's module raised while importing: their line, one line
        raise RecipeError(f"--pipeline {spec!r}: importing it failed at {where(err)}: {describe(err)}") from err
    factory = getattr(module, attribute, None)
    if factory is None:
        raise RecipeError(f"--pipeline {spec!r}: module {module_name!r} has no attribute {attribute!r}")
    if not callable(factory):
        raise RecipeError(f"--pipeline {spec!r}: {attribute!r} is not callable; it must be build(config, data)")
    return factory


def _import(module_name: str):
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise RecipeError(f"--pipeline: no file {path}")
        folder = str(path.resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)  # like `python file.py`: the file's own modules beside it import
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module  # so dataclasses, pickling and the user's own imports can find it
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(path.stem, None)
            raise
        return module
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # like `python -m`, find the user's modules in cwd
    return importlib.import_module(module_name)


DEFAULT_TOKEN_PIPELINE = "recipe.sequences:gpt_pipeline"


def pipeline_spec_for(spec: str, data) -> str:
    """The spec to build: the default pipeline classifies images and feature vectors, so token
    sequences left on it get the tiny GPT (`--pipeline recipe.sequences:bigram_pipeline` for the bigram)."""
    from recipe.pipeline import DEFAULT_PIPELINE

    return DEFAULT_TOKEN_PIPELINE if spec == DEFAULT_PIPELINE and data.kind == "tokens" else spec


def make_pipeline(spec: str, config, data):
    """Build the pipeline named by `spec`, checking that the factory kept the contract."""
    from recipe.pipeline import Pipeline

    factory = load_factory(spec)
    try:
        pipeline = factory(config, data)
    except RecipeError:
        raise
    except Exception as err:
        raise RecipeError(f"--pipeline {spec!r}: the factory raised at {where(err)}: {describe(err)}") from err
    if not isinstance(pipeline, Pipeline):
        raise RecipeError(f"--pipeline {spec!r} returned {type(pipeline).__name__}, expected recipe.pipeline.Pipeline "
                          "(start from recipe.pipeline.default_pipeline(config, data) and replace what is yours)")
    return pipeline


def user_sources(spec: str) -> dict[str, bytes]:
    """{path: contents} of the factory's module file and of the user's own modules it imports,
    transitively (files under the factory's folder or the working directory, not libraries)."""
    module_name = spec.partition(":")[0]
    first = Path(module_name) if module_name.endswith(".py") else _module_file(module_name)
    if first is None:
        return {}
    roots = [first.resolve().parent, Path.cwd().resolve()]
    found: dict[str, bytes] = {}
    queue = [first.resolve()]
    while queue:
        path = queue.pop()
        if str(path) in found:
            continue
        try:
            source = path.read_bytes()
        except OSError:
            continue
        found[str(path)] = source
        for name in _imported_names(source, path):
            candidate = _module_file(name, path.parent)
            if candidate is not None and str(candidate) not in found and not _is_harness_or_library(candidate) \
                    and any(candidate.is_relative_to(r) for r in roots):
                queue.append(candidate)
    return found


def _imported_names(source: bytes, path: Path) -> list[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            names += [alias.name for alias in node.names] + ([node.module] if node.module else [])
    return names


def _module_file(name: str, beside: Path | None = None) -> Path | None:
    """The .py file of module `name`, looked up beside `beside` first, without importing it."""
    if beside is not None:
        local = beside.joinpath(*name.split("."))
        for candidate in (local.with_suffix(".py"), local / "__init__.py"):
            if candidate.is_file():
                return candidate.resolve()
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin).resolve()
