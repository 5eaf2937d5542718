"""Composing with the music's own sound (--synthesis grains), the copy figures and the
pitch-clarity figure, called directly; and grains through the real command line."""

import json

import numpy as np
import pytest
from scipy.io import wavfile

from conftest import melody, run_cli, tone, write_int16

RATE = 44_100


# -----------------------------------------------------------------------------
# Pitch clarity on known signals


def chord(seconds):
    return sum(tone(seconds, frequency, amplitude=0.2) for frequency in (261.6, 329.6, 392.0))


def blurred(mc, audio, sigma_bins, seed=0):
    """The signal's short-time magnitudes smeared along frequency, with random phase: what an
    average of several spectra sounds like."""
    from scipy.ndimage import gaussian_filter1d
    from scipy.signal import istft, stft

    _, _, spectrum = stft(audio, RATE, nperseg=4096)
    magnitude = gaussian_filter1d(np.abs(spectrum), sigma_bins, axis=0)
    phase = np.exp(2j * np.pi * np.random.default_rng(seed).random(magnitude.shape))
    return istft(magnitude * phase, RATE, nperseg=4096)[1].astype(np.float32)


def test_pitch_clarity_of_known_signals(mc):
    assert mc.pitch_clarity(chord(4.0)) > 0.95
    assert mc.pitch_clarity(melody(4.0)) > 0.8
    assert mc.pitch_clarity(mc.demo_piece(16.0)) > 0.8
    noise = 0.1 * np.random.default_rng(0).standard_normal(4 * RATE).astype(np.float32)
    assert mc.pitch_clarity(noise) < 0.05
    # Blurring the same chord and melody takes their clarity away, the more the wider.
    assert mc.pitch_clarity(blurred(mc, chord(4.0), 2)) < 0.2
    assert mc.pitch_clarity(blurred(mc, melody(4.0), 4)) < 0.2
    assert mc.pitch_clarity(blurred(mc, melody(4.0), 1)) > mc.pitch_clarity(
        blurred(mc, melody(4.0), 4))


def test_pitch_clarity_ignores_silence_and_streams(mc):
    assert np.isnan(mc.pitch_clarity(np.zeros(RATE, np.float32)))
    # Half silence, half chord: only the audible half counts, and it is all pitched.
    half = np.concatenate([np.zeros(2 * RATE, np.float32), chord(2.0)])
    assert mc.pitch_clarity(half) > 0.95
    # Chunked reading gives the counts of the whole signal read at once.
    audio = np.concatenate([melody(3.0), 0.1 * np.random.default_rng(1).standard_normal(3 * RATE)
                            .astype(np.float32)])
    whole = mc.pitch_clarity_counts(lambda a, b: audio[a:b], len(audio), chunk_windows=10_000)
    chunked = mc.pitch_clarity_counts(lambda a, b: audio[a:b], len(audio), chunk_windows=3)
    np.testing.assert_array_equal(whole, chunked)
    assert 0.3 < whole[0] / whole[1] < 0.7


def test_onsets_count_the_notes_that_start(mc):
    def rate(audio):
        stats = mc.log_mel_stats(lambda a, b: audio[a:b], len(audio), mc.mel_filterbank())
        return stats.onsets() / (len(audio) / RATE)

    # A new note every quarter second: 4 a second, less the repeated notes (a fifth of them).
    notes = np.random.default_rng(2).choice([440.0, 523.3, 587.3, 659.3, 784.0], size=40)
    changes = np.count_nonzero(np.diff(notes)) / 10
    staccato = np.concatenate([tone(0.25, frequency, amplitude=0.3) for frequency in notes])
    assert abs(rate(staccato) - changes) <= 0.4
    assert rate(chord(6.0)) == 0
    noise = 0.1 * np.random.default_rng(0).standard_normal(6 * RATE).astype(np.float32)
    assert rate(noise) < 0.5
    # Streamed in chunks, the flux runs on across the chunks' joins.
    audio = mc.demo_piece(20.0)
    stats = mc.LogMelStats()
    for chunk in mc.log_mel_stream(lambda a, b: audio[a:b], len(audio), mc.mel_filterbank(),
                                   chunk_frames=50):
        stats.add(chunk)
    assert stats.onsets() == mc.log_mel_stats(lambda a, b: audio[a:b], len(audio),
                                              mc.mel_filterbank()).onsets()


# -----------------------------------------------------------------------------
# Copy figures


def test_verbatim_stretches_follow_the_files(mc):
    file_starts = np.array([0, 10, 30])
    # 3..6 is one stretch of 4; 9 -> 10 crosses into the next file, so it breaks there.
    indices = [3, 4, 5, 6, 2, 9, 10, 11, 20, 20]
    np.testing.assert_array_equal(mc.verbatim_stretches(indices, file_starts), [4, 1, 1, 2, 1, 1])
    figures = mc.copy_figures(list(range(12, 24)) + [0, 5, 7, 9], file_starts)
    assert figures["longest_verbatim_s"] == 3.0  # 12 frames of 0.25 s
    assert figures["verbatim_2s_share"] == pytest.approx(12 / 16)
    assert mc.copy_figures([1, 3, 5], file_starts) == {"longest_verbatim_s": 0.25,
                                                      "verbatim_2s_share": 0.0}


# -----------------------------------------------------------------------------
# The cache keeps the music's sound and a compressed index of its frames


@pytest.fixture(scope="module")
def cache(mc, tmp_path_factory):
    folder = tmp_path_factory.mktemp("grain-music")
    music = folder / "music"
    music.mkdir()
    write_int16(music / "a.wav", melody(12.0, seed=1))
    write_int16(music / "b.wav", 0.8 * chord(6.3))
    return mc.prepare_cache(music, folder / "cache"), music


def test_the_audio_of_a_frame_equals_the_recording(mc, cache):
    cache, music = cache
    for name, first in [("a.wav", 0), ("b.wav", int(cache.file_starts[1]))]:
        _, recording = wavfile.read(music / name)
        recording = recording / 32767.0
        for local in (0, 5, cache.file_starts[cache.file_names.index(name) + 1] - first - 1):
            start = local * mc.BLOCK_SIZE - mc.BLOCK_SIZE // 2  # the window centred on block i
            expected = np.zeros(mc.WINDOW_SIZE)
            inside = slice(max(start, 0), min(start + mc.WINDOW_SIZE, len(recording)))
            expected[inside.start - start : inside.stop - start] = recording[inside]
            np.testing.assert_allclose(cache.grain(first + local), expected, atol=2e-4)
            # ... and the frame is that window's log-magnitude spectrum.
            frame = np.log(np.abs(np.fft.rfft(cache.grain(first + local) * mc.sqrt_hann()))
                           + mc.MAGNITUDE_FLOOR)
            stored = mc.denormalise(cache.frames[first + local], cache.mean, cache.std)
            np.testing.assert_allclose(frame, stored, atol=2e-2)


def test_the_index_is_the_frames_projected_on_orthonormal_axes(mc, cache):
    cache, _ = cache
    dimensions = len(cache.components)
    # At most INDEX_DIMENSIONS; fewer where the frames span fewer (the held chord repeats).
    assert 10 <= dimensions <= min(mc.INDEX_DIMENSIONS, len(cache.frames))
    # Orthonormal to float32 precision (the weakest axes, found from small eigenvalues, least).
    np.testing.assert_allclose(cache.components @ cache.components.T, np.eye(dimensions),
                               atol=5e-3)
    np.testing.assert_allclose(cache.codes, np.asarray(cache.frames) @ cache.components.T,
                               rtol=1e-3, atol=1e-2)
    real = mc.RealFrames(cache, cache.normalisation)
    raw = mc.denormalise(cache.frames[[3, 20, 40]], cache.mean, cache.std)
    np.testing.assert_array_equal(real.nearest(raw), [3, 20, 40])


def test_a_cache_of_the_previous_version_is_rebuilt_with_a_message(mc, tmp_path, capsys):
    music = tmp_path / "music"
    music.mkdir()
    write_int16(music / "a.wav", melody(3.0))
    mc.prepare_cache(music, tmp_path / "cache")
    manifest_path = tmp_path / "cache" / mc.CACHE_MANIFEST
    manifest = json.loads(manifest_path.read_text())
    # What the previous version wrote: its settings, so its fingerprint, differ.
    manifest["settings"]["cache_version"], manifest["fingerprint"] = 3, "0123456789abcdef"
    manifest_path.write_text(json.dumps(manifest))
    capsys.readouterr()
    rebuilt = mc.prepare_cache(music, tmp_path / "cache")
    assert f"older version of this tool (cache version 3, now {mc.CACHE_VERSION}" \
        in capsys.readouterr().out
    assert rebuilt.audio.shape == ((len(rebuilt.frames) + 1) * mc.BLOCK_SIZE,)
    assert rebuilt.beats.shape == (len(rebuilt.frames), 2)


# -----------------------------------------------------------------------------
# Choosing real frames and sounding their recordings


def memorised(cache, real, noise=0.0, seed=0):
    """A network that learnt its music by heart: from each real frame it predicts the next one
    (fed a frame it does not know, it predicts that frame's nearest real frame's successor)."""
    rng = np.random.default_rng(seed)

    def predict_next(frames):
        frames = frames[:, -1] if frames.ndim == 3 else frames  # a seed: its last frame counts
        raw = mc_denormalise(frames, real)
        following = np.minimum(real.nearest(raw) + 1, len(cache.frames) - 1)
        predicted = real.for_network(following)
        return predicted + noise * rng.standard_normal(predicted.shape).astype(np.float32)

    return predict_next


def mc_denormalise(frames, real):
    return (frames * real.std + real.mean).astype(np.float32)


def write_grains(mc, cache, tmp_path, predict_next, seconds, copy_limit, start=2):
    real = mc.RealFrames(cache, cache.normalisation)
    synthesis = mc.make_synthesis("magnitude", 1, "grains", real, copy_limit)
    seeds = mc.Seeds(mc.denormalise(cache.frames[None, start : start + mc.WINDOW_FRAMES],
                                    cache.mean, cache.std), ["a clip"])
    synthesis.prime(seeds.frames)
    path = tmp_path / "g-0.wav"
    mc.write_pieces(synthesis.steer(predict_next(real)), seeds, cache.normalisation, synthesis,
                    [path], seconds)
    return synthesis, wavfile.read(path)[1] / 32767.0


def test_grains_feed_back_real_frames_and_play_their_recordings(mc, cache, tmp_path):
    cache, _ = cache
    fed = []

    def predictor(real):
        rng = np.random.default_rng(3)

        def predict_next(frames):  # a random real frame of the music each time: many jumps
            fed.append(np.array(frames))
            return real.for_network(rng.integers(len(cache.frames), size=len(frames)))

        return predict_next

    synthesis, samples = write_grains(mc, cache, tmp_path, predictor, 4, copy_limit=100)
    choices = synthesis.copy_indices[0]
    assert len(choices) == 16 and len(samples) == 4 * RATE
    # After the seed, everything fed back in is a real frame of the music, the one chosen.
    for frames, choice in zip(fed[1:], choices):  # fed[0]: the seed, read at once
        np.testing.assert_allclose(frames[0], cache.frames[choice], atol=1e-5)
    # A jump's block starts with the outgoing recording and ends in the chosen window's, each
    # moved by at most half a beat's tolerance and ALIGN_REACH samples.
    reach = mc.ALIGN_REACH + int(mc.BEAT_PHASE_TOLERANCE * 1.2 * RATE)

    def somewhere_in(part, recording, start):
        return min(np.abs(part - recording[start + offset : start + offset + len(part)]).max()
                   for offset in range(-min(reach, start), reach + 1)) < 2e-3

    previous, jumps = 2 + mc.WINDOW_FRAMES - 1, 0
    for block, choice in enumerate(choices):
        got = samples[block * mc.BLOCK_SIZE : (block + 1) * mc.BLOCK_SIZE]
        if choice != previous + 1:
            jumps += 1
            assert somewhere_in(got[:200], np.concatenate([cache.grain(previous),
                                                          np.zeros(reach, np.float32)]),
                                mc.BLOCK_SIZE)
            assert somewhere_in(got[-200:], cache.grain(choice), mc.BLOCK_SIZE - 200)
        previous = choice
    assert jumps >= 2  # (a stretch played on is checked against the recording below)


def test_the_copy_guard_holds_on_a_model_that_memorised_its_music(mc, cache, tmp_path):
    cache, music = cache
    # Without a guard a memorised model plays its music back: one stretch.
    synthesis, samples = write_grains(mc, cache, tmp_path, lambda real: memorised(cache, real),
                                      6, copy_limit=100)
    assert list(np.diff(synthesis.copy_indices[0])) == [1] * 23
    _, recording = wavfile.read(music / "a.wav")
    start = (2 + mc.WINDOW_FRAMES) * mc.BLOCK_SIZE - mc.BLOCK_SIZE // 2
    np.testing.assert_allclose(samples[: 4 * RATE], recording[start : start + 4 * RATE] / 32767,
                               atol=2e-4)
    # With a 2 s guard no stretch is longer than 2 s, and each new one starts elsewhere.
    (tmp_path / "g-0.wav").unlink()
    synthesis, _ = write_grains(mc, cache, tmp_path, lambda real: memorised(cache, real), 6,
                                copy_limit=2.0)
    stretches = mc.verbatim_stretches(synthesis.copy_indices[0], cache.file_starts)
    assert stretches.max() <= 8 and len(stretches) >= 3
    figures = mc.copy_figures(synthesis.copy_indices[0], cache.file_starts)
    assert figures["longest_verbatim_s"] <= 2.0


def test_grains_continue_a_seed_wav_with_a_crossfade(mc, cache, tmp_path):
    cache, _ = cache
    prefix = tone(2.0, 330.0, amplitude=0.3)
    real = mc.RealFrames(cache, cache.normalisation)
    synthesis = mc.make_synthesis("magnitude", 1, "grains", real)
    raw_seed = mc.seed_frames(prefix, "magnitude")[None]
    synthesis.prime(raw_seed)
    synthesis.prime_with_audio(prefix[None, -mc.WINDOW_SIZE:])
    path = tmp_path / "s-0.wav"
    mc.write_pieces(synthesis.steer(memorised(cache, real)), mc.Seeds(raw_seed, ["a seed"], [prefix]),
                    cache.normalisation, synthesis, [path], 3)
    samples = wavfile.read(path)[1] / 32767.0
    assert len(samples) == 5 * RATE
    unchanged = len(prefix) - mc.BLOCK_SIZE
    np.testing.assert_allclose(samples[:unchanged], prefix[:unchanged], atol=1e-4)
    # The join block fades the prefix's last block out as the first grain fades in, keeping
    # the level of their sum: it starts as the prefix and ends as the grain's recording.
    first = synthesis.copy_indices[0][0]
    join = samples[unchanged : len(prefix)]
    np.testing.assert_allclose(join[:20], prefix[unchanged : unchanged + 20], atol=2e-3)
    window = cache.grain(first)
    assert min(np.abs(join[-60:] - window[mc.BLOCK_SIZE - 60 + offset : mc.BLOCK_SIZE + offset])
               .max() for offset in range(-mc.ALIGN_REACH, mc.ALIGN_REACH + 1)) < 2e-2


def test_grains_never_choose_silence(mc, tmp_path):
    """Music with a silent gap, and a network that always predicts that silence: the choices
    are the quietest frames that are not silent, never the gap's."""
    music = tmp_path / "music"
    music.mkdir()
    audio = np.concatenate([melody(4.0, seed=2), np.zeros(3 * RATE, np.float32),
                            0.5 * melody(4.0, seed=3)])
    write_int16(music / "gap.wav", audio)
    cache = mc.prepare_cache(music, tmp_path / "cache")
    levels = cache.reference.frame_levels
    assert levels.shape == (len(cache.frames),)
    silent = np.flatnonzero(levels < cache.rms_db - mc.SILENCE_BELOW_MUSIC_DB)
    assert len(silent) >= 8  # the 3 s gap, less the windows that reach into the music
    real = mc.RealFrames(cache, cache.normalisation)
    quiet = np.asarray(cache.frames[silent[len(silent) // 2]])
    synthesis = mc.make_synthesis("magnitude", 1, "grains", real)
    synthesis.prime(mc.denormalise(cache.frames[None, :4], cache.mean, cache.std))
    predict = synthesis.steer(lambda frames: quiet[None].copy())
    for _ in range(20):
        predict(None)
    chosen = np.concatenate([choices for choices, _, _ in synthesis.chosen])
    assert len(chosen) == 20 and not set(chosen) & set(silent)
    # The frame levels are those of the windows' recorded audio.
    window = cache.grain(5)
    assert levels[5] == pytest.approx(10 * np.log10(np.mean(window.astype(np.float64) ** 2)),
                                      abs=0.05)


def test_spectra_note_the_nearest_real_frames(mc, cache, tmp_path):
    cache, _ = cache
    real = mc.RealFrames(cache, cache.normalisation)
    synthesis = mc.make_synthesis("magnitude", 1, "spectra", real)
    frames = mc.denormalise(cache.frames[[7, 8, 9, 30]], cache.mean, cache.std)
    for frame in frames:
        synthesis.push(frame[None])
    assert synthesis.copy_indices == [[7, 8, 9, 30]]


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-4), ("bfloat16", 2e-2)])
def test_a_step_with_the_index_folded_in_chooses_as_the_full_one(mc, cache, dtype, tolerance):
    """Grains read a prediction only through the index: folded into the output layer, the
    step predicts the index's numbers directly, sampled errors included, and the same real
    frames are chosen (in float32; in bfloat16 the numbers agree to its 8 significant bits)."""
    cache, _ = cache
    model = mc.build_model(mc.NUM_FEATURES, 8, 2)
    head = mc.head_of(model)
    # The network's normalisation differs from the cache's, as when the music changed.
    real = mc.RealFrames(cache, mc.Normalisation(cache.mean * 0.9 + 0.1, cache.std * 1.1))
    errors = np.random.default_rng(0).normal(size=(6, mc.NUM_FEATURES)).astype(np.float32)
    seeds = np.stack([cache.frames[start : start + mc.WINDOW_FRAMES] for start in (2, 20)])
    outputs, choices = {}, {}
    for folded in (False, True):
        synthesis = mc.make_synthesis("magnitude", 2, "grains", real)
        fold = mc.output_fold(synthesis, head) if folded else None
        step = mc.make_step_function(model, 2, mc.compile_step(model, dtype, fold))
        seen = []

        def noted(frames, step=step, seen=seen):
            seen.append(step(frames))
            return seen[-1]

        predict = mc.with_sampled_errors(noted, mc.folded_errors(errors, fold), 0.5,
                                         np.random.default_rng(1))
        synthesis.prime(mc.denormalise(seeds, cache.mean, cache.std))
        list(mc.generate(synthesis.steer(predict), seeds, 12))
        outputs[folded], choices[folded] = seen, np.array(synthesis.chosen)
    assert outputs[True][0].shape == (2, len(cache.components))  # the index's width, not a frame's
    for full, folded in zip(outputs[False], outputs[True]):
        codes = real.encode(mc.denormalise(full, real.mean, real.std))
        np.testing.assert_allclose(folded, codes, atol=tolerance * np.abs(codes).max())
    if dtype == "float32":
        np.testing.assert_array_equal(choices[True], choices[False])
        assert len(np.unique(choices[True])) > 2  # the choices move: not one frame throughout
    # Nothing to fold for spectra, or for units, whose outputs are chances, not a frame.
    assert mc.output_fold(mc.make_synthesis("magnitude", 2, "spectra", real), head) is None
    assert mc.output_fold(synthesis, mc.make_head("units")) is None


# -----------------------------------------------------------------------------
# Through the real command line


def test_grains_and_spectra_through_the_command_line(tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    write_int16(music / "a.wav", melody(20.0, seed=4))
    common = ["-d", music, "-t", tmp_path / "train", "-n", "16", "-l", "1", "-s", "3", "-g", "2",
              "--random-seed", "5", "--no-plots"]
    # A network of frames (the average head) plays both ways; grains' own default, the units
    # head, plays only grains (tests/test_units.py)
    trained = run_cli(*common, "-e", "1", "--head", "average", "-o", tmp_path / "grains",
                      cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "sounded as grains" in trained.stdout
    spectra = run_cli(*common, "-e", "0", "--synthesis", "spectra", "-o", tmp_path / "spectra",
                      cwd=tmp_path)
    assert spectra.returncode == 0, spectra.stderr
    for name in ("grains", "spectra"):
        for index in range(2):
            report = json.loads((tmp_path / f"{name}-{index}.json").read_text())
            assert 0 <= report["pitch_clarity"] <= 1 and report["music_pitch_clarity"] > 0.5
            assert 0.25 <= report["longest_verbatim_s"] <= 3.0
            assert 0 <= report["verbatim_2s_share"] <= 1
            assert report["onsets_per_s"] >= 0 and report["music_onsets_per_s"] > 1
            rate, samples = wavfile.read(tmp_path / f"{name}-{index}.wav")
            assert rate == RATE and len(samples) == 3 * RATE and np.abs(samples).max() > 1000
    assert "verbatim: longest" in spectra.stdout


def test_grains_with_plain_frames_are_refused_at_once(tmp_path):
    result = run_cli("--synthesis", "grains", "--frames", "plain", "-d", tmp_path / "none",
                     cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--synthesis grains needs magnitude frames" in result.stderr
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("value", ["0.1", "nan", "x"])
def test_a_bad_copy_limit_is_refused(tmp_path, value):
    result = run_cli("--copy-limit", value, cwd=tmp_path)
    assert result.returncode == 2 and "--copy-limit" in result.stderr


# -----------------------------------------------------------------------------
# A --seed-wav file's own recording joins the music its piece's grains choose from


def seeds_of(mc, tmp_path, audios):
    paths = []
    for index, audio in enumerate(audios):
        path = tmp_path / f"seed-{index}.flac"  # another format and rate than the music's
        import soundfile

        soundfile.write(path, audio[::2], RATE // 2, format="FLAC")
        paths.append(path)
    return mc.read_seed_wavs(paths, "magnitude", 2.0)


def test_a_seed_joins_the_music_its_own_piece_chooses_from(mc, cache, tmp_path):
    cache, _ = cache
    seeds = seeds_of(mc, tmp_path, [melody(5.0, seed=5), tone(4.0, 415.3, amplitude=0.3)])
    music, ranges = mc.with_seed_music(cache, seeds)
    first, stop = ranges[0]
    assert first == len(cache.frames) and ranges[1][0] == stop
    assert len(music.codes) == len(music.beats) == len(music.chroma) == ranges[1][1]
    # A seed frame's grain is the seed's own recording; its last frame's window ends where
    # the seed ends, so a piece goes on from its very end.
    audio = seeds.audios[0]
    np.testing.assert_allclose(music.grain(stop - 1), audio[-mc.WINDOW_SIZE:], atol=1e-4)
    np.testing.assert_allclose(music.grain(stop - 3), audio[-mc.WINDOW_SIZE - 2 * mc.BLOCK_SIZE :
                                                            -2 * mc.BLOCK_SIZE], atol=1e-4)
    # Its frames are indexed as the cache's: the nearest frame to the seed's last is that frame.
    real = mc.RealFrames(music, cache.normalisation)
    assert real.nearest(seeds.frames[:, -1])[0] == stop - 1
    length = (stop - first) * mc.BLOCK_SIZE + mc.BLOCK_SIZE - mc.BLOCK_SIZE // 2
    third = mc.frames_from_audio(audio[-length:], "magnitude")[2]
    np.testing.assert_allclose(real.for_network([first + 2])[0],
                               mc.normalise(third, cache.mean, cache.std), atol=1e-3)
    # The cache itself is untouched, and nothing of the seed is written anywhere.
    assert len(cache.codes) == first


def test_a_piece_never_plays_a_seed_s_recording_again_its_own_or_another_s(mc, cache, tmp_path):
    """A continuation goes on from its seed's very end into the music: a network that wants a
    seed's sound, its own seed's or the other piece's, frame by frame, gets the music's frames
    nearest it, never the seeds' own recordings (the seed is heard already; replaying it is
    not continuing it, and the walk, whose best join is always the seed's own next frame,
    looped over it)."""
    cache, _ = cache
    seeds = seeds_of(mc, tmp_path, [tone(8.0, 330.0, amplitude=0.3),
                                     tone(8.0, 415.3, amplitude=0.3)])
    music, ranges = mc.with_seed_music(cache, seeds)
    real = mc.RealFrames(music, cache.normalisation)
    wanted = [np.asarray(music.codes[first + 4 : stop]) for first, stop in ranges]
    for order in ((1, 0), (0, 1)):  # the other piece's seed, then its own
        synthesis = mc.make_synthesis("magnitude", 2, "grains", real, 1.0, ranges)
        synthesis.prime(seeds.frames)
        synthesis.prime_with_audio(seeds.endings)
        assert list(synthesis.previous) == [stop - 1 for _, stop in ranges]
        for step in range(24):
            synthesis.choose_by_codes(np.stack([wanted[order[0]][step % 20],
                                                wanted[order[1]][step % 20]]))
            synthesis.push(None)
        for piece in range(2):
            chosen = np.array(synthesis.copy_indices[piece])
            assert (chosen < len(cache.frames)).all()  # the music's own frames only
            for seed_range in ranges:
                assert mc.seed_share(chosen, seed_range) == {"seed_share": 0.0}
    assert mc.seed_share([4, 5, 7, 8], (5, 8)) == {"seed_share": 0.5}  # first in, stop out


def in_key(seconds, root, seed):
    """A major chord on `root` / 2 under a lead drawn from the major scale on `root`, 4 notes a
    second: music in one key."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    chord = sum(0.1 * np.sin(2 * np.pi * root / 2 * 2 ** (step / 12) * t) for step in (0, 4, 7))
    notes = root * 2 ** (rng.choice([0, 2, 4, 5, 7, 9, 11], size=int(seconds * 4) + 1) / 12)
    return (chord + 0.3 * np.sin(2 * np.pi * notes[(t * 4).astype(int)] * t)).astype(np.float32)


def test_a_key_leans_as_its_music_does_and_noise_has_none(mc):
    def lean(audio):
        chroma = mc.frame_chroma(mc.frames_from_audio(audio, "magnitude"), "magnitude")
        return mc.key_lean(chroma.sum(axis=0)[None], "magnitude")[0]

    a_major, again = lean(in_key(8.0, 440.0, seed=1)), lean(in_key(8.0, 220.0, seed=2))
    d_sharp = lean(in_key(8.0, 622.3, seed=3))
    assert np.linalg.norm(a_major) == pytest.approx(1, abs=1e-5)
    assert a_major @ again > 0.7 and a_major @ d_sharp < 0  # an octave: the same; a tritone: not
    noise = 0.1 * np.random.default_rng(0).standard_normal(8 * RATE).astype(np.float32)
    assert not lean(noise).any() and not lean(np.zeros(8 * RATE, np.float32)).any()


def test_a_continuation_keeps_to_its_seed_s_key(mc, tmp_path, monkeypatch):
    """A seed in A major, continued into music of two files: A major an octave lower, and D#
    major, a tritone away, which joins the seed's sound better. Without the key rule the walk's
    continuation goes mostly into D# major; with it, only into A major. A piece that is not a
    continuation has no key to keep."""
    (tmp_path / "music").mkdir()
    write_int16(tmp_path / "music" / "a-major.wav", in_key(12.0, 220.0, seed=1))
    write_int16(tmp_path / "music" / "d-sharp-major.wav", in_key(12.0, 622.3, seed=2))
    cache = mc.prepare_cache(tmp_path / "music", tmp_path / "cache")
    seeds = seeds_of(mc, tmp_path, [in_key(6.0, 440.0, seed=3)])
    music, ranges = mc.with_seed_music(cache, seeds)
    real = mc.RealFrames(music, cache.normalisation)

    def in_a_major(weight):
        monkeypatch.setattr(mc, "KEY_WEIGHT", weight)
        synthesis = mc.make_synthesis("magnitude", 1, "grains", real, 1.0, ranges)
        synthesis.prime(seeds.frames)
        synthesis.prime_with_audio(seeds.endings)
        for _ in range(40):
            synthesis.choose_by_codes(None)
        chosen = np.array([choice for choice, _, _ in synthesis.chosen])[:, 0]
        assert (chosen < cache.file_starts[2]).all()  # the music's, never the seed's
        return np.mean(chosen < cache.file_starts[1])

    weight = mc.KEY_WEIGHT
    assert in_a_major(0.0) < 0.5 and in_a_major(weight) == 1.0
    alone = mc.make_synthesis("magnitude", 1, "grains", mc.RealFrames(cache, cache.normalisation))
    alone.prime(seeds.frames)
    assert alone.key is None and alone.key_cost(0, np.arange(4)) == 1
    (tmp_path / "noise").mkdir()
    noise = seeds_of(mc, tmp_path / "noise", [0.1 * np.random.default_rng(4).standard_normal(
        6 * RATE).astype(np.float32)])  # a seed with no key: nothing to keep
    noisy = mc.make_synthesis("magnitude", 1, "grains", real, 1.0, ranges)
    noisy.prime(noise.frames)
    assert not noisy.key.any() and noisy.key_cost(0, np.arange(4)) == 1
