"""The default language models, written plainly: a bigram table (the dumbest baseline a sequence
model must beat) and a tiny GPT (nanoGPT's shape: 2 layers, 2 heads, 64 wide, block 64).

Both map (B, T) token ids to (B, T, V) logits for the next token at every position, and both
start with small output weights, so the loss at init is close to ln(V) (Karpathy: "verify loss @
init"). The GPT's attention is causal: position t sees positions <= t only, and (with a pad id)
never a pad token.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class BigramLM(nn.Module):
    """logits[b, t] = LOGIT_SCALE * table[x[b, t]]: the next token from the current one alone.

    Why the scale: Adam moves every parameter by about lr per step whatever its gradient, and a
    table has no depth to compound those moves, so at the GPT's lr (1e-3) its logits would need
    thousands of steps to reach the few nats a bigram needs. Read x50, the same lr moves a logit
    by ~0.05 per step and the baseline converges in a few hundred (makemore trains it with lr 50).
    """
    LOGIT_SCALE = 50.0

    def __init__(self, vocab_size: int, block_size: int = 0, pad_id: int | None = None):
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)
        nn.init.normal_(self.table.weight, std=0.01 / self.LOGIT_SCALE)  # logits of std 0.01: loss at init ~ ln V

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LOGIT_SCALE * self.table(x)  # (B, T, V)


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, block_size: int, dropout: float):
        super().__init__()
        self.heads, self.width = heads, width
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("causal", torch.tril(torch.ones(block_size, block_size, dtype=torch.bool)),
                             persistent=False)

    def forward(self, h: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        B, T, W = h.shape
        q, k, v = self.qkv(h).split(W, dim=2)
        q, k, v = (t.view(B, T, self.heads, W // self.heads).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(W // self.heads)  # (B, heads, T, T)
        allowed = self.causal[:T, :T]
        if keep is not None:  # a pad token is never attended to (a query still sees itself: no empty row)
            allowed = allowed & (keep[:, None, None, :] | torch.eye(T, dtype=torch.bool, device=h.device))
        scores = scores.masked_fill(~allowed, float("-inf"))
        attended = self.dropout(F.softmax(scores, dim=-1)) @ v
        return self.proj(attended.transpose(1, 2).reshape(B, T, W))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, block_size: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, block_size, dropout)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width),
                                 nn.Dropout(dropout))

    def forward(self, h: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        h = h + self.attn(self.ln1(h), keep)
        return h + self.mlp(self.ln2(h))


class TinyGPT(nn.Module):
    """Token and position embeddings, `layers` pre-norm transformer blocks, a final LayerNorm and a
    linear head whose weight is the token embedding's (weight tying, as GPT-2)."""

    def __init__(self, vocab_size: int, block_size: int = 64, pad_id: int | None = None, layers: int = 2,
                 heads: int = 2, width: int = 64, dropout: float = 0.0):
        super().__init__()
        self.block_size, self.pad_id = block_size, pad_id
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Embedding(block_size, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, block_size, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)
        self.apply(self._init)
        self.head.weight = self.token.weight  # tied after init: the embedding's small std keeps loss@init ~ ln V

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        if T > self.block_size:
            raise ValueError(f"TinyGPT: sequence of {T} tokens, longer than its block size {self.block_size}")
        keep = None if self.pad_id is None else x != self.pad_id
        h = self.drop(self.token(x) + self.position(torch.arange(T, device=x.device)))
        for block in self.blocks:
            h = block(h, keep)
        return self.head(self.norm(h))  # (B, T, V)


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, pad_id: int | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over every position whose target is not padding."""
    ignore = -100 if pad_id is None else pad_id
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore)
