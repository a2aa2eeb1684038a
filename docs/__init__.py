"""The docs/ generator (docs/generate.py): not part of the installed package."""
