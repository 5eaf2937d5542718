"""The whole job through the real command line, on synthetic music with a tiny network."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy.io import wavfile

from conftest import SCRIPT, load_script, melody, run_cli, stop_in_first_epoch, tone, write_int16

TINY = ["-n", "8", "-l", "1", "-b", "8", "--random-seed", "0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One training run shared by the tests below: 2 files of music, one epoch."""
    root = tmp_path_factory.mktemp("e2e")
    music = root / "music"
    music.mkdir()
    write_int16(music / "one.wav", melody(6.0, seed=1))
    write_int16(music / "two.wav", melody(5.0, seed=2))
    result = run_cli("-d", music, "-t", root / "cache", "-e", "1", "-g", "2", "-s", "3", *TINY,
                     cwd=root)
    assert result.returncode == 0, result.stderr
    return root, music, result


def assert_good_piece(path, seconds):
    rate, samples = wavfile.read(path)
    assert rate == 44_100 and samples.dtype == np.int16 and samples.ndim == 1
    assert len(samples) == seconds * 44_100
    assert np.abs(samples).max() > 0  # not silent


def test_first_run_trains_checkpoints_and_writes_pieces(trained):
    root, _, result = trained
    assert "Building the frame cache" in result.stdout
    assert "Device: CPU" in result.stdout
    tool = load_script()
    expected = "bfloat16" if tool.multiplies_bfloat16_natively() else "float32"
    assert f"Training in {tool.PRECISIONS[expected]} (this CPU" in result.stdout
    metadata = tool.read_checkpoint_metadata(root / "cache" / "model.keras")[0]
    assert metadata["head"] == "units"  # grains' default: the music's own units of sound
    outputs = metadata["head_components"]  # as many as this short music allows
    assert 2 <= outputs <= tool.UNITS
    assert f"Model: {tool.count_parameters(tool.NUM_FEATURES, 8, 1, outputs):,} parameters" \
        in result.stdout
    assert "epoch 1 | loss" in result.stdout and "val_loss" in result.stdout
    assert (root / "cache" / "model.keras").exists()
    assert (root / "cache" / "model-best.keras").exists()
    for index in range(2):
        assert_good_piece(root / f"output-{index}.wav", 3)
        assert f"output-{index}.wav: 3.00 s | level" in result.stdout
        report = json.loads((root / f"output-{index}.json").read_text())
        assert report["file"] == f"output-{index}.wav" and report["seconds"] == 3.0
        assert {"first_second_db", "last_second_db", "music_db", "clicks", "spectral_distance",
                "movement"} <= set(report)
    assert "Traceback" not in result.stderr


def test_second_run_resumes_and_keeps_earlier_outputs(trained):
    root, music, _ = trained
    before = (root / "output-0.wav").read_bytes()
    result = run_cli("-d", music, "-t", root / "cache", "-e", "1", "-g", "1", "-s", "2", *TINY,
                     cwd=root)
    assert result.returncode == 0, result.stderr
    assert "Reusing the frame cache" in result.stdout
    assert "after epoch 1" in result.stdout and "epoch 2 | loss" in result.stdout
    mc = load_script()
    assert mc.read_checkpoint_metadata(root / "cache" / "model.keras")[0]["epochs_done"] == 2
    assert (root / "output-0.wav").read_bytes() == before
    assert_good_piece(root / "output-2.wav", 2)


def test_a_different_shape_is_refused_and_the_checkpoint_untouched(trained):
    root, music, _ = trained
    checkpoint = root / "cache" / "model.keras"
    before = checkpoint.read_bytes()
    result = run_cli("-d", music, "-t", root / "cache", "-e", "1", "-n", "16", "-l", "1",
                     cwd=root)
    assert result.returncode == 1
    assert str(checkpoint) in result.stderr
    assert "-n 8 -l 1" in result.stderr and "-n 16 -l 1" in result.stderr
    assert "Traceback" not in result.stderr
    assert checkpoint.read_bytes() == before


def test_other_frames_are_refused_and_the_checkpoint_untouched(trained):
    root, music, _ = trained
    checkpoint = root / "cache" / "model.keras"
    assert load_script().read_checkpoint_metadata(checkpoint)[0]["frame"] == "magnitude"
    before = checkpoint.read_bytes()
    result = run_cli("-d", music, "-t", root / "cache", "-e", "1", "--frames", "plain", *TINY,
                     cwd=root)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "trained on magnitude frames" in result.stderr and "--frames magnitude" in result.stderr
    assert checkpoint.read_bytes() == before


def test_plain_frames_run_the_original_way(tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    write_int16(music / "one.wav", melody(6.0, seed=1))
    result = run_cli("-d", music, "-t", tmp_path / "cache", "-e", "1", "-g", "2", "-s", "2",
                     "--frames", "plain", "--no-plots", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    mc = load_script()
    assert mc.read_checkpoint_metadata(tmp_path / "cache" / "model.keras")[0]["frame"] == "plain"
    manifest = json.loads((tmp_path / "cache" / "cache.json").read_text())
    assert manifest["settings"]["frame"] == "plain"
    for index in range(2):
        assert_good_piece(tmp_path / f"output-{index}.wav", 2)
        assert (tmp_path / f"output-{index}.json").exists()


def test_epochs_zero_generates_only(trained):
    root, music, _ = trained
    checkpoint = root / "cache" / "model.keras"
    before = checkpoint.read_bytes()
    result = run_cli("-d", music, "-t", root / "cache", "-e", "0", "-g", "1", "-s", "1",
                     "-o", "only", *TINY, cwd=root)
    assert result.returncode == 0, result.stderr
    assert "Generating from" in result.stdout and "loss" not in result.stdout
    assert_good_piece(root / "only-0.wav", 1)
    assert checkpoint.read_bytes() == before


def test_changed_music_continues_from_the_checkpoint(trained, tmp_path):
    root, music, _ = trained
    more = tmp_path / "more"
    more.mkdir()
    for path in music.iterdir():
        (more / path.name).write_bytes(path.read_bytes())
    write_int16(more / "three.wav", melody(4.0, seed=3))
    cache = tmp_path / "cache"
    cache.mkdir()
    for path in (root / "cache").glob("model*.keras"):
        (cache / path.name).write_bytes(path.read_bytes())
    result = run_cli("-d", more, "-t", cache, "-e", "2", "-g", "1", "-s", "1", *TINY,
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Building the frame cache" in result.stdout
    assert "The music changed since that checkpoint" in result.stdout
    assert "Resuming from" in result.stdout
    # A units network's units were the old music's: the new music is clustered anew, the last
    # layer learns them, the rest goes on; the pieces are then chosen by the new units.
    assert "the network's last layer learns them anew" in result.stdout
    tool = load_script()
    old = tool.read_checkpoint_metadata(root / "cache" / "model.keras")[0]
    new = tool.read_checkpoint_metadata(cache / "model.keras")[0]
    assert new["cache_fingerprint"] != old["cache_fingerprint"]
    assert new["units"] != old["units"] and len(new["units"]) == new["head_components"]
    body = [tool.load_checkpoint_model(path).get_layer("lstm_0").get_weights()[0]
            for path in (root / "cache" / "model.keras", cache / "model.keras")]
    # Trained on, not anew (two epochs: a new output layer starts at zero, so the first step
    # moves only it)
    assert body[0].shape == body[1].shape and not np.array_equal(*body)
    assert_good_piece(tmp_path / "output-0.wav", 1)


def test_epochs_zero_without_a_checkpoint_says_so(tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    write_int16(music / "a.wav", tone(3.0))
    result = run_cli("-d", music, "-t", tmp_path / "cache", "-e", "0", cwd=tmp_path)
    assert result.returncode == 1
    assert "no checkpoint" in result.stderr and "Traceback" not in result.stderr


def test_too_little_music_says_how_much_is_needed(tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    write_int16(music / "short.wav", tone(1.5))
    result = run_cli("-d", music, "-t", tmp_path / "cache", "-e", "1", *TINY, cwd=tmp_path)
    assert result.returncode == 1
    assert "Too little music" in result.stderr and "2.5 s in one file" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "cache" / "model.keras").exists()


def start_long_training(tmp_path, music_seconds, seed, *flags):
    """A 500-epoch run on long music, returned once its first checkpoint exists."""
    music = tmp_path / "music"
    music.mkdir()
    write_int16(music / "long.wav", melody(music_seconds, seed=seed))
    checkpoint = tmp_path / "cache" / "model.keras"
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "-d", music, "-t", tmp_path / "cache", "-e", "500",
         *flags], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return process, checkpoint


def test_sigint_during_training_keeps_a_checkpoint_that_loads(tmp_path):
    process, checkpoint = start_long_training(tmp_path, 60.0, 4, "-g", "1", "-s", "1",
                                              "-n", "32", "-l", "2", "-b", "4")
    time.sleep(0.3)  # into the next epoch
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "Training interrupted" in stdout
    assert "Traceback" not in stderr
    mc = load_script()
    metadata, _, _ = mc.read_checkpoint_metadata(checkpoint)
    assert 1 <= metadata["epochs_done"] < 500
    assert mc.model_shape(mc.load_checkpoint_model(checkpoint)) == (32, 2)
    assert_good_piece(tmp_path / "output-0.wav", 1)


def signal_during_generation(trained, name, signum):
    """A long generation run, sent `signum` two seconds into generating: (status, stderr)."""
    root, music, _ = trained
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "-d", music, "-t", root / "cache", "-e", "0", "-g", "2",
         "-s", "3600", "-o", name, *TINY], cwd=root, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("Generating 2 pieces"):
            break
    time.sleep(2.0)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


def test_second_ctrl_c_quits_during_generation_leaving_no_half_written_wav(trained):
    root = trained[0]
    returncode, stderr = signal_during_generation(trained, "long", signal.SIGINT)
    assert returncode == 130
    assert "Stopped by Ctrl-C" in stderr and "Traceback" not in stderr
    assert not list(root.glob("long-*")) and not list(root.glob(".long-*"))


def test_random_seed_makes_a_run_repeatable(tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    write_int16(music / "a.wav", melody(5.0, seed=5))
    outputs = []
    for run in ("first", "second"):
        folder = tmp_path / run
        folder.mkdir()
        result = run_cli("-d", music, "-t", folder / "cache", "-e", "1", "-g", "2", "-s", "2",
                         *TINY, cwd=folder)
        assert result.returncode == 0, result.stderr
        outputs.append([(folder / f"output-{i}.wav").read_bytes() for i in range(2)])
    assert outputs[0] == outputs[1]
    assert outputs[0][0] != outputs[0][1]  # each piece has its own seed window
    # The same seed from the saved model (-e 0) gives the pieces written right after training
    again = run_cli("-d", music, "-t", tmp_path / "first" / "cache", "-e", "0", "-g", "2",
                    "-s", "2", "-o", "again", *TINY, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert [(tmp_path / f"again-{i}.wav").read_bytes() for i in range(2)] == outputs[0]


def test_two_ctrl_c_during_training_quit(tmp_path):
    process, checkpoint = start_long_training(tmp_path, 30.0, 8, "-n", "32", "-l", "1", "-b", "4")
    process.send_signal(signal.SIGINT)
    for line in process.stdout:  # a second press, once the first is taken (signals sent
        if line.startswith("Ctrl-C: stopping"):  # closer together can merge into one)
            break
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Stopped by Ctrl-C" in stderr and "Traceback" not in stderr
    assert load_script().read_checkpoint_metadata(checkpoint)[0]["epochs_done"] >= 1


def test_sigterm_during_training_keeps_the_last_epoch_and_exits_143(tmp_path):
    """SIGTERM, as docker stop or a cluster's preemption sends it: training stops after the
    batch, the last finished epoch stays the checkpoint, and the run ends (no generation) with
    status 143 well inside Docker's 10 s grace period."""
    process, checkpoint = start_long_training(tmp_path, 60.0, 4, "-g", "1", "-s", "1",
                                              "-n", "32", "-l", "2", "-b", "4")
    time.sleep(0.3)  # into the next epoch
    process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    stdout, stderr = process.communicate(timeout=120)
    assert time.monotonic() - sent < 10
    assert process.returncode == 143, stderr
    assert "SIGTERM: stopping after this batch" in stdout
    assert "Stopped by SIGTERM" in stderr and "Traceback" not in stderr
    mc = load_script()
    metadata, _, _ = mc.read_checkpoint_metadata(checkpoint)
    assert 1 <= metadata["epochs_done"] < 500
    assert mc.model_shape(mc.load_checkpoint_model(checkpoint)) == (32, 2)
    assert not list(tmp_path.glob("output-*")) and not list(tmp_path.glob(".output-*"))


def test_sigterm_mid_epoch_saves_the_batch_and_the_next_run_ends_as_if_never_stopped(
        mc, tmp_path):
    """At the default epoch layout (-b 10, 8 s sequences): SIGTERM lands mid-epoch, the run
    saves the batch reached and exits 143 inside Docker's 10 s grace period; the next run goes
    on from that batch, with the same order of sequences and the same noise, and ends with the
    weights and loss curve of a run never stopped."""
    music = tmp_path / "music"
    music.mkdir()
    for index in range(4):
        write_int16(music / f"{index}.wav", melody(60.0, seed=20 + index))
    flags = ["-d", music, "-n", "24", "-l", "1", "-e", "2", "-g", "1", "-s", "1",
             "--random-seed", "7", "--no-plots"]
    whole = run_cli(*flags, "-t", tmp_path / "whole", "-o", tmp_path / "whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr

    process, seconds, stdout, stderr = stop_in_first_epoch(
        tmp_path, music, "stopped", signal.SIGTERM, *flags[2:])
    assert process.returncode == 143, stderr
    assert seconds < 10 and "Traceback" not in stderr
    assert "SIGTERM: stopping after this batch, which is saved" in stdout
    midepoch = tmp_path / "stopped" / mc.MIDEPOCH_CHECKPOINT_NAME
    metadata, _, _ = mc.read_checkpoint_metadata(midepoch)
    position = metadata["midepoch"]
    assert position["epoch"] == 0 and 1 <= position["batches_done"] < position["batches"] > 4
    assert f"batch {position['batches_done']} of {position['batches']}" in stdout
    assert not (tmp_path / "stopped" / mc.CHECKPOINT_NAME).exists()
    assert not list(tmp_path.glob("stopped-*"))

    resumed = run_cli(*flags, "-t", tmp_path / "stopped", "-o", tmp_path / "stopped",
                      cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"from batch {position['batches_done']} of {position['batches']}" in resumed.stdout
    assert not midepoch.exists()  # finished epochs made it out of date
    ends = [mc.read_checkpoint_metadata(tmp_path / name / mc.CHECKPOINT_NAME)[0]
            for name in ("whole", "stopped")]
    assert [e["epoch"] for e in ends[1]["history"]] == [1, 2]
    for one, other in zip(*(end["history"] for end in ends)):
        assert one["loss"] == pytest.approx(other["loss"], rel=1e-4)
        assert one["val_loss"] == pytest.approx(other["val_loss"], rel=1e-4)
    models = [mc.load_checkpoint_model(tmp_path / name / mc.CHECKPOINT_NAME)
              for name in ("whole", "stopped")]
    for one, other in zip(*(model.weights for model in models)):
        np.testing.assert_allclose(one.numpy(), other.numpy(), atol=1e-5)


def test_ctrl_c_in_the_first_epoch_saves_the_batch_and_says_how_to_go_on(tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    write_int16(music / "long.wav", melody(240.0, seed=9))
    process, _, stdout, stderr = stop_in_first_epoch(
        tmp_path, music, "cache", signal.SIGINT, "-n", "24", "-l", "1", "-e", "1")
    assert process.returncode == 1 and "Traceback" not in stderr
    assert "model-midepoch.keras: run again to go on from there" in stderr
    generate_only = run_cli("-d", music, "-t", tmp_path / "cache", "-e", "0", cwd=tmp_path)
    assert generate_only.returncode == 1
    assert "first epoch was stopped midway: leave out -e 0" in generate_only.stderr


def test_sigterm_during_generation_leaves_no_half_written_wav(trained):
    root = trained[0]
    returncode, stderr = signal_during_generation(trained, "terminated", signal.SIGTERM)
    assert returncode == 143
    assert "Stopped by SIGTERM" in stderr and "Traceback" not in stderr
    assert not list(root.glob("terminated-*")) and not list(root.glob(".terminated-*"))
