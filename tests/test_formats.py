"""The formats people keep their music in: FLAC, Ogg Vorbis, Opus, MP3 and AIFF, written from
the tests' own audio with soundfile and read back; damaged ones; a folder of mixed formats
through the real command line."""

import json
import re

import numpy as np
import pytest
import soundfile

from conftest import melody, run_cli, write_int16

RATE = 44_100

# name, soundfile format, subtype, the rate written (Opus takes 48 kHz), loudness tolerance (dB)
FORMATS = [("song.flac", "FLAC", "PCM_16", 48_000, 0.1), ("song.ogg", "OGG", "VORBIS", 22_050, 0.5),
           ("song.opus", "OGG", "OPUS", 48_000, 0.5), ("song.mp3", "MP3", "MPEG_LAYER_III", 44_100,
                                                          0.5),
           ("song.aiff", "AIFF", "PCM_16", 32_000, 0.1), ("SONG.AIFC", "AIFF", "FLOAT", 44_100, 0.1),
           ("song.oga", "OGG", "VORBIS", 44_100, 0.5)]


def source(rate, seconds=2.0):
    """Stereo: 440 Hz with a fifth above on the left, the same quieter on the right."""
    t = np.arange(int(seconds * rate)) / rate
    left = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 660 * t)
    return np.stack([left, 0.5 * left], axis=1).astype(np.float32)


@pytest.mark.parametrize("name, format_name, subtype, rate, tolerance", FORMATS)
def test_each_format_reads_back_as_its_source(mc, tmp_path, name, format_name, subtype, rate,
                                               tolerance):
    audio = source(rate)
    soundfile.write(tmp_path / name, audio, rate, format=format_name, subtype=subtype)
    read, notes = mc.read_audio(tmp_path / name)
    assert notes == [] and read.dtype == np.float32
    assert abs(len(read) - 2 * RATE) <= 0.02 * RATE  # codecs pad a little
    assert mc.rms_db(read) == pytest.approx(mc.rms_db(audio.mean(axis=1)), abs=tolerance)
    spectrum = np.abs(np.fft.rfft(read[: RATE]))  # one second: bins are 1 Hz apart
    assert abs(np.argmax(spectrum) - 440) <= 2


def damaged(tmp_path):
    good = source(RATE)
    soundfile.write(tmp_path / "whole.flac", good, RATE, format="FLAC")
    soundfile.write(tmp_path / "whole.mp3", good, RATE, format="MP3")
    data = (tmp_path / "whole.flac").read_bytes()
    (tmp_path / "truncated.flac").write_bytes(data[: len(data) // 2])
    mp3 = (tmp_path / "whole.mp3").read_bytes()
    (tmp_path / "truncated.mp3").write_bytes(mp3[: len(mp3) // 3])
    (tmp_path / "garbage.mp3").write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp_path / "text.flac").write_text("not music\n" * 50)
    (tmp_path / "empty.ogg").write_bytes(b"")


@pytest.mark.parametrize("name, outcome, words", [
    ("truncated.flac", "skipped", "not a readable FLAC file"),
    ("truncated.mp3", "warned", "truncated or damaged; what is there is used"),
    ("garbage.mp3", "skipped", "not a readable MP3 file (its contents are not recognised)"),
    ("text.flac", "skipped", "not a readable FLAC file (Format not recognised"),
    ("empty.ogg", "skipped", "not a readable OGG file"),
])
def test_damaged_files_are_skipped_or_used_with_a_warning(mc, tmp_path, name, outcome, words):
    damaged(tmp_path)
    if outcome == "skipped":
        with pytest.raises(mc.UnusableAudio, match=re.escape(words)):
            mc.read_audio(tmp_path / name)
    else:
        audio, notes = mc.read_audio(tmp_path / name)
        assert 0 < len(audio) < 2 * RATE and any(words in note for note in notes)


def test_other_files_are_named_in_one_line(mc, tmp_path, capsys):
    music = tmp_path / "music"
    music.mkdir()
    write_int16(music / "a.wav", melody(3.0))
    for name in ("cover.jpg", "notes.txt", "song.m4a"):
        (music / name).write_bytes(b"x" * 100)
    (music / ".DS_Store").write_bytes(b"x")
    mc.prepare_cache(music, tmp_path / "cache")
    lines = [line for line in capsys.readouterr().err.splitlines() if "not read" in line]
    assert len(lines) == 1 and "cover.jpg, notes.txt, song.m4a" in lines[0]
    assert ".DS_Store" not in lines[0] and ".flac" in lines[0]


def test_no_usable_music_names_what_it_found(tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    (music / "love.mp3").write_bytes(np.random.default_rng(1).bytes(3000))
    (music / "wanderer.m4a").write_bytes(b"\0" * 3000)
    result = run_cli("-d", music, "-t", tmp_path / "cache", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "found 1 music file, none usable (skipped: love.mp3)" in result.stderr
    assert "it holds wanderer.m4a, which this tool does not read" in result.stderr
    assert "Note:" not in result.stderr  # the MP3 decoder's own chatter stays out


def test_a_folder_of_mixed_formats_end_to_end(mc, tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    write_int16(music / "a.wav", melody(6.0, seed=1))
    for seed, (name, format_name) in enumerate([("b.flac", "FLAC"), ("c.mp3", "MP3"),
                                                ("d.ogg", "OGG"), ("e.aiff", "AIFF")]):
        soundfile.write(music / name, melody(6.0, seed=seed + 2), RATE, format=format_name)
    before = {path.name: path.read_bytes() for path in music.iterdir()}
    seed = tmp_path / "seed.opus"
    soundfile.write(seed, source(48_000), 48_000, format="OGG", subtype="OPUS")
    result = run_cli("-d", music, "-t", tmp_path / "cache", "-n", "8", "-l", "1", "-e", "1",
                     "-s", "2", "--seed-wav", seed, "--no-plots", "-o", tmp_path / "out",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "from 5 music files" in result.stdout and "Cached" in result.stdout
    cache = mc.load_cache(tmp_path / "cache", mc.dataset_fingerprint(mc.find_music_files(music)))
    assert cache.file_names == ["a.wav", "b.flac", "c.mp3", "d.ogg", "e.aiff"]
    report = json.loads((tmp_path / "out-0.json").read_text())
    assert report["seconds"] == 2.0
    assert {path.name: path.read_bytes() for path in music.iterdir()} == before
    # Changing one file rebuilds the cache, whatever its format.
    soundfile.write(music / "d.ogg", melody(5.0, seed=9), RATE, format="OGG")
    again = run_cli("-d", music, "-t", tmp_path / "cache", "-n", "8", "-l", "1", "-e", "0",
                    "-s", "1", "-g", "1", "--no-plots", "-o", tmp_path / "again", cwd=tmp_path)
    assert again.returncode == 0 and "Building the frame cache" in again.stdout
