"""Training windows, the network, checkpoints and the generation loop, called directly."""

import math
import wave

import numpy as np
import pytest

from conftest import melody, write_int16

DEFAULT_PARAMETERS = 56_164_114  # -n 1024 -l 4 on 11 026-wide frames; the README quotes it


def test_default_parameter_count_is_pinned(mc):
    assert mc.count_parameters(mc.NUM_FEATURES, 1024, 4) == DEFAULT_PARAMETERS
    model = mc.build_model(mc.NUM_FEATURES, 1024, 4)
    assert model.count_params() == DEFAULT_PARAMETERS
    assert mc.model_shape(model) == (1024, 4)


def test_parameter_formula_matches_keras_on_small_models(mc):
    for features, neurons, layers in [(6, 5, 1), (10, 3, 3), (mc.NUM_FEATURES, 8, 2)]:
        model = mc.build_model(features, neurons, layers)
        assert model.count_params() == mc.count_parameters(features, neurons, layers)


def test_network_shape(mc):
    model = mc.build_model(12, 7, 2)
    names = [layer.__class__.__name__ for layer in model.layers]
    assert names == ["InputLayer", "Dense", "LSTM", "LSTM", "Dense"]
    assert model.get_layer("project_in").units == 7
    lstm = model.get_layer("lstm_0")
    # The settings TensorFlow needs to pick the cuDNN kernel on a GPU.
    assert (lstm.activation.__name__, lstm.recurrent_activation.__name__) == ("tanh", "sigmoid")
    assert lstm.recurrent_dropout == 0 and lstm.use_bias and lstm.use_cudnn == "auto"
    mc.use_fastest_lstm_kernel(model, on_gpu=True)
    assert not any(layer.unroll for layer in model.layers if layer.name.startswith("lstm_"))
    mc.use_fastest_lstm_kernel(model, on_gpu=False)
    assert all(layer.unroll for layer in model.layers if layer.name.startswith("lstm_"))
    assert model(np.zeros((3, 5, 12), np.float32)).shape == (3, 5, 12)


def test_dense_on_sequences_is_time_distributed_dense(mc):
    keras = mc.import_keras()
    dense = keras.layers.Dense(5)
    x = np.random.default_rng(6).normal(size=(3, 4, 9)).astype(np.float32)
    plain = dense(x).numpy()
    distributed = keras.layers.TimeDistributed(dense)(x).numpy()  # the same weights
    np.testing.assert_allclose(plain, distributed, rtol=1e-6, atol=1e-6)
    for t in range(4):  # each time step on its own
        np.testing.assert_allclose(plain[:, t], dense(x[:, t]).numpy(), rtol=1e-6, atol=1e-6)


def test_unrolled_lstm_computes_the_same_as_the_loop(mc):
    import tensorflow as tf
    model = mc.build_model(9, 6, 2)
    x = np.random.default_rng(3).normal(size=(4, 4, 9)).astype(np.float32)
    y = np.random.default_rng(4).normal(size=(4, 4, 9)).astype(np.float32)

    def output_and_gradients(on_gpu):
        mc.use_fastest_lstm_kernel(model, on_gpu)
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = tf.reduce_mean((out - y) ** 2)
        return [out.numpy()] + [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]

    for looped, unrolled in zip(output_and_gradients(True), output_and_gradients(False)):
        np.testing.assert_allclose(unrolled, looped, rtol=1e-5, atol=1e-6)


def test_fused_adam_matches_keras_adam(mc):
    keras = mc.import_keras()
    fused_class = keras.saving.get_registered_object("music_composer>FusedAdam")
    rng = np.random.default_rng(5)
    start = rng.normal(size=(7, 3)).astype(np.float32)
    stock, fused = keras.Variable(start), keras.Variable(start)
    stock_adam = keras.optimizers.Adam(learning_rate=0.01, clipnorm=1.0)
    fused_adam = fused_class(learning_rate=0.01, clipnorm=1.0)
    for step in range(20):  # every other gradient is large enough to be clipped
        gradient = rng.normal(size=(7, 3)).astype(np.float32) * (5.0 if step % 2 else 0.1)
        stock_adam.apply([gradient], [stock])
        fused_adam.apply([gradient], [fused])
    assert not np.allclose(stock.numpy(), start, atol=0.05)  # the weights really moved
    np.testing.assert_allclose(fused.numpy(), stock.numpy(), rtol=1e-5, atol=1e-6)


def test_windows_never_cross_files_and_hold_out_the_last_tenth(mc):
    file_starts = np.array([0, 100, 103, 140])  # 100 frames, 3 (too short), 37
    train, validation = mc.split_windows(file_starts)
    span = mc.WINDOW_FRAMES + 1
    for starts in (train, validation):
        file_of_first = np.searchsorted(file_starts, starts, side="right")
        file_of_last = np.searchsorted(file_starts, starts + span - 1, side="right")
        assert (file_of_first == file_of_last).all()
    assert set(train) & set(validation) == set()
    # File 0: frames 90..99 held out -> validation windows start at 90..95.
    assert [s for s in validation if s < 100] == list(range(90, 96))
    assert [s for s in train if s < 100] == list(range(0, 86))  # slide one frame at a time
    # File 2 (37 frames): at least `span` frames held out, training keeps the rest.
    assert [s for s in validation if s >= 103] == list(range(135, 136))
    assert len(train) == 86 + (135 - 103 - span + 1)


def test_a_short_file_trains_without_validation(mc):
    train, validation = mc.split_windows(np.array([0, 7]))
    assert list(train) == [0, 1, 2] and len(validation) == 0


def test_short_files_only_hold_out_the_last_whole_file(mc):
    train, validation = mc.split_windows(np.array([0, 6, 9, 16, 20]))  # 6, 3, 7, 4 frames
    assert list(train) == [0, 1] and list(validation) == [9, 10, 11]


def test_target_is_the_window_shifted_one_frame(mc):
    frames = np.arange(20 * 3, dtype=np.float32).reshape(20, 3)
    inputs, targets = mc.gather_windows(frames, np.array([7, 0, 3]))
    assert inputs.shape == targets.shape == (3, mc.WINDOW_FRAMES, 3)
    np.testing.assert_array_equal(inputs[0], frames[7:11])
    np.testing.assert_array_equal(targets[0], frames[8:12])
    np.testing.assert_array_equal(inputs[1], frames[0:4])
    np.testing.assert_array_equal(targets[:, :-1], inputs[:, 1:])


def test_batches_cover_every_window_once_and_reshuffle_each_epoch(mc):
    frames = np.arange(50 * 2, dtype=np.float32).reshape(50, 2)
    starts = np.arange(0, 40)
    batches = mc.make_batches(frames, starts, 6, np.random.default_rng(0), shuffle=True)
    assert len(batches) == 7

    def window_starts_of_one_epoch(epoch):  # frame i is [2i, 2i + 1]
        return [int(value) // 2 for index in range(epoch * 7, (epoch + 1) * 7)
                for value in batches[index][0][:, 0, 0]]

    first = window_starts_of_one_epoch(0)  # training batches go on across epochs
    assert sorted(first) == list(range(40))
    second = window_starts_of_one_epoch(1)
    assert sorted(second) == list(range(40)) and second != first
    batches.start_at(1, 3)  # as a run resuming epoch 1 (counted from 0) at its batch 3 would
    assert [int(value) // 2 for value in batches[0][0][:, 0, 0]] == second[18:24]
    assert batches.num_batches is None  # endless, for Keras


def test_generation_loop_with_a_known_predictor(mc):
    """predict_next adds 1 to the last frame it read: after a seed ending in s, the frames are
    s+1, s+2, ..."""
    seen = []

    def predict_next(frames):
        seen.append(frames.copy())
        return (frames[:, -1] if frames.ndim == 3 else frames) + 1.0

    seeds = np.stack([np.full((4, 3), 10.0 * (piece + 1)) for piece in range(2)])
    seeds[:, :, 0] += np.arange(4)  # mark each seed frame to check the order it is fed in
    frames = np.stack(list(mc.generate(predict_next, seeds, 5)), axis=1)
    assert frames.shape == (2, 5, 3)
    np.testing.assert_array_equal(frames[0, :, 1], [11, 12, 13, 14, 15])
    np.testing.assert_array_equal(frames[1, :, 1], [21, 22, 23, 24, 25])
    np.testing.assert_array_equal(seen[0], seeds)  # the whole seed, read in one call
    assert len(seen) == 1 + 4  # each frame is computed once, none after the last


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_stateful_steps_match_the_full_model(mc, dtype, tolerance):
    """The step function's written-out LSTM arithmetic is Keras's; in bfloat16, to within
    its 8 significant bits (a hundredth of the outputs' size)."""
    model = mc.build_model(10, 6, 3)
    rng = np.random.default_rng(0)
    sequence = rng.normal(size=(3, 9, 10)).astype(np.float32)
    full = model(sequence).numpy()
    predict_next = mc.make_step_function(model, 3, mc.compile_step(model, dtype))
    steps = np.stack([predict_next(sequence[:, t]) for t in range(9)], axis=1)
    np.testing.assert_allclose(steps, full, atol=tolerance * np.abs(full).max())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_seed_read_at_once_leaves_the_states_stepping_through_it_would(mc, dtype):
    model = mc.build_model(12, 8, 2)
    rng = np.random.default_rng(5)
    seeds, then = rng.normal(size=(2, 7, 12)).astype(np.float32), rng.normal(size=(2, 12))
    step = mc.compile_step(model, dtype)
    at_once = mc.make_step_function(model, 2, step)
    stepped = mc.make_step_function(model, 2, step)
    first = at_once(seeds)
    for t in range(7):
        first_stepped = stepped(seeds[:, t])
    tolerance = 1e-5 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(first, first_stepped, atol=tolerance * np.abs(first).max())
    following = at_once(then.astype(np.float32))  # the states carried on alike
    np.testing.assert_allclose(following, stepped(then.astype(np.float32)),
                               atol=tolerance * np.abs(following).max())
    np.testing.assert_allclose(first, model(seeds).numpy()[:, -1],
                               atol=tolerance * np.abs(first).max())


def test_bfloat16_only_where_the_cpu_multiplies_it_natively(mc, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert not mc.multiplies_bfloat16_natively(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 fma\n")
    assert mc.multiplies_bfloat16_natively(cpuinfo)
    assert not mc.multiplies_bfloat16_natively(tmp_path / "missing")
    assert mc.generation_dtype(on_gpu=True) == "float32"


def test_stateful_generation_matches_refeeding_the_growing_sequence(mc):
    """The original re-ran the network over the whole sequence for each new frame; same result."""
    model = mc.build_model(8, 5, 2)
    seeds = np.random.default_rng(1).normal(size=(2, 4, 8)).astype(np.float32)
    predict_next = mc.make_step_function(model, 2, mc.compile_step(model, "float32"))
    stateful = np.stack(list(mc.generate(predict_next, seeds, 6)), axis=1)
    sequence = seeds
    for _ in range(6):
        sequence = np.concatenate([sequence, model(sequence).numpy()[:, -1:]], axis=1)
    np.testing.assert_allclose(stateful, sequence[:, 4:], atol=1e-4)


def test_pcm16_clips_instead_of_wrapping(mc):
    pcm = mc.to_pcm16(np.array([[0.0, 0.5, 1.0, 1.7, -1.0, -3.0]], np.float32))
    assert pcm.dtype == np.dtype("<i2")
    assert list(pcm[0]) == [0, 16384, 32767, 32767, -32767, -32767]


def test_output_names_never_overwrite(mc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for index in (0, 2):
        (tmp_path / f"song-{index}.wav").write_bytes(b"keep me")
    paths = mc.output_paths("song", 3)
    assert [p.name for p in paths] == ["song-1.wav", "song-3.wav", "song-4.wav"]


def test_wav_writers_leave_nothing_half_written(mc, tmp_path):
    paths = [tmp_path / "a-0.wav", tmp_path / "a-1.wav"]
    writers = mc.WavWriters(paths)
    writers.write(np.zeros((2, 100), np.float32))
    assert not any(p.exists() for p in paths)
    writers.discard()
    assert list(tmp_path.iterdir()) == []
    writers = mc.WavWriters(paths)
    for _ in range(3):
        writers.write(np.full((2, 100), 0.25, np.float32))
    writers.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-0.wav", "a-1.wav"]
    with wave.open(str(paths[1])) as handle:
        assert (handle.getframerate(), handle.getsampwidth(), handle.getnchannels()) == \
            (44_100, 2, 1)
        assert handle.getnframes() == 300


def test_write_pieces_with_a_known_predictor(mc, tmp_path):
    """A constant frame whose inverse FFT is a known block ends up, scaled, in every WAV."""
    block = (0.5 * np.sin(2 * np.pi * 441 * np.arange(mc.BLOCK_SIZE) / 44_100)).astype(np.float32)
    target = mc.frames_from_blocks(block[None])[0]
    identity = mc.Normalisation(np.zeros(mc.NUM_FEATURES, np.float32),
                                np.ones(mc.NUM_FEATURES, np.float32))
    paths = [tmp_path / "p-0.wav", tmp_path / "p-1.wav"]
    seeds = mc.Seeds(np.zeros((2, 4, mc.NUM_FEATURES), np.float32), ["zeros", "zeros"])
    mc.write_pieces(lambda frames: np.tile(target, (len(frames), 1)), seeds, identity,
                    mc.PlainSynthesis(), paths, 2)
    from scipy.io import wavfile
    for path in paths:
        rate, samples = wavfile.read(path)
        assert rate == 44_100 and samples.dtype == np.int16 and len(samples) == 2 * 44_100
        np.testing.assert_allclose(samples / 32767, np.tile(block, 8), atol=2e-4)


@pytest.mark.parametrize("kind", ["magnitude", "plain"])
def test_write_pieces_after_a_prefix(mc, tmp_path, kind):
    """A --seed-wav piece: the seed's last 2 s, then the new music; with overlapping magnitude
    windows the last quarter second of the prefix fades into the first new block."""
    prefix = (0.3 * np.sin(2 * np.pi * 330 * np.arange(2 * 44_100) / 44_100)).astype(np.float32)
    synthesis = mc.make_synthesis(kind, 1)
    synthesis.prime_with_audio(prefix[None, -mc.WINDOW_SIZE:])
    frame = mc.frames_from_audio(prefix, kind)[4]
    identity = mc.Normalisation(np.zeros(mc.NUM_FEATURES, np.float32),
                                np.ones(mc.NUM_FEATURES, np.float32))
    path = tmp_path / "p-0.wav"
    seeds = mc.Seeds(np.zeros((1, 4, mc.NUM_FEATURES), np.float32), ["zeros"], [prefix])
    mc.write_pieces(lambda frames: np.tile(frame, (len(frames), 1)), seeds, identity, synthesis,
                    [path], 3)
    from scipy.io import wavfile
    _, samples = wavfile.read(path)
    assert len(samples) == (2 + 3) * 44_100
    unchanged = len(prefix) - synthesis.overlap
    assert synthesis.overlap == (11_025 if kind == "magnitude" else 0)
    np.testing.assert_allclose(samples[:unchanged] / 32767, prefix[:unchanged], atol=1e-4)


def test_input_noise_touches_the_inputs_only_and_repeats(mc):
    frames = np.zeros((60, 3), np.float32)
    starts = np.arange(0, 50)

    def first_batch(noise, seed=0):
        return mc.make_batches(frames, starts, 8, np.random.default_rng(seed), shuffle=True,
                               input_noise=noise)[0]

    inputs, targets = first_batch(0.5)
    assert not targets.any()
    assert inputs.std() == pytest.approx(0.5, rel=0.25)
    np.testing.assert_array_equal(first_batch(0.5)[0], inputs)  # the same seed, the same noise
    assert not first_batch(0.0)[0].any()


def test_sampled_errors_add_a_whole_error_frame_times_the_temperature(mc):
    errors = np.arange(12, dtype=np.float32).reshape(4, 3)
    plain = lambda frames: np.ones_like(frames)  # noqa: E731
    assert mc.with_sampled_errors(plain, errors, 0.0, np.random.default_rng(0)) is plain
    sampled = mc.with_sampled_errors(plain, errors, 0.5, np.random.default_rng(0))
    added = (sampled(np.zeros((50, 3), np.float32)) - 1) / 0.5
    rows = {tuple(row) for row in added}
    assert rows <= {tuple(row) for row in errors} and len(rows) > 1


def test_prediction_errors_are_targets_minus_predictions_on_held_out_windows(mc):
    model = mc.build_model(3, 4, 1)
    frames = np.random.default_rng(1).standard_normal((100, 3)).astype(np.float32)
    cache = mc.FrameCache(frames, np.array([0, 100]), None, None, [], "", 0.0, "magnitude", None)
    errors, music = mc.prediction_errors(model, cache, np.random.default_rng(0), count=3)
    _, validation = mc.split_windows(cache.file_starts)
    expected = np.stack([frames[start + 4] - model.predict(frames[None, start : start + 4],
                                                           verbose=0)[0, -1]
                         for start in validation])
    assert errors.shape == (3, 3) and music.shape == (3, 3)
    for error, frame in zip(errors, music):  # each one is the error on one held-out window
        assert np.abs(expected - error).max(axis=1).min() < 1e-5
        assert any(np.array_equal(frame, frames[start + 4]) for start in validation)


def test_frames_are_kept_within_the_music_s_loudness(mc):
    music = np.array([[0.0, 1.0], [2.0, 2.0], [-1.0, 0.0]], np.float32)  # levels 0.5, 2, -0.5
    predicted = np.array([[5.0, 1.5], [1.0, 0.0], [-3.0, -4.0], [3.0, -1.0]], np.float32)
    bounded = mc.within_music_levels(lambda frames: predicted, music)(None)
    # Each bin at most the music's loudest (2, 2); then the mean level within [-0.5, 2].
    np.testing.assert_allclose(bounded, [[2.0, 1.5], [1.0, 0.0], [0.0, -1.0], [2.0, -1.0]])


def test_checkpoints_from_before_frame_kinds_count_as_plain(mc, tmp_path):
    assert mc.checkpoint_frames({"frame": "rfft-real-imag"}) == "plain"
    assert mc.checkpoint_frames({"frame": "magnitude"}) == "magnitude"
    mc.check_checkpoint_frames(tmp_path, {"frame": "rfft-real-imag"}, "plain")
    with pytest.raises(mc.UserError, match="--frames plain"):
        mc.check_checkpoint_frames(tmp_path, {"frame": "rfft-real-imag"}, "magnitude")


def test_checkpoint_round_trip_and_refusal_of_a_foreign_file(mc, tmp_path):
    model = mc.build_model(6, 4, 1)
    metadata = {"version": mc.CHECKPOINT_VERSION, "hidden_neurons": 4, "hidden_layers": 1,
                "epochs_done": 3, "history": []}
    mean, std = np.arange(6, dtype=np.float32), np.ones(6, np.float32) * 2
    path = tmp_path / "model.keras"
    mc.save_checkpoint(path, model, metadata, mean, std)
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]  # no temporary left
    loaded_metadata, loaded_mean, loaded_std = mc.read_checkpoint_metadata(path)
    assert loaded_metadata == {**metadata, "backend": "tensorflow"}  # and who wrote it
    np.testing.assert_array_equal(loaded_mean, mean)
    np.testing.assert_array_equal(loaded_std, std)
    loaded = mc.load_checkpoint_model(path)
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    foreign = tmp_path / "foreign.keras"
    foreign.write_bytes(path.read_bytes()[:500])
    with pytest.raises(mc.UserError, match="foreign.keras"):
        mc.read_checkpoint_metadata(foreign)
    with pytest.raises(mc.UserError, match="-n 4 -l 1.*-n 8 -l 1"):
        mc.check_checkpoint_shape(path, metadata, 8, 1)


def test_nan_loss_writes_no_checkpoint(mc, tmp_path):
    model = mc.build_model(6, 4, 1)
    metadata = {"version": mc.CHECKPOINT_VERSION, "epochs_done": 2, "history": []}
    good = tmp_path / mc.CHECKPOINT_NAME
    good.write_bytes(b"the last good checkpoint")
    callback = mc.make_checkpoint_callback(tmp_path, metadata, np.zeros(6), np.ones(6))
    callback.set_model(model)
    callback.on_train_batch_end(0, {"loss": math.nan})
    callback.on_epoch_end(2, {"loss": math.nan, "val_loss": math.nan})
    assert callback.diverged and model.stop_training
    assert good.read_bytes() == b"the last good checkpoint"
    assert metadata["epochs_done"] == 2
    callback = mc.make_checkpoint_callback(tmp_path, metadata, np.zeros(6), np.ones(6))
    callback.set_model(model)
    callback.on_epoch_end(2, {"loss": 0.5, "val_loss": 0.6})
    assert mc.read_checkpoint_metadata(good)[0]["epochs_done"] == 3
    assert (tmp_path / mc.BEST_CHECKPOINT_NAME).exists()


def test_training_stops_once_the_held_out_loss_has_not_improved_for_patience_epochs(
        mc, tmp_path, capsys):
    """--patience 2: the held-out loss best after epoch 2, then worse twice: training stops
    after epoch 4 and says why; with patience 0, or at the last epoch asked for, it does not."""
    model = mc.build_model(6, 4, 1)
    for patience, end_epoch, stopped_after in ((2, 10, 4), (0, 10, None), (2, 4, None)):
        metadata = {"version": mc.CHECKPOINT_VERSION, "epochs_done": 0, "history": []}
        callback = mc.make_checkpoint_callback(tmp_path, metadata, np.zeros(6), np.ones(6),
                                               end_epoch=end_epoch, patience=patience)
        callback.set_model(model)
        model.stop_training = False
        stops = []
        for epoch, val_loss in enumerate([0.9, 0.8, 0.85, 0.81]):
            callback.on_epoch_begin(epoch)
            callback.on_epoch_end(epoch, {"loss": 0.5, "val_loss": val_loss})
            stops.append(model.stop_training)
        assert stops == [False] * 3 + [stopped_after == 4]
        assert callback.stopped_early == (stopped_after is not None)
    said = capsys.readouterr().out
    assert said.count("predicted best after epoch 2, and no better in the 2 since") == 1
    assert "--patience 0" in said


def test_a_compiled_step_is_reused_with_fresh_states(mc):
    model = mc.build_model(8, 5, 2)
    step = mc.compile_step(model)
    frames = np.random.default_rng(2).normal(size=(3, 6, 8)).astype(np.float32)
    first = mc.make_step_function(model, 3, step)
    first_output = first(frames[:, 0])
    assert not np.allclose(first(frames[:, 0]), first_output, atol=1e-6)  # states moved on
    again = mc.make_step_function(model, 3, step)  # must start from zero states again
    np.testing.assert_allclose(again(frames[:, 0]), first_output, atol=1e-6)


def test_the_unrolled_loop_with_its_input_products_hoisted_computes_what_keras_does(mc):
    """use_fastest_lstm_kernel on a CPU swaps in unrolled_lstm_loop: same outputs, same
    gradients as Keras's own LSTM loop (which a GPU keeps, for cuDNN)."""
    import tensorflow as tf

    model = mc.build_model(12, 8, 2)
    rng = np.random.default_rng(4)
    inputs = rng.normal(size=(3, 6, 12)).astype(np.float32)
    targets = rng.normal(size=(3, 6, 12)).astype(np.float32)

    def outputs_and_gradients():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(inputs, training=True) - targets) ** 2)
        return model(inputs).numpy(), tape.gradient(loss, model.trainable_variables)

    mc.use_fastest_lstm_kernel(model, on_gpu=False, length=6)
    lstms = [layer for layer in model.layers if layer.name.startswith("lstm_")]
    assert all("inner_loop" in layer.__dict__ for layer in lstms)
    hoisted, hoisted_gradients = outputs_and_gradients()
    mc.use_fastest_lstm_kernel(model, on_gpu=True, length=6)
    assert not any("inner_loop" in layer.__dict__ for layer in lstms)
    keras_own, keras_gradients = outputs_and_gradients()
    np.testing.assert_allclose(hoisted, keras_own, atol=1e-6)
    for ours, theirs in zip(hoisted_gradients, keras_gradients):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-6)
    assert np.abs(hoisted).max() > 1e-3  # the comparison compared something


def blas_threads():
    import scipy.linalg  # noqa: F401 (SciPy's own OpenBLAS, which the tool limits too)
    from threadpoolctl import threadpool_info

    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_a_run_keeps_numpy_blas_on_one_thread(mc, tmp_path, monkeypatch):
    """OpenBLAS's spinning threads took half of a 2-core machine beside TensorFlow's."""
    from threadpoolctl import threadpool_limits

    music = tmp_path / "music"
    music.mkdir()
    write_int16(music / "a.wav", melody(3.0))
    seen = []
    monkeypatch.setattr(mc, "compose_from_folder", lambda config: seen.append(blas_threads()))
    blas_threads()  # both OpenBLAS libraries loaded first
    with threadpool_limits(limits=2, user_api="blas"):  # as on a 2-core machine, whatever this is
        assert blas_threads() == [2] * len(blas_threads())
        assert mc.main(["-d", str(music), "-t", str(tmp_path / "t"), "-o",
                        str(tmp_path / "out"), "-e", "1", "-n", "8", "-l", "1"]) == 0
    assert len(seen) == 1 and seen[0] == [1] * len(seen[0]) and seen[0]


def small_training_setup(mc, tmp_path):
    """A cache of 2 short files, a tiny model and the config and metadata train() takes."""
    music = tmp_path / "music"
    music.mkdir()
    for index in range(2):
        write_int16(music / f"{index}.wav", melody(12.0, seed=index))
    config = mc.Config(dataset_dir=music, cache_dir=tmp_path / "cache",
                       output_name=str(tmp_path / "out"), hidden_neurons=8, hidden_layers=1,
                       epochs=1, batch_size=2, seconds=1, num_pieces=1, sequence_seconds=2.0)
    cache = mc.prepare_cache(music, config.cache_dir)
    head = mc.make_head("average")
    model = mc.build_model(mc.NUM_FEATURES, 8, 1, head)
    return config, cache, model, mc.new_metadata(config, cache, head)


def test_an_epoch_stopped_while_validating_is_validated_by_the_next_run(mc, tmp_path):
    """SIGTERM after an epoch's last batch, during its validation: the training is saved as
    done, and the next run only validates it, then saves the epoch with the loss it had."""
    config, cache, model, metadata = small_training_setup(mc, tmp_path)
    length = mc.sequence_length(cache.file_starts, config.sequence_seconds)
    starts, _ = mc.split_windows(cache.file_starts, length, mc.training_stride(length))
    batches = mc.make_batches(cache.frames, starts, config.batch_size,
                              np.random.default_rng(0), shuffle=True, length=length)
    callback = mc.make_checkpoint_callback(config.cache_dir, metadata, cache.mean, cache.std,
                                           batches, stop=lambda: True)
    callback.set_model(model)
    callback.on_epoch_begin(0)
    callback.loss = 0.75  # the epoch's training loss, as its last batch left it
    with pytest.raises(mc.TrainingStopped):
        callback.on_test_batch_end(0)
    found = mc.find_midepoch_checkpoint(config, mc.find_checkpoint(config))
    assert found[1]["midepoch"]["batches_done"] == len(batches) > 1
    model, metadata = mc.prepare_model(config, cache, found)
    mc.train(model, cache, metadata, config, np.random.default_rng(1))
    saved, _, _ = mc.read_checkpoint_metadata(config.cache_dir / mc.CHECKPOINT_NAME)
    assert saved["epochs_done"] == 1 and saved["history"][0]["loss"] == 0.75
    assert math.isfinite(saved["history"][0]["val_loss"])
    assert not (config.cache_dir / mc.MIDEPOCH_CHECKPOINT_NAME).exists()


def test_a_midepoch_checkpoint_older_than_the_last_epoch_is_removed(mc, tmp_path):
    """A kill between saving an epoch and removing its mid-epoch checkpoint leaves one that is
    out of date: the next run removes it, and one that is not stays."""
    config, cache, model, metadata = small_training_setup(mc, tmp_path)
    midepoch = config.cache_dir / mc.MIDEPOCH_CHECKPOINT_NAME
    mc.save_checkpoint(midepoch, model, {**metadata, "epochs_done": 1}, cache.mean, cache.std)
    mc.save_checkpoint(config.cache_dir / mc.CHECKPOINT_NAME, model,
                       {**metadata, "epochs_done": 1}, cache.mean, cache.std)
    checkpoint = mc.find_checkpoint(config)
    assert mc.find_midepoch_checkpoint(config, checkpoint)[0] == midepoch
    mc.save_checkpoint(config.cache_dir / mc.CHECKPOINT_NAME, model,
                       {**metadata, "epochs_done": 2}, cache.mean, cache.std)
    assert mc.find_midepoch_checkpoint(config, mc.find_checkpoint(config)) is None
    assert not midepoch.exists()
