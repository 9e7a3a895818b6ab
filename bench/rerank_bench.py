"""Memory and time of k-reciprocal re-ranking (gaittrain/evaluation/rerank.py) against its bound.

For each n, clustered float32 embeddings shaped like OpenGait's [n, 16, 4] (8 sequences per
subject), their per-part Euclidean distances averaged over the parts (OpenGait's ``cuda_dist``),
and ``rerank(dist, n // 2)`` (k1 = k2 = 6, λ = 0.3) in each ``--precision`` (OpenGait's
float32/float16 arithmetic, float64), with and without ``--max-memory``. The peak is
tracemalloc's: every array the call allocates, the input distances (the caller's) not counted.

    python bench/rerank_bench.py [--n 2000 20000] [--precision opengait float64] [--max-memory MB]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from gaittrain.evaluation.rerank import PRECISIONS, rerank, rerank_memory


def distances(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    subjects = max(2, n // 8)
    means = rng.normal(size=(subjects, 16, 4)).astype(np.float32)
    x = means[rng.integers(0, subjects, n)] + 0.6 * rng.normal(size=(n, 16, 4)).astype(np.float32)
    d = np.zeros((n, n), np.float32)
    for p in range(x.shape[2]):
        a = np.ascontiguousarray(x[:, :, p])
        sq = (a * a).sum(1)
        part = sq[:, None] + sq[None, :] - 2 * a @ a.T
        np.maximum(part, 0, out=part)
        d += np.sqrt(part, out=part)
    return d / x.shape[2]


def measured(call, *args, **kwargs):
    tracemalloc.start()
    start = time.perf_counter()
    out = call(*args, **kwargs)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, peak, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--max-memory", type=int, default=None, help="MB (units of 2**20)")
    args = parser.parse_args()
    mib = 2**20
    for n in args.n:
        dist, q = distances(n), n // 2
        for p in args.precision:
            free, peak, seconds = measured(rerank, dist, q, precision=p)
            bound = rerank_memory(n, q)
            sizes = f"peak {peak / mib:,.0f} MB, bound {bound / mib:,.0f} MB"
            print(f"n={n:,} q={q:,} {p}: {sizes}, {seconds:.1f} s")
            if args.max_memory:
                cap = args.max_memory * mib
                capped, peak, seconds = measured(rerank, dist, q, max_memory=cap, precision=p)
                same = np.abs(capped - free).max()
                print(
                    f"  --max-memory {args.max_memory} MB: peak {peak / mib:,.0f} MB, "
                    f"{seconds:.1f} s, largest difference {same:.1e}"
                )


if __name__ == "__main__":
    main()
