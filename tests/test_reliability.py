"""Bad input and faults: every odd file gets a known outcome, and nothing is ever lost."""

import os
import re
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile
from scipy.io import wavfile

from conftest import SCRIPT, melody, peak_rss_mb_of_cli, run_cli, tone, write_int16

RATE = 44_100
TINY = ["-n", "8", "-l", "1", "-b", "8"]


def riff(fmt_tag, channels, rate, bits, data, chunks=b"", fmt_extra=b"", data_size=None):
    """A WAV file built byte by byte, for the shapes SciPy cannot write."""
    block_align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block_align % 2**32, block_align,
                      bits)
    fmt += fmt_extra
    size = len(data) if data_size is None else data_size
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + chunks
            + b"data" + struct.pack("<I", size) + data)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def pcm16(audio):
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def write_float(path, audio, dtype):
    wavfile.write(path, RATE, np.asarray(audio, dtype=dtype))


EXTENSIBLE_PCM = struct.pack("<HHI", 22, 16, 4) + bytes.fromhex("0100000000001000800000aa00389b71")
SONG = tone(1.0, 440.0, amplitude=0.4)
LOUD = tone(1.0, 440.0, amplitude=3.0)
ROOT_USER = os.geteuid() == 0

# name, how to make it, expected outcome, words the warning must hold ("" when none is expected)
CORPUS = [
    ("long-enough.wav", lambda p: write_int16(p, melody(4.0)), "used", ""),
    ("zero-bytes.wav", lambda p: p.write_bytes(b""), "skipped", "not a readable WAV"),
    ("text.wav", lambda p: p.write_text("just some text\n" * 20), "skipped", "not a readable WAV"),
    ("riff-header-only.wav", lambda p: p.write_bytes(b"RIFF\x04\x00\x00\x00WAVE"), "skipped",
     "damaged or incomplete"),
    ("no-samples.wav", lambda p: p.write_bytes(riff(1, 1, RATE, 16, b"")), "skipped",
     "no samples"),
    ("truncated.wav", lambda p: p.write_bytes(riff(1, 1, RATE, 16, pcm16(SONG))[:40_000]),
     "warned", "EOF prematurely"),
    ("odd-chunk-padded.wav", lambda p: p.write_bytes(
        riff(1, 1, RATE, 16, pcm16(SONG), chunks=b"LIST\x03\x00\x00\x00abc\x00")), "used", ""),
    ("odd-chunk-unpadded.wav", lambda p: p.write_bytes(
        riff(1, 1, RATE, 16, pcm16(SONG), chunks=b"LIST\x03\x00\x00\x00abc")), "skipped",
     "damaged or incomplete"),
    ("extensible.wav", lambda p: p.write_bytes(
        riff(0xFFFE, 1, RATE, 16, pcm16(SONG), fmt_extra=EXTENSIBLE_PCM)), "used", ""),
    ("8-bit.wav", lambda p: wavfile.write(p, RATE, (SONG * 127 + 128).astype(np.uint8)), "used", ""),
    ("24-bit.wav", lambda p: p.write_bytes(riff(1, 1, RATE, 24, b"".join(
        int(v).to_bytes(3, "little", signed=True) for v in (SONG * 8388607).astype(int)))),
     "used", ""),
    ("32-bit-int.wav", lambda p: wavfile.write(p, RATE, (SONG * 2**31 * 0.99).astype(np.int32)),
     "used", ""),
    ("float32-loud.wav", lambda p: write_float(p, LOUD, np.float32), "warned", "clipped"),
    ("float64-loud.wav", lambda p: write_float(p, LOUD, np.float64), "warned", "clipped"),
    ("float-nan.wav", lambda p: write_float(p, np.where(np.arange(RATE) % 100 == 0, np.nan, SONG),
                                            np.float32), "warned", "NaN or infinite"),
    ("float-inf.wav", lambda p: write_float(p, np.where(np.arange(RATE) == 5, np.inf, SONG),
                                            np.float32), "warned", "NaN or infinite"),
    ("float-all-nan.wav", lambda p: write_float(p, np.full(RATE, np.nan), np.float32), "skipped",
     "every sample is NaN"),
    ("one-sample.wav", lambda p: wavfile.write(p, RATE, np.array([1000], np.int16)), "used", ""),
    ("under-one-block.wav", lambda p: write_int16(p, SONG[:5000]), "used", ""),
    ("exactly-one-block.wav", lambda p: write_int16(p, SONG[:11_025]), "used", ""),
    ("six-channels.wav", lambda p: wavfile.write(p, RATE, np.stack([SONG] * 6, axis=1)), "used", ""),
    ("8-khz.wav", lambda p: write_int16(p, tone(1.0, 440.0, rate=8000), rate=8000), "used", ""),
    ("96-khz.wav", lambda p: write_int16(p, tone(1.0, 440.0, rate=96_000), rate=96_000), "used", ""),
    ("192-khz.wav", lambda p: write_int16(p, tone(1.0, 440.0, rate=192_000), rate=192_000), "used",
     ""),
    ("silent.wav", lambda p: write_int16(p, np.zeros(RATE)), "warned", "it is silent"),
    ("dc-offset.wav", lambda p: write_int16(p, np.full(RATE, 0.3)), "used", ""),
    ("a-folder.wav", lambda p: p.mkdir(), "skipped", "not a regular file"),
    ("broken-link.wav", lambda p: p.symlink_to(p.with_name("nowhere-at-all.wav")), "skipped",
     "broken link"),
    ("no-permission.wav", lambda p: (write_int16(p, SONG), p.chmod(0)),
     "used" if ROOT_USER else "skipped", "" if ROOT_USER else "no permission"),
    ("Café del Mar – ñandú 01.wav", lambda p: write_int16(p, SONG), "used", ""),
    ("SHOUTING.WAV", lambda p: write_int16(p, SONG), "used", ""),
    ("adpcm.wav", lambda p: p.write_bytes(riff(2, 1, RATE, 4, bytes(4000))), "skipped", "ADPCM"),
    ("mu-law.wav", lambda p: p.write_bytes(riff(7, 1, RATE, 8, bytes(4000))), "skipped",
     "Unknown wave file format"),
    # Headers that lie or go to extremes: each a few KB, each bounded in memory (see
    # test_headers_that_lie_stay_within_a_memory_limit).
    ("rate-8-hz.wav", lambda p: p.write_bytes(riff(1, 1, 8, 16, pcm16(np.tile(SONG, 5)))),
     "skipped", "8 Hz, 1 channel, 27,562.5 s: a sample rate outside what audio uses"),
    ("rate-2-ghz.wav", lambda p: p.write_bytes(riff(1, 1, 2_000_000_000, 16, pcm16(SONG[:2000]))),
     "skipped", "2,000,000,000 Hz"),
    ("rate-0-hz.wav", lambda p: p.write_bytes(riff(1, 1, 0, 16, pcm16(SONG[:2000]))), "skipped",
     "0 Hz"),
    ("rate-1-khz.wav", lambda p: write_int16(p, tone(2.0, 220.0, rate=1000), rate=1000), "used", ""),
    ("rate-767999-hz.wav", lambda p: write_int16(p, tone(0.05, 440.0, rate=767_999),
                                                 rate=767_999), "used", ""),
    ("claims-2-gb.wav", lambda p: p.write_bytes(riff(1, 1, RATE, 16, pcm16(SONG[:2000]),
                                                     data_size=2_000_000_000)),
     "used", ""),  # what the file holds is read
    ("1000-channels.wav", lambda p: p.write_bytes(riff(1, 1000, RATE, 16,
                                                       pcm16(np.repeat(SONG[:20], 1000)))),
     "used", ""),
    ("30000-channels.wav", lambda p: p.write_bytes(riff(1, 30_000, RATE, 16,
                                                        pcm16(np.repeat(SONG[:2], 30_000)))),
     "used", ""),
    # Other formats (through soundfile), good and damaged.
    ("song.flac", lambda p: soundfile.write(p, SONG, RATE, format="FLAC"), "used", ""),
    ("song.ogg", lambda p: soundfile.write(p, SONG, RATE, format="OGG"), "used", ""),
    ("text.flac", lambda p: p.write_text("just some text\n" * 20), "skipped",
     "not a readable FLAC file"),
    ("garbage.mp3", lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)), "skipped",
     "not a readable MP3 file"),
    ("empty.opus", lambda p: p.write_bytes(b""), "skipped", "not a readable OGG file"),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus") / "music"
    folder.mkdir()
    for name, make, _, _ in CORPUS:
        make(folder / name)
    return folder


def test_the_corpus_is_large_enough():
    assert len(CORPUS) >= 25
    assert {outcome for _, _, outcome, _ in CORPUS} == {"used", "warned", "skipped"}


def test_every_odd_input_has_its_expected_outcome(mc, corpus, tmp_path, capsys):
    cache = mc.prepare_cache(corpus, tmp_path / "cache")
    err = capsys.readouterr().err
    for name, _, outcome, words in CORPUS:
        lines = [line for line in err.splitlines() if f"/{name}:" in line]
        if outcome == "skipped":
            assert name not in cache.file_names, name
            assert len(lines) == 1 and "skipping" in lines[0] and words in lines[0], (name, lines)
        else:
            assert name in cache.file_names, name
            if outcome == "used":
                assert lines == [], (name, lines)
            else:
                assert lines and all("skipping" not in line for line in lines), (name, lines)
                assert any(words in line for line in lines), (name, lines)
    assert "Traceback" not in err
    assert np.isfinite(cache.frames).all()


MEMORY_LIMIT = 3 * 2**30  # bytes of address space: NumPy, SciPy and their thread pools fit


LIMITED_PREPROCESSING = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
tool = runpy.run_path({script!r})
cache = tool["prepare_cache"]({music!r}, {cache!r})
print("USED", ",".join(cache.file_names))
"""


def test_headers_that_lie_stay_within_a_memory_limit(corpus, tmp_path):
    """The whole corpus, lying headers included, preprocessed under a hard memory limit: a
    regression fails with an error here instead of eating the machine. (Without the checks,
    the 8 Hz file alone asks for 20 GiB.)"""
    code = LIMITED_PREPROCESSING.format(limit=MEMORY_LIMIT, script=str(SCRIPT), music=str(corpus),
                                        cache=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    used = result.stdout.split("USED ")[1].strip().split(",")
    for name in ("rate-1-khz.wav", "rate-767999-hz.wav", "1000-channels.wav", "long-enough.wav"):
        assert name in used
    for name in ("rate-8-hz.wav", "rate-2-ghz.wav"):
        assert name not in used and f"skipping {corpus / name}: it says" in result.stderr


def test_a_seed_wav_whose_header_lies_is_refused_before_training(music, tmp_path):
    seed = tmp_path / "seed.wav"
    seed.write_bytes(riff(1, 1, 8, 16, pcm16(SONG)))
    result = run_cli("-d", music, "-t", tmp_path / "cache", "--seed-wav", seed, *TINY,
                     cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"Cannot use --seed-wav {seed}: it says 8 Hz" in result.stderr
    assert not (tmp_path / "cache" / "model.keras").exists()


def test_the_corpus_through_the_command_line(corpus, tmp_path):
    before = sorted(os.listdir(corpus))
    result = run_cli("-d", corpus, "-t", tmp_path / "cache", "-e", "1", "-g", "1", "-s", "1",
                     *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    skipped = sum(outcome == "skipped" for _, _, outcome, _ in CORPUS)
    assert result.stderr.count("warning: skipping") == skipped
    assert sorted(os.listdir(corpus)) == before


def test_a_folder_of_only_bad_files_gives_one_clear_message(tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    for name, make, outcome, _ in CORPUS:
        if outcome == "skipped" and name != "no-permission.wav":
            make(music / name)
    result = run_cli("-d", music, "-t", tmp_path / "cache", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("error:") == 1
    assert "none usable" in result.stderr and "Copy some music files" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "cache" / "cache.json").exists()


# --- flags and paths --------------------------------------------------------------------------


HUGE = "99999999999999999999999"
NONSENSE = [(flag, value) for flag in ["-n", "-l", "-e", "-b", "-s", "-g", "--random-seed"]
            for value in ["0", "-1", "1.5", "abc", "1e3", HUGE]
            # Valid numbers are not nonsense: -e 0 and seed 0 are allowed, and a huge size is
            # refused by the resource checks below, with the figure it would need.
            if (flag, value) not in {("-e", "0"), ("--random-seed", "0")}
            and not (value == HUGE and flag != "--random-seed")]


@pytest.mark.parametrize("flag, value", NONSENSE)
def test_nonsense_values_for_every_flag(tmp_path, flag, value):
    result = run_cli(flag, value, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert flag in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def music(tmp_path):
    folder = tmp_path / "music"
    folder.mkdir()
    write_int16(folder / "a.wav", melody(4.0))
    return folder


@pytest.mark.parametrize("flags, words", [
    (["-s", "10000000"], r"would write \d+\.\d TB of WAV files, but only .* is free"),
    (["-s", "99999999999999999999999"], r"would write .* of WAV files, but only"),
    (["-n", "10000000"], r"needs at least \d+\.\d PB of memory, but this machine has"),
    (["-l", "100000"], r"needs at least .* of memory"),
    (["-b", "1000000000"], r"needs at least .* of memory.*-b"),
    (["-e", "0", "-g", "10000000"], r"-g 10000000 needs at least .* of memory"),
])
def test_huge_values_are_refused_up_front_with_the_figure(music, tmp_path, flags, words):
    result = run_cli("-d", music, "-t", tmp_path / "cache", *flags, cwd=tmp_path)
    assert result.returncode == 1
    assert re.search(words, result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "cache").exists()  # refused before anything was written


@pytest.mark.parametrize("case", ["output folder missing", "traindata under a file",
                                  "traindata inside the music", "output inside the music"])
def test_bad_paths_are_refused_with_nothing_written(music, tmp_path, case):
    (tmp_path / "a-file").write_text("x")
    flags = {"output folder missing": ["-o", tmp_path / "no" / "such" / "song"],
             "traindata under a file": ["-t", tmp_path / "a-file" / "cache"],
             "traindata inside the music": ["-t", music / "cache"],
             "output inside the music": ["-o", music / "song"]}[case]
    words = {"output folder missing": "folder that does not exist",
             "traindata under a file": "Cannot write in the traindata folder",
             "traindata inside the music": "never writes into",
             "output inside the music": "never writes into"}[case]
    result = run_cli("-d", music, *(["-t", tmp_path / "cache"] if "-t" not in flags else []),
                     *flags, *TINY, cwd=tmp_path)
    assert result.returncode == 1
    assert words in result.stderr and "Traceback" not in result.stderr
    assert sorted(os.listdir(music)) == ["a.wav"]
    assert not (tmp_path / "cache" / "cache.json").exists()


@pytest.mark.skipif(ROOT_USER, reason="root writes into read-only folders")
def test_read_only_traindata_folder(music, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o500)
    result = run_cli("-d", music, "-t", cache, *TINY, cwd=tmp_path)
    assert result.returncode == 1 and "Cannot write in the traindata folder" in result.stderr


# --- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("started_ignoring_sigint", [False, True])
def test_sigint_during_preprocessing_stops_cleanly(tmp_path, started_ignoring_sigint):
    """Also when the shell started the tool ignoring SIGINT, as non-interactive shells start
    background jobs (Python then installs no KeyboardInterrupt of its own)."""
    music = tmp_path / "music"
    music.mkdir()
    for index in range(40):  # 10 minutes: preprocessing lasts long enough to be caught at it
        write_int16(music / f"{index:02d}.wav", melody(15.0, seed=index))
    cache = tmp_path / "cache"
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) \
        if started_ignoring_sigint else None
    process = subprocess.Popen([sys.executable, str(SCRIPT), "-d", music, "-t", cache, *TINY],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=ignore)
    deadline = time.monotonic() + 60
    while not list(cache.glob("*.partial-*")) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert time.monotonic() < deadline, "preprocessing was never seen under way"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Stopped by Ctrl-C" in stderr and "Traceback" not in stderr
    assert not list(cache.glob("frames-*")) and not (cache / "cache.json").exists()


@pytest.mark.parametrize("change", ["rewrite", "delete"])
def test_music_changed_while_preprocessing_reads_it(mc, tmp_path, monkeypatch, change):
    music = tmp_path / "music"
    music.mkdir()
    for name in ("a.wav", "b.wav", "c.wav"):
        write_int16(music / name, melody(2.0))
    read_wav = mc.read_wav

    def read_then_change(path):
        result = read_wav(path)
        if path.name == "a.wav":  # the user edits c.wav while a.wav is being read
            if change == "rewrite":
                write_int16(music / "c.wav", tone(3.0))
            else:
                (music / "c.wav").unlink()
        return result

    monkeypatch.setattr(mc, "read_wav", read_then_change)
    with pytest.raises(mc.UserError, match="changed while it was being read"):
        mc.prepare_cache(music, tmp_path / "cache")
    assert not (tmp_path / "cache" / "cache.json").exists()
    assert not list((tmp_path / "cache").glob("frames-*"))


def test_a_second_run_on_the_same_folder_is_refused(mc, music, tmp_path):
    with mc.FolderLock(tmp_path / "cache"):
        result = run_cli("-d", music, "-t", tmp_path / "cache", *TINY, cwd=tmp_path)
    assert result.returncode == 1
    assert f"Another music-composer run (process {os.getpid()})" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_killed_run_does_not_leave_the_lock_stuck(mc, music, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import runpy, time; m = runpy.run_path({str(SCRIPT)!r}); "
         f"lock = m['FolderLock']({str(tmp_path / 'cache')!r}).__enter__(); print('held', "
         f"flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with mc.FolderLock(tmp_path / "cache"):  # would raise UserError if still held
        pass


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign zip"])
def test_a_damaged_checkpoint_is_named_and_left_untouched(mc, music, tmp_path, damage):
    cache = tmp_path / "cache"
    cache.mkdir()
    checkpoint = cache / mc.CHECKPOINT_NAME
    if damage == "garbage":
        checkpoint.write_bytes(b"not a model at all")
    else:
        model = mc.build_model(mc.NUM_FEATURES, 8, 1)
        if damage == "foreign zip":
            model.save(checkpoint)  # a plain Keras file, without this tool's metadata
        else:
            metadata = {"version": mc.CHECKPOINT_VERSION, "hidden_neurons": 8, "hidden_layers": 1}
            mc.save_checkpoint(checkpoint, model, metadata, np.zeros(3), np.ones(3))
            checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    before = checkpoint.read_bytes()
    for epochs in ("1", "0"):
        result = run_cli("-d", music, "-t", cache, "-e", epochs, *TINY, cwd=tmp_path)
        assert result.returncode == 1, result.stdout
        assert str(checkpoint) in result.stderr and "left untouched" in result.stderr
        assert "Traceback" not in result.stderr
        assert checkpoint.read_bytes() == before


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_checkpoint_names_an_intact_best_one_and_how_to_go_on(mc, music, tmp_path,
                                                                          damage):
    """model.keras damaged, model-best.keras beside it intact: the message names the best one
    with its epoch and loss and gives the command that goes on from it, and that command works
    (the run after it trains on from the best epoch)."""
    cache = tmp_path / "cache"
    trained = run_cli("-d", music, "-t", cache, "-e", "2", *TINY, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    checkpoint, best = cache / mc.CHECKPOINT_NAME, cache / mc.BEST_CHECKPOINT_NAME
    metadata, _, _ = mc.read_checkpoint_metadata(best)
    if damage == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    else:
        checkpoint.write_bytes(b"not a model at all")
    result = run_cli("-d", music, "-t", cache, "-e", "0", *TINY, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert (f"{best} beside it is intact (epoch {metadata['epochs_done']}, val_loss "
            f"{metadata['best_val_loss']:.4f})") in message
    command = message.split("copy it over the damaged one: ")[1].split(", then run again")[0]
    assert command == f"cp {best} {checkpoint}"
    subprocess.run(command, shell=True, check=True)
    went_on = run_cli("-d", music, "-t", cache, "-e", "1", *TINY, cwd=tmp_path)
    assert went_on.returncode == 0, went_on.stderr
    assert f"after epoch {metadata['epochs_done']}." in went_on.stdout
    # A damaged best one is not offered.
    best.write_bytes(best.read_bytes()[:1000])
    checkpoint.write_bytes(b"damaged again")
    refused = run_cli("-d", music, "-t", cache, "-e", "0", *TINY, cwd=tmp_path)
    assert refused.returncode == 1 and "beside it is intact" not in refused.stderr
    assert "Move it away" in refused.stderr


def test_models_load_in_safe_mode(mc, tmp_path):
    """A model file that carries code (a Lambda layer) is refused rather than run."""
    keras = mc.import_keras()
    inputs = keras.Input((None, 4))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)
    path = tmp_path / "model.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(mc.UserError, match="model.keras"):
        mc.load_checkpoint_model(path)


def test_long_generation_streams_to_disk(music, tmp_path):
    """Held in memory, 10 pieces of 300 s would add 0.48 GB of float32 over 10 pieces of 60 s."""
    common = ["-d", music, "-t", tmp_path / "cache", *TINY]
    assert run_cli(*common, "-e", "1", "-g", "1", "-s", "1", cwd=tmp_path).returncode == 0
    short = peak_rss_mb_of_cli(*common, "-e", "0", "-g", "10", "-s", "60", "-o", "short",
                               cwd=tmp_path)
    long = peak_rss_mb_of_cli(*common, "-e", "0", "-g", "10", "-s", "300", "-o", "long",
                              cwd=tmp_path)
    print(f"peak RSS: -s 60 {short:.0f} MB, -s 300 {long:.0f} MB")
    assert (tmp_path / "long-9.wav").stat().st_size == 44 + 300 * RATE * 2
    assert long < short * 1.05, (short, long)  # a 60 MB growth was caught at this bound
    for path in tmp_path.glob("long-*.wav"):
        path.unlink()  # 265 MB: give the disk back now


RACER = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
import numpy as np
from conftest import load_script
mc = load_script()
folder, level = Path(sys.argv[1]), float(sys.argv[2])
paths = mc.output_paths(folder / "piece", 5)  # both runs see piece-0 ... piece-4 free
writers = mc.WavWriters(paths)
writers.write(np.full((5, 4410), level, np.float32))
(folder / f"ready-{{level}}").touch()
while not (folder / "go").exists():
    time.sleep(0.001)
print(json.dumps([str(path) for path in writers.finish()]))
"""


def test_two_runs_racing_for_the_same_names_both_keep_their_pieces(tmp_path):
    """Two real processes finish five pieces each under the same five names at the same moment:
    each piece ends under a name of its own, the second run's under the next free numbers."""
    import json
    from pathlib import Path

    from conftest import ROOT

    script = RACER.format(tests=str(ROOT / "tests"))
    racers = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(level)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for level in (0.25, 0.5)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    finals = []
    for racer, level in zip(racers, (0.25, 0.5)):
        out, err = racer.communicate(timeout=120)
        assert racer.returncode == 0 and "Traceback" not in err, err
        finals.append((level, [Path(path) for path in json.loads(out.strip().splitlines()[-1])]))
    names = [path.name for _, paths in finals for path in paths]
    assert sorted(names) == sorted(f"piece-{index}.wav" for index in range(10))
    for level, paths in finals:
        for path in paths:
            _, samples = wavfile.read(path)
            assert np.all(samples == round(level * 32767))
    assert not list(tmp_path.glob(".*partial*"))


def test_a_killed_run_s_partial_loss_curve_is_cleared(mc, tmp_path):
    """A SIGKILL while the loss curve was being saved leaves its temporary file in the
    traindata folder (found by the kill loop); the next run, holding the folder's lock, clears
    it and every other temporary of ours there, and nothing else."""
    cache = tmp_path / "train_data"
    cache.mkdir()
    leftovers = [cache / ".loss.png.partial-4242.png", cache / ".model.keras.tmp-4242"]
    kept = [cache / "loss.png", cache / "model.keras", cache / "notes.partial.txt"]
    for path in leftovers + kept:
        path.write_bytes(b"x")
    mc.remove_leftovers(cache, str(tmp_path / "output"))
    assert not any(path.exists() for path in leftovers)
    assert all(path.exists() for path in kept)
