"""Rewrite imports and paths after the checks/ layout change (issues #22, #23).

    python docs/rename_imports.py FILE_OR_FOLDER...   # rewrites .py .md .toml .j2 files in place

Rewrites, from MODULES below: `from checks.X import ...`, `import checks.X`, `checks.X` in strings
(mock.patch / monkeypatch targets, `-m` arguments, import_module names), `from checks import X_checks`
(split over several lines when the names moved to different folders), paths such as `checks/X.py`
in docs and comments, and `python -m recipe` / `python -m recipe.cli` (now `python -m checks.cli`).
`from checks.cli.main import NAME` (and checks.report.render) is sent to the module that holds NAME
after the split (NAMES).
Running it twice changes nothing.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

STAGES = {"data": ["data_checks", "split_checks", "label_checks", "shift_checks", "label_figures"],
          "skeleton": ["loop_checks", "schedule_checks", "skeleton_checks", "loader_checks", "augmentation_checks",
                       "gradient_checks", "step_checks", "capacity_checks"],
          "baselines": ["baseline_checks", "plan_checks"],
          "training": ["monitor_checks", "layer_monitors", "distributed_checks"],
          "measure": ["sampling", "reference_run", "step_budget", "near_copies", "label_probe"],
          "engine": ["result", "registry", "runner", "gate", "preflight", "forked_stage"]}
MODULES = {f"checks.{name}": f"checks.{folder}.{name}" for folder, names in STAGES.items() for name in names}
MODULES.update({"recipe.cli": "checks.cli.main", "recipe.cli_parser": "checks.cli.parser",
                "recipe.warm_server": "checks.cli.warm_server", "recipe.__main__": "checks.cli.__main__"})
PATHS = {old.replace(".", "/") + ".py": new.replace(".", "/") + ".py" for old, new in MODULES.items()}
# Names that left a module when it was split: {old module: {name: new module}}.
CLI = {"STARTED": "clock", "warm_start": "clock", "since": "clock", "config_from_args": "loading",
       "load_pipeline": "loading", "say": "loading", "cmd_check": "check", "run_checks": "check", "Progress": "check",
       "write_checks_only": "check", "INDEX_NAME": "check", "cmd_run": "train", "cmd_train": "train",
       "train_and_report": "train", "report_training": "train", "cmd_report": "report", "cmd_diff": "report",
       "build_parser": "parser", "suggest_flags": "parser"}
NAMES = {"checks.cli.main": {name: f"checks.cli.{module}" for name, module in CLI.items()},
         "checks.report.render": {name: "checks.report.record" for name in (
             "SCHEMA_VERSION", "REQUIRED_KEYS", "command_line", "git_commit", "environment_info", "data_info",
             "build_record", "figures_of", "read_record", "to_jsonable")}}
NAMES["checks.cli.main"].update({name: "checks.cli" for name in ("EXIT_OK", "EXIT_FAILED", "EXIT_USAGE",
                                                                  "EXIT_INTERRUPTED")})

_DOTTED = re.compile(r"(?<![\w.])(" + "|".join(re.escape(m) for m in sorted(MODULES, key=len, reverse=True))
                     + r")(?![\w])")
_PATH = re.compile(r"(?<![\w/.])(" + "|".join(re.escape(p) for p in sorted(PATHS, key=len, reverse=True)) + r")")
_FROM_PACKAGE = re.compile(r"^(?P<indent>[ \t]*)from (?P<package>checks|recipe) import (?P<names>[\w ,]+?)[ \t]*$",
                           re.M)
_FROM_SPLIT = re.compile(r"^(?P<indent>[ \t]*)from (?P<module>" + "|".join(map(re.escape, NAMES))
                         + r") import (?P<names>[\w ,]+?)[ \t]*$", re.M)
_RUN_MODULE = re.compile(r"(-m\s+|\"-m\",\s*\"|'-m',\s*')recipe(\.cli)?(?![\w.])")


def _split_from(indent: str, names: str, where) -> str:
    """`from P import a, b as c` as one line per destination, in first-seen order. `where(name)` gives
    (module, new name) for each imported name."""
    groups: dict[str, list[str]] = {}
    for item in (part.strip() for part in names.split(",")):
        if not item:
            continue
        name, _, alias = item.partition(" as ")
        module, renamed = where(name.strip())
        alias = alias.strip() or (name.strip() if renamed != name.strip() else "")
        groups.setdefault(module, []).append(f"{renamed} as {alias}" if alias else renamed)
    return "\n".join(f"{indent}from {module} import {', '.join(items)}" for module, items in groups.items())


def rewrite(text: str, cli_split: bool = True) -> str:
    def from_package(match: re.Match) -> str:
        package = match["package"]

        def where(name: str) -> tuple[str, str]:
            moved = MODULES.get(f"{package}.{name}")
            return moved.rpartition(".")[::2] if moved else (package, name)

        if not any(f"{package}.{part.split()[0]}" in MODULES for part in match["names"].split(",") if part.strip()):
            return match[0]
        return _split_from(match["indent"], match["names"], where)

    text = _RUN_MODULE.sub(lambda m: f"{m[1]}checks.cli", text)
    text = _FROM_PACKAGE.sub(from_package, text)
    text = _DOTTED.sub(lambda m: MODULES[m[1]], text)
    text = _PATH.sub(lambda m: PATHS[m[1]], text)
    if not cli_split:
        return text
    return _FROM_SPLIT.sub(lambda m: _split_from(m["indent"], m["names"],
                                                 lambda n: (NAMES[m["module"]].get(n, m["module"]), n)), text)


def main(paths: list[str]) -> int:
    cli_split = "--before-cli-split" not in paths  # only for the commit that moved recipe/cli.py whole
    paths = [p for p in paths if p != "--before-cli-split"]
    suffixes = {".py", ".md", ".toml", ".j2", ".txt", ".cfg", ".ini", ".yml", ".yaml", ""}
    files = [f for p in map(Path, paths) for f in ([p] if p.is_file() else sorted(p.rglob("*")))
             if f.is_file() and f.suffix in suffixes and ".venv" not in f.parts and ".git" not in f.parts]
    for file in files:
        try:
            old = file.read_text()
        except UnicodeDecodeError:
            continue
        new = rewrite(old, cli_split)
        if new != old:
            file.write_text(new)
            print(f"rewrote {file}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["."]))
