"""Log-softmax over rows of logits, one vocabulary chunk at a time, in fp32: the engine of every op.

One row per token. Every op of this package is two steps over such rows:

- ``scan`` folds one chunk of vocabulary columns into a running online log-sum-exp: the row's max,
  its sum of exponentials, the label's logit once its chunk has gone by, and (for the entropy) the
  sum of ``exp(x - max) * (x - max)``. ``finish`` turns that state into ``log p(label)``, the
  entropy, and per-row ``stats`` for the backward. Everything is kept relative to the row's max,
  as ``log_softmax`` does: ``log p = (x - max) - log(sumexp)`` and
  ``H = log(sumexp) - E_p[x - max]`` (a sum of two non-negative terms), where ``x - lse`` and
  ``lse - E_p[x]`` would lose digits to rounding at the magnitude of ``lse`` (measured: 2-10x
  the error of ``log_softmax`` in fp32).
- ``grad`` writes, for one chunk, the gradient with respect to the logits of
  ``g_logp * log p(label) + g_entropy * H`` for any per-row upstream gradients:
  ``g_logp * (onehot - p) - g_entropy * p * (log p + H)``, divided by the temperature, with
  ``p = exp((x - max) - log(sumexp))`` and ``log p + H = (x - max) - E_p[x - max]``.

Ops on full logits scan a single chunk, the whole vocabulary, straight from the caller's tensor in
its own dtype and strides: no fp32 copy, no shifted ``.contiguous()`` copy. The linear ops scan the
logits of one vocabulary slice of the lm_head at a time, so the full logits never exist.

Two implementations with the same maths: the Triton kernels (one program per row, looping over the
chunk in ``BLOCK_V`` steps) and a PyTorch twin that works through blocks of rows small enough to
keep its fp32 temporaries bounded (the CPU path). Rows whose label is ``ignore_index`` are not read:
their log-prob, entropy and gradient are 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ferrotune_kernels.backend import HAS_TRITON

# An empty row's running max: far below any real logit, yet finite, so that ``exp(max - new_max)``
# never computes ``-inf - -inf`` when a row's first columns are all -inf (a masked vocabulary).
EMPTY_MAX = -1e30

# PyTorch twin: rows per block are chosen so one block holds about this many elements; its fp32
# temporaries (scores, exponentials, products) then stay near 4 x 16 MiB whatever the vocabulary.
TORCH_BLOCK_ELEMENTS = 1 << 22

# Triton: columns per step. 4096 fp32 lanes = 16 KiB of registers per program across 8 warps, the
# size Liger-Kernel and the Triton softmax tutorial settle on for 32k-152k vocabularies; not yet
# tuned on a GPU of ours (none has been lent to this project so far).
MAX_BLOCK_V = 4096


@dataclass
class RowState:
    """The running online log-sum-exp of each row over the vocabulary chunks scanned so far."""

    max: torch.Tensor  # (N,) max of the scaled logits
    sumexp: torch.Tensor  # (N,) sum of exp(x - max)
    dot: torch.Tensor | None  # (N,) sum of exp(x - max) * (x - max); None without entropy
    label_logit: torch.Tensor  # (N,) the label's scaled logit (0 until its chunk is scanned)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for everything but fp64, which stays fp64 so gradcheck can test the PyTorch twin."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def scan(
    logits: torch.Tensor,
    labels: torch.Tensor,
    state: RowState | None,
    *,
    col_start: int,
    temperature: float,
    ignore_index: int,
    entropy: bool,
    backend: str,
) -> RowState:
    """Fold one chunk of columns into ``state`` (``None``: the first chunk).

    ``logits`` is a (B, T, C) view whose last dim holds vocab ids ``col_start .. col_start + C``;
    ``labels`` is (B*T,) int64, contiguous, one per row.
    """
    if backend == "triton":
        return _scan_triton(logits, labels, state, col_start, temperature, ignore_index, entropy)
    return _scan_torch(logits, labels, state, col_start, temperature, ignore_index, entropy)


def finish(
    state: RowState, labels: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(log p(label), entropy or None, stats)`` per row, all 0 where the label is ignored.

    ``stats`` (N, 3) holds what ``grad`` needs: the row's max, ``log(sumexp)`` and ``E_p[x - max]``.
    """
    valid = labels != ignore_index
    zero = torch.zeros((), dtype=state.max.dtype, device=state.max.device)
    log_sumexp = torch.log(state.sumexp)
    logp = torch.where(valid, (state.label_logit - state.max) - log_sumexp, zero)
    ent = None
    centred_mean = zero.expand_as(log_sumexp)
    if state.dot is not None:
        centred_mean = state.dot / state.sumexp  # E_p[x - max] <= 0
        ent = torch.where(valid, log_sumexp - centred_mean, zero)
    stats = torch.stack([state.max, log_sumexp, centred_mean], dim=1)
    return logp, ent, torch.where(valid[:, None], stats, zero).contiguous()


def grad(
    logits: torch.Tensor,
    labels: torch.Tensor,
    stats: torch.Tensor,
    grad_logp: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
    out: torch.Tensor,
    *,
    col_start: int,
    temperature: float,
    ignore_index: int,
    backend: str,
) -> None:
    """Write d/dlogits for one chunk into ``out`` (same shape as ``logits``; may be ``logits``).

    ``grad_logp`` / ``grad_entropy`` are per-row upstream gradients (``None``: zero); ``stats``
    comes from ``finish``.
    """
    rows = labels.numel()
    dtype = stats.dtype
    grad_logp = (
        torch.zeros(rows, dtype=dtype, device=stats.device)
        if grad_logp is None
        else grad_logp.to(dtype).reshape(rows).contiguous()
    )
    if grad_entropy is not None:
        grad_entropy = grad_entropy.to(dtype).reshape(rows).contiguous()
    args = (logits, labels, stats, grad_logp, grad_entropy, out, col_start, temperature)
    if backend == "triton":
        _grad_triton(*args, ignore_index)
    else:
        _grad_torch(*args, ignore_index)


# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _token_logprobs_fwd_kernel(
        logits_ptr,  # (B, T, C) logits of one vocabulary chunk, any float dtype, any strides
        stride_b,  # element strides of the logits
        stride_t,
        stride_v,
        seq_len,  # T: row r is (r // T, r % T)
        labels_ptr,  # (N,) int64 vocab id each row is scored on; IGNORE_INDEX: not read at all
        max_ptr,  # (N,) fp32 running max of the scaled logits (read unless FIRST; written)
        sumexp_ptr,  # (N,) fp32 running sum of exp(x - max)
        dot_ptr,  # (N,) fp32 running sum of exp(x - max) * (x - max) (only if ENTROPY)
        label_logit_ptr,  # (N,) fp32 the label's scaled logit, once its chunk has been scanned
        col_start,  # vocab id of the chunk's first column
        n_cols,  # C
        temperature,  # scores are logits / temperature (divided, as TRL does: not * 1/t)
        ignore_index,
        FIRST: tl.constexpr,  # the first chunk: start from an empty state instead of reading it
        ENTROPY: tl.constexpr,  # keep dot_ptr
        BLOCK_V: tl.constexpr,  # columns per step
    ):
        row = tl.program_id(0).to(tl.int64)
        label = tl.load(labels_ptr + row)
        valid = label != ignore_index
        base = logits_ptr + (row // seq_len) * stride_b + (row % seq_len) * stride_t
        n_read = tl.where(valid, n_cols, 0)  # an ignored row reads no column
        if FIRST:
            m = -1e30  # EMPTY_MAX (a kernel cannot read a module global)
            s = 0.0
            d = 0.0
            y = 0.0
        else:
            m = tl.load(max_ptr + row)
            s = tl.load(sumexp_ptr + row)
            d = 0.0
            if ENTROPY:
                d = tl.load(dot_ptr + row)
            y = tl.load(label_logit_ptr + row)
        for start in range(0, n_cols, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            x = tl.load(base + cols * stride_v, mask=cols < n_read, other=-float("inf"))
            x = x.to(tl.float32) / temperature
            m_new = tl.maximum(m, tl.max(x, axis=0))
            e = tl.exp(x - m_new)
            scale = tl.exp(m - m_new)
            if ENTROPY:  # re-centre the old terms on the new max; a -inf logit (e = 0) adds 0
                d = scale * (d + (m - m_new) * s) + tl.sum(e * tl.where(e > 0, x - m_new, 0.0))
            s = s * scale + tl.sum(e, axis=0)
            m = m_new
        local = label - col_start
        has_label = valid & (local >= 0) & (local < n_cols)
        x_label = tl.load(base + local * stride_v, mask=has_label, other=0.0).to(tl.float32)
        y = tl.where(has_label, x_label / temperature, y)
        tl.store(max_ptr + row, m)
        tl.store(sumexp_ptr + row, s)
        if ENTROPY:
            tl.store(dot_ptr + row, d)
        tl.store(label_logit_ptr + row, y)

    @triton.jit
    def _token_logprobs_bwd_kernel(
        logits_ptr,  # (B, T, C) logits of one vocabulary chunk, any float dtype, any strides
        stride_b,  # element strides of the logits
        stride_t,
        stride_v,
        seq_len,  # T: row r is (r // T, r % T)
        grad_ptr,  # (B, T, C) out: d/dlogits in the logits' dtype; may be logits_ptr itself
        grad_stride_b,  # element strides of the gradient
        grad_stride_t,
        grad_stride_v,
        labels_ptr,  # (N,) int64 vocab id each row is scored on; IGNORE_INDEX: gradient 0
        stats_ptr,  # (N, 3) fp32 per row over the whole vocabulary: max, log(sumexp), E_p[x - max]
        grad_logp_ptr,  # (N,) fp32 upstream gradient of log p(label)
        grad_entropy_ptr,  # (N,) fp32 upstream gradient of the entropy (only if ENTROPY)
        col_start,  # vocab id of the chunk's first column
        n_cols,  # C
        temperature,  # scores are logits / temperature (divided, as TRL does: not * 1/t)
        ignore_index,
        ENTROPY: tl.constexpr,  # add the entropy's gradient
        BLOCK_V: tl.constexpr,  # columns per step
    ):
        row = tl.program_id(0).to(tl.int64)
        label = tl.load(labels_ptr + row)
        valid = label != ignore_index
        # An ignored row reads nothing and gets g = 0 everywhere (its x and stats are 0: p = 1).
        g_logp = tl.where(valid, tl.load(grad_logp_ptr + row), 0.0)
        row_max = tl.load(stats_ptr + row * 3)
        log_sumexp = tl.load(stats_ptr + row * 3 + 1)
        g_ent = 0.0
        centred_mean = 0.0
        if ENTROPY:
            g_ent = tl.where(valid, tl.load(grad_entropy_ptr + row), 0.0)
            centred_mean = tl.load(stats_ptr + row * 3 + 2)
        base = logits_ptr + (row // seq_len) * stride_b + (row % seq_len) * stride_t
        grad_base = grad_ptr + (row // seq_len) * grad_stride_b + (row % seq_len) * grad_stride_t
        local = label - col_start
        n_read = tl.where(valid, n_cols, 0)
        for start in range(0, n_cols, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            in_row = cols < n_cols
            x = tl.load(base + cols * stride_v, mask=cols < n_read, other=0.0)
            x = x.to(tl.float32) / temperature
            centred = tl.where(valid, x - row_max, 0.0)
            p = tl.exp(centred - log_sumexp)
            # onehot - p is formed in fp32 and rounded once, on the store
            g = tl.where(cols == local, g_logp, 0.0) - g_logp * p
            if ENTROPY:
                # p = 0 (a -inf logit): 0, not 0 * -inf
                g -= g_ent * p * tl.where(p > 0, centred - centred_mean, 0.0)
            g = g / temperature
            tl.store(grad_base + cols * grad_stride_v, g.to(grad_ptr.dtype.element_ty), mask=in_row)

    def _block_v(n_cols: int) -> tuple[int, int]:
        block = min(MAX_BLOCK_V, triton.next_power_of_2(max(n_cols, 1)))
        return block, 8 if block >= 2048 else 4

    def _scan_triton(logits, labels, state, col_start, temperature, ignore_index, entropy):
        batch, seq_len, n_cols = logits.shape
        rows = batch * seq_len
        first = state is None
        if first:
            f32 = {"dtype": torch.float32, "device": logits.device}
            state = RowState(
                max=torch.empty(rows, **f32),
                sumexp=torch.empty(rows, **f32),
                dot=torch.empty(rows, **f32) if entropy else None,
                label_logit=torch.empty(rows, **f32),
            )
        if rows == 0:
            return state
        block, warps = _block_v(n_cols)
        _token_logprobs_fwd_kernel[(rows,)](
            logits,
            *logits.stride(),
            seq_len,
            labels,
            state.max,
            state.sumexp,
            state.dot if entropy else state.sumexp,  # not touched without ENTROPY
            state.label_logit,
            col_start,
            n_cols,
            temperature,
            ignore_index,
            FIRST=first,
            ENTROPY=entropy,
            BLOCK_V=block,
            num_warps=warps,
        )
        return state

    def _grad_triton(
        logits, labels, stats, grad_logp, grad_entropy, out, col_start, temp, ignore_index
    ):
        batch, seq_len, n_cols = logits.shape
        if batch * seq_len == 0:
            return
        with_entropy = grad_entropy is not None
        block, warps = _block_v(n_cols)
        _token_logprobs_bwd_kernel[(batch * seq_len,)](
            logits,
            *logits.stride(),
            seq_len,
            out,
            *out.stride(),
            labels,
            stats,
            grad_logp,
            grad_entropy if with_entropy else grad_logp,
            col_start,
            n_cols,
            temp,
            ignore_index,
            ENTROPY=with_entropy,
            BLOCK_V=block,
            num_warps=warps,
        )

else:

    def _scan_triton(*args):
        raise RuntimeError("Triton is not installed")

    def _grad_triton(*args):
        raise RuntimeError("Triton is not installed")


# ---------------------------------------------------------------------------------------------
# PyTorch twin (the CPU path)
# ---------------------------------------------------------------------------------------------


def _row_blocks(batch: int, seq_len: int, n_cols: int) -> Iterator[tuple[int, int, int]]:
    """``(b, t0, t1)``: runs of rows within one sequence, each about TORCH_BLOCK_ELEMENTS big.

    Slicing ``logits[b, t0:t1]`` is always a view, whatever the strides of ``logits``.
    """
    step = max(1, TORCH_BLOCK_ELEMENTS // max(n_cols, 1))
    for b in range(batch):
        for t0 in range(0, seq_len, step):
            yield b, t0, min(t0 + step, seq_len)


def _scores(logits: torch.Tensor, dtype: torch.dtype, temperature: float) -> torch.Tensor:
    """A fresh ``dtype`` copy of a block of logits divided by the temperature (safe to modify)."""
    x = logits.to(dtype, copy=True)
    return x if temperature == 1.0 else x.div_(temperature)


def _scan_torch(logits, labels, state, col_start, temperature, ignore_index, entropy):
    batch, seq_len, n_cols = logits.shape
    rows = batch * seq_len
    dtype = compute_dtype(logits.dtype)
    if state is None:
        new = {"dtype": dtype, "device": logits.device}
        state = RowState(
            max=torch.full((rows,), EMPTY_MAX, **new),
            sumexp=torch.zeros(rows, **new),
            dot=torch.zeros(rows, **new) if entropy else None,
            label_logit=torch.zeros(rows, **new),
        )
    # In place where possible: two (R, C) temporaries per block, the scores and their exponentials.
    for b, t0, t1 in _row_blocks(batch, seq_len, n_cols):
        r0, r1 = b * seq_len + t0, b * seq_len + t1
        label = labels[r0:r1]
        valid = label != ignore_index
        x = _scores(logits[b, t0:t1], dtype, temperature)  # (R, C)
        if not valid.all():
            x.masked_fill_(~valid[:, None], -float("inf"))  # ignored rows add nothing
        local = label - col_start
        has_label = valid & (local >= 0) & (local < n_cols)
        picked = x.gather(1, local.clamp(0, n_cols - 1)[:, None]).squeeze(1)
        state.label_logit[r0:r1] = torch.where(has_label, picked, state.label_logit[r0:r1])
        m_old = state.max[r0:r1]
        m_new = torch.maximum(m_old, x.amax(dim=1))
        centred = x.sub_(m_new[:, None])
        e = torch.exp(centred)
        scale = torch.exp(m_old - m_new)
        s_old = state.sumexp[r0:r1]
        if state.dot is not None:  # re-centred on the new max
            centred.clamp_(min=EMPTY_MAX)  # a -inf logit (e = 0) adds 0, not 0 * -inf
            old = state.dot[r0:r1] + (m_old - m_new) * s_old
            state.dot[r0:r1] = scale * old + centred.mul_(e).sum(
                dim=1
            )  # summed, not a dot: exact-er
        state.sumexp[r0:r1] = s_old * scale + e.sum(dim=1)
        state.max[r0:r1] = m_new
    return state


def _grad_torch(logits, labels, stats, grad_logp, grad_entropy, out, col_start, temp, ignore_index):
    batch, seq_len, n_cols = logits.shape
    dtype = stats.dtype
    for b, t0, t1 in _row_blocks(batch, seq_len, n_cols):
        r0, r1 = b * seq_len + t0, b * seq_len + t1
        label = labels[r0:r1]
        valid = label != ignore_index
        g_logp = torch.where(valid, grad_logp[r0:r1], 0.0)[:, None]
        row_max, log_sumexp, centred_mean = stats[r0:r1, :, None].unbind(1)  # (R, 1) each
        centred = _scores(logits[b, t0:t1], dtype, temp).sub_(row_max)  # (R, C)
        p = torch.sub(centred, log_sumexp).exp_()
        if not valid.all():
            p.masked_fill_(~valid[:, None], 0.0)  # an ignored row may overflow: its p is 0
        if grad_entropy is None:
            g = p.mul_(-g_logp)
        else:  # - g_logp * p - g_entropy * p * (centred - E_p[centred])
            g_ent = torch.where(valid, grad_entropy[r0:r1], 0.0)[:, None]
            spread = centred.clamp_(min=EMPTY_MAX).sub_(centred_mean).mul_(p)  # 0 where p = 0
            g = p.mul_(-g_logp).sub_(spread.mul_(g_ent))
        local = label - col_start
        has_label = valid & (local >= 0) & (local < n_cols)
        onehot = torch.where(has_label[:, None], g_logp, 0.0)
        g.scatter_add_(1, local.clamp(0, n_cols - 1)[:, None], onehot)
        out[b, t0:t1] = g if temp == 1.0 else g.div_(temp)
