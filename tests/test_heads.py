"""What the network predicts (issue 12): the mixture head's loss and sampling, long training
sequences, checkpoints that carry the head, and the structure figure."""

import math

import numpy as np
import pytest

from conftest import run_cli, write_int16, melody


def mixture_outputs(logits, log_stds, means):
    """MixtureHead's layout for one row: K logits, K log standard deviations, K mean frames."""
    return np.concatenate([logits, log_stds, np.ravel(means)]).astype(np.float32)


def test_mixture_loss_is_the_negative_log_likelihood_per_feature(mc):
    mc.import_keras()
    import keras

    nll = keras.saving.get_registered_object("music_composer>mixture_nll")
    rng = np.random.default_rng(0)
    features, k = 5, 3
    logits, log_stds = rng.normal(size=k), rng.normal(scale=0.3, size=k)
    means = rng.normal(size=(k, features))
    target = rng.normal(size=features)
    weights = np.exp(logits) / np.exp(logits).sum()
    densities = [np.prod(np.exp(-0.5 * ((target - mean) / np.exp(s)) ** 2)
                         / (np.sqrt(2 * np.pi) * np.exp(s)))
                 for mean, s in zip(means, log_stds)]
    expected = -np.log(np.dot(weights, densities)) / features
    outputs = mixture_outputs(logits, log_stds, means)[None, None]
    got = np.asarray(nll(target[None, None].astype(np.float32), outputs))
    assert got.shape == (1, 1)
    assert got[0, 0] == pytest.approx(expected, rel=1e-4)


def test_mixture_head_shapes_and_temperature_zero_is_the_mode(mc):
    head = mc.MixtureHead(3)
    assert head.outputs(4) == 3 * 6
    model = mc.build_model(4, 5, 1, head)
    assert model.output.shape[-1] == 18
    assert mc.head_of(model).name == "mixture" and mc.head_of(model).components == 3
    means = np.array([[1, 1, 1, 1], [5, 6, 7, 8], [-1, -2, -3, -4]], np.float32)
    row = mixture_outputs([0.0, 2.0, 1.0], [0.0, 0.0, 0.0], means)
    outputs = np.stack([row, row])
    np.testing.assert_array_equal(head.mode(outputs), [means[1], means[1]])
    np.testing.assert_array_equal(head.sample(outputs, 0.0, np.random.default_rng(0)),
                                  [means[1], means[1]])
    assert head.sample(outputs, 1.0, np.random.default_rng(0)).shape == (2, 4)


def test_a_known_mixture_is_sampled_back(mc):
    """Drawn at T = 1, the components come as often as their weights say and each spreads as
    its standard deviation says; at a lower temperature the likelier one comes more often."""
    head = mc.MixtureHead(2)
    means = np.array([[-10.0] * 3, [10.0] * 3])
    row = mixture_outputs(np.log([0.25, 0.75]), np.log([0.5, 2.0]), means)
    samples = head.sample(np.tile(row, (20_000, 1)), 1.0, np.random.default_rng(1))
    upper = samples[:, 0] > 0
    assert upper.mean() == pytest.approx(0.75, abs=0.02)
    assert samples[~upper].mean() == pytest.approx(-10, abs=0.05)
    assert samples[~upper].std() == pytest.approx(0.5, rel=0.05)
    assert samples[upper].std() == pytest.approx(2.0, rel=0.05)
    cooler = head.sample(np.tile(row, (20_000, 1)), 0.5, np.random.default_rng(1))
    # weights ** (1 / T), normalised: 0.75^2 / (0.75^2 + 0.25^2) = 0.9; spread halved
    assert (cooler[:, 0] > 0).mean() == pytest.approx(0.9, abs=0.02)
    assert cooler[cooler[:, 0] > 0].std() == pytest.approx(1.0, rel=0.05)


def test_trained_on_two_futures_the_mixture_samples_both_and_the_average_neither(mc):
    """After any input the next frame is +1 or -1 everywhere, half the time each: the average
    head learns their mean, near 0, a frame that never happens; the mixture head learns both."""
    mc.import_keras()
    import keras

    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    features = 4
    signs = rng.choice([-1.0, 1.0], size=(512, 5, 1))
    frames = (signs * np.ones(features)).astype(np.float32)
    inputs = rng.normal(size=frames.shape).astype(np.float32)  # says nothing of the sign
    mixture = mc.build_model(features, 8, 1, mc.MixtureHead(2))
    average = mc.build_model(features, 8, 1)
    for model in (mixture, average):
        model.fit(inputs, frames, batch_size=64, epochs=60, verbose=0)
    predicted = average.predict(inputs[:200], verbose=0)[:, -1]
    assert np.abs(predicted).mean() < 0.35
    outputs = mixture.predict(inputs[:200], verbose=0)[:, -1]
    sampled = mc.MixtureHead(2).sample(outputs, 1.0, np.random.default_rng(0))
    assert 0.25 < (sampled.mean(axis=1) > 0).mean() < 0.75
    assert np.abs(sampled.mean(axis=1)).mean() > 0.6


def test_sequences_are_long_with_a_stride_and_shorten_for_short_music(mc):
    starts = np.array([0, 400, 1000])  # files of 100 s and 150 s
    length = mc.sequence_length(starts, 8.0)
    assert length == 32 and mc.training_stride(length) == 8
    train, validation = mc.split_windows(starts, length, mc.training_stride(length))
    assert np.all(np.diff(train[train < 400]) == 8)
    for part in (train, validation):
        ends = starts[np.searchsorted(starts, part, side="right")]
        assert np.all(part + length + 1 <= ends)  # no sequence (with its target) crosses a file
    assert not set(range(360, 400)) & set((train[:, None] + np.arange(33)).ravel())
    inputs, targets = mc.gather_windows(np.arange(1000, dtype=np.float32)[:, None],
                                        np.array([8, 0]), length)
    assert inputs.shape == (2, 32, 1)
    np.testing.assert_array_equal(targets[:, :, 0] - inputs[:, :, 0], 1)
    # 15 s of music cannot hold a training and a held-out sequence of 8 s; of 4 s it can
    assert mc.sequence_length(np.array([0, 60]), 8.0) == 16
    assert mc.sequence_length(np.array([0, 12]), 8.0) == mc.WINDOW_FRAMES


def test_the_structure_figure_tells_a_repeating_piece_from_a_wander(mc):
    rng = np.random.default_rng(0)
    phrase = rng.normal(size=(4, 64))
    repeating = np.tile(phrase, (8, 1)) + 0.1 * rng.normal(size=(32, 64))  # a 4 s phrase, again
    wander = np.cumsum(rng.normal(size=(32, 64)), axis=0)  # never comes back
    noise = rng.normal(size=(32, 64))
    assert mc.structure_of(repeating) > 0.2
    assert abs(mc.structure_of(noise)) < 0.1
    assert mc.structure_of(wander) < mc.structure_of(repeating) - 0.2
    assert math.isnan(mc.structure_of(noise[:2]))


def test_the_checkpoint_keeps_its_head_and_a_mismatch_is_refused(mc, tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    write_int16(music / "melody.wav", melody(40.0))
    common = ["-d", music, "-t", tmp_path / "td", "-n", 8, "-l", 1, "-s", 2, "-g", 1,
              "--no-plots", "--random-seed", 1]
    first = run_cli(*common, "-e", 1, "-o", tmp_path / "a", "--head", "median", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"sequences of {mc.SEQUENCE_SECONDS:g} s" in first.stdout  # 40 s hold the default
    metadata, _, _ = mc.read_checkpoint_metadata(tmp_path / "td" / mc.CHECKPOINT_NAME)
    assert metadata["head"] == "median"
    assert metadata["sequence_frames"] == round(mc.SEQUENCE_SECONDS * mc.FRAMES_PER_SECOND)
    refused = run_cli(*common, "-e", 0, "-o", tmp_path / "b", "--head", "mixture", cwd=tmp_path)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "--head median" in refused.stderr and "model.keras" in refused.stderr
    again = run_cli(*common, "-e", 0, "-o", tmp_path / "c", cwd=tmp_path)  # the checkpoint's
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "c-0.wav").exists()
    assert mc.head_of(mc.load_checkpoint_model(tmp_path / "td" / mc.CHECKPOINT_NAME)).name \
        == "median"


def test_a_checkpoint_from_before_heads_counts_as_average(mc, tmp_path):
    mc.check_checkpoint_head(tmp_path, {}, None)
    mc.check_checkpoint_head(tmp_path, {}, "average")
    with pytest.raises(mc.UserError, match="--head average"):
        mc.check_checkpoint_head(tmp_path, {}, "mixture")


def test_sequence_seconds_out_of_range_is_refused(tmp_path):
    result = run_cli("--sequence-seconds", "0.5", cwd=tmp_path)
    assert result.returncode == 2 and "--sequence-seconds" in result.stderr
    assert "Traceback" not in result.stderr
