"""Rhythm and joins (issue "Grains that keep the beat"): the beat tracker on click tracks of
known tempo, the crossfades' level, the waveform alignment, and a jump between two copies of a
drum loop started at different phases, which must keep the hits on one grid."""

import numpy as np
import pytest

from conftest import tone, write_int16

RATE = 44_100


def hits(times, seconds, decay_s=0.004, seed=0, amplitude=0.6):
    """Short decaying noise bursts (drum hits) at `times` (s), in a signal of `seconds`."""
    rng = np.random.default_rng(seed)
    audio = np.zeros(int(seconds * RATE), np.float32)
    length = int(0.04 * RATE)
    burst = (amplitude * rng.standard_normal(length) * np.exp(-np.arange(length) / (decay_s * RATE))
             ).astype(np.float32)
    for time in times:
        start = int(round(time * RATE))
        audio[start : start + length] += burst[: len(audio[start : start + length])]
    return audio


def envelope(mc, audio):
    return mc.log_mel_stats(lambda a, b: audio[a:b], len(audio), mc.mel_filterbank()) \
        .onset_envelope()


def beat_errors(found, clicks):
    return np.array([np.min(np.abs(clicks - beat)) for beat in found])


# -----------------------------------------------------------------------------
# The beat tracker


@pytest.mark.parametrize("bpm, start", [(120, 0.5), (137, 0.31), (75, 0.2)])
def test_the_beats_of_a_steady_click_track(mc, bpm, start):
    clicks = start + np.arange(0, 30, 60 / bpm)
    clicks = clicks[clicks < 29.9]
    beats, pulse = mc.track_beats(envelope(mc, hits(clicks, 30)))
    assert pulse > 0.6
    assert abs(len(beats) - len(clicks)) <= 1
    assert np.median(beat_errors(beats, clicks)) < 0.010
    assert beat_errors(beats, clicks).max() < 0.025
    assert np.median(np.diff(beats)) == pytest.approx(60 / bpm, rel=0.02)


def test_the_beats_follow_a_change_of_tempo(mc):
    clicks = np.concatenate([0.5 + np.arange(0, 14.5, 0.5), 15 + np.arange(0, 15, 2 / 3)])
    beats, _ = mc.track_beats(envelope(mc, hits(clicks, 30)))
    assert abs(len(beats) - len(clicks)) <= 1
    assert beat_errors(beats, clicks).max() < 0.025
    # Each beat's own place is kept: the frames' periods follow the music's.
    places, _ = mc.frame_beats(envelope(mc, hits(clicks, 30)), 120)
    assert np.median(places[8:52, 1]) == pytest.approx(0.5, rel=0.03)
    assert np.median(places[68:112, 1]) == pytest.approx(2 / 3, rel=0.03)


def test_music_without_a_beat_has_none(mc):
    noise = (0.1 * np.random.default_rng(1).standard_normal(20 * RATE)).astype(np.float32)
    chord = sum(tone(20, frequency, amplitude=0.2) for frequency in (261.6, 329.6, 392.0))
    for audio in (noise, chord):
        beats, pulse = mc.track_beats(envelope(mc, audio))
        assert len(beats) == 0 and not pulse >= mc.STEADY_PULSE
        places, _ = mc.frame_beats(envelope(mc, audio), 80)
        assert np.isnan(places).all()


def test_frames_know_their_place_in_the_beat(mc):
    clicks = 0.1 + np.arange(0, 20, 0.5)
    places, pulse = mc.frame_beats(envelope(mc, hits(clicks, 20)), 80)
    # Frame j's grain starts at j * 0.25 - 0.125 s: a beat each 0.5 s from 0.1 s.
    starts = np.arange(80) * 0.25 - 0.125
    expected = np.mod((starts - 0.1) / 0.5, 1.0)
    apart = np.abs(np.mod(places[:, 0] - expected + 0.5, 1.0) - 0.5)
    assert pulse > 0.6 and np.median(apart) < 0.03 and apart.max() < 0.06
    assert places[:, 1] == pytest.approx(0.5, rel=0.03)


def test_the_pulse_and_tempo_figures(mc):
    steady = envelope(mc, hits(0.2 + np.arange(0, 30, 0.5), 30))
    figures = mc.rhythm_figures(*mc.rhythm_windows(steady))
    assert figures["pulse"] > 0.6 and figures["tempo_kept"] == 1.0
    # The same hits, but each 6-s stretch at another tempo: the pulse stays, the tempo does not.
    times, now = [], 0.0
    for period in (0.5, 0.37, 0.61, 0.44, 0.71):
        times += list(now + np.arange(0, 6, period))
        now += 6
    changing = mc.rhythm_figures(*mc.rhythm_windows(envelope(mc, hits(times, 30))))
    assert changing["pulse"] > 0.3 and changing["tempo_kept"] < 0.6
    noise = (0.1 * np.random.default_rng(2).standard_normal(30 * RATE)).astype(np.float32)
    assert mc.rhythm_figures(*mc.rhythm_windows(envelope(mc, noise)))["pulse"] < 0.2
    assert np.isnan(mc.rhythm_figures(*mc.rhythm_windows(steady[:100]))["pulse"])


# -----------------------------------------------------------------------------
# Joins: the crossfade keeps the level; the alignment finds the waveform


def test_crossfades_keep_the_level_of_unrelated_and_identical_sound(mc):
    rng = np.random.default_rng(3)
    block = mc.BLOCK_SIZE
    a, b = (0.2 * rng.standard_normal((2, 40, block))).astype(np.float32)
    fade_out, fade_in = mc.crossfade_gains(0.0)
    mixed = fade_out * a + fade_in * b
    middle = slice(block // 2 - 1000, block // 2 + 1000)
    level = np.sqrt(np.mean(np.square(mixed[:, middle])))
    assert 20 * np.log10(level / 0.2) == pytest.approx(0, abs=0.3)
    # A Hann crossfade, by contrast, dips 3 dB half-way through.
    hann = np.square(mc.sqrt_hann())  # windows a block apart sum to 1
    hann_out, hann_in = hann[block:], hann[:block]
    dipped = np.sqrt(np.mean(np.square((hann_out * a + hann_in * b)[:, middle])))
    assert 20 * np.log10(dipped / 0.2) < -2.5
    # Identical signals: the gains sum to 1, so the waveform passes unchanged.
    fade_out, fade_in = mc.crossfade_gains(1.0)
    np.testing.assert_allclose(fade_out + fade_in, 1.0, atol=1e-6)
    signal = tone(block / RATE, 330.0)
    np.testing.assert_allclose(fade_out * signal + fade_in * signal, signal, atol=1e-6)
    # Starts with the outgoing sound alone, ends with the incoming one alone.
    for correlation in (0.0, 0.5, 1.0):
        fade_out, fade_in = mc.crossfade_gains(correlation)
        np.testing.assert_allclose([fade_out[0], fade_in[0]], [1, 0], atol=1e-3)
        np.testing.assert_allclose([fade_out[-1], fade_in[-1]], [0, 1], atol=1e-3)


@pytest.mark.parametrize("shift", [-200, -37, 0, 91, 255])
def test_the_alignment_finds_a_shifted_tone(mc, shift):
    reach, block = mc.ALIGN_REACH, mc.BLOCK_SIZE
    signal = tone(1.0, 220.0) + tone(1.0, 330.0, amplitude=0.2)
    outgoing = signal[10_000 : 10_000 + block]
    # The recording around the incoming grain: the same tone, moved by `shift` samples.
    recording = signal[10_000 - reach + shift : 10_000 + block + reach + shift]
    offset, correlation = mc.best_alignment(outgoing, recording, reach)
    # The fit repeats each period of the tone (200.45 samples at 220 Hz): any period away is
    # the same waveform, so the offset is right modulo the period.
    period = RATE / 110.0  # the two tones repeat together every 1/110 s
    assert min(abs(offset + shift) % period, period - abs(offset + shift) % period) < 2
    assert correlation > 0.99


# -----------------------------------------------------------------------------
# A jump between two copies of one drum loop keeps the hits on one grid


def drum_loop(seconds, start, seed, marker_hz):
    """Kicks on each beat at 120 a minute and softer hats between, from `start` (s); a quiet
    tone marks which copy it is."""
    kicks = hits(start + np.arange(-1, seconds * 2 + 1) * 0.5, seconds, decay_s=0.006, seed=seed)
    hats = hits(start + 0.25 + np.arange(-1, seconds * 2 + 1) * 0.5, seconds, decay_s=0.002,
                seed=seed + 1, amplitude=0.25)
    return kicks + hats + tone(seconds, marker_hz, amplitude=0.01)


def onset_times(samples, threshold=0.3):
    """Times (s) where the absolute signal first passes `threshold`, at least 0.1 s apart."""
    above = np.flatnonzero(np.abs(samples) > threshold)
    starts = above[np.concatenate([[True], np.diff(above) > 0.1 * RATE])]
    return starts / RATE


def test_a_jump_between_copies_of_a_drum_loop_keeps_the_grid(mc, tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    write_int16(music / "a.wav", drum_loop(12.0, 0.1, seed=1, marker_hz=440.0))
    write_int16(music / "b.wav", drum_loop(12.0, 0.27, seed=1, marker_hz=660.0))  # 0.17 s later
    cache = mc.prepare_cache(music, tmp_path / "cache")
    assert np.isfinite(cache.beats).all()
    real = mc.RealFrames(cache, cache.normalisation)
    synthesis = mc.make_synthesis("magnitude", 1, "grains", real)
    start = 8  # the seed ends at frame 8 of a.wav; then the network "wants" b.wav
    synthesis.prime(mc.denormalise(cache.frames[None, start - 4 : start], cache.mean, cache.std))
    second = int(cache.file_starts[1])
    wanted = np.asarray(cache.codes[second + 10 : second + 30])
    blocks = []
    for step in range(16):
        codes = real.cache.codes[[synthesis.previous[0] + 1]] if step < 4 \
            else wanted[step - 4][None]
        synthesis.choose_by_codes(codes)
        blocks.append(synthesis.push(None)[0])
    chosen = np.array(synthesis.copy_indices[0])
    assert (chosen[:4] < second).all() and (chosen[4:] >= second).all()  # one jump, to b.wav
    output = np.concatenate(blocks)
    kicks = onset_times(output)
    # a.wav's hits fall at 0.1 + k/4 s of a.wav; the output starts at frame 9's window,
    # 9 * 0.25 - 0.125 s into a.wav: every hit, a.wav's or b.wav's, stays on that grid.
    grid = np.mod(kicks - (0.1 - (start + 1) * 0.25 + 0.125), 0.25)
    grid = np.minimum(grid, 0.25 - grid)
    assert len(kicks) >= 7 and grid.max() < 0.003, (kicks, grid)


def test_a_file_too_short_for_a_beat_has_none(mc):
    for samples in (0, 100, 3000, RATE):
        audio = hits([0.01], max(samples, 1) / RATE)[:samples]
        places, pulse = mc.frame_beats(envelope(mc, audio), 3)
        assert np.isnan(places).all() and not pulse >= mc.STEADY_PULSE
        assert np.isnan(mc.rhythm_figures(*mc.rhythm_windows(envelope(mc, audio)))["pulse"])
