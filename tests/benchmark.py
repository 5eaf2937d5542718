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
import shutil
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
    """Each repetition rebuilds the cache from scratch, as a run does when the music changed;
    the previous repetition's cache is deleted first, as the tool deletes a stale one."""
    cache = work / "prep-speed"

    def build():
        shutil.rmtree(cache, ignore_errors=True)
        paths = tool.find_wav_files(music)
        tool.build_cache(music, cache, paths, tool.dataset_fingerprint(paths))

    warm_page_cache(music)
    return minutes * 60 / median_time(build, repeats)


PEAK_RSS_CODE = """
import runpy, sys
try:
    {body}
finally:
    status = open("/proc/self/status").read()
    peak_kb = int(status.split("VmHWM:")[1].split()[0])
    print("PEAK_RSS_KB", peak_kb, file=sys.stderr)
"""


def peak_rss_mb(body, cwd=None):
    """Peak resident memory of `body` run in a fresh process, read from its own VmHWM.

    (ru_maxrss from wait4 will not do: Linux carries the parent's peak over into the child.)"""
    result = subprocess.run([sys.executable, "-c", PEAK_RSS_CODE.format(body=body)], cwd=cwd,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return int(result.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0]) / 1024


def prep_peak_rss_mb(music, work):
    cache = work / f"rss-{music.name}"
    return peak_rss_mb(f"runpy.run_path({str(SCRIPT)!r})['prepare_cache']({str(music)!r}, "
                       f"{str(cache)!r})")


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
