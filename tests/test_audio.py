"""Reading WAV files of every encoding SciPy reads, and the block <-> frame transform."""

import os

import numpy as np
import pytest
from scipy.io import wavfile

from conftest import SAMPLE_RATE, melody, tone, write_int16

SIGNAL = tone(0.5, 440.0, amplitude=0.5)


def encode(audio, dtype):
    """float audio in [-1, 1] -> samples of one WAV encoding, as recording software writes them."""
    if dtype == "uint8":
        return np.round(audio * 127 + 128).astype(np.uint8)
    if dtype == "int16":
        return np.round(audio * 32767).astype(np.int16)
    if dtype == "int32":
        return np.round(audio * 2147483647).astype(np.int32)
    return audio.astype(dtype)


def write_24bit(path, audio, rate=SAMPLE_RATE):
    """A 24-bit PCM WAV written byte by byte (SciPy reads 24-bit but cannot write it)."""
    samples = np.round(audio * 8388607).astype("<i4")
    data = samples.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    header = (b"RIFF" + (36 + len(data)).to_bytes(4, "little") + b"WAVEfmt "
              + (16).to_bytes(4, "little") + (1).to_bytes(2, "little")
              + (1).to_bytes(2, "little") + rate.to_bytes(4, "little")
              + (rate * 3).to_bytes(4, "little") + (3).to_bytes(2, "little")
              + (24).to_bytes(2, "little") + b"data" + len(data).to_bytes(4, "little"))
    path.write_bytes(header + data)


@pytest.mark.parametrize("dtype, tolerance", [("uint8", 1 / 100), ("int16", 1e-4),
                                              ("int32", 1e-6), ("float32", 1e-7),
                                              ("float64", 1e-7)])
def test_every_encoding_reads_as_float32_in_range(mc, tmp_path, dtype, tolerance):
    path = tmp_path / f"{dtype}.wav"
    wavfile.write(path, SAMPLE_RATE, encode(SIGNAL, dtype))
    audio, notes = mc.read_wav(path)
    assert audio.dtype == np.float32 and notes == []
    assert np.abs(audio).max() <= 1.0
    np.testing.assert_allclose(audio, SIGNAL, atol=tolerance)


def test_24_bit(mc, tmp_path):
    write_24bit(tmp_path / "24.wav", SIGNAL)
    assert wavfile.read(tmp_path / "24.wav")[1].dtype == np.int32  # SciPy's own reading
    audio, _ = mc.read_wav(tmp_path / "24.wav")
    np.testing.assert_allclose(audio, SIGNAL, atol=1e-6)


def test_stereo_with_different_channels_is_averaged(mc, tmp_path):
    left, right = tone(0.5, 440.0, amplitude=0.4), tone(0.5, 660.0, amplitude=0.2)
    stereo = np.stack([left, right], axis=1)
    wavfile.write(tmp_path / "stereo.wav", SAMPLE_RATE, np.round(stereo * 32767).astype(np.int16))
    audio, _ = mc.read_wav(tmp_path / "stereo.wav")
    assert audio.ndim == 1 and len(audio) == len(left)
    np.testing.assert_allclose(audio, (left + right) / 2, atol=1e-4)


def test_six_channels(mc, tmp_path):
    channels = np.stack([tone(0.2, 100.0 * (i + 1), amplitude=0.1) for i in range(6)], axis=1)
    wavfile.write(tmp_path / "surround.wav", SAMPLE_RATE, channels)
    audio, _ = mc.read_wav(tmp_path / "surround.wav")
    np.testing.assert_allclose(audio, channels.mean(axis=1), atol=1e-7)


@pytest.mark.parametrize("rate", [48_000, 22_050, 8_000, 96_000])
def test_other_rates_are_resampled_to_44100(mc, tmp_path, rate):
    seconds, frequency = 1.0, 440.0
    write_int16(tmp_path / "x.wav", tone(seconds, frequency, rate=rate), rate=rate)
    audio, _ = mc.read_wav(tmp_path / "x.wav")
    assert len(audio) == SAMPLE_RATE * seconds
    spectrum = np.abs(np.fft.rfft(audio))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(audio)
    assert abs(peak_hz - frequency) <= 1.0  # the pitch survives: same tone at the new rate
    reference = tone(seconds, frequency)
    middle = slice(1000, -1000)  # away from the filter's edges
    np.testing.assert_allclose(audio[middle], reference[middle], atol=0.01)


def test_float_beyond_full_scale_and_nan_are_repaired_and_noted(mc, tmp_path):
    audio = SIGNAL * 3.0
    audio[10:20] = np.nan
    wavfile.write(tmp_path / "hot.wav", SAMPLE_RATE, audio.astype(np.float32))
    repaired, notes = mc.read_wav(tmp_path / "hot.wav")
    assert np.isfinite(repaired).all() and np.abs(repaired).max() <= 1.0
    assert (repaired[10:20] == 0).all()
    assert any("NaN" in note for note in notes) and any("clipped" in note for note in notes)


def unusable_files(tmp_path):
    """Each entry: (file name, how to make it, words the reason must contain)."""
    empty_data = np.zeros(0, dtype=np.int16)
    header_only = tmp_path / "_header.wav"
    wavfile.write(header_only, SAMPLE_RATE, empty_data)
    full = tmp_path / "_full.wav"
    write_int16(full, SIGNAL)
    nan_audio = np.full(1000, np.nan, dtype=np.float32)
    return [
        ("empty.wav", lambda p: p.write_bytes(b""), "not a readable WAV"),
        ("text.wav", lambda p: p.write_text("hello, I am not audio\n" * 10), "not a readable WAV"),
        ("no-samples.wav", lambda p: p.write_bytes(header_only.read_bytes()), "no samples"),
        ("truncated.wav", lambda p: p.write_bytes(full.read_bytes()[:30]), "not a readable WAV"),
        ("nan.wav", lambda p: wavfile.write(p, SAMPLE_RATE, nan_audio), "NaN"),
        ("folder.wav", lambda p: p.mkdir(), "not a regular file"),
        ("dangling.wav", lambda p: p.symlink_to(tmp_path / "nowhere.wav"), "broken link"),
    ]


def test_unusable_files_raise_with_a_reason(mc, tmp_path):
    for name, make, reason in unusable_files(tmp_path):
        path = tmp_path / name
        make(path)
        with pytest.raises(mc.UnusableAudio, match=reason):
            mc.read_wav(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(mc, tmp_path):
    path = write_int16(tmp_path / "locked.wav", SIGNAL)
    path.chmod(0)
    with pytest.raises(mc.UnusableAudio, match="permission"):
        mc.read_wav(path)


def test_permission_denied_is_reported_as_such(mc, tmp_path, monkeypatch):
    """Root (as in CI) reads any file, so the refusal is simulated where SciPy opens it."""
    path = write_int16(tmp_path / "locked.wav", SIGNAL)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(wavfile, "read", refuse)
    with pytest.raises(mc.UnusableAudio, match="no permission to read it"):
        mc.read_wav(path)


def test_find_music_files_any_case_sorted(mc, tmp_path):
    for name in ["b.WAV", "a.wav", "c.Wav", "notes.txt", "d.wav.bak"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in mc.find_music_files(tmp_path)] == ["a.wav", "b.WAV", "c.Wav"]


def test_blocks_are_zero_padded_at_the_tail(mc):
    audio = np.arange(2 * mc.BLOCK_SIZE + 5, dtype=np.float32)
    blocks = mc.blocks_from_audio(audio)
    assert blocks.shape == (3, mc.BLOCK_SIZE)
    np.testing.assert_array_equal(blocks.ravel()[: len(audio)], audio)
    assert not blocks.ravel()[len(audio):].any()
    assert mc.blocks_from_audio(np.ones(3, np.float32)).shape == (1, mc.BLOCK_SIZE)


def test_block_frame_block_round_trip(mc):
    blocks = mc.blocks_from_audio(melody(2.0))
    frames = mc.frames_from_blocks(blocks)
    assert frames.shape == (len(blocks), mc.NUM_FEATURES) and frames.dtype == np.float32
    assert mc.NUM_FEATURES == 11_026
    back = mc.blocks_from_frames(frames)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, blocks, atol=2e-6)  # float32 precision


def test_frames_hold_the_same_information_as_the_full_fft(mc):
    block = mc.blocks_from_audio(tone(0.25, 1000.0))[:1]
    frame = mc.frames_from_blocks(block)[0]
    full = np.fft.fft(block[0].astype(np.float64))[: mc.NUM_BINS]
    np.testing.assert_allclose(frame[: mc.NUM_BINS], full.real, atol=1e-2)
    np.testing.assert_allclose(frame[mc.NUM_BINS:], full.imag, atol=1e-2)


def rebuild(mc, frames, pieces=1):
    """Magnitude frames -> audio through the tool's streaming phase rebuilder."""
    synthesis = mc.PhaseRebuilder(pieces)
    return np.concatenate([synthesis.push(np.broadcast_to(frame, (pieces, len(frame))))
                           for frame in frames], axis=1)


def test_magnitude_frames_are_log_magnitudes_of_windows_centred_on_blocks(mc):
    audio = tone(3.0, 440.0, amplitude=0.5)
    frames = mc.frames_from_audio(audio, "magnitude")
    assert frames.shape == (12, mc.NUM_FEATURES) and frames.dtype == np.float32
    assert mc.WINDOW_SIZE // 2 + 1 == mc.NUM_FEATURES  # the same network for either kind
    bin_hz = mc.SAMPLE_RATE / mc.WINDOW_SIZE  # 2 Hz
    assert set(np.argmax(frames[1:-1], axis=1)) == {round(440 / bin_hz)}
    # Window i is centred on block i: its energy comes from block i and half of each neighbour.
    window = mc.sqrt_hann()
    centre = audio[5 * mc.BLOCK_SIZE - mc.BLOCK_SIZE // 2: 7 * mc.BLOCK_SIZE - mc.BLOCK_SIZE // 2]
    magnitudes = np.abs(np.fft.rfft(centre * window))
    np.testing.assert_allclose(np.exp(frames[5]) - mc.MAGNITUDE_FLOOR, magnitudes,
                               atol=1e-4 * magnitudes.max())


def test_the_window_overlap_adds_to_one(mc):
    window = mc.sqrt_hann().astype(np.float64) ** 2
    np.testing.assert_allclose(window[: mc.BLOCK_SIZE] + window[mc.BLOCK_SIZE:], 1.0, atol=1e-6)


def test_a_steady_tone_is_rebuilt_from_magnitudes_alone(mc):
    audio = tone(4.0, 440.0, amplitude=0.5)
    rebuilt = rebuild(mc, mc.frames_from_audio(audio, "magnitude"))[0, mc.BLOCK_SIZE:]
    assert mc.rms_db(rebuilt) == pytest.approx(mc.rms_db(audio), abs=0.5)
    assert mc.click_ratio(rebuilt) < 1.1  # no step where blocks join
    spectrum = np.abs(np.fft.rfft(rebuilt))
    assert np.argmax(spectrum) * mc.SAMPLE_RATE / len(rebuilt) == pytest.approx(440, abs=1)


def test_music_rebuilt_from_magnitudes_keeps_its_level_and_joins(mc):
    audio = mc.demo_piece(12.0)  # piano-like notes with soft attacks
    rebuilt = rebuild(mc, mc.frames_from_audio(audio, "magnitude"), pieces=2)
    np.testing.assert_array_equal(rebuilt[0], rebuilt[1])  # pieces are rebuilt independently
    # The rebuilt audio lags by half a block (the windows are centred on the blocks).
    body = rebuilt[0, mc.BLOCK_SIZE // 2 :]
    assert mc.rms_db(body) == pytest.approx(mc.rms_db(audio), abs=1.0)
    assert mc.click_ratio(body) < 1.2
    # Notes switched hard on the block grid click in the music itself (ratio near 10); the
    # overlapping windows smooth them.
    hard = melody(8.0, seed=3)
    assert mc.click_ratio(hard) > 5
    rebuilt_hard = rebuild(mc, mc.frames_from_audio(hard, "magnitude"))[0, mc.BLOCK_SIZE // 2:]
    assert mc.click_ratio(rebuilt_hard) < 1.5


def test_sound_after_digital_silence_is_rebuilt(mc):
    """A silent bin's phase must not stay at zero: music after silence would stay silent."""
    audio = np.concatenate([np.zeros(2 * mc.SAMPLE_RATE, np.float32), tone(2.0, 440.0)])
    rebuilt = rebuild(mc, mc.frames_from_audio(audio, "magnitude"))[0]
    assert mc.rms_db(rebuilt[: mc.SAMPLE_RATE]) < -100
    assert mc.rms_db(rebuilt[-mc.SAMPLE_RATE:]) == pytest.approx(mc.rms_db(tone(1.0, 440.0)),
                                                                 abs=1.0)
    phasors = mc.unit(np.array([0, 3 + 4j, -2], np.complex64))
    np.testing.assert_allclose(phasors, [1, 0.6 + 0.8j, -1], atol=1e-6)


def test_a_seed_of_real_audio_flows_into_the_rebuilt_music(mc):
    """prime_with_audio starts from the seed's own phase: a tone continued by its own magnitudes
    goes on without a step at the join, at the same level."""
    audio = tone(3.0, 440.0, amplitude=0.5)
    seed, rest = audio[: 2 * mc.SAMPLE_RATE], audio[2 * mc.SAMPLE_RATE - mc.BLOCK_SIZE:]
    synthesis = mc.PhaseRebuilder(1)
    synthesis.prime_with_audio(seed[None, -mc.WINDOW_SIZE:])
    frames = mc.seed_frames(rest[: 2 * mc.WINDOW_SIZE + mc.BLOCK_SIZE], "magnitude")[:1]
    block = synthesis.push(frames)[0]  # the seed's last block, faded into the new frame
    joined = np.concatenate([seed[: -mc.BLOCK_SIZE], block])
    jumps = np.abs(np.diff(joined[-2 * mc.BLOCK_SIZE:]))  # the join: from index BLOCK_SIZE - 1
    steepest_of_the_tone = 2 * np.pi * 440 / mc.SAMPLE_RATE * 0.5
    assert jumps[mc.BLOCK_SIZE - 1] < 1.1 * steepest_of_the_tone
    assert mc.rms_db(block) == pytest.approx(mc.rms_db(audio), abs=1.0)


def test_seed_frames_end_where_the_seed_ends(mc):
    audio = melody(3.0, seed=4)
    for kind in ("magnitude", "plain"):
        frames = mc.seed_frames(audio[-(5 * mc.BLOCK_SIZE):], kind)
        assert frames.shape == (mc.WINDOW_FRAMES, mc.NUM_FEATURES)
    last = mc.seed_frames(audio, "magnitude")[-1]
    magnitudes = np.abs(np.fft.rfft(audio[-mc.WINDOW_SIZE:] * mc.sqrt_hann()))
    np.testing.assert_allclose(np.exp(last) - mc.MAGNITUDE_FLOOR, magnitudes,
                               atol=1e-4 * magnitudes.max())
    short = mc.seed_frames(audio[-4 * mc.BLOCK_SIZE:], "magnitude")  # 1 s: padded in front
    assert short.shape == (mc.WINDOW_FRAMES, mc.NUM_FEATURES)


def test_running_statistics_match_numpy(mc):
    rng = np.random.default_rng(0)
    chunks = [rng.normal(3.0, 2.0, size=(n, 5)).astype(np.float32) for n in (1, 7, 30)]
    stats = mc.RunningStats(5)
    for chunk in chunks:
        stats.add(chunk)
    mean, std = stats.mean_and_std()
    everything = np.concatenate(chunks).astype(np.float64)
    np.testing.assert_allclose(mean, everything.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(std, everything.std(axis=0), rtol=1e-5)
    constant = mc.RunningStats(2)
    constant.add(np.ones((4, 2), np.float32))
    assert (constant.mean_and_std()[1] == mc.STD_FLOOR).all()
