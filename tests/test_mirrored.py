"""Training on several devices with tf.distribute.MirroredStrategy, tested on the CPU split into
2 logical devices (in a subprocess: the split must happen before TensorFlow starts). Every
test has "mirrored" in its name: `pytest -k mirrored` runs them."""

import json
import subprocess
import sys

import pytest
from scipy.io import wavfile

import signal

import numpy as np

from conftest import SCRIPT, melody, run_cli, stop_in_first_epoch, write_int16

TWO_DEVICES = {"MUSIC_COMPOSER_TEST_CPU_REPLICAS": "2"}

SAME_STEPS = """
import json, os, runpy, sys
os.environ["MUSIC_COMPOSER_TEST_CPU_REPLICAS"] = "2"
tool = runpy.run_path({script!r})
keras = tool["import_keras"]()  # splits the CPU before TensorFlow starts
import numpy as np
import tensorflow as tf

rng = np.random.default_rng(0)
inputs = rng.standard_normal((3, 8, 4, 12)).astype(np.float32)  # 3 steps of 8 windows
targets = rng.standard_normal((3, 8, 4, 12)).astype(np.float32)

def model_for(fused):
    keras.utils.set_random_seed(1)
    model = tool["build_model"](12, 6, 2)
    if not fused:
        model.compile(optimizer=keras.optimizers.Adam(1e-3, clipnorm=1.0), loss="mse")
    return model

def two_steps(model):
    losses = [float(model.train_on_batch(inputs[i], targets[i])) for i in range(2)]
    return losses, [np.array(w) for w in model.get_weights()]

devices = tool["replica_devices"]()
results = {{"devices": len(devices)}}
for fused in (True, False):
    single_losses, single_weights = two_steps(model_for(fused))
    with tool["training_scope"](devices):
        mirrored = model_for(fused)
        losses, weights = two_steps(mirrored)
    results[str(fused)] = {{
        "loss_gap": max(abs(a - b) for a, b in zip(single_losses, losses)),
        "weight_gap": max(float(np.abs(a - b).max()) for a, b in zip(single_weights, weights)),
        "mirrored": all(type(v.value).__name__ == "MirroredVariable"
                        for v in mirrored.trainable_variables),
        "optimizer": type(mirrored.optimizer).__name__,
        "replicas": mirrored.distribute_strategy.num_replicas_in_sync}}
# A checkpoint saved under the strategy loads and resumes without it, and the other way round.
folder = {folder!r}
tool["save_checkpoint"](folder + "/mirrored.keras", mirrored, {{}}, np.zeros(12), np.ones(12))
plain = tool["load_checkpoint_model"](folder + "/mirrored.keras")
results["loaded_gap"] = max(float(np.abs(a - b).max())
                            for a, b in zip(plain.get_weights(), mirrored.get_weights()))
results["loaded_optimizer_steps"] = int(plain.optimizer.iterations.numpy())
results["resumed_loss"] = float(plain.train_on_batch(inputs[2], targets[2]))
tool["save_checkpoint"](folder + "/plain.keras", plain, {{}}, np.zeros(12), np.ones(12))
with tool["training_scope"](devices):
    again = tool["load_checkpoint_model"](folder + "/plain.keras")
    results["reloaded_mirrored"] = type(again.trainable_variables[0].value).__name__
    results["reloaded_loss"] = float(again.train_on_batch(inputs[2], targets[2]))
print("RESULTS", json.dumps(results))
"""


@pytest.fixture(scope="module")
def mirrored_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mirrored")
    code = SAME_STEPS.format(script=str(SCRIPT), folder=str(folder))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.split("RESULTS", 1)[1])


@pytest.mark.parametrize("fused", [True, False], ids=["fused-adam", "keras-adam"])
def test_mirrored_two_steps_match_one_device(mirrored_results, fused):
    assert mirrored_results["devices"] == 2
    figures = mirrored_results[str(fused)]
    assert figures["optimizer"] == ("FusedAdam" if fused else "Adam")
    assert figures["mirrored"]  # one copy of each weight on each device, kept in step
    assert figures["replicas"] == 2
    assert figures["loss_gap"] < 1e-5 and figures["weight_gap"] < 1e-5


def test_mirrored_checkpoints_load_and_resume_either_way(mirrored_results):
    assert mirrored_results["loaded_gap"] == 0.0
    assert mirrored_results["loaded_optimizer_steps"] == 2  # Adam's state came along
    assert mirrored_results["resumed_loss"] > 0
    assert mirrored_results["reloaded_mirrored"] == "MirroredVariable"
    assert mirrored_results["reloaded_loss"] > 0


def test_mirrored_training_through_the_command_line(mc, tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    write_int16(music / "a.wav", melody(10.0, seed=7))
    common = ["-d", music, "-t", tmp_path / "train", "-n", "8", "-l", "1", "-b", "3", "-s", "1",
              "-g", "1", "--no-plots", "--random-seed", "4"]
    first = run_cli(*common, "-e", "1", "-o", tmp_path / "a", cwd=tmp_path, env=TWO_DEVICES)
    assert first.returncode == 0, first.stderr
    assert "2 CPU devices (a test) training together (MirroredStrategy)" in first.stdout
    assert "batch size 3 on each of 2 devices (6 a step)" in first.stdout
    resumed = run_cli(*common, "-e", "1", "-o", tmp_path / "b", cwd=tmp_path, env=TWO_DEVICES)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from" in resumed.stdout and "epoch 2 |" in resumed.stdout
    metadata, _, _ = mc.read_checkpoint_metadata(tmp_path / "train" / mc.CHECKPOINT_NAME)
    assert metadata["epochs_done"] == 2
    # Generated with 2 replicas, and from the same checkpoint on one device.
    alone = run_cli(*common, "-e", "0", "-o", tmp_path / "c", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    for name in ("a-0.wav", "b-0.wav", "c-0.wav"):
        rate, samples = wavfile.read(tmp_path / name)
        assert rate == 44_100 and len(samples) == 44_100


def test_mirrored_batches_split_evenly_between_devices(mc):
    frames = mc.np.zeros((40, 3), mc.np.float32)

    def sizes(starts, batch_size, multiple):
        batches = mc.make_batches(frames, mc.np.asarray(starts), batch_size,
                                  mc.np.random.default_rng(0), shuffle=True, multiple=multiple)
        return [len(batches[index][0]) for index in range(len(batches))]

    assert sizes(range(11), 4, 1) == [4, 4, 3]
    assert sizes(range(11), 4, 2) == [4, 4, 2]  # one window waits for the next epoch
    assert sizes(range(12), 6, 3) == [6, 6]
    assert sizes([5], 4, 2) == [2]  # too few in all: repeated


def test_mirrored_training_stopped_mid_epoch_resumes_as_if_never_stopped(mc, tmp_path):
    """SIGTERM mid-epoch on 2 devices: the batch reached is saved, and the next run, on 2
    devices too, ends with the weights of a run never stopped."""
    music = tmp_path / "music"
    music.mkdir()
    for index in range(3):
        write_int16(music / f"{index}.wav", melody(40.0, seed=30 + index))
    flags = ["-d", music, "-n", "8", "-l", "1", "-b", "3", "-e", "2", "-g", "1", "-s", "1",
             "--no-plots", "--random-seed", "4"]
    whole = run_cli(*flags, "-t", tmp_path / "whole", "-o", tmp_path / "whole", cwd=tmp_path,
                    env=TWO_DEVICES)
    assert whole.returncode == 0, whole.stderr
    process, _, stdout, stderr = stop_in_first_epoch(tmp_path, music, "stopped", signal.SIGTERM,
                                                     *flags[2:], env=TWO_DEVICES)
    assert process.returncode == 143, stderr
    assert "(6 a step)" in stdout and "SIGTERM: stopping after this batch" in stdout
    resumed = run_cli(*flags, "-t", tmp_path / "stopped", "-o", tmp_path / "stopped",
                      cwd=tmp_path, env=TWO_DEVICES)
    assert resumed.returncode == 0, resumed.stderr
    assert "Going on with epoch 1 from batch" in resumed.stdout
    models = [mc.load_checkpoint_model(tmp_path / name / mc.CHECKPOINT_NAME)
              for name in ("whole", "stopped")]
    for one, other in zip(*(model.weights for model in models)):
        np.testing.assert_allclose(one.numpy(), other.numpy(), atol=1e-5)
