"""Shared helpers: the script loaded as a module, WAV files made with NumPy and SciPy, and the
real command line run as a subprocess."""

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "music-composer.py"
SAMPLE_RATE = 44_100


def load_script():
    spec = importlib.util.spec_from_file_location("music_composer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def mc():
    return load_script()


def tone(seconds, frequency=440.0, rate=SAMPLE_RATE, amplitude=0.5, phase=0.0):
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t + phase)).astype(np.float32)


def melody(seconds, rate=SAMPLE_RATE, seed=0):
    """Notes changing every quarter second over a held chord: something with structure."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    chord = sum(0.1 * np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6))
    notes = rng.choice([440.0, 493.9, 554.4, 587.3, 659.3], size=int(seconds * 4) + 1)
    lead = 0.3 * np.sin(2 * np.pi * notes[(t * 4).astype(int)] * t)
    return (chord + lead).astype(np.float32)


def write_int16(path, audio, rate=SAMPLE_RATE):
    wavfile.write(path, rate, (np.clip(audio, -1, 1) * 32767).astype(np.int16))
    return Path(path)


def run_cli(*args, cwd, timeout=300, env=None):
    """The real command line, as a user runs it."""
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


PEAK_RSS_WRAPPER = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    status = open("/proc/self/status").read()
    print("PEAK_RSS_KB", status.split("VmHWM:")[1].split()[0], file=sys.stderr)
"""


def peak_rss_mb_of_cli(*args, cwd):
    """Run the command line and return its own peak resident memory (VmHWM), in MB.

    ru_maxrss from wait4 would not do: Linux carries a parent's peak over into its child, and
    the test process holds TensorFlow."""
    result = subprocess.run([sys.executable, "-c", PEAK_RSS_WRAPPER, str(SCRIPT), *map(str, args)],
                            cwd=cwd, capture_output=True, text=True, timeout=600)
    assert "Traceback" not in result.stderr, result.stderr
    return int(result.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0]) / 1024


def stop_in_first_epoch(tmp_path, music, name, signum, *flags, env=None):
    """A run sent `signum` once its first mid-epoch checkpoint exists: (process, seconds from
    the signal to the end of the process, stdout, stderr)."""
    cache = tmp_path / name
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "-d", music, "-t", cache, "-o", tmp_path / name,
         "--save-every-minutes", "0.0001", *map(str, flags)], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 120
    while not (cache / "model-midepoch.keras").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signum)
    sent = time.monotonic()
    stdout, stderr = process.communicate(timeout=120)
    return process, time.monotonic() - sent, stdout, stderr
