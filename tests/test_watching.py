"""Watching a long run: TensorBoard logs and audio previews, through the real command line."""

import json
import subprocess
import sys

import numpy as np
from scipy.io import wavfile

from conftest import SCRIPT, melody, run_cli, write_int16

TINY = ["-n", "8", "-l", "1", "-b", "8", "-s", "1", "-g", "1", "--no-plots", "--random-seed", "3"]


def events(folder):
    """{tag: {step: value or the summary's kind}} from every event file under `folder`."""
    import tensorflow as tf

    found = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor) if value.HasField("tensor") else None
                found.setdefault(value.tag, {})[event.step] = array
    return found


def test_tensorboard_logs_and_previews_go_on_across_resumed_runs(tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    write_int16(music / "a.wav", melody(12.0, seed=5))
    common = ["-d", music, "-t", tmp_path / "train", "--tensorboard", tmp_path / "logs",
              "--preview-every", "2", *TINY]
    first = run_cli(*common, "-e", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = run_cli(*common, "-e", "2", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    train, validation = events(tmp_path / "logs" / "train"), events(tmp_path / "logs" / "validation")
    assert sorted(train["epoch_loss"]) == [0, 1, 2, 3]  # the resumed run carries on at epoch 3
    assert sorted(validation["epoch_loss"]) == [0, 1, 2, 3]
    assert all(np.isfinite(float(value)) for value in train["epoch_loss"].values())
    # A preview every second epoch: epochs 2 and 4, a 5 s piece with its figures.
    for epoch in (2, 4):
        path = tmp_path / "train" / f"preview-epoch-{epoch}.wav"
        rate, samples = wavfile.read(path)
        assert rate == 44_100 and len(samples) == 5 * 44_100 and np.abs(samples).max() > 1000
        report = json.loads(path.with_suffix(".json").read_text())
        assert 0 <= report["pitch_clarity"] <= 1 and report["seconds"] == 5.0
        assert f"Preview after epoch {epoch}:" in (first.stdout + second.stdout)
    assert not (tmp_path / "train" / "preview-epoch-1.wav").exists()
    previews = events(tmp_path / "logs" / "preview")
    assert sorted(previews["preview"]) == [2, 4]  # the sound itself
    assert sorted(previews["preview/pitch_clarity"]) == [2, 4]
    epoch_4 = json.loads((tmp_path / "train" / "preview-epoch-4.json").read_text())
    assert float(previews["preview/pitch_clarity"][4]) == np.float32(epoch_4["pitch_clarity"])


def test_no_previews_unless_asked(tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    write_int16(music / "a.wav", melody(8.0, seed=6))
    result = run_cli("-d", music, "-t", tmp_path / "train", "-e", "1", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not list((tmp_path / "train").glob("preview-*")) and "Preview" not in result.stdout


WITHOUT_TENSORBOARD = """
import runpy, sys
sys.modules["tensorboard"] = None  # as if it were not installed
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_tensorboard_without_the_package_is_refused_at_once(tmp_path):
    result = subprocess.run([sys.executable, "-c", WITHOUT_TENSORBOARD, str(SCRIPT), "-d",
                             str(tmp_path / "music"), "--tensorboard", str(tmp_path / "logs")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pip install tensorboard" in result.stderr
    assert not (tmp_path / "music").exists() and not (tmp_path / "logs").exists()


def test_a_run_says_when_its_epochs_will_end(tmp_path):
    """After its first epoch, a run of three says once how long the two left will take, at the
    pace of the first, and the clock time they end: within reason of what they then took."""
    import re
    import time

    music = tmp_path / "music"
    music.mkdir()
    write_int16(music / "a.wav", melody(60.0, seed=6))
    process = subprocess.Popen(  # epochs of a few seconds: long beside a run's start-up
        [sys.executable, str(SCRIPT), "-d", music, "-t", tmp_path / "train", "-e", "3",
         "-n", "128", "-l", "1", "-b", "2", "-s", "1", "-g", "1", "--no-plots",
         "--random-seed", "3", "--save-every-minutes", "0"], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = {}
    for line in process.stdout:
        seen.setdefault(line.split(" |")[0] if line.startswith("epoch") else line,
                        time.monotonic())
    assert process.wait(timeout=600) == 0, process.stderr.read()
    (estimate,) = [line for line in seen if "to go at" in line]
    assert estimate.startswith("2 more epochs to go at ")
    assert re.search(r"done at about \d\d:\d\d\.$", estimate.strip())
    said = re.search(r"about (\d+) s left", estimate)
    took = seen["epoch 3"] - seen["epoch 1"]
    assert said and 0.3 * took <= max(int(said.group(1)), 1) <= 3 * took + 2
    assert seen["epoch 1"] < seen[estimate] < seen["epoch 2"]
