#!/usr/bin/env python3
"""How often the walk's coarse pass (MusicIndex.near) finds the whole search's best join, on
real music: at every jump of 10 walks (copy guards 1 s and 4 s, 40 s each) over the music,
the choice among the near frames beside the whole search's from the same state, and the join
cost of each.

    python3 tests/walk_index_recall.py MUSIC_FOLDER CACHE_FOLDER
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import conftest  # noqa: E402

mc = conftest.load_script()
mc.limit_blas_threads()
cache = mc.prepare_cache(sys.argv[1], sys.argv[2])
print(len(cache.codes), "frames")
started = time.perf_counter()
index = mc.MusicIndex.of_music(cache.codes)
print(f"indexed in {time.perf_counter() - started:.1f} s, {len(index.sizes)} units")
real = mc.RealFrames(cache, cache.normalisation)
pieces, steps = 10, 160
rng = np.random.default_rng(0)
same, ratios, near_sizes, times = [], [], [], {"near": 0.0, "whole": 0.0}
for copy_limit in (1.0, 4.0):
    synthesis = mc.make_synthesis("magnitude", pieces, "grains", real, copy_limit)
    synthesis.index = index
    starts = mc.seed_starts(cache.file_starts, pieces, rng, 32)
    synthesis.prime(cache.normalisation.denormalise(np.asarray(cache.frames)[starts + 31][:, None]))
    every = np.arange(len(cache.codes))
    original = synthesis.walk

    def walk(piece, successor, phase):
        if synthesis.allowed(piece, successor):
            return successor
        t = time.perf_counter()
        near = synthesis.near(piece, successor)
        choice = synthesis.best(piece, successor, phase, near)
        times["near"] += time.perf_counter() - t
        t = time.perf_counter()
        whole = synthesis.best(piece, successor, phase, every)
        times["whole"] += time.perf_counter() - t
        cost = lambda frame: synthesis.cost(piece, successor, np.array([frame]))[0]
        same.append(choice == whole)
        ratios.append(cost(choice) / max(cost(whole), 1e-12))
        near_sizes.append(len(near))
        return choice

    synthesis.walk = walk
    for _ in range(steps):
        synthesis.choose_by_codes(None)
ratios = np.array(ratios)
per_jump = {way: 1000 * seconds / len(same) for way, seconds in times.items()}
print(f"jumps {len(same)}: the whole search's best found {np.mean(same):.3f}; join cost over "
      f"the best's: median {np.median(ratios):.3f}, 90th percentile "
      f"{np.percentile(ratios, 90):.3f}; frames searched per jump {np.median(near_sizes):.0f} "
      f"of {len(cache.codes)}; per jump near {per_jump['near']:.2f} ms, whole "
      f"{per_jump['whole']:.2f} ms")
