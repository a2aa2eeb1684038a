"""`python -m checks.cli ...` is the `recipe` command; torchrun starts it this way:
`torchrun --nproc-per-node 2 -m checks.cli train ...` (see recipe/distributed.py)."""
from checks.cli.main import entry

if __name__ == "__main__":
    entry()
