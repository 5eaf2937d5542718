"""Mixed precision in training: chosen by the hardware, trained with real Keras on the CPU,
checkpoints that resume in any precision, and the written-out LSTM backward pass."""

import numpy as np
import pytest

from conftest import melody, run_cli, write_int16


def test_the_precision_follows_the_hardware_unless_asked(mc):
    assert mc.training_precision("auto", None, native_bfloat16=True)[0] == "bfloat16"
    assert mc.training_precision("auto", None, native_bfloat16=False)[0] == "float32"
    assert mc.training_precision("auto", (7, 5))[0] == "float16"  # a T4: tensor cores
    assert mc.training_precision("auto", (9, 0))[0] == "float16"
    assert mc.training_precision("auto", (6, 1))[0] == "float32"  # a GTX 1080: none
    precision, why = mc.training_precision("float32", (9, 0))
    assert precision == "float32" and "--precision" in why
    assert "AVX512-BF16" in mc.training_precision("auto", None, native_bfloat16=True)[1]


def sequences(features=10, count=16, length=6, seed=0):
    x = np.random.default_rng(seed).normal(size=(count, length, features)).astype(np.float32)
    return x, np.roll(x, -1, axis=1)


def model_in(mc, precision, seed=3, features=10, length=6):
    keras = mc.import_keras()
    keras.utils.set_random_seed(seed)
    model = mc.build_model(features, 16, 2)
    if precision is not None:  # None: never given one, the path before mixed precision
        mc.use_precision(model, precision)
    return mc.use_fastest_lstm_kernel(model, on_gpu=False, length=length)


def test_a_tiny_model_trains_in_mixed_bfloat16_with_float32_weights_and_adam(mc):
    x, y = sequences()
    model = model_in(mc, "bfloat16")
    assert model(x[:2]).dtype.name == "bfloat16"  # the products' dtype reaches the output
    losses = model.fit(x, y, epochs=12, batch_size=4, shuffle=False, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.97 * losses[0]
    assert {variable.dtype for variable in model.weights} == {"float32"}
    optimizer = model.optimizer
    assert type(optimizer).__name__ == "FusedAdam"  # no loss scaling: bfloat16 has the range
    assert {v.dtype for v in optimizer.variables if v.name != "iteration"} == {"float32"}
    assert any(np.abs(v.numpy()).max() > 0 for v in optimizer.variables[2:])  # Adam moved


def test_float16_trains_with_loss_scaling(mc):
    x, y = sequences()
    model = model_in(mc, "float16")
    assert type(model.optimizer).__name__ == "LossScaleOptimizer"
    losses = model.fit(x, y, epochs=8, batch_size=4, shuffle=False, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    mc.use_precision(model, "float32")
    assert type(model.optimizer).__name__ == "FusedAdam"


def adam_state(model):
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    return int(optimizer.iterations.numpy()), [v.numpy() for v in optimizer.variables]


@pytest.mark.parametrize("trained_in, resumed_in", [("bfloat16", "float32"),
                                                    ("float32", "bfloat16"),
                                                    ("float16", "bfloat16")])
def test_a_checkpoint_resumes_in_the_other_precision(mc, tmp_path, trained_in, resumed_in):
    x, y = sequences()
    model = model_in(mc, trained_in)
    model.fit(x, y, epochs=3, batch_size=4, shuffle=False, verbose=0)
    path = tmp_path / "model.keras"
    mc.save_checkpoint(path, model, {}, np.zeros(10), np.ones(10))
    steps, state = adam_state(model)
    loaded = mc.load_checkpoint_model(path)  # float32 until training chooses
    assert loaded.get_layer("project_out").dtype_policy.name == "float32"
    loaded_steps, loaded_state = adam_state(loaded)
    assert loaded_steps == steps == 12 and len(loaded_state) == len(state)
    for saved, restored in zip(state, loaded_state):
        np.testing.assert_array_equal(saved, restored)  # Adam's state whole, in float32
    for weight, restored in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(weight.numpy(), restored.numpy())
    mc.use_precision(loaded, resumed_in)
    mc.use_fastest_lstm_kernel(loaded, on_gpu=False, length=6)
    losses = loaded.fit(x, y, epochs=2, batch_size=4, shuffle=False, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and adam_state(loaded)[0] == steps + 8


def test_forced_float32_is_the_path_without_mixed_precision(mc):
    """use_precision("float32") after another precision computes exactly what a model never
    given a precision computes: the same weights after the same training."""
    x, y = sequences()
    plain = model_in(mc, None)
    switched = model_in(mc, "bfloat16")
    mc.use_precision(switched, "float32")
    for model in (plain, switched):
        model.fit(x, y, epochs=2, batch_size=4, shuffle=False, verbose=0)
    for a, b in zip(plain.weights, switched.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_the_lstm_backward_pass_in_bfloat16_is_close_to_float32(mc):
    """lstm_sequence's written-out gradients, with bfloat16 products, against float32: within
    bfloat16's rounding, not another computation."""
    import tensorflow as tf

    rng = np.random.default_rng(5)
    x = tf.constant(rng.normal(size=(4, 7, 12)), tf.float32)
    h = tf.constant(rng.normal(size=(4, 16)) * 0.5, tf.float32)
    c = tf.constant(rng.normal(size=(4, 16)) * 0.5, tf.float32)
    weights = [tf.constant(rng.normal(size=shape) * 0.3, tf.float32)
               for shape in [(12, 64), (16, 64), (64,)]]
    upstream = tf.constant(rng.normal(size=(4, 7, 16)), tf.float32)

    def outputs_and_gradients(dtype):
        inputs = [x, h, c, *weights]
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs, last_h, last_c = mc.lstm_sequence(*inputs, dtype)
            loss = tf.reduce_sum(outputs * upstream) + tf.reduce_sum(last_c)
        return [outputs, *tape.gradient(loss, inputs)]

    for exact, mixed in zip(outputs_and_gradients("float32"), outputs_and_gradients("bfloat16")):
        scale = np.abs(exact.numpy()).max()
        assert scale > 1e-3
        assert np.abs(mixed.numpy() - exact.numpy()).max() < 0.05 * scale
        assert not np.array_equal(mixed.numpy(), exact.numpy())  # bfloat16 was really used


def test_the_command_line_takes_the_flag(mc, tmp_path):
    """(The choice made without the flag is checked in test_end_to_end's first run.)"""
    music = tmp_path / "music"
    music.mkdir()
    write_int16(music / "one.wav", melody(6.0, seed=1))
    common = ["-d", music, "-e", "1", "-g", "1", "-s", "1", "-n", "8", "-l", "1", "-b", "8",
              "--random-seed", "0", "--no-plots"]
    result = run_cli(*common, "-t", tmp_path / "forced", "--precision", "float32", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Training in float32 throughout (asked for with --precision)." in result.stdout
    result = run_cli(*common, "-t", tmp_path / "bad", "--precision", "half", cwd=tmp_path)
    assert result.returncode == 2 and "--precision" in result.stderr
    assert "Traceback" not in result.stderr
