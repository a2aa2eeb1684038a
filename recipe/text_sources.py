"""Sequence data that needs no network: token bundles for the language-model pipelines.

- `python-source` (the default for language models): this Python's own standard library, a fixed
  sorted subset of its top-level *.py files, character-level. It is on every machine that runs the
  harness, it is real text with long-range structure (indentation, brackets, names reused far
  apart), and the same Python version gives the same bytes everywhere. Split BY FILE: a file is in
  one split only, so val and test are code the model never saw, not the middle of a file it read.
- `names`: the US first names of the `names` package, one name per example as in makemore:
  '.' + name -> name + '.', padded to the longest name with a pad token (no loss, never attended).
- `text`: any UTF-8 file (`--data text --data-dir input.txt`), cut by position into contiguous
  80/10/10 chunks, so no block straddles two splits.
"""
from __future__ import annotations

import sysconfig
from pathlib import Path

import torch

from recipe.data import SPLIT_SEED, DataBundle, Split
from recipe.errors import DataError
from recipe.sequences import DEFAULT_BLOCK, CharVocab, blocks_of, token_bundle

SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # train / val / test, by characters (python-source, text) or by names
# python-source: files of 3-25 KB, in sorted order, until ~600 KB: big enough that the tiny GPT does
# not memorise it in 10 epochs, small enough that one epoch is ~120 steps of 64 blocks on a CPU.
TEXT_SOURCES = ("python-source", "names", "text")
STDLIB_FILE_BYTES = (3_000, 25_000)
STDLIB_TOTAL_BYTES = 600_000
MIN_SPLIT_BLOCKS = 4  # a text must give each split at least this many blocks for the checks to sample
BOUNDARY, PAD = ".", "_"  # names: the start/end token (makemore's '.') and the pad token


def load_text_source(source: str, data_dir: str | Path = "data", device: str | torch.device = "cpu",
                     block_size: int = DEFAULT_BLOCK) -> DataBundle:
    """One of TEXT_SOURCES as a tokens DataBundle on `device`. Raises DataError with a clear line."""
    if source == "python-source":
        return python_source(block_size, device)
    if source == "names":
        return first_names(device)
    if source == "text":
        return text_file(Path(data_dir), block_size, device)
    raise DataError(f"unknown text source {source!r}; choose one of {', '.join(TEXT_SOURCES)}")


# ---------------------------------------------------------------- python-source

def stdlib_files() -> list[Path]:
    """The fixed subset: sorted top-level stdlib *.py files of STDLIB_FILE_BYTES, up to STDLIB_TOTAL_BYTES."""
    root = Path(sysconfig.get_paths()["stdlib"])
    picked, total = [], 0
    low, high = STDLIB_FILE_BYTES
    for path in sorted(root.glob("*.py")):
        size = path.stat().st_size
        if low <= size <= high and total + size <= STDLIB_TOTAL_BYTES:
            picked.append(path)
            total += size
    if len(picked) < 10:
        raise DataError(f"found only {len(picked)} standard-library source files in {root}; "
                        "use --data names or --data text --data-dir FILE")
    return picked


def split_files(paths: list[Path], sizes: list[int]) -> dict[str, list[Path]]:
    """Files shuffled with SPLIT_SEED, then test and val filled to their share of the characters."""
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    total, splits = sum(sizes), {"test": [], "val": [], "train": []}
    wanted = {"test": SPLIT_FRACTIONS[2] * total, "val": SPLIT_FRACTIONS[1] * total}
    filled = {"test": 0, "val": 0}
    for i in order:
        name = next((s for s in ("test", "val") if filled[s] < wanted[s]), "train")
        splits[name].append(paths[i])
        filled[name] = filled.get(name, 0) + sizes[i]
    return {name: sorted(files) for name, files in splits.items()}


def python_source(block_size: int = DEFAULT_BLOCK, device: str | torch.device = "cpu") -> DataBundle:
    paths = stdlib_files()
    texts = {p: p.read_text(encoding="utf-8", errors="replace") for p in paths}
    files = split_files(paths, [len(texts[p]) for p in paths])
    streams = {name: "".join(texts[p] for p in members) for name, members in files.items()}
    # The character set comes from all three splits, as nanoGPT's shakespeare_char does: it is the
    # vocabulary, not a statistic, and a character first seen in test must still be encodable.
    vocab = CharVocab("".join(streams.values()))
    splits = {name: blocks_of(vocab.encode(text), block_size) for name, text in streams.items()}
    reason = (f"{len(paths)} standard-library files of Python {sysconfig.get_python_version()}, split by file "
              f"({len(files['train'])} / {len(files['val'])} / {len(files['test'])}), characters in blocks of "
              f"{block_size}")
    return token_bundle(splits["train"], splits["val"], splits["test"], vocab.tokens, decode=vocab.decode,
                        source="python-source", reason=reason, device=device)


# ---------------------------------------------------------------- names

def read_names() -> list[str]:
    """The distinct US first names (male and female) of the `names` package, lower case, sorted."""
    try:
        import names
    except ImportError:
        raise DataError("--data names needs the `names` package: pip install names") from None
    folder = Path(names.__file__).parent
    found = set()
    for file in ("dist.male.first", "dist.female.first"):
        with open(folder / file, encoding="utf-8") as lines:
            found.update(line.split()[0].lower() for line in lines if line.strip())
    return sorted(found)


def padded_names(words: list[str], vocab: CharVocab, length: int) -> Split:
    """x = '.' + name, y = name + '.', both padded to `length` with the pad id (which y ignores)."""
    x = torch.full((len(words), length), vocab.pad_id, dtype=torch.long)
    y = x.clone()
    for i, word in enumerate(words):
        ids = vocab.encode(BOUNDARY + word + BOUNDARY)
        x[i, :len(ids) - 1], y[i, :len(ids) - 1] = ids[:-1], ids[1:]
    return Split(x, y)


def first_names(device: str | torch.device = "cpu") -> DataBundle:
    words = read_names()
    vocab = CharVocab(BOUNDARY + "".join(words), pad=PAD)
    order = torch.randperm(len(words), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    n_test, n_val = round(SPLIT_FRACTIONS[2] * len(words)), round(SPLIT_FRACTIONS[1] * len(words))
    parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    length = max(map(len, words)) + 1  # the boundary token before the name (inputs) or after it (targets)
    splits = {name: padded_names([words[i] for i in sorted(at)], vocab, length) for name, at in parts.items()}
    reason = f"{len(words)} US first names (the `names` package), one per example, split by name"
    return token_bundle(splits["train"], splits["val"], splits["test"], vocab.tokens, decode=vocab.decode,
                        source="names", reason=reason, pad_id=vocab.pad_id, device=device)


# ---------------------------------------------------------------- any text file

def read_text(path: Path) -> str:
    if not path.is_file():
        what = "a folder" if path.is_dir() else "missing"
        raise DataError(f"--data text needs --data-dir pointing at one UTF-8 text file; {path} is {what}")
    raw = path.read_bytes()
    if b"\x00" in raw[:65536]:
        raise DataError(f"{path} looks binary (it holds NUL bytes); --data text reads UTF-8 text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); convert it, e.g. iconv "
                        "-t utf-8") from None


def text_file(path: Path, block_size: int = DEFAULT_BLOCK, device: str | torch.device = "cpu") -> DataBundle:
    text = read_text(path)
    smallest = MIN_SPLIT_BLOCKS * (block_size + 1) / min(SPLIT_FRACTIONS)
    if len(text) < smallest:
        raise DataError(f"{path} holds {len(text)} characters; --data text needs at least {int(smallest)} so that "
                        f"val and test ({SPLIT_FRACTIONS[1]:.0%} each) hold {MIN_SPLIT_BLOCKS} blocks of "
                        f"{block_size} + 1")
    vocab = CharVocab(text)
    ids = vocab.encode(text)
    cut_val, cut_test = round(SPLIT_FRACTIONS[0] * len(ids)), round(sum(SPLIT_FRACTIONS[:2]) * len(ids))
    # Contiguous chunks by position: neighbouring blocks of one text are near copies of each other's
    # context, so a random split of blocks would put the same passage in train and test.
    train, val, test = (blocks_of(part, block_size) for part in (ids[:cut_val], ids[cut_val:cut_test], ids[cut_test:]))
    reason = f"{path.name}: {len(text):,} characters cut by position into 80/10/10 chunks, blocks of {block_size}"
    return token_bundle(train, val, test, vocab.tokens, decode=vocab.decode, source="text", reason=reason,
                        device=device)
