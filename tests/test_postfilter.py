"""The spectra way's postfilter: it gives a blurred spectrum back its detail, leaves real
music nearly alone, keeps every frame's level, and is used (or not) through the command line."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from conftest import melody, run_cli, write_int16


@pytest.fixture(scope="module")
def music_frames(mc):
    return mc.frames_from_audio(melody(30.0, seed=3), "magnitude")  # (120, 11 026)


def peak_heights(mc, frames, bins):
    """How far the given bins stand above each frame's own spectral envelope."""
    return np.mean(np.take_along_axis(mc.Postfilter.detail(frames), bins, axis=-1))


def test_a_smeared_spectrum_gets_its_peaks_back_at_its_level(mc, music_frames):
    postfilter = mc.Postfilter.from_music(music_frames[:60])
    real = music_frames[70:90]
    smeared = gaussian_filter1d(real, 3, axis=-1)  # partials smeared over about 6 Hz
    restored = postfilter(smeared)
    peaks = np.argsort(real, axis=-1)[:, -20:]  # the real frames' strongest bins
    assert peak_heights(mc, smeared, peaks) < 0.6 * peak_heights(mc, real, peaks)
    assert peak_heights(mc, restored, peaks) > 1.25 * peak_heights(mc, smeared, peaks)
    variance = [mc.Postfilter.band_variances(mc.Postfilter.detail(f)).mean()
                for f in (real, smeared, restored)]
    assert variance[1] < 0.5 * variance[0] and variance[2] > 0.8 * variance[0]
    np.testing.assert_allclose(mc.frame_level(restored), mc.frame_level(smeared), atol=1e-3)


def test_a_real_frame_changes_little_and_keeps_its_level(mc, music_frames):
    postfilter = mc.Postfilter.from_music(music_frames[:60])
    real = music_frames[70:90]
    changed = postfilter(real)
    smeared = gaussian_filter1d(real, 3, axis=-1)
    assert np.sqrt(np.mean((changed - real) ** 2)) < 0.6 * np.sqrt(np.mean((smeared - real) ** 2))
    np.testing.assert_allclose(mc.frame_level(changed), mc.frame_level(real), atol=1e-3)
    flat = np.full((2, real.shape[1]), -2.0, np.float32)  # no detail at all: nothing to scale
    np.testing.assert_allclose(postfilter(flat), flat, atol=1e-5)


def test_spectra_are_postfiltered_when_asked(tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    write_int16(music / "a.wav", melody(12.0, seed=8))
    common = ["-d", music, "-t", tmp_path / "train", "-n", "8", "-l", "1", "-g", "1", "-s", "3",
              "--synthesis", "spectra", "--random-seed", "2", "--no-plots"]
    first = run_cli(*common, "-e", "1", "-o", tmp_path / "with", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    plain = run_cli(*common, "-e", "0", "-o", tmp_path / "without",
                    cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    again = run_cli(*common, "-e", "0", "--postfilter", "-o", tmp_path / "again", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    pieces = [(tmp_path / f"{name}-0.wav").read_bytes() for name in ("with", "without", "again")]
    assert pieces[1] != pieces[2]  # the same model and seed: only the postfilter differs


def test_the_prediction_is_sharpened_when_sounded_and_fed_back_unchanged(mc, music_frames):
    """Sharpening keeps what the postfilter would change in each prediction and adds it to the
    frame sounded for it, in order, at that frame's level; what is fed back is the prediction
    itself, and a seed's frames (sounded before any prediction) pass unchanged."""
    mean, std = music_frames.mean(axis=0), music_frames.std(axis=0) + 1e-3
    real = music_frames[70:72]
    smeared = gaussian_filter1d(real, 3, axis=-1)  # a blurred prediction: sharpened
    flat = np.full_like(real, -2.0)  # a prediction without detail: nothing to sharpen
    predictions = iter([mc.normalise(smeared, mean, std), mc.normalise(flat, mean, std)])
    sharpening = mc.Sharpening(mc.Postfilter.from_music(music_frames[:60]),
                               mc.Normalisation(mean, std))
    predict_next = sharpening.watch(lambda frames: next(predictions))
    np.testing.assert_array_equal(sharpening(real), real)  # a seed: nothing pending
    first, second = predict_next(None), predict_next(None)  # as the audio thread lags one
    np.testing.assert_allclose(mc.denormalise(first, mean, std), smeared, atol=1e-4)
    noise = np.random.default_rng(0).normal(0, 0.3, real.shape).astype(np.float32)
    sounded_frames = mc.denormalise(first, mean, std) + noise  # with a sampled error, say
    sounded = sharpening(sounded_frames)
    peaks = np.argsort(real, axis=-1)[:, -20:]
    assert peak_heights(mc, sounded, peaks) > 1.25 * peak_heights(mc, sounded_frames, peaks)
    np.testing.assert_allclose(mc.frame_level(sounded), mc.frame_level(sounded_frames),
                               atol=1e-3)
    flat_sounded = mc.denormalise(second, mean, std) + noise
    np.testing.assert_allclose(sharpening(flat_sounded), flat_sounded, atol=1e-4)
    assert not sharpening.changes  # one change per prediction, each sounded once
    np.testing.assert_array_equal(sharpening(real), real)
