"""Stage `skeleton`: the end-to-end skeleton (a dry run of `fit`, the schedule, determinism, what
goes into the net, loss at init, batch independence, gradient flow, clipping, capacity)."""
