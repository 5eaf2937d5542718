#!/usr/bin/env python3
"""Speed and memory of music-composer.py, measured with the tool's own functions.

    python3 tests/benchmark.py            # the default sizes: about 10 minutes on 2 CPU cores
    python3 tests/benchmark.py --json     # the same, and one JSON object on the last line
    python3 tests/benchmark.py --quick    # small sizes, a smoke run of a minute or two

It makes its own music (stereo 16-bit 44.1 kHz, a mixture of tones), so nothing is downloaded.
Every timing is the median of several repetitions, and ratios are measured side by side in the
same run, because shared machines are noisy.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.io import wavfile

HERE = Path(__file__).resolve().parent
SCRIPT = HERE.parent / "music-composer.py"
RATE = 44_100


def load_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("music_composer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -----------------------------------------------------------------------------
# Synthetic music: stereo, 16-bit, a few tones that change every half second


def write_music(folder, minutes, seconds_per_file=60, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(int(round(minutes * 60 / seconds_per_file))):
        t = np.arange(seconds_per_file * RATE) / RATE
        notes = rng.choice([220.0, 261.6, 329.6, 392.0, 440.0, 523.3], size=seconds_per_file * 2 + 1)
        left = 0.3 * np.sin(2 * np.pi * notes[(t * 2).astype(int)] * t)
        right = 0.2 * np.sin(2 * np.pi * 1.5 * notes[(t * 2).astype(int)] * t) + 0.1 * np.sin(
            2 * np.pi * 110.0 * t)
        stereo = np.stack([left, right], axis=1)
        wavfile.write(folder / f"{index:03d}.wav", RATE, (stereo * 32767).astype(np.int16))
    return folder


def warm_page_cache(folder):
    for path in folder.iterdir():
        path.read_bytes()


# -----------------------------------------------------------------------------
# Measurements


def median_time(function, repeats):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def help_seconds(repeats=5):
    return median_time(lambda: subprocess.run([sys.executable, str(SCRIPT), "--help"],
                                              capture_output=True, check=True), repeats)


def prep_x_realtime(tool, music, work, minutes, repeats):
    def build():
        cache = work / f"prep-{time.perf_counter_ns()}"
        paths = tool.find_wav_files(music)
        tool.build_cache(music, cache, paths, tool.dataset_fingerprint(paths))
    warm_page_cache(music)
    return minutes * 60 / median_time(build, repeats)


def prep_peak_rss_mb(music, work):
    """Peak resident memory of preprocessing alone, in a fresh process."""
    code = (f"import runpy, sys; m = runpy.run_path({str(SCRIPT)!r}); "
            f"m['prepare_cache']({str(music)!r}, {str(work / ('rss-' + music.name))!r})")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return usage.ru_maxrss / 1024


def matmul_gflops(size=2048, repeats=10):
    import tensorflow as tf

    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))

    @tf.function
    def multiply():
        return tf.matmul(a, b)

    multiply().numpy()
    seconds = median_time(lambda: multiply().numpy(), repeats)
    return 2 * size**3 / seconds / 1e9
