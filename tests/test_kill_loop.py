"""SIGKILL at random moments of whole runs: preprocessing, training, checkpointing, generation.

After every kill: a cache that a run would trust is complete and correct, the checkpoint and
the mid-epoch checkpoint (saved after every batch here) load,
every WAV under a final name is whole, and the next run completes. CI runs this test too;
`python3 -m pytest -m kill_loop -s` runs it alone and prints where the kills landed.
Three quarters of the kills come at random delays over a whole run; the other quarter at
random moments of preprocessing, which is too short here to hit by timing alone. It goes on
until MID_RUN_KILLS (8) kills have landed inside a run, in every phase.
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

MID_RUN_KILLS = 8  # each costs a killed run and a whole one after it: ~16 s on 2 cores
MAX_ATTEMPTS = 24
TINY = ["-n", "16", "-l", "2", "-b", "2", "-e", "2", "-g", "2", "-s", "2",
        "--save-every-minutes", "0.0001"]  # a mid-epoch checkpoint after every batch
PHASES = [("Generating", "generation"), ("epoch ", "training"), ("Training on", "training"),
          ("Model:", "training"), ("Device:", "model set-up"), ("Cached ", "model set-up"),
          ("Reusing", "model set-up"), ("Building", "preprocessing")]


def mid_run(landed):
    return sum(count for phase, count in landed.items() if phase != "after the end")


def phase_of(log_text):
    """Where a killed run was, from the last progress line it printed."""
    for marker, phase in PHASES:
        if marker in log_text:
            return phase
    return "start-up"


def start(music, cache, cwd, log):
    return subprocess.Popen([sys.executable, str(SCRIPT), "-d", music, "-t", cache, *TINY],
                            cwd=cwd, stdout=log, stderr=subprocess.STDOUT)


def check_invariants(mc, music, cache, cwd, expected):
    trusted = mc.load_cache(cache, mc.dataset_fingerprint(mc.find_music_files(music)))
    if trusted is not None:  # frames, the recorded audio, the index, the beats and the pitch
        # classes, all as computed fresh
        np.testing.assert_allclose(trusted.frames, expected.frames, atol=2e-3)
        np.testing.assert_array_equal(trusted.audio, expected.audio)
        np.testing.assert_allclose(trusted.codes, expected.codes, atol=1e-2)
        np.testing.assert_array_equal(trusted.beats, expected.beats)
        np.testing.assert_allclose(trusted.chroma, expected.chroma, atol=1e-5)
        np.testing.assert_array_equal([trusted.reference.pulse], [expected.reference.pulse])
    checkpoint = cache / mc.CHECKPOINT_NAME
    if checkpoint.exists():
        metadata, _, _ = mc.read_checkpoint_metadata(checkpoint)
        assert mc.model_shape(mc.load_checkpoint_model(checkpoint)) == (16, 2)
        assert metadata["epochs_done"] >= 1
    midepoch = cache / mc.MIDEPOCH_CHECKPOINT_NAME
    if midepoch.exists():  # the epoch in progress: loads, and says where it was
        position = mc.read_checkpoint_metadata(midepoch)[0]["midepoch"]
        assert 1 <= position["batches_done"] <= position["batches"]
        assert mc.model_shape(mc.load_checkpoint_model(midepoch)) == (16, 2)
    for path in cwd.glob("output-[0-9]*.wav"):  # (not the page's output.music-excerpt.wav)
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
    expected = mc.prepare_cache(music, tmp_path / "reference")

    started = time.monotonic()  # one whole run first: it sets the range of the delays
    with open(tmp_path / "baseline.log", "w") as log:
        assert start(music, cache, cwd, log).wait(timeout=300) == 0
    whole_run = time.monotonic() - started

    rng = np.random.default_rng(2026)
    landed, attempt = {}, 0
    # Preprocessing lasts some 50 ms here, too short to hit by timing alone: every fourth kill
    # waits for its temporary folder to appear, then strikes 0 to 30 ms later. Generation is
    # short too: every fourth kill, two after those, waits for the run to say it is generating,
    # then strikes 0 to 0.3 s later. The others come at a random moment of the run; runs vary
    # in length on a busy machine, so the loop goes on until MID_RUN_KILLS kills have landed
    # inside a run, in every phase (at most MAX_ATTEMPTS tries).
    phases = {"preprocessing", "training", "generation"}
    while (mid_run(landed) < MID_RUN_KILLS or not phases <= set(landed)) \
            and attempt < MAX_ATTEMPTS:
        during_preprocessing, during_generation = attempt % 4 == 0, attempt % 4 == 2
        delay = rng.uniform(0, 0.03) if during_preprocessing else rng.uniform(0, 0.3) \
            if during_generation else rng.uniform(0.3, 0.8 * whole_run)
        os.utime(music / f"{attempt % 12:02d}.wav")  # new mtime: the cache must be rebuilt
        log_path = tmp_path / f"kill-{attempt}.log"
        with open(log_path, "w") as log:
            process = start(music, cache, cwd, log)
            deadline = time.monotonic() + 60
            if during_preprocessing:
                while not list(cache.glob("*.partial-*")) and time.monotonic() < deadline:
                    time.sleep(0.0005)
            if during_generation:
                while "Generating" not in log_path.read_text() and time.monotonic() < deadline \
                        and process.poll() is None:
                    time.sleep(0.002)
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            process.wait()
        phase = phase_of(log_path.read_text()) if process.returncode == -9 else "after the end"
        landed[phase] = landed.get(phase, 0) + 1
        check_invariants(mc, music, cache, cwd, expected)
        with open(tmp_path / f"next-{attempt}.log", "w") as log:
            returncode = start(music, cache, cwd, log).wait(timeout=300)
        assert returncode == 0, (tmp_path / f"next-{attempt}.log").read_text()
        check_invariants(mc, music, cache, cwd, expected)
        attempt += 1

    print(f"\n{attempt} kills over a {whole_run:.1f} s run; where they landed: {landed}")
    assert mid_run(landed) >= MID_RUN_KILLS
    assert phases <= set(landed)
    leftovers = [p.name for p in [*cache.iterdir(), *cwd.iterdir()]
                 if ".partial-" in p.name or ".tmp-" in p.name]
    assert leftovers == []  # the next runs cleared what the killed ones left behind
