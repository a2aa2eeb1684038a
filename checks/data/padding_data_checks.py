"""Padding nobody declared: rows of token data that end (or start) in a run of one repeated target id,
counted by the loss as if it were text.

A padded batch whose pad is not declared (`DataBundle.pad_id` unset; for instance names padded with
their end token, as in FlagAI#522) trains the model to predict the pad after the pad: an easy target
that fills a large share of the loss, lowers it without teaching anything, and hides the real loss.
The check finds the runs from the data alone, then asks the pipeline's own loss whether they count:
a loss that already ignores them (an `ignore_index` the bundle does not know of) is fine.
"""
from __future__ import annotations

import torch

from checks.engine.kinds import applies_to
from checks.engine.result import CheckResult, measured, not_applicable
from checks.measure.ngrams import rows
from recipe.pipeline import Pipeline

STAGE = "data"
MIN_RUN = 3          # a run of 3+ equal targets at a row's edge: a stream cut into blocks rarely ends that way
MAX_SHARE = 0.05     # at most this share of the train targets may sit in such runs of one id
EDGE_SHARE = 0.9     # padding: (nearly) every run of the id touches a row's edge


def _edge_runs(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: the id of its trailing run, the trailing run's length, the leading run's length."""
    T = y.shape[1]
    same_back = (y == y[:, -1:]).flip(1).long().cumprod(1).sum(1)    # length of the run ending the row
    same_front = (y == y[:, :1]).long().cumprod(1).sum(1)            # length of the run starting it
    return y[:, -1], same_back.clamp(max=T), same_front.clamp(max=T)


@applies_to("tokens")
def undeclared_padding(pipeline: Pipeline) -> CheckResult:
    """FAIL when over MAX_SHARE of the train targets sit in runs (>= MIN_RUN) of one id at the rows'
    edges, that id's runs (nearly) never occur inside rows, no pad id is declared, and the pipeline's
    loss changes when only those positions' logits do."""
    if pipeline.data.pad_id is not None:
        return not_applicable("undeclared_padding", STAGE, f"the pad id is declared ({pipeline.data.pad_id}): "
                              "padding_masked checks that the loss and the attention skip it")
    _, y = rows(pipeline.data.train)
    if y.shape[1] < MIN_RUN:
        return not_applicable("undeclared_padding", STAGE, f"rows of {y.shape[1]} targets are too short for runs")
    end_id, back, front = _edge_runs(y)
    start_id = y[:, 0]
    ids = torch.cat([end_id[back >= MIN_RUN], start_id[front >= MIN_RUN]])
    if len(ids) == 0:
        return measured("undeclared_padding", STAGE, 0.0, MAX_SHARE, "<=",
                        "no row of train ends or starts in a run of one repeated target: nothing looks like padding.",
                        "")
    pad = int(torch.mode(ids).values)  # the id most runs are made of: the would-be pad
    at_end = (end_id == pad) & (back >= MIN_RUN)
    at_start = (start_id == pad) & (front >= MIN_RUN)
    positions = torch.zeros_like(y, dtype=torch.bool)
    T = y.shape[1]
    steps = torch.arange(T)
    positions |= at_end[:, None] & (steps[None, :] >= T - back[:, None] + 1)   # the first of a trailing run may be EOS
    positions |= at_start[:, None] & (steps[None, :] < front[:, None])
    share = positions.float().mean().item()
    # Padding runs only ever reach a row's edge; runs of a real token (spaces in indented code) occur
    # inside rows as often as at their ends. Count run positions (3 equal ids in a row) inside rows too.
    is_pad = y == pad
    inside = (is_pad[:, :-2] & is_pad[:, 1:-1] & is_pad[:, 2:] & ~positions[:, 1:-1]).sum().item()
    edge_share = positions.sum().item() / max(positions.sum().item() + inside, 1)
    token = pipeline.data.class_names[pad] if pad < len(pipeline.data.class_names) else str(pad)
    details = {"pad_like_id": pad, "pad_like_token": token, "rows": int((at_end | at_start).sum()),
               "train_rows": len(y), "share_of_targets": share, "runs_at_edges": edge_share}
    seen = (f"{share:.1%} of the train targets are id {pad} ({token!r}) repeated at the end or start of "
            f"{details['rows']} of {len(y)} rows")
    if share <= MAX_SHARE:
        return measured("undeclared_padding", STAGE, share, MAX_SHARE, "<=",
                        f"{seen}: too few to be padding that distorts the loss.", "", details=details)
    if edge_share < EDGE_SHARE:
        return measured("undeclared_padding", STAGE, 0.0, MAX_SHARE, "<=",
                        f"{seen}, but only {edge_share:.0%} of its runs touch a row's edge: the same runs occur "
                        f"inside rows (a real token, such as indentation), not padding.", "", details=details)
    counted = _loss_counts(pipeline, positions)
    details["loss_counts_them"] = counted
    if not counted:
        return measured("undeclared_padding", STAGE, 0.0, MAX_SHARE, "<=",
                        f"{seen}, which looks like padding, but the pipeline's loss already ignores those "
                        f"positions (an ignore_index of its own). Declare DataBundle.pad_id={pad} so the "
                        "padding checks can test the attention too.", "", details=details)
    return measured("undeclared_padding", STAGE, share, MAX_SHARE, "<=", "",
                    f"{seen}, no pad id is declared and the loss counts them: padding is being trained on as "
                    f"text. The model learns to predict the pad after the pad (easy, so the loss looks better "
                    f"than it is) and a run of {token!r} no longer marks the end. Declare the pad "
                    f"(DataBundle.pad_id={pad}, ignore_index={pad} in the loss, a key-padding mask in "
                    "attention), or pad with a token of its own rather than the end token.", details=details)


def _loss_counts(pipeline: Pipeline, positions: torch.Tensor, rows_used: int = 64) -> bool:
    """Whether the pipeline's loss moves when only the logits at `positions` change."""
    y = pipeline.data.train.labels[:rows_used]
    mask = positions[:rows_used].to(y.device)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(*y.shape, pipeline.num_classes, generator=generator).to(y.device)
    moved = logits + torch.where(mask[..., None], torch.randn(logits.shape, generator=generator).to(y.device) * 3, 0.0)
    with torch.no_grad():
        before, after = float(pipeline.loss_fn(logits, y)), float(pipeline.loss_fn(moved, y))
    return abs(after - before) > 1e-6 * max(abs(before), 1e-12)
