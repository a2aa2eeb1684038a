"""Skeleton checks for language models: no position reading later tokens, and positions that matter to
a model that reads context (padding: padding_checks.py; the (B, T, V) shape: the shared output_sanity).

Each runs a fresh model in eval mode (dropout off) on a few real rows and compares logits after a
controlled edit of the input: a later token, the order, a pad's embedding. An effect is judged against
the effect the same kind of edit has where it must matter (the position's own token), so a tiny
model at init and a trained one are held to the same relative limit, far above float round-off.
"""
from __future__ import annotations

import torch
from torch import nn

from checks.engine.kinds import applies_to
from checks.engine.result import CheckResult, Verdict, not_applicable
from checks.measure.state import CARRIED_STATE, keeps_state
from checks.measure.sampling import fresh_model, generator, stacked
from recipe.outputs import forward_logits
from recipe.pipeline import Pipeline

STAGE = "skeleton"
ROUND_OFF = 1e-4   # an effect below this share of the reference effect is float noise (float32: ~1e-6)
POSITIONS = 1e-3   # a constant sequence whose logits vary less than this across positions reads no position
ROWS = 4


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return forward_logits(model, x).double()


def _rows_and_model(pipeline: Pipeline) -> tuple[torch.Tensor, nn.Module]:
    x = stacked(pipeline, "train", ROWS, shuffle=True)[0][:ROWS]
    model = fresh_model(pipeline)
    model.eval()
    return x, model


def _replaced(pipeline: Pipeline, ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """`ids` with every entry swapped for a different real (non-pad) token, drawn at random."""
    V, pad = pipeline.num_classes, pipeline.data.pad_id
    new = torch.randint(0, V, ids.shape, generator=generator(pipeline, 17 + offset)).to(ids.device)
    for _ in range(3):  # a draw equal to the old id or the pad moves on by one: never the same token
        clash = (new == ids) | ((new == pad) if pad is not None else torch.zeros_like(new, dtype=torch.bool))
        new = torch.where(clash, (new + 1) % V, new)
    return new


def _effect(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


@applies_to("tokens")
def causality(pipeline: Pipeline) -> CheckResult:
    """No position's logits depend on later tokens: replacing every token after t must leave the logits
    at 0..t unchanged, for several t, while replacing the token at t moves the logits at t (the
    reference). A leak lets the model read the answer: train loss falls to ~0 and generation fails."""
    x, model = _rows_and_model(pipeline)
    T = x.shape[1]
    base = _logits(model, x)
    cuts = sorted({t for t in (0, T // 4, T // 2, T - 2) if 0 <= t < T - 1})
    own = leak = leak_next = leak_far = past = 0.0
    for i, t in enumerate(cuts):
        def edited(lo: int, hi: int) -> torch.Tensor:
            e = x.clone()
            e[:, lo:hi] = _replaced(pipeline, x[:, lo:hi], i * 7 + lo)
            return _logits(model, e)
        own = max(own, _effect(edited(t, t + 1)[:, t], base[:, t]))
        leak = max(leak, _effect(edited(t + 1, T)[:, :t + 1], base[:, :t + 1]))
        leak_next = max(leak_next, _effect(edited(t + 1, t + 2)[:, :t + 1], base[:, :t + 1]))
        leak_far = max(leak_far, _effect(edited(t + 2, T)[:, :t + 1], base[:, :t + 1]))
        if t > 0:
            past = max(past, _effect(edited(0, t)[:, t], base[:, t]))
    ratio = leak / own if own > 0 else (0.0 if leak == 0 else float("inf"))
    details = {"leak": leak, "own_token_effect": own, "positions": cuts, "next_token_leak": leak_next,
               "far_leak": leak_far, "earlier_tokens_effect": past}
    said = (f"replacing the tokens after t moved the logits at positions <= t by {leak:.3g}, {ratio:.2g} of the "
            f"effect of the token at t itself ({own:.3g}), over t in {cuts}")
    if ratio <= ROUND_OFF:
        return CheckResult("causality", STAGE, Verdict.PASS, ratio, ROUND_OFF, "<=",
                           f"{said}: no position sees the future.", details=details)
    bidirectional = [n for n, m in model.named_modules() if isinstance(m, nn.RNNBase) and m.bidirectional]
    if bidirectional:
        cause = f"a bidirectional recurrent layer ({', '.join(bidirectional)}) reads the sequence backwards too"
    elif keeps_state(model, x):  # the edited rows of the previous call reach this one through the carried state
        cause = CARRIED_STATE
    elif leak_far <= ROUND_OFF * own:
        cause = ("only the NEXT token leaks: the causal mask is shifted by one (torch.tril(..., diagonal=1)), "
                 "or the model's input is the target sequence")
    elif past <= ROUND_OFF * own:
        cause = ("later tokens reach each position but earlier ones do not: the causal mask is transposed "
                 "(torch.triu where torch.tril belongs, or masked_fill(mask, ...) instead of (~mask))")
    else:
        cause = ("tokens several positions ahead leak: the attention has no causal mask (is_causal=False, the mask "
                 "buffer never applied, a bidirectional encoder layer), or a causal mask shifted by one "
                 "(torch.tril(..., diagonal=1)), which stacked layers carry further ahead")
    return CheckResult("causality", STAGE, Verdict.FAIL, ratio, ROUND_OFF, "<=",
                       f"{said}: positions see the future: {cause}. The model can read the token it must "
                       "predict, so training loss falls without learning anything generation can use.",
                       details=details)


def _unused_embeddings(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Embedding modules that are never called on `x`, or whose output can be changed without moving the logits."""
    base, unused = _logits(model, x), []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Embedding):
            continue
        calls = []

        def noisy(mod, args, out, calls=calls):
            calls.append(1)
            return out + torch.randn_like(out) * (out.abs().max() + 1.0)
        handle = module.register_forward_hook(noisy)
        try:
            moved = _effect(_logits(model, x), base)
        finally:
            handle.remove()
        if not calls or moved <= ROUND_OFF * (base.abs().max().item() + 1e-12):
            unused.append(f"{name} ({module.num_embeddings} rows, "
                          f"{'never called' if not calls else 'called but its output never reaches the logits'})")
    return unused


@applies_to("tokens")
def position_used(pipeline: Pipeline) -> CheckResult:
    """A model that reads context knows where its tokens are. The test: a sequence of one repeated token
    must give different logits at different positions (a position embedding or a recurrent state makes
    them differ; a transformer without positions gives every position the same logits, exactly).

    N/A for a model that reads no context (a bigram table: the logits at t follow x[t] alone), unless it
    has a recurrent layer built without batch_first=True: that one runs over the batch (FAIL). When the
    constant sequence shows no position: FAIL if an embedding table never reaches the logits (the
    positional embedding is built but never added) or if swapping two earlier tokens changes nothing (the
    context is a bag of tokens); else WARN, since relative schemes (RoPE, ALiBi) or a deep NoPE model
    also treat a constant sequence alike.
    """
    x, model = _rows_and_model(pipeline)
    pad = pipeline.data.pad_id
    real = [torch.arange(x.shape[1], device=x.device) if pad is None else (r != pad).nonzero().flatten() for r in x]
    row = max(range(len(x)), key=lambda k: len(real[k]))
    one, at = x[row:row + 1], real[row]  # the full row (models may need all T), and its real positions
    if len(at) < 3:
        return not_applicable("position_used", STAGE, f"the rows hold at most {len(at)} real tokens: too short to test")
    t, before = int(at[-1]), at[:-1]
    base = _logits(model, one)
    edit = one.clone()
    edit[:, t] = _replaced(pipeline, one[:, t])
    own = _effect(_logits(model, edit)[:, t], base[:, t])
    edit = one.clone()
    edit[:, before] = _replaced(pipeline, one[:, before], 1)
    context = _effect(_logits(model, edit)[:, t], base[:, t])
    details = {"own_token_effect": own, "context_effect": context}
    time_major = [name for name, module in model.named_modules()
                  if isinstance(module, nn.RNNBase) and not module.batch_first]
    if context <= ROUND_OFF * own and time_major:  # an RNN over T would see the earlier tokens: it runs over B
        return CheckResult("position_used", STAGE, Verdict.FAIL, context / own if own else 0.0, ROUND_OFF, ">",
                           f"the logits at t follow the token at t alone (replacing every earlier token moved them "
                           f"{context:.2g}, the token itself {own:.2g}), though the model has a recurrent layer "
                           f"({', '.join(time_major)}) built without batch_first=True: it reads a (B, T) batch as "
                           "(T, B), so it runs over the batch, not along each sequence. Build it with "
                           "batch_first=True (or transpose its input)", details=details)
    if context <= ROUND_OFF * own:
        return not_applicable("position_used", STAGE, f"the logits at t follow the token at t alone (replacing every "
                              f"earlier token moved them {context:.2g}, the token itself {own:.2g}): a model that "
                              "reads no context (a bigram table) cannot use order", details=details)
    a, b = int(one[0, before[0]]), int(_replaced(pipeline, one[:, before[:1]], 2)[0, 0])
    constant = _logits(model, torch.full_like(one, a))
    spread = _effect(constant, constant[:, :1].expand_as(constant))
    token = _effect(_logits(model, torch.full_like(one, b))[:, 0], constant[:, 0])
    ratio = spread / token if token > 0 else 0.0
    details.update(constant_spread=spread, token_effect=token)
    said = (f"one token repeated over {one.shape[1]} positions gives logits that differ across positions by "
            f"{spread:.3g}, {ratio:.2g} of the effect of changing the token ({token:.3g})")
    if ratio >= POSITIONS:
        return CheckResult("position_used", STAGE, Verdict.PASS, ratio, POSITIONS, ">=",
                           f"{said}: the model knows where each token is.", details=details)
    unused = _unused_embeddings(model, one)
    if unused:
        return CheckResult("position_used", STAGE, Verdict.FAIL, ratio, POSITIONS, ">=",
                           f"{said}: the model reads no position, and the embedding table {'; '.join(unused)} does "
                           "not reach the logits: the positional embedding is never added (h = tok(x) where "
                           "h = tok(x) + pos(arange(T)) belongs).", details={**details, "unused": unused})
    i = int(before[0])
    others = [int(k) for k in before[1:] if int(one[0, k]) != int(one[0, i])]
    if not others:
        return not_applicable("position_used", STAGE, f"{said}; the row holds one distinct token before t, so the "
                              "order of its context cannot be tested", details=details)
    j = others[-1]
    swapped = one.clone()
    swapped[:, [i, j]] = one[:, [j, i]]
    order = _effect(_logits(model, swapped)[:, t], base[:, t])
    ratio = order / context
    details.update(order_effect=order)
    if ratio <= ROUND_OFF:
        return CheckResult("position_used", STAGE, Verdict.FAIL, ratio, ROUND_OFF, ">",
                           f"{said}, and swapping two earlier tokens moved the logits at t by {order:.2g} "
                           f"({ratio:.2g} of replacing them): the model reads its context as a bag of tokens, "
                           "no positional information at all: add a positional embedding (or RoPE).",
                           details=details)
    return CheckResult("position_used", STAGE, Verdict.WARN, ratio, ROUND_OFF, ">",
                       f"{said}: no absolute position, though order matters ({ratio:.2g}). Fine for relative "
                       "positions (RoPE, ALiBi) or a deliberate NoPE model; if yours has a positional embedding, "
                       "check that it is added.", details=details)
