"""The quality measures, pinned on signals whose answers are known."""

import math

import numpy as np
import pytest

from conftest import melody, tone, write_int16

RATE = 44_100


def held_chord(seconds):
    t = np.arange(int(seconds * RATE)) / RATE
    return sum(0.2 * np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0)).astype(np.float32)


def white_noise(seconds, seed=0):
    return (0.2 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(
        np.float32)


def reference_of(mc, folder, audio):
    """The training-music reference of one signal, the way the tool builds it: in its cache."""
    music = folder / "music"
    music.mkdir()
    write_int16(music / "music.wav", audio)
    return mc.prepare_cache(music, folder / "cache").reference


@pytest.fixture(scope="module")
def music_reference(mc, tmp_path_factory):
    return reference_of(mc, tmp_path_factory.mktemp("reference"), melody(60.0, seed=11))


def test_level_of_a_sine(mc):
    assert mc.rms_db(tone(1.0, 440.0, amplitude=0.5)) == pytest.approx(
        20 * math.log10(0.5 / math.sqrt(2)), abs=0.01)


def test_movement_is_about_one_for_music_and_near_zero_otherwise(mc, music_reference):
    def movement(audio):
        return mc.measure_piece(audio, music_reference)["movement"]

    assert 0.6 < movement(melody(10.0, seed=12)) < 1.6  # other music in the same style
    assert movement(white_noise(10.0)) < 0.15
    assert movement(held_chord(10.0)) < 0.15
    assert movement(np.zeros(10 * RATE, np.float32)) < 0.15  # silence


def test_clicks_are_one_for_smooth_joins_and_large_for_a_click_every_block(mc):
    t = np.arange(10 * RATE) / RATE
    gliding = 0.3 * np.sin(2 * np.pi * np.cumsum(440 + 100 * np.sin(2 * np.pi * 0.3 * t)) / RATE)
    for smooth in (held_chord(10.0), gliding.astype(np.float32)):
        assert 0.8 < mc.click_ratio(smooth) < 1.2
    # The test melody changes note, phase and all, every 0.25 s: on the block grid, it clicks.
    assert mc.click_ratio(melody(10.0, seed=13)) > 5
    clicked = held_chord(10.0)
    clicked[mc.BLOCK_SIZE :: mc.BLOCK_SIZE] += 0.5  # a step at the start of every block
    assert mc.click_ratio(clicked) > 5
    # What the original pipeline does: blocks that do not join (here, each block's own phase).
    blocks = np.concatenate([tone(0.25, 440.0, phase=k) for k in range(40)])
    assert mc.click_ratio(blocks) > 5


def test_spectral_distance_is_zero_for_the_music_itself_and_grows_with_difference(mc,
                                                                                  music_reference):
    def distance(audio):
        return mc.measure_piece(audio, music_reference)["spectral_distance"]

    itself = distance(melody(60.0, seed=11))
    similar = distance(melody(10.0, seed=14))
    noise = distance(white_noise(10.0))
    assert itself < 1.0
    assert itself < similar < noise
    assert noise > 10 * similar


def test_frechet_distance_of_known_gaussians(mc):
    mean = np.zeros(3)
    assert mc.frechet_distance(mean, np.eye(3), mean, np.eye(3)) == pytest.approx(0, abs=1e-9)
    # Means 2 apart in one dimension, covariances I and 4I: 4 + 3 * (1 + 4 - 2 * 2) = 7.
    assert mc.frechet_distance(mean, np.eye(3), np.array([2.0, 0, 0]), 4 * np.eye(3)) == \
        pytest.approx(7.0)


def test_mel_filterbank_covers_the_spectrum(mc):
    filters = mc.mel_filterbank().T  # stored one band per column
    assert filters.shape == (64, 1025) and filters.min() >= 0 and filters.max() <= 1
    assert (filters.sum(axis=1) > 0).all()  # no empty band
    assert np.argmax(filters[0]) < np.argmax(filters[-1])


def test_streaming_in_chunks_gives_the_whole_signal_answer(mc):
    audio = melody(7.3, seed=15)
    filters = mc.mel_filterbank()
    whole = mc.log_mel_frames(audio, filters)
    chunks = list(mc.log_mel_stream(lambda a, b: audio[a:b], len(audio), filters,
                                    chunk_frames=37))
    assert len(chunks) > 5
    np.testing.assert_allclose(np.concatenate(chunks), whole, atol=1e-3)
    stats = mc.LogMelStats()
    for chunk in chunks:
        stats.add(chunk)
    mean, cov = stats.mean_and_cov()
    np.testing.assert_allclose(mean, whole.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(cov, np.cov(whole.astype(np.float64), rowvar=False), atol=1e-4)
    per_second = mc.MEL_FRAMES_PER_SECOND
    seconds = len(whole) // per_second
    np.testing.assert_allclose(stats.second_means(), whole[: seconds * per_second]
                               .reshape(seconds, per_second, -1).mean(axis=1), atol=1e-4)


def test_the_cached_reference_equals_one_from_the_audio(mc, tmp_path):
    audio = melody(5.0, seed=16)
    reference = reference_of(mc, tmp_path, audio)
    samples, _ = mc.read_wav(tmp_path / "music" / "music.wav")  # what the 16-bit file holds
    whole = mc.log_mel_frames(samples, mc.mel_filterbank()).astype(np.float64)
    np.testing.assert_allclose(reference.mel_mean, whole.mean(axis=0), atol=1e-3)
    np.testing.assert_allclose(reference.mel_cov, np.cov(whole, rowvar=False), atol=1e-2)
    assert reference.rms_db == pytest.approx(mc.rms_db(audio), abs=0.01)
    assert len(reference.second_means) == 1 and len(reference.second_means[0]) == 4


def test_a_wav_read_on_demand_measures_like_the_array(mc, tmp_path, music_reference):
    audio = melody(6.0, seed=17)
    pcm = mc.to_pcm16(audio[None])[0]
    writers = mc.WavWriters([tmp_path / "piece.wav"])
    writers.write(audio[None])
    writers.finish()
    on_demand = mc.WavSamples(tmp_path / "piece.wav", skip_samples=44_100)
    assert len(on_demand) == len(pcm) - 44_100
    np.testing.assert_array_equal(on_demand[100:200], pcm[44_100 + 100 : 44_100 + 200])
    from_file = mc.measure_piece(on_demand, music_reference, scale=1 / 32768)
    from_array = mc.measure_piece(pcm[44_100:], music_reference, scale=1 / 32768)
    on_demand.close()
    for key, value in from_array.items():
        assert from_file[key] == pytest.approx(value, rel=1e-6, nan_ok=True), key


def test_a_figure_a_piece_is_too_short_for_says_so(mc, tmp_path, capsys):
    """Structure needs more than 2 s and the pulse 6 s: a 2-s piece says "too short" for them
    and writes null, not NaN (which is not JSON)."""
    import json

    from conftest import melody, write_int16

    music = tmp_path / "music"
    music.mkdir()
    write_int16(music / "a.wav", melody(8.0))
    cache = mc.prepare_cache(music, tmp_path / "cache")
    path = write_int16(tmp_path / "short-0.wav", melody(2.0, seed=3))
    figures = mc.report_piece(path, cache.reference, 0.0, mc.copy_figures([1, 2], cache.file_starts))
    assert np.isnan(figures["structure"]) and np.isnan(figures["pulse"])
    out = capsys.readouterr().out
    assert "structure too short" in out and "pulse too short, tempo kept too short" in out
    assert "nan" not in out
    written = json.loads((tmp_path / "short-0.json").read_text())
    assert written["structure"] is None and written["pulse"] is None
    assert written["clicks"] == pytest.approx(figures["clicks"])


def soft_notes(seconds=30.0, seed=0, level_db=-30.0, attack_s=0.08, pad=False):
    """Slow-attack notes (3 partials, a squared ramp of attack_s, 50 ms release), one after
    another, 0.25-0.6 s each, at level_db RMS, over a held pad if asked: (audio, notes written)."""
    rng = np.random.default_rng(seed)
    audio, start, written = np.zeros(int(seconds * RATE)), 0.3, 0
    while start < seconds - 1:
        length_s, pitch = rng.uniform(0.25, 0.6), 220 * 2 ** (rng.integers(0, 15) / 12)
        t = np.arange(int((length_s + 0.5) * RATE)) / RATE
        envelope = np.minimum(1, t / attack_s) ** 2 * np.where(
            t < length_s, 1, np.exp(-(t - length_s) / 0.05))
        note = sum(gain * np.sin(2 * np.pi * pitch * k * t) for k, gain in ((1, 1), (2, .5),
                                                                            (3, .25)))
        first = int(start * RATE)
        audio[first : first + len(t)] += (note * envelope)[: len(audio) - first]
        start, written = start + length_s, written + 1
    if pad:
        t = np.arange(len(audio)) / RATE
        audio += 0.5 * sum(np.sin(2 * np.pi * f * t) for f in (110.0, 165.0, 220.0))
    audio *= 10 ** (level_db / 20) / np.sqrt(np.mean(audio ** 2))
    return audio.astype(np.float32), written


def drum_loop(seconds=30.0, bpm=120, seed=0):
    """Kick, hats and snare on eighth notes, each decaying to silence: (audio, hits)."""
    rng = np.random.default_rng(seed)
    audio, length = np.zeros(int(seconds * RATE)), int(0.8 * RATE)
    t = np.arange(length) / RATE
    kick = 1.8 * np.sin(2 * np.pi * 60 * t) * np.exp(-t / 0.08)
    snare = 0.4 * rng.standard_normal(length) * np.exp(-t / 0.05)
    hat = 0.15 * rng.standard_normal(length) * np.exp(-t / 0.01)
    times = np.arange(0.25, seconds - 0.5, 30 / bpm)
    for index, time in enumerate(times):
        hit = (kick, hat, snare, hat)[index % 4]
        first = int(time * RATE)
        audio[first : first + length] += hit[: len(audio) - first]
    return audio.astype(np.float32), len(times)


def notes_counted(mc, audio):
    return mc.log_mel_stats(lambda a, b: audio[a:b], len(audio), mc.mel_filterbank()).onsets()


@pytest.mark.parametrize("seed, attack_s, pad", [(0, 0.08, False), (1, 0.15, False),
                                                 (2, 0.08, True), (4, 0.03, False)])
def test_soft_slow_notes_are_counted_within_a_fifth(mc, seed, attack_s, pad):
    audio, written = soft_notes(seed=seed, attack_s=attack_s, pad=pad)
    assert abs(notes_counted(mc, audio) / written - 1) <= 0.2


@pytest.mark.parametrize("bpm, seed", [(120, 0), (90, 1)])
def test_drum_hits_are_counted_within_a_tenth(mc, bpm, seed):
    audio, hits = drum_loop(bpm=bpm, seed=seed)
    assert abs(notes_counted(mc, audio) / hits - 1) <= 0.1


def test_no_notes_in_noise_or_a_held_chord_and_the_same_in_chunks(mc):
    assert notes_counted(mc, white_noise(30.0)) <= 3  # a few chance peaks at most in 30 s
    assert notes_counted(mc, held_chord(30.0)) == 0
    audio, _ = soft_notes(12.0, seed=5)
    stats = mc.LogMelStats()
    for chunk in mc.log_mel_stream(lambda a, b: audio[a:b], len(audio), mc.mel_filterbank(),
                                   chunk_frames=5):
        stats.add(chunk)
    assert stats.onsets() == notes_counted(mc, audio)


def test_a_cache_that_counted_notes_the_old_way_counts_them_again(mc, tmp_path):
    """An older cache's manifest read notes and the pulse the old way: the music's are read
    again from the cache's own audio (as they were when it was built), kept in the manifest,
    and the cache is not rebuilt."""
    import json

    audio, _ = soft_notes(20.0, seed=6, level_db=-20.0)
    music = tmp_path / "music"
    music.mkdir()
    write_int16(music / "soft.wav", audio)
    built = mc.prepare_cache(music, tmp_path / "cache").reference.onset_rate
    manifest_path = tmp_path / "cache" / mc.CACHE_MANIFEST
    manifest = json.loads(manifest_path.read_text())
    folder = manifest["folder"]
    pulse = manifest["pulse"]
    manifest["onset_rate"] = manifest.pop("note_rate") / 3  # as an older version wrote it
    del manifest["notes_version"]
    manifest["pulse"] = 0.0
    manifest_path.write_text(json.dumps(manifest))
    again = mc.prepare_cache(music, tmp_path / "cache")
    assert again.reference.onset_rate == pytest.approx(built, rel=0.05)
    assert again.reference.pulse == pytest.approx(pulse, abs=0.05)
    kept = json.loads(manifest_path.read_text())
    assert kept["folder"] == folder and kept["note_rate"] == pytest.approx(built, rel=0.05)
    assert kept["notes_version"] == mc.NOTES_VERSION


def soft_beat(seconds=30.0, period=0.5, seed=0):
    """Slow-attack notes at -30 dB, one every `period` s: a beat with no sharp attack."""
    rng = np.random.default_rng(seed)
    audio, start = np.zeros(int(seconds * RATE)), 0.25
    while start < seconds - 1:
        t = np.arange(int((period + 0.4) * RATE)) / RATE
        envelope = np.minimum(1, t / 0.08) ** 2 * np.where(t < period, 1,
                                                          np.exp(-(t - period) / 0.05))
        first = int(start * RATE)
        note = np.sin(2 * np.pi * 220 * 2 ** (rng.integers(0, 12) / 12) * t) * envelope
        audio[first : first + len(t)] += note[: len(audio) - first]
        start += period
    return (audio * 10 ** (-30 / 20) / np.sqrt(np.mean(audio ** 2))).astype(np.float32)


def figures_of(mc, audio):
    return mc.log_mel_stats(lambda a, b: audio[a:b], len(audio), mc.mel_filterbank()).rhythm()


def test_soft_notes_on_a_beat_have_a_pulse_and_their_pitch_is_clear(mc):
    """The pulse is read from the note envelope: soft notes on a steady beat pulse as drums do
    (the flux, averaged over every band, had them at 0), soft notes at random times much less,
    a held chord and noise not at all; soft tones are clearly pitched."""
    steady = figures_of(mc, soft_beat())
    assert steady["pulse"] > 0.5 and steady["tempo_kept"] == 1.0
    assert figures_of(mc, soft_notes()[0])["pulse"] < steady["pulse"] - 0.2
    assert figures_of(mc, held_chord(30.0))["pulse"] == 0.0
    assert figures_of(mc, white_noise(30.0))["pulse"] == 0.0
    assert figures_of(mc, drum_loop()[0])["pulse"] > 0.5
    for seed, pad in ((0, False), (2, True)):
        assert mc.pitch_clarity(soft_notes(seed=seed, pad=pad)[0]) > 0.9
