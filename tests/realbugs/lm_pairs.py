"""Buggy and fixed language-model pipelines of the real-bug track, written the way the reports' code was.

Every pair ports ONE publicly reported language-model bug (its source is in `lm_catalogue.py`) onto the
`names` data the CLI loads (`--data names`: makemore's '.' + name -> name + '.', right-padded with a pad
id 0 that the default loss ignores). A factory is `build(config, data) -> Pipeline`; the user's code
replaces what it owns in `language_pipeline` (model, loss, step, the labels the data set yields), and
the buggy and the fixed version differ only in the reported mistake and its fix.

Most reports are about a transformer; they share `GPT`, minGPT's/nanoGPT's shape shrunk to the default
TinyGPT's size (2 layers, 2 heads, 64 wide), with the three places those reports touch kept apart as
methods: `scores` (q k^T and its scale), `masked` (the causal and padding masks), `normalised` (the
softmax). Like minGPT it has no key-padding mask unless a pair needs one: with right padding and a causal
mask no real token can read a pad. The optimizer and schedule are the default pipeline's (Adam 1e-3,
cosine) unless the report gives its own. Nothing here is imported by the harness: this is test material.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from recipe.data import Split
from recipe.sequences import language_pipeline


# ---------------------------------------------------------------- the shared user code

class Attention(nn.Module):
    """minGPT's CausalSelfAttention: a tril buffer, scores scaled by 1/sqrt(head size), softmax over keys."""

    def __init__(self, width: int, heads: int, block: int):
        super().__init__()
        self.heads = heads
        self.c_attn, self.c_proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.register_buffer("bias", torch.tril(torch.ones(block, block)).view(1, 1, block, block), persistent=False)

    def scores(self, q, k):
        return (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))

    def masked(self, att, T, keep):
        allowed = self.bias[:, :, :T, :T] == 1
        if keep is not None:  # a key-padding mask (a query still sees itself, so no row is empty)
            allowed = allowed & (keep[:, None, None, :] | torch.eye(T, dtype=torch.bool, device=att.device))
        return att.masked_fill(~allowed, float("-inf"))

    def normalised(self, att):
        return F.softmax(att, dim=-1)

    def forward(self, x, keep=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        att = self.normalised(self.masked(self.scores(q, k), T, keep))  # (B, nh, T, T)
        return self.c_proj((att @ v).transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, block: int, attention: type[Attention]):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = attention(width, heads, block)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x, keep):
        x = x + self.attn(self.ln_1(x), keep)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token + learned position embeddings, pre-norm blocks, final LayerNorm, a head tied to wte."""

    def __init__(self, vocab: int, block: int, attention: type[Attention] = Attention, pad_id: int | None = None,
                 width: int = 64, heads: int = 2, layers: int = 2):
        super().__init__()
        self.pad_id = pad_id  # None: no key-padding mask (minGPT)
        self.wte, self.wpe = nn.Embedding(vocab, width), nn.Embedding(block, width)
        self.h = nn.ModuleList(Block(width, heads, block, attention) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.apply(self._init_weights)
        self.lm_head.weight = self.wte.weight

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def embed(self, idx):
        return self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))

    def forward(self, idx):
        keep = None if self.pad_id is None else idx != self.pad_id
        x = self.embed(idx)
        for block in self.h:
            x = block(x, keep)
        return self.lm_head(self.ln_f(x))  # (B, T, V)


def _pipeline(config, data, attention=Attention, *, model=None, padding_mask=False, **replaced):
    """The default language pipeline with the user's GPT (or `model`, a class taking (vocab, block))."""
    base = language_pipeline(config, data, "gpt")
    vocab, block, device = data.num_classes, data.train.images.shape[1], data.train.labels.device
    pad = data.pad_id if padding_mask else None
    build = (lambda: model(vocab, block).to(device)) if model else (lambda: GPT(vocab, block, attention, pad).to(device))
    return dataclasses.replace(base, make_model=build, **replaced)


def _with_splits(data, edit, **fields):
    """The bundle with every split's (inputs, targets) replaced by edit(inputs, targets)."""
    splits = {name: Split(*edit(s.images, s.labels)) for name, s in (("train", data.train), ("val", data.val),
                                                                     ("test", data.test))}
    return dataclasses.replace(data, **splits, **fields)


# ---------------------------------------------------------------- masks

class CausalOnlyWithPaddingMask(Attention):
    """xformers' scaled_dot_product as reported: the causal mask sits inside `if att_mask is not None`."""

    def masked(self, att, T, keep):
        return att if keep is None else super().masked(att, T, keep)


def causal_mask_skipped_buggy(config, data):
    return _pipeline(config, data, CausalOnlyWithPaddingMask)  # called without a padding mask


def causal_mask_skipped_fixed(config, data):
    return _pipeline(config, data, Attention)


class FlippedSubsequentMask(Attention):
    """word_language_model's generate_square_subsequent_mask on PyTorch 1.3: -inf below the diagonal."""

    def masked(self, att, T, keep):
        return att.masked_fill(self.bias[:, :, :T, :T].transpose(-2, -1) == 0, float("-inf"))


def causal_mask_flipped_buggy(config, data):
    return _pipeline(config, data, FlippedSubsequentMask)


def causal_mask_flipped_fixed(config, data):
    return _pipeline(config, data, Attention)


MASK_VALUE = -1e9  # tinytorch's _apply_mask: scores + (1 - mask) * MASK_VALUE, mask 1 = attend


class AdditiveMaskIntoBinaryApply(Attention):
    """GPT._create_causal_mask returns the additive mask (-inf above the diagonal, 0 elsewhere)."""

    def masked(self, att, T, keep):
        mask = torch.triu(torch.full((T, T), float("-inf"), device=att.device), diagonal=1)
        return att + (1 - mask) * MASK_VALUE  # every allowed score -1e9: its content is lost to rounding


class BinaryMaskApply(Attention):
    def masked(self, att, T, keep):
        mask = torch.tril(torch.ones(T, T, device=att.device))  # the fix: np.tril(np.ones(...)), 1 = attend
        return att + (1 - mask) * MASK_VALUE


def additive_mask_into_binary_apply_buggy(config, data):
    return _pipeline(config, data, AdditiveMaskIntoBinaryApply)


def additive_mask_into_binary_apply_fixed(config, data):
    return _pipeline(config, data, BinaryMaskApply)


class HaloPaddingMask(Attention):
    """lucidrains' masking: masked_fill_(mask, max_neg_value) with the mask True where tokens are REAL."""

    def __init__(self, width, heads, block, invert: bool = False):
        super().__init__(width, heads, block)
        self.invert = invert

    def masked(self, att, T, keep):
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        mask = keep[:, None, None, :]  # (B, 1, 1, T): True at real tokens
        mask = ~mask if self.invert else mask  # the fix: mask = ~mask.bool()
        return att.masked_fill(mask, -torch.finfo(att.dtype).max)  # replaces scores: the -inf above too


class HaloPaddingMaskFixed(HaloPaddingMask):
    def __init__(self, width, heads, block):
        super().__init__(width, heads, block, invert=True)


def padding_mask_inverted_buggy(config, data):
    return _pipeline(config, data, HaloPaddingMask, padding_mask=True)


def padding_mask_inverted_fixed(config, data):
    return _pipeline(config, data, HaloPaddingMaskFixed, padding_mask=True)


class PaddingMaskOnly(Attention):
    """RoFormerForCausalLM since v5.9 (is_decoder=True): only the padding part of the mask is applied."""

    def masked(self, att, T, keep):
        return att.masked_fill(~keep[:, None, None, :], float("-inf"))


def decoder_not_causal_buggy(config, data):
    return _pipeline(config, data, PaddingMaskOnly, padding_mask=True)


def decoder_not_causal_fixed(config, data):
    return _pipeline(config, data, Attention, padding_mask=True)  # BertLMHeadModel: causal + padding


# ---------------------------------------------------------------- softmax and scale

class SoftmaxOverQueries(Attention):
    def normalised(self, att):
        return F.softmax(att, dim=-2)  # minGPT#132: -2 instead of -1


def attention_softmax_over_queries_buggy(config, data):
    return _pipeline(config, data, SoftmaxOverQueries)


def attention_softmax_over_queries_fixed(config, data):
    return _pipeline(config, data, Attention)


class UnscaledScores(Attention):
    def scores(self, q, k):
        return q @ k.transpose(-2, -1)  # no division by sqrt(head size)


def attention_not_scaled_buggy(config, data):
    return _pipeline(config, data, UnscaledScores)


def attention_not_scaled_fixed(config, data):
    return _pipeline(config, data, Attention)


class ScaleDivided(Attention):
    def scores(self, q, k):
        scale = k.size(-1) ** -0.5  # perceiver-io: self.scale = qk_head_dim ** -0.5 ...
        return (q @ k.transpose(-2, -1)) / scale  # ... then divided by it: x sqrt(d) instead of / sqrt(d)


def attention_scale_divided_buggy(config, data):
    return _pipeline(config, data, ScaleDivided)


def attention_scale_divided_fixed(config, data):
    return _pipeline(config, data, Attention)


# ---------------------------------------------------------------- parameters that never train

class D2lPositionGPT(GPT):
    """d2l's BERTEncoder embeddings: nn.Embedding tokens (PyTorch's N(0, 1) init) plus a position embedding
    nn.Parameter(torch.randn(1, max_len, num_hiddens)), read by its own output layer (no weight tying)."""

    def __init__(self, vocab, block, detached: bool):
        super().__init__(vocab, block)
        del self.wpe
        width = self.wte.embedding_dim
        self.wte = nn.Embedding(vocab, width)
        self.pos_embedding = nn.Parameter(torch.randn(1, block, width))
        self.lm_head = nn.Linear(width, vocab, bias=False)
        nn.init.normal_(self.lm_head.weight, std=0.02)  # small output weights: loss at init ~ ln V
        self.detached = detached

    def embed(self, idx):
        pos = self.pos_embedding.data if self.detached else self.pos_embedding  # .data: cut from the graph
        return self.wte(idx) + pos[:, :idx.shape[1], :]


def position_embedding_detached_buggy(config, data):
    return _pipeline(config, data, model=lambda vocab, block: D2lPositionGPT(vocab, block, detached=True))


def position_embedding_detached_fixed(config, data):
    return _pipeline(config, data, model=lambda vocab, block: D2lPositionGPT(vocab, block, detached=False))


# ---------------------------------------------------------------- recurrent state

class CharLSTM(nn.Module):
    """An ELMo-style character LSTM LM, shrunk (embedding 64, one LSTM layer of 128): with carry_state the
    last batch's final (h, c), detached, is the next batch's initial state, though batches are shuffled."""

    def __init__(self, vocab, block, carry_state: bool, width: int = 64, hidden: int = 128):
        super().__init__()
        self.emb, self.lstm = nn.Embedding(vocab, width), nn.LSTM(width, hidden, batch_first=True)
        self.proj = nn.Linear(hidden, vocab)
        self.carry_state, self.state = carry_state, None

    def forward(self, x):
        state = self.state if self.state is not None and self.state[0].shape[1] == x.shape[0] else None
        out, (h, c) = self.lstm(self.emb(x), state)
        if self.carry_state:
            self.state = (h.detach(), c.detach())
        return self.proj(out)


def lstm_state_carried_across_batches_buggy(config, data):
    return _pipeline(config, data, model=lambda vocab, block: CharLSTM(vocab, block, carry_state=True))


def lstm_state_carried_across_batches_fixed(config, data):
    return _pipeline(config, data, model=lambda vocab, block: CharLSTM(vocab, block, carry_state=False))
