"""What a preflight vouches for, as one fingerprint: code, data, config and device.

`recipe train` trains only on the word of a complete, passing preflight with the same fingerprint,
so each part must change whenever what would train changes:
- code: the user's pipeline files (the factory's module and the user's modules it imports) and
  the harness's own sources (a new version of a check re-checks);
- data: a hash of every split's images and labels, byte for byte, the class names and the declared
  pixel value range;
- config: every setting, and the pipeline's name and spec;
- device: cpu or cuda.
`parts` are kept beside the fingerprint in results.json, so a new preflight can say what changed.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from recipe.user_code import HARNESS_ROOT, user_sources

HASHED_PACKAGES = ("recipe", "checks")


def _digest(chunks) -> str:
    h = hashlib.blake2b(digest_size=16)
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    shape = json.dumps([str(t.dtype), list(t.shape)]).encode()
    return shape + (t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def data_hash(data) -> str:
    chunks = []
    for name in ("train", "val", "test"):
        split = data.split(name)
        chunks += [name.encode(), tensor_bytes(split.images), tensor_bytes(split.labels)]
    chunks.append(json.dumps(list(data.class_names)).encode())
    chunks.append(json.dumps([float(v) for v in data.value_range]).encode())  # same bytes, other range: other inputs
    return _digest(chunks)


def code_hash(spec: str) -> str:
    sources = user_sources(spec)
    return _digest(path.encode() + b"\0" + body for path, body in sorted(sources.items()))


def harness_hash() -> str:
    files = sorted(p for package in HASHED_PACKAGES for p in (HARNESS_ROOT / package).rglob("*")
                   if p.suffix in (".py", ".j2") and p.is_file())
    return _digest(str(p.relative_to(HARNESS_ROOT)).encode() + p.read_bytes() for p in files)


def fingerprint_parts(spec: str, pipeline) -> dict[str, str]:
    config = json.dumps(pipeline.config.as_dict(), sort_keys=True)
    return {"code": code_hash(spec), "harness": harness_hash(), "data": data_hash(pipeline.data),
            "config": _digest([config.encode(), spec.encode(), pipeline.name.encode()]),
            "device": pipeline.device.type}


def fingerprint(parts: dict[str, str]) -> str:
    return _digest([json.dumps(parts, sort_keys=True).encode()])


def changed_parts(old: dict[str, str] | None, new: dict[str, str]) -> list[str]:
    """Which of code/harness/data/config/device differ between two fingerprints' parts."""
    if not old:
        return []
    return [k for k in new if old.get(k) != new[k]]


def describe_files(spec: str) -> list[str]:
    return [str(Path(p)) for p in sorted(user_sources(spec))]
