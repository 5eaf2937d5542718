"""Keras backends: JAX (and PyTorch, where it is installed) beside TensorFlow. The whole tool
through the real command line on each (train, a SIGTERM mid-epoch, resume, generate, continue),
checkpoints that go from one backend to the other, and the same pieces from one checkpoint
under both. Each run is a subprocess, since a process holds one backend."""

import importlib.util
import json
import os
import signal
import zipfile

import numpy as np
import pytest

from conftest import melody, run_cli, stop_in_first_epoch, write_int16

needs_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                               reason="JAX is not installed (requirements-jax.txt)")
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="PyTorch is not installed (requirements-torch.txt)")
SMALL = ["-n", "24", "-l", "1", "--no-plots"]
OTHER_BACKENDS = [pytest.param("jax", marks=needs_jax),
                  pytest.param("torch", marks=needs_torch)]


def on(backend):
    return {**os.environ, "KERAS_BACKEND": backend}


@pytest.fixture(scope="module")
def music(tmp_path_factory):
    folder = tmp_path_factory.mktemp("backend-music") / "music"
    folder.mkdir()
    for index in range(2):
        write_int16(folder / f"{index}.wav", melody(45.0, seed=30 + index))
    return folder


def checkpoint_backend(path):
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("music_composer.json"))["backend"]


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_a_backend_runs_the_whole_tool_and_a_stop_mid_epoch_ends_as_if_never_stopped(
        mc, music, tmp_path, backend):
    """KERAS_BACKEND=jax (or torch): two epochs in one go, and the same stopped by SIGTERM in
    the first epoch (saved at the batch reached, exit 143) and run again: the same losses and
    weights. The run, the checkpoint and the page say which backend ran; a seed file is
    continued."""
    flags = ["-d", music, *SMALL, "-e", "2", "-g", "1", "-s", "2", "--random-seed", "7"]
    whole = run_cli(*flags, "-t", tmp_path / "whole", "-o", tmp_path / "whole", cwd=tmp_path,
                    env=on(backend))
    assert whole.returncode == 0, whole.stderr
    assert f"Keras on {backend}" in whole.stdout and "Traceback" not in whole.stderr
    process, seconds, stdout, stderr = stop_in_first_epoch(
        tmp_path, music, "stopped", signal.SIGTERM, *flags[2:], env=on(backend))
    assert process.returncode == 143 and seconds < 10, stderr
    assert "SIGTERM: stopping after this batch, which is saved" in stdout
    resumed = run_cli(*flags, "-t", tmp_path / "stopped", "-o", tmp_path / "stopped",
                      cwd=tmp_path, env=on(backend))
    assert resumed.returncode == 0, resumed.stderr
    assert "from batch" in resumed.stdout
    ends = [mc.read_checkpoint_metadata(tmp_path / name / mc.CHECKPOINT_NAME)[0]
            for name in ("whole", "stopped")]
    for one, other in zip(*(end["history"] for end in ends)):
        assert one["loss"] == pytest.approx(other["loss"], rel=1e-4)
    models = [mc.load_checkpoint_model(tmp_path / name / mc.CHECKPOINT_NAME)
              for name in ("whole", "stopped")]
    for one, other in zip(*(model.weights for model in models)):
        np.testing.assert_allclose(one.numpy(), other.numpy(), atol=1e-5)
    assert checkpoint_backend(tmp_path / "whole" / mc.CHECKPOINT_NAME) == backend
    assert f"Keras on {backend}" in (tmp_path / "whole.html").read_text()
    assert len(list(tmp_path.glob("whole-*.wav"))) == 1

    seed = write_int16(tmp_path / "seed.wav", melody(10.0, seed=99))
    going_on = run_cli("-d", music, *SMALL, "-t", tmp_path / "whole", "-e", "0", "-s", "3",
                       "--seed-wav", seed, "-o", tmp_path / "going-on", cwd=tmp_path,
                       env=on(backend))
    assert going_on.returncode == 0, going_on.stderr
    assert (tmp_path / "going-on-0.wav").exists()


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_one_checkpoint_gives_the_same_pieces_under_tensorflow_and_another(music, tmp_path,
                                                                            backend):
    """A checkpoint trained on one backend trains on under the other, and back: epoch 1 on
    `backend`, epoch 2 on TensorFlow, epoch 3 on `backend` again. From that checkpoint, with
    one --random-seed, both write the same pieces, byte for byte (generation is float32 on
    this CPU under both, and grains play the recordings themselves)."""
    folder = tmp_path / "train_data"
    for epoch, on_backend in ((1, backend), (2, "tensorflow"), (3, backend)):
        run = run_cli("-d", music, *SMALL, "-t", folder, "-e", "1", "-g", "1", "-s", "1",
                      "-o", tmp_path / f"epoch-{epoch}", cwd=tmp_path, env=on(on_backend))
        assert run.returncode == 0, run.stderr
        assert f"Keras on {on_backend}" in run.stdout and f"epoch {epoch} |" in run.stdout
        assert epoch == 1 or "Resuming" in run.stdout
        assert checkpoint_backend(folder / "model.keras") == on_backend
    pieces = []
    for on_backend in (backend, "tensorflow"):
        name = tmp_path / f"by-{on_backend}"
        done = run_cli("-d", music, *SMALL, "-t", folder, "-e", "0", "-g", "2", "-s", "6",
                       "--random-seed", "3", "-o", name, cwd=tmp_path, env=on(on_backend))
        assert done.returncode == 0, done.stderr
        pieces.append([(tmp_path / f"{name.name}-{index}.wav").read_bytes() for index in range(2)])
    assert pieces[0] == pieces[1]


@needs_jax
def test_several_devices_train_together_on_jax(music, tmp_path):
    """keras.distribution on JAX: the CPU split into two devices (a test), each step's batch
    split across them."""
    env = {**on("jax"), "MUSIC_COMPOSER_TEST_CPU_REPLICAS": "2"}
    done = run_cli("-d", music, *SMALL, "-t", tmp_path / "t", "-e", "1", "-g", "1", "-s", "1",
                   "-o", tmp_path / "o", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "2 CPU devices (a test) training together (keras.distribution)" in done.stdout
    assert "batch size 10 on each of 2 devices (20 a step)" in done.stdout


def test_a_backend_not_installed_or_unknown_is_named_with_what_to_do(tmp_path):
    """Before any music is read: the backend asked for, and the pip command or the choices."""
    missing = next((name for name in ("torch", "jax") if importlib.util.find_spec(name) is None),
                   None)
    cases = [("theano", "music-composer runs on tensorflow, jax, torch")]
    if missing:
        cases.append((missing, f"pip install -r requirements-{missing}.txt"))
    for backend, words in cases:
        refused = run_cli("--demo", "-e", "1", cwd=tmp_path, env=on(backend))
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert words in refused.stderr and backend in refused.stderr
        assert not (tmp_path / "music-composer-demo" / "train_data").exists()


@pytest.mark.parametrize("head", ["units", "average"])
def test_the_numpy_step_is_tensorflows_step(mc, head):
    """NumpyStep (any backend's generation step) gives what compile_step's TensorFlow step
    gives, over a seed and then step by step: a units network with counting's logits, and a
    frame network with the grains' fold in its output layer."""
    rng = np.random.default_rng(0)
    features = mc.NUM_FEATURES
    if head == "units":
        centroids = rng.normal(size=(6, 4)).astype(np.float32)
        made = mc.make_head("units", 6)
        made.centroids = centroids
        model = mc.build_model(features, 16, 2, made)
        prior = mc.unit_prior_of(model)
        prior.set_weights([rng.normal(size=(features, 4)).astype(np.float32), centroids,
                           np.log(rng.dirichlet(np.ones(6), size=6)).astype(np.float32)])
        model.get_layer("project_out").set_weights([
            rng.normal(0, 0.1, (16, 6)).astype(np.float32), np.zeros(6, np.float32)])
        fold = None
    else:
        model = mc.build_model(features, 16, 2, mc.make_head("average"))
        fold = (rng.normal(size=(features, 5)).astype(np.float32),
                rng.normal(size=5).astype(np.float32))
    seeds = rng.normal(size=(3, 7, features)).astype(np.float32)
    ours = mc.make_step_function(model, 3, mc.NumpyStep(model, fold))
    theirs = mc.make_step_function(model, 3, mc.compile_step(model, "float32", fold))
    np.testing.assert_allclose(ours(seeds), theirs(seeds), rtol=1e-4, atol=1e-4)
    for frame in rng.normal(size=(4, 3, features)).astype(np.float32):
        np.testing.assert_allclose(ours(frame), theirs(frame), rtol=1e-4, atol=1e-4)
