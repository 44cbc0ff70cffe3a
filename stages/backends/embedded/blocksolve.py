"""Exact solve of a symmetric block-tridiagonal system by block cyclic reduction.

The codec's least-squares encode has a block-tridiagonal normal matrix (a frame's kernels only
overlap its two neighbours). Cyclic reduction solves it exactly with log2(T) batched levels, so the
encode is vectorised (no loop over frames) and exact, which is what makes encode(decode(z)) == z.
"""

from __future__ import annotations

import torch


def solve_block_tridiagonal(diag: torch.Tensor, upper: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve ``M x = rhs`` where ``M`` has diagonal blocks ``diag[i]`` ``[T, n, n]``, upper blocks
    ``upper[i] = M[i, i+1]`` ``[T-1, n, n]`` and lower blocks ``upper[i].T``; ``rhs`` is ``[T, n, k]``.

    ``M`` must be symmetric positive definite (every Schur complement then stays invertible).
    """
    frames, n, _ = diag.shape
    if upper.shape != (max(frames - 1, 0), n, n) or rhs.shape[:2] != (frames, n):
        raise ValueError(
            f"block shapes disagree: diag {tuple(diag.shape)}, upper {tuple(upper.shape)}, rhs {tuple(rhs.shape)}"
        )
    size = 1
    while size < frames:
        size = 2 * size + 1
    eye = torch.eye(n, dtype=diag.dtype, device=diag.device)
    d = torch.cat([diag, eye.expand(size - frames, n, n)])
    c = torch.zeros(size, n, n, dtype=diag.dtype, device=diag.device)
    c[: frames - 1] = upper
    a = torch.zeros_like(c)
    a[1:frames] = upper.transpose(1, 2)
    b = torch.cat([rhs, rhs.new_zeros(size - frames, n, rhs.shape[2])])

    levels: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    while d.shape[0] > 1:
        levels.append((a, c, d, b))
        inv_even = torch.linalg.inv(d[0::2])
        left, right = inv_even[:-1], inv_even[1:]
        alpha = -a[1::2] @ left
        gamma = -c[1::2] @ right
        d_next = d[1::2] + alpha @ c[0::2][:-1] + gamma @ a[0::2][1:]
        a_next = alpha @ a[0::2][:-1]
        c_next = gamma @ c[0::2][1:]
        b_next = b[1::2] + alpha @ b[0::2][:-1] + gamma @ b[0::2][1:]
        a, c, d, b = a_next, c_next, d_next, b_next
    x = torch.linalg.solve(d, b)
    for a, c, d, b in reversed(levels):
        full = b.new_zeros(d.shape[0], n, b.shape[2])
        full[1::2] = x
        previous = torch.cat([b.new_zeros(1, n, b.shape[2]), x])
        following = torch.cat([x, b.new_zeros(1, n, b.shape[2])])
        full[0::2] = torch.linalg.solve(d[0::2], b[0::2] - a[0::2] @ previous - c[0::2] @ following)
        x = full
    return x[:frames]
