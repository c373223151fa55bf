"""Phase-gradient heap integration (PGHI; Průša, Balazs and Søndergaard, "A Noniterative Method for
Reconstruction of Phase From STFT Magnitude", 2017), compiled by numba with its on-disk cache.

The same integration as ``pghipy.pghi`` (0.1.1, MIT; tested equal), with one change: after each
region it integrates (an island of bins above the tolerance), pghipy finds the loudest bin not yet
reached by scanning the whole spectrogram (``np.amax``, then ``np.where``). A 15-s clip of the
synthetic songs' model has 243 such islands (drascula-music's 10, wesnoth's 39), and the scans took
most of its integration: 0.42 CPU s against 0.17-0.22 for the real collections' models. Here the
first :data:`_SCANS` regions start from a one-pass scan (``np.argmax``), then the bins left are
sorted once and walked: 0.19 s for the synthetic songs' clip, 0.17-0.20 for the real ones'
(docs/benchmarks.md, "Phase reconstruction").
"""

from __future__ import annotations

import heapq

import numba
import numpy as np

# A bin at or under this magnitude is silence, or already integrated.
_DONE = 1e-10
# Regions started by a scan for the loudest bin left (as pghipy does, one pass each) before the bins
# left are sorted once instead: the real collections' clips are a few large regions (10-39 in 15 s;
# a scan ~1 ms, the sort ~0.1 s), the synthetic songs' clips hundreds of small ones.
_SCANS = 64


@numba.njit(cache=True)
def pghi(spectrogram: np.ndarray, win_length: int, hop_length: int, gamma: float, tol: float) -> np.ndarray:
    """Phases [frames, bins] of the magnitudes ``spectrogram`` [frames, bins] (float64, C order)
    of a ``win_length``-sample window every ``hop_length`` samples whose time-frequency ratio is
    ``gamma``; bins under ``tol`` times the loudest keep phase 0. Integrates outwards from the
    loudest bin not yet reached, region by region, through a heap (loudest first)."""
    n_frames, n_bins = spectrogram.shape
    phase = np.zeros_like(spectrogram)
    loudest = np.amax(spectrogram) if spectrogram.size else 0.0
    if loudest <= _DONE:  # silence: nothing to integrate
        return phase
    fmul = gamma / (hop_length * win_length)
    padded = np.empty((n_frames + 2, n_bins + 2), dtype=spectrogram.dtype)
    padded[1:-1, 1:-1] = np.log(spectrogram + 1e-50)
    padded[0, :] = padded[1, :]
    padded[-1, :] = padded[-2, :]
    padded[:, 0] = padded[:, 1]
    padded[:, -1] = padded[:, -2]
    dxdw = (padded[1:-1, 2:] - padded[1:-1, :-2]) / 2
    dxdt = (padded[2:, 1:-1] - padded[:-2, 1:-1]) / 2
    fgradw = dxdw / fmul + (2 * np.pi * hop_length / win_length) * np.arange(n_bins)
    tgradw = -fmul * dxdt + np.pi

    todo = spectrogram.copy()
    flat = todo.reshape(-1)  # a view: C order
    floor = loudest * tol
    for index in range(flat.size):
        if flat[index] < floor:
            flat[index] = _DONE
    heap = [(-loudest, (0, 0))]
    heap.pop()
    scans = 0
    order = np.empty(0, dtype=np.int64)
    position = -1  # where the walk of `order` is; -1: still scanning
    while True:
        if position < 0 and scans < _SCANS:
            start = np.argmax(flat)  # the loudest left, the first in C order among equals
            scans += 1
            if flat[start] <= _DONE:
                break
        elif position < 0:  # many regions: sort what is left once, loudest first, ties in C order
            left = np.flatnonzero(flat > _DONE)
            order = left[np.argsort(-flat[left], kind="mergesort")]
            position = 0
            continue
        else:
            while position < order.size and flat[order[position]] <= _DONE:
                position += 1
            if position == order.size:
                break
            start = order[position]
        seed = (start // n_bins, start % n_bins)
        heapq.heappush(heap, (-todo[seed], seed))
        todo[seed] = _DONE
        while len(heap) > 0:
            _, here = heapq.heappop(heap)
            frame, k = here
            if frame < n_frames - 1 and todo[frame + 1, k] > _DONE:
                there = (frame + 1, k)
                phase[there] = phase[here] + (fgradw[here] + fgradw[there]) / 2
                heapq.heappush(heap, (-todo[there], there))
                todo[there] = _DONE
            if frame > 0 and todo[frame - 1, k] > _DONE:
                there = (frame - 1, k)
                phase[there] = phase[here] - (fgradw[here] + fgradw[there]) / 2
                heapq.heappush(heap, (-todo[there], there))
                todo[there] = _DONE
            if k < n_bins - 1 and todo[frame, k + 1] > _DONE:
                there = (frame, k + 1)
                phase[there] = phase[here] + (tgradw[here] + tgradw[there]) / 2
                heapq.heappush(heap, (-todo[there], there))
                todo[there] = _DONE
            if k > 0 and todo[frame, k - 1] > _DONE:
                there = (frame, k - 1)
                phase[there] = phase[here] - (tgradw[here] + tgradw[there]) / 2
                heapq.heappush(heap, (-todo[there], there))
                todo[there] = _DONE
    return phase
