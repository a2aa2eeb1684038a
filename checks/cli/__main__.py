"""`python -m recipe ...` is the `recipe` command; torchrun starts it this way:
`torchrun --nproc-per-node 2 -m recipe train ...` (see recipe/distributed.py)."""
from recipe.cli import entry

if __name__ == "__main__":
    entry()
