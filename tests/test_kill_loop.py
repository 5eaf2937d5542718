"""SIGKILL at random moments of whole runs: preprocessing, training, checkpointing, generation.

After every kill: a cache that a run would trust is complete and correct, the checkpoint loads,
every WAV under a final name is whole, and the next run completes. CI runs this test too;
`python3 -m pytest -m kill_loop -s` runs it alone and prints where the kills landed.
Three quarters of the kills come at random delays over a whole run; the other quarter at
random moments of preprocessing, which is too short here to hit by timing alone.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy.io import wavfile

from conftest import SCRIPT, melody, write_int16

NUM_KILLS = 24
TINY = ["-n", "16", "-l", "2", "-b", "2", "-e", "2", "-g", "2", "-s", "2"]
PHASES = [("Generating", "generation"), ("epoch ", "training"), ("Training on", "training"),
          ("Model:", "training"), ("Device:", "model set-up"), ("Cached ", "model set-up"),
          ("Reusing", "model set-up"), ("Building", "preprocessing")]


def phase_of(log_text):
    """Where a killed run was, from the last progress line it printed."""
    for marker, phase in PHASES:
        if marker in log_text:
            return phase
    return "start-up"


def start(music, cache, cwd, log):
    return subprocess.Popen([sys.executable, str(SCRIPT), "-d", music, "-t", cache, *TINY],
                            cwd=cwd, stdout=log, stderr=subprocess.STDOUT)


def check_invariants(mc, music, cache, cwd, expected_frames):
    trusted = mc.load_cache(cache, mc.dataset_fingerprint(mc.find_wav_files(music)))
    if trusted is not None:
        np.testing.assert_allclose(trusted.frames, expected_frames, atol=2e-3)
    checkpoint = cache / mc.CHECKPOINT_NAME
    if checkpoint.exists():
        metadata, _, _ = mc.read_checkpoint_metadata(checkpoint)
        assert mc.model_shape(mc.load_checkpoint_model(checkpoint)) == (16, 2)
        assert metadata["epochs_done"] >= 1
    for path in cwd.glob("output-*.wav"):
        rate, samples = wavfile.read(path)
        assert rate == 44_100 and len(samples) == 2 * 44_100, path


@pytest.mark.kill_loop
def test_sigkill_at_random_moments_loses_nothing(mc, tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    for index in range(12):
        write_int16(music / f"{index:02d}.wav", melody(6.0, seed=index))
    cache, cwd = tmp_path / "cache", tmp_path / "out"
    cwd.mkdir()
    expected = mc.prepare_cache(music, tmp_path / "reference").frames[:]

    started = time.monotonic()  # one whole run first: it sets the range of the delays
    with open(tmp_path / "baseline.log", "w") as log:
        assert start(music, cache, cwd, log).wait(timeout=300) == 0
    whole_run = time.monotonic() - started

    rng = np.random.default_rng(2026)
    # Preprocessing lasts some 50 ms here, too short to hit by timing alone: a quarter of the
    # kills wait for its temporary folder to appear, then strike 0 to 30 ms later.
    early = [("during preprocessing", delay) for delay in rng.uniform(0, 0.03, NUM_KILLS // 4)]
    timed = [("from the start", delay)
             for delay in rng.uniform(0.3, whole_run, NUM_KILLS - len(early))]
    moments = [*early, *timed]
    landed = {}
    for index in rng.permutation(len(moments)):
        counted_from, delay = moments[index]
        os.utime(music / f"{index % 12:02d}.wav")  # new mtime: the cache must be rebuilt
        log_path = tmp_path / f"kill-{index}.log"
        with open(log_path, "w") as log:
            process = start(music, cache, cwd, log)
            if counted_from == "during preprocessing":
                deadline = time.monotonic() + 60
                while not list(cache.glob("*.partial-*")) and time.monotonic() < deadline:
                    time.sleep(0.0005)
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            process.wait()
        phase = phase_of(log_path.read_text()) if process.returncode == -9 else "after the end"
        landed[phase] = landed.get(phase, 0) + 1
        check_invariants(mc, music, cache, cwd, expected)
        with open(tmp_path / f"next-{index}.log", "w") as log:
            returncode = start(music, cache, cwd, log).wait(timeout=300)
        assert returncode == 0, (tmp_path / f"next-{index}.log").read_text()
        check_invariants(mc, music, cache, cwd, expected)

    print(f"\n{NUM_KILLS} kills over a {whole_run:.1f} s run; where they landed: {landed}")
    assert sum(count for phase, count in landed.items() if phase != "after the end") >= 20
    assert {"preprocessing", "training", "generation"} <= set(landed)
    leftovers = [p.name for p in [*cache.iterdir(), *cwd.iterdir()]
                 if ".partial-" in p.name or ".tmp-" in p.name]
    assert leftovers == []  # the next runs cleared what the killed ones left behind
