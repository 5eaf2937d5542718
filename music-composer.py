#!/usr/bin/env python3
"""
music-composer: learn the style of a folder of music and compose new music in that style.

Each 0.25 s block of audio becomes one FFT frame (by default the log-magnitude spectrum of a
0.5 s window around it; --frames plain keeps the original real+imaginary FFT); a recurrent
network (Dense -> stacked LSTM -> Dense) learns, from 8 s stretches of the music at a time,
to predict the next frame; seeded with 8 s of the training music, it then writes new music
one frame at a time. By default each
prediction is matched to a real frame of the music, whose recording is played and fed back
(--synthesis grains); --synthesis spectra sounds the predicted spectrum itself, rebuilding
its phase. Every piece is measured against the music.

See it work on a built-in piece of music (a few minutes on a CPU, nothing to download):
    python3 music-composer.py --demo
First run on your own music (creates input_music_dataset/ and tells you what to do):
    python3 music-composer.py
Train on your music (copy .wav, .flac, .ogg, .opus, .mp3 or .aiff files into
input_music_dataset/ first), then write 10 pieces:
    python3 music-composer.py
Continue training the same model for 5 more epochs, then write 3 pieces of 30 s:
    python3 music-composer.py -e 5 -g 3 -s 30
Generate only, from the saved model:
    python3 music-composer.py -e 0
Continue a piece of your own that the network has never heard:
    python3 music-composer.py -e 0 --seed-wav my-song.wav
"""

import argparse
import collections
import contextlib
import dataclasses
import errno
import functools
import hashlib
import html
import importlib.util
import io
import json
import math
import os
import shutil
import signal
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np

# -----------------------------------------------------------------------------
# Configuration

SAMPLE_RATE = 44_100  # Hz; every file is resampled to this
BLOCK_SIZE = 11_025  # samples per frame: 0.25 s at 44.1 kHz, as in the original tool
NUM_BINS = BLOCK_SIZE // 2 + 1  # rfft bins of one block: 5 513
NUM_FEATURES = 2 * NUM_BINS  # 11 026: a block's real and imaginary parts, or the magnitudes
# of a 0.5 s window (2 * BLOCK_SIZE // 2 + 1 bins): the same width, so the same network
WINDOW_FRAMES = 4  # frames in the original's training windows and seeds (1 s): the shortest
SEQUENCE_SECONDS = 8.0  # default length of a training sequence and a seed (--sequence-seconds)
FRAMES_PER_SECOND = SAMPLE_RATE / BLOCK_SIZE  # 4.0
STD_FLOOR = 1e-8  # smallest standard deviation used to normalise a feature
VALIDATION_FRACTION = 0.1  # the last tenth of each file is held out for val_loss
CACHE_VERSION = 4  # bump when what the cache holds changes: old caches are rebuilt
# 4: each frame's place in the beat and its pitch classes, and the music's pulse, for grains
# that keep the beat and a seed's key
# 3: the recorded audio (16-bit) and a compressed index of the frames, for --synthesis grains
CHECKPOINT_VERSION = 1
CACHE_MANIFEST = "cache.json"
CHECKPOINT_NAME = "model.keras"
BEST_CHECKPOINT_NAME = "model-best.keras"
MIDEPOCH_CHECKPOINT_NAME = "model-midepoch.keras"  # the epoch in progress, to resume mid-epoch
PATIENCE_EPOCHS = 5  # default --patience: training stops once the held-out music has not been
# predicted better for this many epochs (on the game music the best epoch was the first, and
# the 19 after it only learnt the training music by heart)
SAVE_EVERY_MINUTES = 5.0  # default --save-every-minutes: a save of the default network (674 MB
# with Adam's state) takes 1.4-5 s on the project's 2-core CPU, about 1 % of five minutes
CHECKPOINT_METADATA = "music_composer.json"  # our entry inside the .keras zip
# How audio becomes frames (see the FFT frames section); both are NUM_FEATURES wide.
FRAME_KINDS = {"magnitude": "log-magnitude of 0.5 s windows every 0.25 s, phase rebuilt "
                            "when generating (default)",
               "plain": "real and imaginary rFFT of each 0.25 s block, as the original tool"}
DEFAULT_FRAMES = "magnitude"
# How each kind keeps the music moving (see make_batches and with_sampled_errors): noise on the
# training inputs, and prediction errors added back when generating, scaled by the temperature.
# Plain frames keep the original tool's plain regression.
SAMPLING = {"magnitude": {"input_noise": 0.5, "temperature": 1.0},
            "plain": {"input_noise": 0.0, "temperature": 0.0}}
# How a predicted frame becomes sound (see the Generation section).
SYNTHESES = {"grains": "the network chooses, real recordings sound: each predicted frame is "
                       "matched to a real frame of the training music, whose recorded audio is "
                       "played and which is fed back in",
             "spectra": "the predicted frame itself is sounded: its phase rebuilt (magnitude "
                        "frames), or its inverse FFT (plain frames)"}
DEFAULT_SYNTHESIS = {"magnitude": "grains", "plain": "spectra"}  # grains need magnitude frames
COPY_LIMIT_SECONDS = 4.0  # longest stretch of the training music that grains play verbatim


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a run, resolved from the flags and DEFAULTS (or DEMO_DEFAULTS) below."""

    dataset_dir: Path  # folder of the user's WAV files; read, never written
    cache_dir: Path  # preprocessed frames and the model checkpoints
    output_name: str  # generated files are OUTPUT_NAME-0.wav, OUTPUT_NAME-1.wav, ...
    hidden_neurons: int  # LSTM units in each layer, >= 1
    hidden_layers: int  # stacked LSTM layers, >= 1
    epochs: int  # epochs to train in this run, >= 0 (0: generate only)
    batch_size: int  # training windows per batch, >= 1
    seconds: int  # length of each generated piece in seconds, >= 1
    num_pieces: int  # pieces to generate, >= 1 (with --seed-wav: one per seed file)
    random_seed: int | None = None  # makes a CPU run repeatable; None: fresh randomness
    seed_wavs: tuple = ()  # WAV files whose last second seeds a piece each; () = training clips
    plots: bool = True  # loss curve after training, a spectrogram per piece
    frames: str = DEFAULT_FRAMES  # the kind of frame: a key of FRAME_KINDS
    temperature: float = SAMPLING[DEFAULT_FRAMES]["temperature"]  # scale of sampled errors
    synthesis: str = DEFAULT_SYNTHESIS[DEFAULT_FRAMES]  # how frames sound: a key of SYNTHESES
    copy_limit: float = COPY_LIMIT_SECONDS  # seconds, >= 0.25: longest verbatim stretch (grains)
    head: str | None = None  # what the network predicts, a key of HEADS; None: the checkpoint's,
    # or DEFAULT_HEAD for a new model
    sequence_seconds: float = SEQUENCE_SECONDS  # length of a training sequence (and of a seed)
    tensorboard: Path | None = None  # folder of TensorBoard logs; None: none written
    preview_every: int = 0  # write a short preview piece every this many epochs; 0: never
    gpus: int | None = None  # train on at most this many GPUs; None: every visible one
    demo: bool = False  # write and use the built-in demo piece
    size_from_checkpoint: bool = False  # neither -n nor -l given: a checkpoint's size is used
    save_every_minutes: float = SAVE_EVERY_MINUTES  # mid-epoch checkpoints; 0: at epoch ends only
    patience: int = PATIENCE_EPOCHS  # stop after this many epochs without a better val_loss; 0:
    # train every epoch asked for
    postfilter: bool = False  # sharpen predicted spectra before sounding them (spectra only);
    # off by default: clearer pitch, but fewer notes start and a drum beat weakens (README)
    precision: str = "auto"  # of training: a key of PRECISIONS, or auto (training_precision)
    steer: str = "network"  # who chooses each next frame: a key of STEERS (join: no network)


# The settings of a plain run, and of --demo (smaller, so it finishes in minutes on a CPU).
# Flags the user gives override either.
DEFAULTS = {"datasets_folder_path": "input_music_dataset/", "traindata_folder_path": "train_data/",
            "output_music_name": "output", "hidden_layer_neurons": 1024, "hidden_layer_count": 4,
            "epochs": 20, "batch_size": 10, "seconds_to_generate": 10, "generated_music_num": 10}
DEMO_FOLDER = "music-composer-demo"
DEMO_DEFAULTS = {**DEFAULTS, "datasets_folder_path": f"{DEMO_FOLDER}/music/",
                 "traindata_folder_path": f"{DEMO_FOLDER}/train_data/",
                 "output_music_name": f"{DEMO_FOLDER}/output", "hidden_layer_neurons": 256,
                 "hidden_layer_count": 2, "epochs": 40, "generated_music_num": 3}
SEED_PREFIX_SECONDS = 2.0  # of the user's own music at the start of a --seed-wav piece


class Terminated(KeyboardInterrupt):
    """SIGTERM, the machine's request to stop (docker stop, systemctl stop, a cluster's
    preemption): handled as Ctrl-C is, but the run then ends, with exit status 143."""


def stop_signal_raised(signum):
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def raise_stop_signal(signum, frame):
    """Outside the safe points, Ctrl-C or SIGTERM unwinds the run at once, closing what it
    holds (never a half-written file under a final name: those are renamed into place)."""
    raise stop_signal_raised(signum)


class QuitAtSafePoints:
    """Ctrl-C or SIGTERM quits at the next safe point: between files while preprocessing,
    between frames while generating. The handler only notes the signal and the work raises
    KeyboardInterrupt (Terminated for SIGTERM) itself at check(), so that no library in between
    can swallow it (TensorFlow's input pipeline did, during training); a second signal raises
    at once."""

    requested = False
    signum = signal.SIGINT  # the first signal received

    def __enter__(self):
        self.previous = {number: signal.signal(number, self.handle)
                         for number in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        if self.requested:
            raise stop_signal_raised(signum)
        self.requested, self.signum = True, signum

    def check(self):
        if self.requested:
            raise stop_signal_raised(self.signum)

    def __exit__(self, *exc_info):
        for number, previous in self.previous.items():
            signal.signal(number, previous)


class UserError(Exception):
    """A problem the user can fix; main() prints it without a traceback and exits 1."""


@contextlib.contextmanager
def disk_space_for(folder, what, flag, needed=None):
    """A full disk while writing `what` into `folder` becomes a UserError that says so. The
    writers' own clean-up has run by then (temporary files removed); what was finished before
    (the previous cache, checkpoints, pieces) is untouched, since nothing replaces it until it
    is complete."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        try:
            free = f"{format_bytes(shutil.disk_usage(folder).free)} is free"
        except OSError:
            free = "its free space is unknown"
        need = f"needs about {format_bytes(needed)}; " if needed else ""
        raise UserError(f"The disk holding {folder} is full: writing {what} failed ({need}"
                        f"{free}). Free some space there, or choose another place with {flag}, "
                        f"and run again. What earlier runs finished there is unchanged, and "
                        f"nothing half-written was left behind.") from None


def limit_blas_threads():
    """From here on, this process's NumPy and SciPy matrix products (OpenBLAS) run on one
    thread. OpenBLAS keeps a thread per core that spins for a while after each product, waiting
    for the next. Beside TensorFlow's threads and our own (the cache's writers, the audio
    thread), that spinning took half of a 2-core machine: generation ran at 65x realtime
    instead of 116x, and preprocessing burnt 2.8 CPU-seconds instead of 1.8 (measured side by
    side). The products NumPy does here are small, or run beside other work, so one thread
    costs nothing. threadpoolctl finds the libraries loaded and sets them at run time,
    whatever was imported first; SciPy brings its own OpenBLAS, so it is loaded first."""
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def say(message):
    print(message, flush=True)


def plural(count, word):
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def duration(seconds):  # "40 s", "12 min", "3 h 05 min"
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds // 3600:.0f} h {seconds % 3600 / 60:02.0f} min"


def time_left(seconds):
    """How long something will take, and the clock time it ends."""
    ends = time.strftime("%H:%M", time.localtime(time.time() + seconds))
    return f"about {duration(seconds)} left, done at about {ends}"


def warn(message):
    print(f"warning: {message}", file=sys.stderr, flush=True)


# -----------------------------------------------------------------------------
# Reading the music: WAV through SciPy; FLAC, Ogg Vorbis, Opus, MP3 and AIFF through soundfile


class UnusableAudio(Exception):
    """A file that cannot be used; the reason is shown to the user and the file skipped."""


# The formats read, by extension (any case). soundfile's wheels bundle libsndfile with its MP3,
# FLAC, Vorbis and Opus codecs, so nothing else needs installing.
SOUNDFILE_FORMATS = {".flac": "FLAC", ".ogg": "OGG", ".oga": "OGG", ".opus": "OGG",
                     ".mp3": "MP3", ".aif": "AIFF", ".aiff": "AIFF", ".aifc": "AIFF"}
MUSIC_EXTENSIONS = (".wav", *SOUNDFILE_FORMATS)
FORMATS_READ = ".wav, .flac, .ogg, .opus, .mp3, .aiff"


def find_music_files(dataset_dir):
    """Every music file the tool reads in the folder (MUSIC_EXTENSIONS, any case), sorted by
    name (not recursive)."""
    return list_music_folder(dataset_dir)[0]


def list_music_folder(dataset_dir):
    """(music files, other files): the second are the folder's other visible files, which the
    user should hear are not read (a cover image, notes, an .m4a)."""
    try:
        entries = sorted(Path(dataset_dir).iterdir(), key=lambda p: p.name)
    except OSError as error:
        raise UserError(f"Cannot list the music folder {dataset_dir}: {error.strerror}.") from None
    music = [p for p in entries if p.suffix.lower() in MUSIC_EXTENSIONS]
    others = [p for p in entries if p.suffix.lower() not in MUSIC_EXTENSIONS
              and not p.name.startswith(".") and p.is_file()]
    return music, others


FULL_SCALE = {np.dtype(np.uint8): 128.0, np.dtype(np.int16): 32768.0,
              np.dtype(np.int32): 2.0**31,  # SciPy returns 24-bit samples left-aligned in int32
              np.dtype(np.int64): 2.0**63, np.dtype(np.float32): 1.0, np.dtype(np.float64): 1.0}


def mono_float32(data):
    """PCM samples (samples,) or (samples, channels) of any SciPy dtype -> mono float32 with
    full scale at 1.0. Channels are averaged by one matrix-vector product, which also scales."""
    if data.dtype not in FULL_SCALE:
        raise UnusableAudio(f"unsupported sample type {data.dtype}")
    wide = data.dtype in (np.int32, np.int64, np.float64)  # keep their precision until scaled
    samples = data.astype(np.float64 if wide else np.float32)
    if data.dtype == np.uint8:  # 8-bit WAV is unsigned, centred on 128
        samples -= 128.0
    channels = 1 if data.ndim == 1 else data.shape[1]
    weights = np.full(channels, 1.0 / (channels * FULL_SCALE[data.dtype]), samples.dtype)
    mono = samples * weights[0] if data.ndim == 1 else samples @ weights
    return mono.astype(np.float32, copy=False)


LOWEST_RATE, HIGHEST_RATE = 1_000, 768_000  # Hz. Below 1 kHz nothing audible is left (the
# lowest rates in use are 8 kHz telephony); 768 kHz is the fastest rate that audio converters and
# formats offer. Outside, a header is damaged or lies, and resampling it could need gigabytes.
DECODING_HEADROOM = 4  # a file may need this many times what a real file of its length needs
DECODING_SLACK = 64 * 2**20  # bytes always allowed: short files, however odd, read as before


MAX_FILTER_TAPS = 2**20  # longer polyphase filters (awkward rates): resample by FFT instead


def filter_taps(rate):
    """Taps of resample_poly's default filter from `rate` to SAMPLE_RATE: 20 per step of the
    larger factor of the reduced ratio (44 100 / 44 099 needs 882 001)."""
    if rate == SAMPLE_RATE:
        return 0
    return 20 * max(SAMPLE_RATE, rate) // math.gcd(rate, SAMPLE_RATE) + 1


def decoding_bytes(num_samples, channels, rate, itemsize):
    """What decoding a file costs in memory at its peak: its samples as read and as float, the
    resampled mono signal and its intermediates, and the resampler's filter (or, for awkward
    rates, the FFT resampler's complex spectra)."""
    output = num_samples * SAMPLE_RATE // rate
    taps = filter_taps(rate)
    resampler = 3 * 8 * taps if taps <= MAX_FILTER_TAPS else 3 * 8 * (num_samples + output)
    return num_samples * channels * (itemsize + 8) + 3 * 4 * output + resampler


def check_decoding_cost(num_samples, channels, rate, itemsize, machine_memory):
    """Refuse, before any decoding, a file whose header makes it cost more than a real file of
    its length ever would (a stereo 16-bit one at 44.1 kHz), or more than half the machine."""
    seconds = num_samples / rate if rate > 0 else math.inf
    claim = f"it says {rate:,} Hz, {plural(channels, 'channel')}, {seconds:,.1f} s"
    if not LOWEST_RATE <= rate <= HIGHEST_RATE:
        raise UnusableAudio(f"{claim}: a sample rate outside what audio uses ({LOWEST_RATE:,} "
                            f"to {HIGHEST_RATE:,} Hz), so its header is probably damaged")
    needed = decoding_bytes(num_samples, channels, rate, itemsize)
    real = decoding_bytes(int(seconds * SAMPLE_RATE), 2, SAMPLE_RATE, 2)
    bound = DECODING_HEADROOM * real + DECODING_SLACK
    if machine_memory:
        bound = min(bound, machine_memory // 2)
    if needed > bound:
        raise UnusableAudio(f"{claim}: decoding it would need {format_bytes(needed)} of memory, "
                            f"more than the {format_bytes(bound)} allowed for a file of that "
                            f"length on this machine")


def resample(audio, rate):
    """Polyphase resampling of a mono float32 signal from `rate` to SAMPLE_RATE; by FFT for
    rates whose polyphase filter would be longer than MAX_FILTER_TAPS, so that memory stays
    near the signal's size whatever the rate."""
    if rate == SAMPLE_RATE:
        return audio
    from scipy import signal

    if filter_taps(rate) > MAX_FILTER_TAPS:
        return signal.resample(audio, len(audio) * SAMPLE_RATE // rate).astype(np.float32)
    divisor = math.gcd(rate, SAMPLE_RATE)
    return signal.resample_poly(audio, SAMPLE_RATE // divisor, rate // divisor).astype(np.float32)


def read_wav(path):
    """One WAV file -> mono float32 samples at 44.1 kHz in [-1, 1].

    Raises UnusableAudio with a short reason for anything that cannot be used.
    Returns (audio, notes): notes are repairs the user should hear about.
    """
    from scipy.io import wavfile

    check_regular_file(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rate, data = wavfile.read(path)
    except PermissionError:
        raise UnusableAudio("no permission to read it") from None
    except MemoryError:
        raise UnusableAudio("too large to read into memory") from None
    except ValueError as error:  # SciPy's own words: "Unknown wave file format: ADPCM", ...
        raise UnusableAudio(f"not a readable WAV file ({error})") from None
    except Exception:  # SciPy's parser trips over broken files in many other ways
        raise UnusableAudio("not a readable WAV file (its structure is damaged or "
                            "incomplete)") from None
    if data.size == 0:
        raise UnusableAudio("it holds no samples")
    # What SciPy read is bounded by the file's size; what converting and resampling it makes is
    # bounded by the header's claims, so they are checked first.
    check_decoding_cost(len(data), 1 if data.ndim == 1 else data.shape[1], rate,
                        data.dtype.itemsize, machine_memory_bytes())
    audio, notes = repair_samples(resample(mono_float32(data), rate))
    return audio, [f"SciPy: {warning.message}" for warning in caught] + notes


def check_regular_file(path):
    """UnusableAudio unless `path` is a regular file (a link to one will do)."""
    if os.path.islink(path) and not os.path.exists(path):
        raise UnusableAudio("broken link: what it points to does not exist")
    if not os.path.isfile(path):
        raise UnusableAudio("not a regular file" if os.path.exists(path) else "no such file")


def read_audio(path):
    """Any music file the tool reads -> (mono float32 samples at 44.1 kHz, notes); see read_wav.
    Raises UnusableAudio with a short reason for anything that cannot be used."""
    format_name = SOUNDFILE_FORMATS.get(Path(path).suffix.lower())
    return read_wav(path) if format_name is None else read_with_soundfile(path, format_name)


def read_with_soundfile(path, format_name):
    """A FLAC, Ogg (Vorbis or Opus), MP3 or AIFF file through libsndfile, its header checked
    first as a WAV's is."""
    try:
        import soundfile
    except ImportError:
        raise UnusableAudio(f"reading {format_name} files needs soundfile: pip install "
                            f"soundfile") from None
    check_regular_file(path)
    if format_name not in soundfile.available_formats():
        raise UnusableAudio(f"the installed libsndfile ({soundfile.__libsndfile_version__}) "
                            f"cannot read {format_name}; pip install --upgrade soundfile")
    if not os.access(path, os.R_OK):
        raise UnusableAudio("no permission to read it")
    try:
        # The MP3 decoder prints its own notes on damaged frames; the warning below says it.
        with native_stderr_silenced():
            info = soundfile.info(str(path))
            if info.frames <= 0:
                raise UnusableAudio("it holds no samples")
            check_decoding_cost(info.frames, info.channels, info.samplerate, 4,
                                machine_memory_bytes())
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except MemoryError:
        raise UnusableAudio("too large to read into memory") from None
    except (RuntimeError, ValueError, TypeError, OSError) as error:  # libsndfile's words
        reason = str(error).split(": ", 1)[-1].strip() or type(error).__name__
        if "does not exist" in reason:  # what libsndfile says of a stream it cannot parse
            reason = "its contents are not recognised"
        raise UnusableAudio(f"not a readable {format_name} file ({reason})") from None
    if data.size == 0:
        raise UnusableAudio("it holds no samples")
    audio, notes = repair_samples(resample(mono_float32(data), rate))
    if len(data) < 0.99 * info.frames:
        notes.insert(0, f"it holds {len(data) / rate:.2f} s of audio, but its header says "
                        f"{info.frames / rate:.2f} s: truncated or damaged; what is there is used")
    return audio, notes


def repair_samples(audio):
    """Non-finite samples become silence, samples past full scale are clipped; both noted."""
    notes = []
    finite = np.isfinite(audio)
    if not finite.any():
        raise UnusableAudio("every sample is NaN or infinite")
    if not finite.all():
        notes.append(f"{np.count_nonzero(~finite)} NaN or infinite samples set to silence")
        audio = np.where(finite, audio, np.float32(0.0))
    peak = float(np.max(np.abs(audio)))
    if peak > 1.0 + 1e-3:  # resampling alone may overshoot full scale by a hair
        notes.append(f"peak level {peak:.2f} is past full scale; clipped to [-1, 1]")
    if peak == 0.0:
        notes.append("it is silent")
    return np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False), notes


# -----------------------------------------------------------------------------
# The built-in demo piece: a piano-like melody over a chord progression, made by NumPy


def piano_note(frequency, seconds, rate=SAMPLE_RATE):
    """A struck string: a few harmonics, a 5 ms attack and an exponential decay."""
    t = np.arange(int(seconds * rate)) / rate
    harmonics = sum(np.sin(2 * np.pi * frequency * k * t) * 0.6**k for k in range(1, 6))
    envelope = np.minimum(t / 0.005, 1.0) * np.exp(-3.0 * t)
    return harmonics * envelope


def demo_piece(seconds=96.0, rate=SAMPLE_RATE, seed=1805):
    """C - G - Am - F, two seconds a chord, under a melody of quarter and eighth notes taken from
    each chord and the C major scale. The same every time for the same seed (another seed picks
    other notes: tests/quality.py holds such a piece out)."""
    rng = np.random.default_rng(seed)
    midi = {"C": [48, 52, 55], "G": [43, 47, 50], "Am": [45, 48, 52], "F": [41, 45, 48]}
    scale = [60, 62, 64, 65, 67, 69, 71, 72, 74, 76]
    phrases = []
    for _ in range(4):  # four 8-second phrases, then the whole 32 s again
        notes, beat = [], 0.0
        while beat < 16:
            length = rng.choice([0.5, 1.0, 1.0, 0.5])
            notes.append((beat, length, int(rng.choice(scale))))
            beat += length
        phrases.append(notes)
    audio = np.zeros(int(seconds * rate) + rate)
    for start in np.arange(0, seconds, 32.0):
        for phrase_index, phrase in enumerate(phrases):
            phrase_start = start + 8.0 * phrase_index
            for chord_index, chord in enumerate(["C", "G", "Am", "F"]):
                for note in midi[chord]:
                    add_note(audio, phrase_start + 2.0 * chord_index, 2.0, note, 0.12, rate)
            for beat, length, note in phrase:
                add_note(audio, phrase_start + beat * 0.5, length * 0.5 + 0.3, note, 0.25, rate)
    audio = audio[: int(seconds * rate)]
    return (0.8 * audio / np.max(np.abs(audio))).astype(np.float32)


def add_note(audio, start_s, seconds, midi_note, level, rate):
    start = int(start_s * rate)
    if start >= len(audio):
        return
    note = level * piano_note(440.0 * 2 ** ((midi_note - 69) / 12), seconds, rate)
    audio[start : start + len(note)] += note[: len(audio) - start]


def write_demo_music(folder):
    """The demo piece as a 16-bit WAV in its own folder (never the user's), once."""
    from scipy.io import wavfile

    path = Path(folder) / "demo-piece.wav"
    if path.exists():
        return path
    Path(folder).mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with disk_space_for(folder, "the demo piece", "--demo's folder", 96 * SAMPLE_RATE * 2):
            wavfile.write(temporary, SAMPLE_RATE, to_pcm16(demo_piece()))
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    say(f"Wrote the demo piece: {path} (96 s).")
    return path


# -----------------------------------------------------------------------------
# FFT frames: one frame per 0.25 s block, and back to audio
#
# Two kinds, both NUM_FEATURES wide, so the network is the same for either:
# - "magnitude" (the default): the log-magnitude spectrum of a 0.5 s window centred on each
#   block (square-root Hann, so windows a block apart overlap-add back to the signal). Generation
#   rebuilds the phase frame by frame (PhaseRebuilder) and overlap-adds: blocks join smoothly.
# - "plain": the real and imaginary rFFT parts of each bare block, as in the original tool. Exact
#   to invert, but the network must predict the phase, which it cannot: its blocks click at every
#   join, fade and smear (the figures are in the README).

WINDOW_SIZE = 2 * BLOCK_SIZE  # samples in a magnitude frame's window: 0.5 s
MAGNITUDE_FLOOR = 1e-2  # added before the log; 16-bit noise in a window is about 2e-3
PHASE_ITERATIONS = 8  # Griffin-Lim rounds per generated frame


def blocks_from_audio(audio, block_size=BLOCK_SIZE):
    """(samples,) -> (num_blocks, block_size), the tail zero-padded to a whole block."""
    num_blocks = max(1, -(-len(audio) // block_size))
    padded = np.zeros(num_blocks * block_size, dtype=np.float32)
    padded[: len(audio)] = audio
    return padded.reshape(num_blocks, block_size)


def frames_from_blocks(blocks):
    """(n, BLOCK_SIZE) float32 -> (n, NUM_FEATURES) float32: real parts, then imaginary parts."""
    from scipy import fft

    spectrum = fft.rfft(blocks, axis=-1, workers=-1)  # complex64 for float32 input
    return np.concatenate([spectrum.real, spectrum.imag], axis=-1).astype(np.float32)


def blocks_from_frames(frames, block_size=BLOCK_SIZE):
    """Inverse of frames_from_blocks: (..., NUM_FEATURES) -> (..., block_size) float32."""
    from scipy import fft

    num_bins = frames.shape[-1] // 2
    spectrum = frames[..., :num_bins] + 1j * frames[..., num_bins:]
    return fft.irfft(spectrum, n=block_size, axis=-1, workers=-1).astype(np.float32)


@functools.cache
def sqrt_hann():
    """A periodic Hann window's square root: squared, windows a block apart sum to exactly 1,
    so analysing and synthesising with it overlap-adds back to the signal."""
    return np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW_SIZE) / WINDOW_SIZE)
                   ).astype(np.float32)


def padded_audio(audio):
    """A file's audio as its frames' windows see it: half a block of silence first, zeros to a
    whole block after the last frame's window: (num_frames + 1) * BLOCK_SIZE samples."""
    num_blocks = max(1, -(-len(audio) // BLOCK_SIZE))
    padded = np.zeros((num_blocks + 1) * BLOCK_SIZE, np.float32)
    padded[BLOCK_SIZE // 2 : BLOCK_SIZE // 2 + len(audio)] = audio
    return padded


def spectra_from_audio(audio):
    """(samples,) -> (num_blocks, WINDOW_SIZE // 2 + 1) complex64: window i is centred on block i
    (the signal padded with half a block of silence at the start and zeros at the end)."""
    from scipy import fft

    padded = padded_audio(audio)
    num_blocks = len(padded) // BLOCK_SIZE - 1
    windows = np.lib.stride_tricks.sliding_window_view(padded, WINDOW_SIZE)[::BLOCK_SIZE]
    return fft.rfft(windows[:num_blocks] * sqrt_hann(), axis=-1, workers=-1)


def frames_from_audio(audio, kind):
    """(samples,) float32 -> (num_blocks, NUM_FEATURES) float32 frames of the given kind."""
    if kind == "plain":
        return frames_from_blocks(blocks_from_audio(audio))
    magnitude = np.abs(spectra_from_audio(audio))  # float32; then in place, no more copies
    magnitude += np.float32(MAGNITUDE_FLOOR)
    return np.log(magnitude, out=magnitude)


CHROMA_BAND = (55.0, 5000.0)  # Hz: the partials that say which pitch classes a frame holds


@functools.cache
def chroma_filters(kind):
    """(first bin, (bins, 12) float32): which of a frame's bins in CHROMA_BAND belong to each
    pitch class (C = 0 ... B = 11), by the nearest equal-tempered pitch."""
    bin_hz = SAMPLE_RATE / (WINDOW_SIZE if kind == "magnitude" else BLOCK_SIZE)
    first, last = (int(math.ceil(hz / bin_hz)) for hz in CHROMA_BAND)
    pitch = np.round(12 * np.log2(np.arange(first, last) * bin_hz / 440.0)).astype(int)
    filters = np.zeros((last - first, 12), np.float32)
    filters[np.arange(last - first), np.mod(pitch + 9, 12)] = 1.0
    return first, filters


def frame_chroma(frames, kind):
    """(n, NUM_FEATURES) raw frames -> (n, 12) float32: the magnitude in each pitch class, the
    frame's pitch content whatever its octave, scaled to unit length (0 for silence)."""
    first, filters = chroma_filters(kind)
    bins = slice(first, first + len(filters))
    if kind == "magnitude":
        magnitude = np.exp(frames[:, bins]) - np.float32(MAGNITUDE_FLOOR)
    else:
        magnitude = np.hypot(frames[:, bins], frames[:, NUM_BINS:][:, bins])
    chroma = magnitude @ filters
    return (chroma / np.maximum(np.linalg.norm(chroma, axis=1, keepdims=True), 1e-12)
            ).astype(np.float32)


class PlainSynthesis:
    """Plain frames back to audio: each frame is its own block."""

    overlap = 0  # samples of a seed's end that the first generated block overlaps

    def prime(self, frames):
        pass

    def prime_with_audio(self, endings):
        pass

    def push(self, frames):  # (pieces, NUM_FEATURES) -> (pieces, BLOCK_SIZE)
        return blocks_from_frames(frames)

    def steer(self, predict_next, music_frames=None):
        return predict_next

    def sharpen_with(self, sharpening):  # a postfilter needs magnitude spectra: not taken
        return False


class PhaseRebuilder:
    """Magnitude frames back to audio, one frame at a time for a batch of pieces.

    A magnitude frame has no phase. Each new frame's phase starts as the last frame's, moved on by
    one block at each bin's frequency, and is then refined by a few rounds of Griffin-Lim against
    what is already known of the window: the previous frame's second half, which the new frame's
    first half overlaps (real-time iterative spectrogram inversion). Each push finishes one
    block: the previous frame's tail plus the new frame's head, both tapered, so blocks join
    without a step. Phases are kept as unit complex numbers, which spares a complex exponential
    and an arctangent per bin and round.
    """

    overlap = BLOCK_SIZE

    def __init__(self, pieces, iterations=PHASE_ITERATIONS):
        num_bins = WINDOW_SIZE // 2 + 1
        self.tail = np.zeros((pieces, BLOCK_SIZE), np.float32)
        self.phase = np.ones((pieces, num_bins), np.complex64)  # unit phasors
        # A bin-centred wave turns by pi * bin over one block (half a window): +1 or -1.
        self.advance = np.where(np.arange(num_bins) % 2 == 0, 1, -1).astype(np.float32)
        self.iterations = iterations
        self.postfilter = None  # a Sharpening of what is sounded, once set

    def prime(self, frames):
        """Warm up on a seed's frames (pieces, seed_frames, features); their audio is dropped."""
        for index in range(frames.shape[1]):
            self.push(frames[:, index])

    def prime_with_audio(self, endings):
        """Start from real audio: endings (pieces, WINDOW_SIZE), each the last 0.5 s of a seed.
        The first generated block then fades from the seed's last block into the new music."""
        from scipy import fft

        windowed = np.asarray(endings, np.float32) * sqrt_hann()
        self.phase = unit(fft.rfft(windowed, axis=-1))
        self.tail = windowed[:, BLOCK_SIZE:] * sqrt_hann()[BLOCK_SIZE:]

    def push(self, frames):  # (pieces, NUM_FEATURES) log-magnitudes -> (pieces, BLOCK_SIZE)
        from scipy import fft

        window = sqrt_hann()
        if self.postfilter is not None:
            frames = self.postfilter(frames)
        magnitude = np.maximum(np.exp(frames) - MAGNITUDE_FLOOR, 0.0).astype(np.float32)
        phase = self.phase * self.advance
        for _ in range(self.iterations):
            signal = fft.irfft(magnitude * phase, n=WINDOW_SIZE, workers=-1) * window
            signal[:, :BLOCK_SIZE] += self.tail  # the second half holds only this frame so far
            phase = unit(fft.rfft(signal * window, workers=-1))
        signal = fft.irfft(magnitude * phase, n=WINDOW_SIZE, workers=-1) * window
        block = self.tail + signal[:, :BLOCK_SIZE]
        self.tail, self.phase = signal[:, BLOCK_SIZE:].astype(np.float32), phase
        return block.astype(np.float32)

    def steer(self, predict_next, music_frames):
        """The predictions it sounds stay within the music's levels (within_music_levels)."""
        return within_music_levels(predict_next, music_frames)

    def sharpen_with(self, sharpening):
        """Sounds each frame through `sharpening` (a Sharpening, see --postfilter): taken."""
        self.postfilter = sharpening
        return True


POSTFILTER_SMOOTHING_BINS = 31  # 62 Hz: the width of the spectral envelope a frame's detail
# (its partials and the gaps between them) is measured around
POSTFILTER_BANDS = 24  # log-spaced bands from 50 Hz, each with its own variance of detail
POSTFILTER_MAX_GAIN = 3.0  # at most this much sharper


class Postfilter:
    """Gives a predicted log-magnitude frame back the detail that averaging took away, before
    its phase is rebuilt (global-variance compensation, Toda and Tokuda 2007, per frame and
    band): in each band, the frame's deviation from its own 62 Hz-wide spectral envelope is
    scaled so that its variance reaches the music's typical variance there (never less sharp,
    at most POSTFILTER_MAX_GAIN times), then the frame is moved back to its own level. A real
    frame of the music has about the music's variance and changes little; a blurred one gets
    its peaks back. Never applied to what is fed back to the network."""

    def __init__(self, music_variances):
        self.music_variances = music_variances  # (POSTFILTER_BANDS,)

    @staticmethod
    def band_edges(num_bins=WINDOW_SIZE // 2 + 1):
        low = 50.0 * WINDOW_SIZE / SAMPLE_RATE  # the bin of 50 Hz
        return np.unique(np.geomspace(low, num_bins, POSTFILTER_BANDS + 1).astype(int))

    @classmethod
    def detail(cls, frames):  # (n, bins) log-magnitudes -> (n, bins) less their envelope
        from scipy.ndimage import uniform_filter1d

        return frames - uniform_filter1d(frames, POSTFILTER_SMOOTHING_BINS, axis=-1,
                                         mode="nearest")

    @classmethod
    def band_variances(cls, detail):  # (n, bins) -> (n, bands)
        edges = cls.band_edges(detail.shape[-1])
        sums = np.add.reduceat(detail[:, edges[0]:] ** 2, edges[:-1] - edges[0], axis=-1)
        return sums[:, : len(edges) - 1] / np.diff(edges)

    @classmethod
    def from_music(cls, frames):
        """From real frames of the music, raw log-magnitudes: each band's median variance."""
        return cls(np.median(cls.band_variances(cls.detail(np.asarray(frames, np.float32))),
                             axis=0))

    def __call__(self, frames):  # (pieces, bins) log-magnitudes -> the same, sharpened
        frames = np.asarray(frames, np.float32)
        detail = self.detail(frames)
        gains = np.sqrt(self.music_variances / np.maximum(self.band_variances(detail), 1e-12))
        gains = np.clip(gains, 1.0, POSTFILTER_MAX_GAIN)
        edges = self.band_edges(frames.shape[-1])
        per_bin = np.ones_like(frames)
        per_bin[:, edges[0]:edges[-1]] = np.repeat(gains, np.diff(edges), axis=-1)
        sharpened = frames + (per_bin - 1) * detail
        return at_level_of(frames, sharpened)


class Sharpening:
    """How the postfilter reaches the sound: a wrapper around predict_next that keeps, for each
    prediction, what the Postfilter would change in it (before any error is sampled onto it),
    and, called on the frame being sounded (PhaseRebuilder.push), adds that change to it and
    puts it back at its own level. So the detail sharpened is the network's own, not the
    sampled error's (which already has the music's variance of detail, so a postfilter after it
    changed nothing), and what is fed back to the network is never changed. Predictions and
    the frames sounded go through in the same order, one each (a queue: the audio thread
    sounds frame i while frame i + 1 is predicted); a seed's frames, sounded before any
    prediction, pass unchanged."""

    def __init__(self, postfilter, normalisation):
        self.postfilter, self.normalisation = postfilter, normalisation
        self.changes = collections.deque()  # (pieces, bins) each, not yet sounded

    def watch(self, predict_next):
        def predict(frames):
            predicted = predict_next(frames)
            raw = self.normalisation.denormalise(predicted)
            self.changes.append(self.postfilter(raw) - raw)
            return predicted

        return predict

    def __call__(self, frames):  # (pieces, bins) log-magnitudes about to be sounded
        if not self.changes:
            return frames
        sharpened = frames + self.changes.popleft()
        return at_level_of(frames, sharpened)


def at_level_of(frames, changed):  # changed moved uniformly back to each frame's level
    return changed + 0.5 * (frame_level(frames) - frame_level(changed))[:, None]


def frame_level(frames):  # (n, bins) log-magnitudes -> (n,) log of the power, as magnitudes go
    peak = frames.max(axis=-1, keepdims=True)
    return (2 * peak[:, 0] + np.log(np.sum(np.exp(2 * (frames - peak)), axis=-1)))


class RealFrames:
    """The training music's real frames, found by their sound: each frame of the cache is
    compressed to INDEX_DIMENSIONS numbers (its projection on the principal axes, computed once
    when the cache is built), so finding the frames nearest to a prediction costs
    num_frames x INDEX_DIMENSIONS per piece, however wide a frame is. Frames come and go in the
    network's normalisation (mean, std), which is the cache's unless the music changed since
    the model was trained."""

    def __init__(self, cache, normalisation):
        self.cache, self.normalisation = cache, normalisation
        self.mean, self.std = normalisation.mean, normalisation.std
        self.squared_norms = np.einsum("ij,ij->i", cache.codes, cache.codes)
        # Frames far below the music's level: silences between pieces, fade-outs. Grains never
        # choose them, or a loop of silence in, silence predicted, silence chosen could start.
        levels = cache.reference.frame_levels
        self.silent = levels < cache.rms_db - SILENCE_BELOW_MUSIC_DB
        if self.silent.all():
            self.silent[:] = False
        self.level_cost = (1 + LEVEL_WEIGHT * np.square((levels - cache.rms_db) / 6.0)
                           ).astype(np.float32)

    def encode(self, raw_frames):  # (pieces, NUM_FEATURES) raw -> (pieces, dimensions)
        return self.cache.normalisation.normalise(raw_frames) @ self.cache.components.T

    def folding(self):
        """(matrix (NUM_FEATURES, dimensions), offset (dimensions,)) float32: encode() of a
        network-normalised prediction p, denormalised, is p @ matrix + offset. Both steps are
        affine, so a network can fold them into its output layer (see compile_step)."""
        components = self.cache.components.T
        matrix = (self.std / self.cache.std)[:, None] * components
        offset = ((self.mean - self.cache.mean) / self.cache.std) @ components
        return matrix.astype(np.float32), offset.astype(np.float32)

    def distances(self, codes):  # (pieces, dimensions) -> (pieces, num_frames) squared
        return (self.squared_norms[None] - 2 * codes @ self.cache.codes.T
                + np.einsum("ij,ij->i", codes, codes)[:, None])

    def nearest(self, raw_frames):  # (pieces, NUM_FEATURES) raw -> (pieces,) frame indices
        return np.argmin(self.distances(self.encode(raw_frames)), axis=1)

    def for_network(self, indices):  # (pieces,) -> (pieces, NUM_FEATURES), network-normalised
        rows = np.concatenate([read_span(self.cache.frames, index, 1) for index in indices])
        return self.normalisation.normalise(self.cache.normalisation.denormalise(rows))

    def window_starts(self, indices):  # (pieces,) -> (pieces,) int64 samples into cache.audio
        indices = np.asarray(indices)
        files = np.searchsorted(self.cache.file_starts, indices, side="right") - 1
        return ((indices + files) * BLOCK_SIZE).astype(np.int64)

    def recording(self, start, count, index):
        """(count,) float32: cache.audio[start : start + count], silent outside the file of
        frame `index` (a moved grain must not reach into another file's music)."""
        file = np.searchsorted(self.cache.file_starts, index, side="right") - 1
        low = (self.cache.file_starts[file] + file) * BLOCK_SIZE
        high = (self.cache.file_starts[file + 1] + file + 1) * BLOCK_SIZE
        out = np.zeros(count, np.float32)
        first, last = max(start, low), min(start + count, high)
        if last > first:
            out[first - start : last - start] = read_span(self.cache.audio, first, last - first) \
                / np.float32(32768)
        return out

    def beat_shift(self, indices, phase):
        """(pieces,) samples that move each frame's grain so that its beat falls where `phase`
        says the beat has reached (by less than half a beat); 0 without a beat on either side."""
        beats = self.cache.beats[np.asarray(indices)]
        apart = np.mod(phase - beats[:, 0] + 0.5, 1.0) - 0.5
        shift = apart * beats[:, 1] * SAMPLE_RATE
        return np.where(np.isfinite(shift), shift, 0.0)

    def within(self, candidates, frames, reach):
        """(len(candidates),) bool: True where a candidate lies within `reach` frames of any of
        `frames` in the same file."""
        candidates, frames = np.asarray(candidates), np.asarray(frames)
        if not len(frames):
            return np.zeros(len(candidates), bool)
        starts = self.cache.file_starts
        files = np.searchsorted(starts, candidates, side="right")
        near = (np.abs(candidates[:, None] - frames[None]) <= reach) \
            & (files[:, None] == np.searchsorted(starts, frames, side="right")[None])
        return near.any(axis=1)

    def successors(self, indices):
        """The frame after each one in its file, or -1 (none: the file ends, or no frame)."""
        after = np.asarray(indices) + 1
        ends = self.cache.file_starts[np.searchsorted(self.cache.file_starts, indices,
                                                      side="right")]
        return np.where((np.asarray(indices) >= 0) & (after < ends), after, -1)


def squared_distances(rows, code):  # (n, dimensions), (dimensions,) -> (n,) float32
    difference = rows - code  # not |a|^2 - 2ab + |b|^2: a frame is exactly 0 from itself,
    return np.einsum("ij,ij->i", difference, difference)  # and a row's figure is its own


class MusicIndex:
    """The music's frames by unit of sound, so that a step of choosing costs the same on hours
    of music as on minutes: a jump, the walk's or a units network's, looks among the frames of
    the units whose centres sound nearest what it joins, at least WALK_CANDIDATES of them (a
    coarse pass over the units' centres, then the fine one over their frames). Music of no
    more frames than that is searched whole, as before there was an index."""

    def __init__(self, unit_of, centroids):  # (frames,) int, (units, INDEX_DIMENSIONS)
        self.unit_of = np.asarray(unit_of)
        self.centroids = np.asarray(centroids, np.float32)
        order = np.argsort(self.unit_of, kind="stable")  # each unit's frames, in order
        ends = np.searchsorted(self.unit_of[order], np.arange(len(self.centroids) + 1))
        self.members = [order[first:stop] for first, stop in zip(ends[:-1], ends[1:])]
        self.sizes = np.diff(ends)

    @classmethod
    def of_music(cls, codes):
        """The walk's index, which has no network's units: the music's own, clustered."""
        centroids = music_units(codes, units_for(len(codes)))
        return cls(unit_labels(codes, centroids), centroids)

    def near(self, code, enough=None):
        """The frames (ascending) of the units whose centres are nearest `code`, at least
        `enough` (WALK_CANDIDATES); None where the music has no more: search it all."""
        enough = WALK_CANDIDATES if enough is None else enough
        if len(self.unit_of) <= enough:
            return None
        order = np.argsort(squared_distances(self.centroids, code), kind="stable")
        count = int(np.searchsorted(np.cumsum(self.sizes[order]), enough)) + 1
        return np.sort(np.concatenate([self.members[unit] for unit in order[:count]]))


JOIN_SLACK = 3.0  # a units network's jump draws its unit among those holding a frame that
# joins within this many times the best join's cost: the network chooses what comes, among
# the sounds that can follow (a unit drawn from all the music joined 2 to 3 times as far)
WALK_CANDIDATES = 2400  # frames (10 minutes of music) among which a jump looks for its best
# join: on longer music, those of the units that sound nearest (MusicIndex)
LADDER = (("return", "beat"), ("return",), ("beat",), ())  # the rules a jump keeps, the first
# of these that leaves it any frame: the cycle rule and the beat rule give way, in that order,
# only where nothing would be left
SILENCE_BELOW_MUSIC_DB = 30.0  # frames this far below the music's RMS level count as silent
JOIN_WEIGHT = 0.25  # weight of how unlike the last choice's successor a frame sounds (its join)
LEVEL_WEIGHT = 1.0  # a jump's cost grows by this times (its frame's level - the music's, / 6 dB)^2
KEY_WEIGHT = 50.0  # a continuation's jump costs up to 1 + this times more the less the key
# around its frame is its seed's (key_cost): a continuation keeps to the key it continues
STAY_WEIGHT = 0.6  # the successor's cost is scaled by this: units of several frames, not frames
BEAT_PHASE_TOLERANCE = 0.08  # of a beat: how far from the beat's place a jump may land (before
# its grain is moved onto it)
ALIGN_REACH = 441  # samples (10 ms) either side that a jump's grain may move to fit the waveform
RETURN_FRAMES = 16  # the cycle rule: no jump back to near a frame played in the last 4 s...
RETURN_REACH = 2  # ...within this many frames (0.5 s) of it


@functools.cache
def crossfade_shape():
    """The odd part o(t) of a crossfade over one block, -1/2 to 1/2 (a half sine)."""
    t = (np.arange(BLOCK_SIZE) + 0.5) / BLOCK_SIZE
    return (0.5 * np.sin(np.pi * (t - 0.5))).astype(np.float32)


def crossfade_gains(correlation):
    """(fade out, fade in) over one block for two signals correlated by `correlation` (clipped
    to 0..1) that keep the level of their sum: g_in = e + o, g_out = e - o, with e chosen so that
    g_in^2 + g_out^2 + 2 r g_in g_out = 1 (Bristow-Johnson's crossfade). Unrelated sound (r = 0)
    gets equal power, sin/cos, with no 3 dB dip half-way; identical sound (r = 1) equal gains
    summing to 1, which keep the waveform."""
    r = float(np.clip(correlation, 0.0, 1.0))
    odd = crossfade_shape()
    even = np.sqrt(np.maximum(1 - 2 * (1 - r) * np.square(odd), 0) / (2 * (1 + r)))
    return even - odd, even + odd


def best_alignment(outgoing, recording, reach):
    """The offset in -reach..reach at which `recording` (len(outgoing) + 2 reach samples) best
    continues `outgoing` over the block (normalised cross-correlation, as WSOLA does), and the
    correlation of the two at that offset."""
    from scipy.signal import correlate

    products = correlate(recording, outgoing, mode="valid", method="fft")
    energy = np.cumsum(np.concatenate([[0.0], np.square(recording, dtype=np.float64)]))
    energy = energy[len(outgoing):] - energy[: -len(outgoing)]
    fit = products / np.sqrt(np.maximum(energy, 1e-12))
    offset = int(np.argmax(fit)) - reach
    incoming = recording[reach + offset : reach + offset + len(outgoing)]
    norms = float(np.linalg.norm(outgoing) * np.linalg.norm(incoming))
    return offset, float(np.dot(outgoing, incoming) / norms) if norms > 0 else 0.0


class GrainSynthesis:
    """The network chooses, real recordings sound (unit selection steered by the network).

    Each predicted frame is matched to one real frame of the training music: the one that
    minimises its (squared) distance to the prediction plus JOIN_WEIGHT times its distance to
    the real successor of the last choice; the successor's own cost is scaled by STAY_WEIGHT,
    so the recording goes on while the predictions agree with it (a unit) and jumps where they
    depart, and every other frame's grows with how far its level is from the music's
    (RealFrames.level_cost), so that a piece neither sinks nor swells. That real frame is fed
    back in (steer), and its recording is played (push): a successor simply continues it,
    sample for sample. A units network and the walk look for a jump's frame through a
    MusicIndex, so that a step costs the same on hours of music as on minutes.

    Where the music has a steady beat (the cache's beats), a jump lands where the beat goes on:
    only to a frame whose place in the beat is within BEAT_PHASE_TOLERANCE of the place the
    recording has reached, at a tempo within TEMPO_TOLERANCE; its grain is then moved by the
    difference, so that its beats fall on the outgoing ones, and by up to ALIGN_REACH samples
    more where the two waveforms fit best. Over the block of the join the outgoing recording
    fades out as the incoming one fades in, with gains that keep the level for the correlation
    the two have there (crossfade_gains).
    The copy guard: after `copy_limit` seconds played verbatim, the successor and every frame
    within that distance of it in the same file are ruled out for the next choice; the cycle
    rule (returning): no jump lands near a frame played in the last few seconds. Frames more
    than SILENCE_BELOW_MUSIC_DB below the music's level, and the seeds' own recordings, are
    never chosen. The cycle rule and the beat rule give way where nothing would be left
    (LADDER). A continuation's jumps keep to its seed's key (key_cost).
    """

    overlap = BLOCK_SIZE

    def __init__(self, real, pieces, copy_limit=COPY_LIMIT_SECONDS, seed_ranges=None):
        import collections

        self.real = real
        self.seed_ranges = seed_ranges
        self.forbidden = None  # (num_frames,): the seeds' own recordings, never chosen: a
        # continuation goes on from its seed into your music (its seed is already heard)
        if seed_ranges:
            self.forbidden = np.zeros(len(real.cache.codes), bool)
            for first, stop in seed_ranges:
                self.forbidden[first:stop] = True

        self.limit = max(1, int(round(copy_limit * FRAMES_PER_SECOND)))  # frames
        self.units = None  # a UnitSteering (NetworkUnits): predictions are chances of units
        self.key = None  # (pieces, 12): a continuation's seed's key (set by prime; see key_cost)
        self.keys = None  # (num_frames, 12): the music's key around each frame (local_keys)
        self.index = None  # a MusicIndex: where a jump looks (None: all the music)
        self.previous = np.full(pieces, -1)  # the last choice (-1: none yet)
        self.recent = np.full((pieces, RETURN_FRAMES), -1)  # the last choices, newest last
        self.run = np.zeros(pieces, int)  # frames played verbatim up to the last choice
        self.shift = np.zeros(pieces)  # samples the current unit's grains are moved by (beat)
        self.tempo = np.full(pieces, np.nan)  # the piece's beat period (s), set by its first
        # frame with a beat: every jump keeps it, so that jumps cannot drift it 4 % at a time
        self.chosen = collections.deque()  # (choices, shifts, jumps) waiting to be sounded
        self.copy_indices = [[] for _ in range(pieces)]  # every choice sounded, per piece
        # What is sounding (push's side): the frame, and where its window starts in the cache's
        # audio, moved as its grain is (-1: the seed's own audio, in self.ending).
        self.sounding = np.full(pieces, -1)
        self.position = np.full(pieces, -1, np.int64)
        self.ending = np.zeros((pieces, BLOCK_SIZE), np.float32)

    def prime(self, frames):
        """Seeds (pieces, seed_frames, features), raw: the music goes on from the real frame
        nearest the seed's last (the very frame, for a clip of the training music)."""
        self.previous = self.real.nearest(frames[:, -1])
        if self.seed_ranges:  # a continuation (--seed-wav): it keeps to its seed's key
            self.key = seed_keys(frames, self.real.cache.kind)
        self.recent[:, -1] = self.previous
        self.sounding = self.previous.copy()
        self.position = self.real.window_starts(self.previous)

    def prime_with_audio(self, endings):
        """Start from real audio, the last 0.5 s of each seed (pieces, WINDOW_SIZE): the first
        block fades from it into the chosen frames. When the seeds are among the music (seed
        ranges), a piece goes on from its seed's last frame, in its beat; else with no
        successor to prefer."""
        self.ending = np.asarray(endings, np.float32)[:, BLOCK_SIZE:].copy()
        if self.seed_ranges:
            self.previous = np.array([stop - 1 for _, stop in self.seed_ranges])
            self.recent[:, -1] = self.previous
            self.sounding = self.previous.copy()
            self.position = self.real.window_starts(self.previous)
            return
        self.previous[:] = -1
        self.position[:] = -1

    def folding(self):
        """Choosing reads a prediction only through its projection on the index: a network
        may fold that into its output layer and predict the index's numbers (see sound_pieces)."""
        return self.real.folding()

    def sharpen_with(self, sharpening):  # real recordings are played as they are: not taken
        return False

    def steer(self, predict_next, music_frames=None):
        """predict_next that returns, instead of each prediction, the real frame chosen for it.
        Predictions are network-normalised frames, or, folded, their index numbers (narrower)."""
        def predict(frames):
            predicted = predict_next(frames)  # the first call reads the whole seed
            if self.units is not None:
                return self.real.for_network(self.choose_by_units(predicted))
            if predicted is not None and predicted.shape[-1] == NUM_FEATURES:
                predicted = self.real.encode(self.real.normalisation.denormalise(predicted))
            return self.real.for_network(self.choose_by_codes(predicted))

        return predict

    def choose(self, raw_predictions):  # (pieces, NUM_FEATURES) -> (pieces,) frame indices
        return self.choose_by_codes(self.real.encode(raw_predictions))

    def choose_by_codes(self, predicted_codes):  # (pieces, dimensions) or None -> (pieces,)
        """A frame-predicting network's choices: the frame that sounds nearest each prediction
        and joins best (the whole music searched); None, the walk (see JoinAlone): the
        successor while the guard allows, else the best join near it."""
        successors, phase = self.real.successors(self.previous), self.beat_reached()
        if predicted_codes is None:
            choices = [self.walk(piece, successor, phase[piece])
                       for piece, successor in enumerate(successors)]
        else:
            every = np.arange(len(self.real.cache.codes))
            choices = [self.best(piece, successor, phase[piece], every, predicted_codes[piece])
                       for piece, successor in enumerate(successors)]
        return self.settle(np.array(choices), successors, phase)

    def choose_by_units(self, chances):  # (pieces, units) probabilities -> (pieces,) indices
        successors, phase = self.real.successors(self.previous), self.beat_reached()
        return self.settle(np.array([self.by_unit(piece, successor, chances[piece], phase[piece])
                                     for piece, successor in enumerate(successors)]),
                           successors, phase)

    def walk(self, piece, successor, phase):
        """The successor where the rules allow it (it joins itself: nothing joins better),
        else the best join among the frames near it (MusicIndex.near)."""
        if self.allowed(piece, successor):
            return successor
        return self.best(piece, successor, phase, self.near(piece, successor))

    def by_unit(self, piece, successor, chances, phase):
        """A units network's choice (see NetworkUnits): the successor while the rules allow it,
        as the walk's; where they end the recording (the copy guard), a unit sampled from
        `chances` among the units that join well (joinable_units), and the frame of it that
        joins best."""
        unit_of, rng = self.index.unit_of, self.units.rng
        if self.allowed(piece, successor):
            return successor
        candidates = self.near(piece, successor)
        left = self.ruled_in(piece, successor, phase, candidates)
        level = first_level(left)
        if level is None:  # nothing the rules leave: the walk's answer for that
            return self.best(piece, successor, phase, candidates)
        cost = np.where(left[level], self.cost(piece, successor, candidates), np.inf)
        units = unit_of[candidates]
        good = joinable_units(cost, units, len(chances))
        odds = np.where(good, np.asarray(chances, np.float64), 0.0)
        odds = odds if odds.sum() > 0 else good.astype(np.float64)
        inside = np.flatnonzero(units == rng.choice(len(odds), p=odds / odds.sum()))
        return int(candidates[inside[np.argmin(cost[inside])]])  # the best join in that unit
        # (no tie to give to the recording: its successor is not allowed here)

    def near(self, piece, successor):
        """Where a jump looks for its best join: the frames of the units that sound nearest
        what it joins (MusicIndex.near), or all the music."""
        joined = successor if successor >= 0 else self.previous[piece]
        near = None if self.index is None or joined < 0 \
            else self.index.near(self.real.cache.codes[joined])
        return np.arange(len(self.real.cache.codes)) if near is None else near

    def cost(self, piece, successor, candidates, code=None):
        """(len(candidates),) how far each candidate frame sounds from the prediction (`code`;
        None: no prediction) plus JOIN_WEIGHT times how far from what it joins; the successor's
        scaled by STAY_WEIGHT, every other frame's by its level_cost and its key_cost."""
        codes = self.real.cache.codes
        rows = codes[candidates]
        cost = np.zeros(len(candidates), np.float32) if code is None else squared_distances(
            rows, code)
        if self.previous[piece] >= 0:
            joined = successor if successor >= 0 else self.previous[piece]
            cost = cost + np.float32(JOIN_WEIGHT) * squared_distances(rows, codes[joined])
        return np.where(candidates == successor, cost * np.float32(STAY_WEIGHT),
                        cost * self.real.level_cost[candidates] * self.key_cost(piece, candidates))

    def key_cost(self, piece, candidates):
        """(len(candidates),) what a continuation's jump to each frame costs for its key: 1 where
        the key around the frame (local_keys) is its seed's, up to 1 + KEY_WEIGHT where it leans
        the other way (half that where it has no lean), so that a continuation stays in the key
        of the music it continues where the rules leave it a frame in it. 1 for a piece that is
        not a continuation, or whose seed has no key (key_lean)."""
        if self.key is None or not self.key[piece].any():  # no seed key to keep
            return np.float32(1.0)
        if self.keys is None:
            self.keys = local_keys(self.real.cache.chroma, self.real.cache.file_starts,
                                   self.real.cache.kind)
        alike = self.keys[candidates] @ self.key[piece]
        return np.float32(1.0) + np.float32(KEY_WEIGHT / 2) * (np.float32(1.0) - alike)

    def allowed(self, piece, successor):  # may the recording go on?
        return successor >= 0 and bool(self.allowed_among(piece, successor, [successor])[0])

    def allowed_among(self, piece, successor, candidates):
        """(len(candidates),) bool: not silent, not a seed's recording, not within the copy
        guard's reach of the successor once the piece has played `copy_limit` verbatim."""
        candidates = np.asarray(candidates)
        allowed = ~self.real.silent[candidates]
        if self.forbidden is not None:
            allowed &= ~self.forbidden[candidates]
        if successor >= 0 and self.run[piece] >= self.limit:  # the copy guard
            allowed &= ~self.real.within(candidates, [successor], self.limit)
        return allowed

    def returning(self, piece, successor, candidates):
        """The cycle rule: (len(candidates),) bool, True where a jump would land within
        RETURN_REACH frames of a frame played in the last RETURN_FRAMES, so that no piece steps
        back and forth over a few frames (the copy guard sees only long stretches). Where the
        music itself repeats, the repeat is other frames, and stays free; the recording may
        always go on."""
        played = self.recent[piece][self.recent[piece] >= 0]
        return self.real.within(candidates, played, RETURN_REACH) & (candidates != successor)

    def on_the_beat(self, piece, successor, candidates, phase):
        """The beat rule: (len(candidates),) bool, False for a jump that would break a steady
        beat: frames whose place in the beat differs from the one reached, or whose tempo
        differs from the piece's (frames of music without a steady beat stay free: the beat
        stops there, as the music does)."""
        if not np.isfinite(phase):
            return np.ones(len(candidates), bool)
        beats = self.real.cache.beats[candidates]
        apart = np.abs(np.mod(beats[:, 0] - phase + 0.5, 1.0) - 0.5)
        fits = (apart <= BEAT_PHASE_TOLERANCE) \
            & (np.abs(beats[:, 1] / self.tempo[piece] - 1) <= TEMPO_TOLERANCE) \
            | np.isnan(beats[:, 0])
        return fits | (candidates == successor)

    def ruled_in(self, piece, successor, phase, candidates):
        """{level: (len(candidates),) bool} the candidates each LADDER level leaves."""
        allowed = self.allowed_among(piece, successor, candidates)
        away = ~self.returning(piece, successor, candidates)
        beat = self.on_the_beat(piece, successor, candidates, phase)
        return {("return", "beat"): allowed & away & beat, ("return",): allowed & away,
                ("beat",): allowed & beat, (): allowed}

    def level(self, piece, successor, phase, candidates):
        """The first LADDER level that leaves any of the candidates (None: none does)."""
        return first_level(self.ruled_in(piece, successor, phase, candidates))

    def best(self, piece, successor, phase, candidates, code=None, level=None):
        """The cheapest of `candidates` (ascending frame indices) that the rules of `level` (a
        LADDER entry) leave, the successor where it ties; level None: the first level that
        leaves any, the first candidate where none does. A candidate frame, or None where
        `level` leaves none."""
        left = self.ruled_in(piece, successor, phase, candidates)
        level = level if level is not None else first_level(left) or ()
        if not left[level].any():
            return None if level else int(candidates[0])
        cost = np.where(left[level], self.cost(piece, successor, candidates, code), np.inf)
        cheapest = np.argmin(cost)
        here = np.searchsorted(candidates, successor)  # a tie goes to the recording: a frame
        if here < len(candidates) and candidates[here] == successor \
                and cost[here] == cost[cheapest]:  # that sounds just as its next (a loop's)
            return int(successor)  # would only restart the copy guard's count
        return int(candidates[cheapest])

    def settle(self, choices, successors, phase):
        """Note each piece's choice: where it jumped, the beat shift."""
        self.recent = np.concatenate([self.recent[:, 1:], choices[:, None]], axis=1)
        jumps = choices != successors
        self.shift = np.where(jumps, self.real.beat_shift(choices, phase), self.shift)
        self.run = np.where(jumps, 1, self.run + 1)
        self.previous = choices
        self.chosen.append((choices, self.shift.copy(), jumps))
        return choices

    def beat_reached(self):
        """The phase of the beat where the next block starts, per piece: the last choice's
        place in its beat a block on, moved as its grain is; nan without a beat. A piece's
        tempo is set by its first frame with a beat."""
        known = self.previous >= 0
        beats = self.real.cache.beats[np.maximum(self.previous, 0)]
        period = np.where(known, beats[:, 1], np.nan)
        self.tempo = np.where(np.isnan(self.tempo), period, self.tempo)
        return np.mod(beats[:, 0] + (BLOCK_SIZE + self.shift) / (SAMPLE_RATE * period), 1.0)

    def push(self, frames):  # the frames are the chosen ones; their recordings are played
        choices, shifts, jumps = self.chosen.popleft()
        block = np.empty((len(choices), BLOCK_SIZE), np.float32)
        for piece, (choice, shift, jump) in enumerate(zip(choices, shifts, jumps)):
            self.copy_indices[piece].append(int(choice))
            if jump:
                block[piece], self.position[piece] = self.join(piece, choice, shift)
            else:  # the recording goes on
                self.position[piece] += BLOCK_SIZE
                block[piece] = self.real.recording(self.position[piece], BLOCK_SIZE, choice)
            self.sounding[piece] = choice
        return block

    def join(self, piece, choice, shift):
        """The block of a jump to `choice`, its grain moved by `shift` samples and fitted to
        the outgoing sound, and where its window then starts."""
        if self.position[piece] < 0:
            outgoing = self.ending[piece]
        else:
            outgoing = self.real.recording(self.position[piece] + BLOCK_SIZE, BLOCK_SIZE,
                                           self.sounding[piece])
        start = self.real.window_starts(np.array([choice]))[0] + int(round(shift))
        around = self.real.recording(start - ALIGN_REACH, BLOCK_SIZE + 2 * ALIGN_REACH, choice)
        offset, correlation = best_alignment(outgoing, around, ALIGN_REACH)
        fade_out, fade_in = crossfade_gains(correlation)
        incoming = around[ALIGN_REACH + offset : ALIGN_REACH + offset + BLOCK_SIZE]
        return fade_out * outgoing + fade_in * incoming, start + offset


def seed_keys(frames, kind):
    """(pieces, seed_frames, NUM_FEATURES) raw seeds -> (pieces, 12) float32: how each seed's
    pitch classes over its length lean (key_lean; 0 for a seed with no key)."""
    chroma = frame_chroma(frames.reshape(-1, frames.shape[-1]), kind).reshape(*frames.shape[:2], 12)
    return key_lean(chroma.mean(axis=1), kind)


KEY_REACH = 32  # frames (8 s) either side of a frame: the stretch of music whose pitch classes
# are its key


def local_keys(chroma, file_starts, kind, reach=KEY_REACH):
    """(num_frames, 12) pitch classes of each frame (frame_chroma), its file's starts -> the key
    around each frame: the pitch classes of the frames within `reach` of it in its file, as
    key_lean reads them."""
    chroma = np.asarray(chroma, np.float64)
    total = np.concatenate([np.zeros((1, 12)), np.cumsum(chroma, axis=0)])
    index = np.arange(len(chroma))
    file = np.searchsorted(file_starts, index, side="right") - 1
    first = np.maximum(index - reach, file_starts[file])
    stop = np.minimum(index + reach + 1, file_starts[file + 1])
    return key_lean(total[stop] - total[first], kind)


KEY_LEAN_FLOOR = 0.05  # a lean this small against the pitch classes' own size is no key (white
# noise leans 0.005, a drum loop 0.2, music's 8-s stretches 0.12 to 0.6)


def key_lean(chroma, kind):
    """(n, 12) pitch classes (sums of frame_chroma) -> how a key leans, at unit length (float32):
    each class's magnitude per bin (a flat spectrum then has none; the band holds 149 to 270
    bins a class), less their mean, so that two keys alike score 1 and two unlike below 0; 0
    where the lean is under KEY_LEAN_FLOOR of the classes' size (no key: silence, noise)."""
    chroma = chroma / chroma_filters(kind)[1].sum(axis=0)
    size = np.linalg.norm(chroma, axis=-1, keepdims=True)
    chroma = chroma - chroma.mean(axis=-1, keepdims=True)
    lean = np.linalg.norm(chroma, axis=-1, keepdims=True)
    keyed = lean > KEY_LEAN_FLOOR * size
    return np.where(keyed, chroma / np.maximum(lean, 1e-12), 0.0).astype(np.float32)


def first_level(left):  # {level: bool per candidate} -> the first of LADDER leaving any
    return next((level for level in LADDER if left[level].any()), None)


def joinable_units(cost, units, count):
    """(count,) bool: the units that hold a candidate joining within JOIN_SLACK times the best
    join's cost (cost: per candidate, inf where ruled out; units: each candidate's unit)."""
    best = np.full(count, np.inf)
    np.minimum.at(best, units, cost)
    return best <= JOIN_SLACK * float(np.min(cost)) + 1e-6


class WithNearestFrames:
    """A spectra synthesis that also notes, for every frame it sounds, the real frame of the
    training music nearest to it: how much of a piece is the music played back verbatim."""

    def __init__(self, synthesis, real, pieces):
        self.synthesis, self.real = synthesis, real
        self.overlap = synthesis.overlap
        self.copy_indices = [[] for _ in range(pieces)]

    def prime(self, frames):
        self.synthesis.prime(frames)

    def prime_with_audio(self, endings):
        self.synthesis.prime_with_audio(endings)

    def steer(self, predict_next, music_frames=None):
        return self.synthesis.steer(predict_next, music_frames)

    def sharpen_with(self, sharpening):
        return self.synthesis.sharpen_with(sharpening)

    def push(self, frames):
        for indices, index in zip(self.copy_indices, self.real.nearest(frames)):
            indices.append(int(index))
        return self.synthesis.push(frames)


def unit(spectrum):
    """Complex numbers scaled to magnitude 1 (1 where a bin is silent): their phases. A silent
    bin must not keep a zero phasor, or it would stay silent whatever its magnitude later."""
    magnitude = np.abs(spectrum)
    silent = magnitude < 1e-30
    phasors = spectrum * (1 / np.maximum(magnitude, 1e-30))
    phasors += silent
    return phasors.astype(np.complex64, copy=False)


def make_synthesis(kind, pieces, synthesis="spectra", real=None, copy_limit=COPY_LIMIT_SECONDS,
                   seed_ranges=None):
    """How frames become sound: grains of the real music (a RealFrames is needed; seed_ranges:
    each piece's own --seed-wav frames in it, see with_seed_music), or the frames' own spectra,
    which note their nearest real frames when given a RealFrames."""
    if synthesis == "grains":
        return GrainSynthesis(real, pieces, copy_limit, seed_ranges)
    spectra = PlainSynthesis() if kind == "plain" else PhaseRebuilder(pieces)
    return spectra if real is None else WithNearestFrames(spectra, real, pieces)


def normalise(frames, mean, std):
    return ((frames - mean) / std).astype(np.float32)


def denormalise(frames, mean, std):
    return (frames * std + mean).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Normalisation:
    """The per-feature mean and standard deviation that a network's frames are measured in: the
    cache's, or a checkpoint's (the music it was trained on). It travels with the model."""

    mean: np.ndarray  # (NUM_FEATURES,) float32
    std: np.ndarray  # (NUM_FEATURES,) float32, each > 0

    def normalise(self, raw_frames):
        return normalise(raw_frames, self.mean, self.std)

    def denormalise(self, frames):
        return denormalise(frames, self.mean, self.std)


class RunningStats:
    """Per-feature mean and variance over many batches of frames (Chan et al.'s merge)."""

    def __init__(self, num_features):
        self.count = 0
        self.mean = np.zeros(num_features)
        self.m2 = np.zeros(num_features)  # sum of squared deviations from the mean

    def add(self, frames):
        """Merge one batch (one file's frames); its own sums run in float32 through BLAS."""
        count = len(frames)
        ones = np.ones(count, np.float32)
        mean32 = (ones @ frames) / np.float32(count)
        centred = frames - mean32
        m2 = (ones @ np.square(centred, out=centred)).astype(np.float64)
        mean = mean32.astype(np.float64)
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * count / total
        self.m2 = self.m2 + m2 + delta**2 * self.count * count / total
        self.count = total

    def mean_and_std(self):
        std = np.sqrt(self.m2 / max(self.count, 1))
        return self.mean.astype(np.float32), np.maximum(std, STD_FLOOR).astype(np.float32)


# -----------------------------------------------------------------------------
# The frame cache (train_data/)
#
# Layout: cache.json (the manifest, written last) names a folder frames-<fingerprint>/ that
# holds frames.npy (num_frames, NUM_FEATURES) float32 normalised, file_starts.npy (int64, one
# more entry than there are files), mean.npy and std.npy; audio.npy, the music itself as 16-bit
# mono, each file padded as its frames' windows see it (half a block of silence before, zeros
# to a whole block after), so that frame j's 0.5 s window is audio[(j + file) * BLOCK_SIZE:]
# [:WINDOW_SIZE]; and the frames' compressed index: components.npy (INDEX_DIMENSIONS,
# NUM_FEATURES), the principal axes of the normalised frames, and codes.npy (num_frames,
# INDEX_DIMENSIONS), every frame projected on them; levels.npy, each frame's window's RMS in
# dB; beats.npy (num_frames, 2), each frame's place in its file's beat (phase 0-1, period in s,
# nan without a steady beat: see frame_beats); chroma.npy (num_frames, 12), each frame's pitch
# classes (frame_chroma). A new cache is built in a temporary
# folder and renamed into place before the manifest is replaced, so a run killed at any moment
# leaves the previous complete cache or no trusted cache at all.


@dataclasses.dataclass
class FrameCache:
    frames: np.ndarray  # (num_frames, NUM_FEATURES) float32, normalised, memory-mapped
    file_starts: np.ndarray  # (num_files + 1,) int64: file i owns frames[starts[i]:starts[i+1]]
    mean: np.ndarray  # (NUM_FEATURES,) float32
    std: np.ndarray  # (NUM_FEATURES,) float32
    file_names: list  # names of the files used, in order
    fingerprint: str  # changes whenever the music or the preprocessing settings change
    rms_db: float  # level of the training music, RMS in dB relative to full scale
    kind: str  # the kind of frame: a key of FRAME_KINDS
    reference: object  # a MusicReference: the music's log-mel figures, for the quality report
    audio: np.ndarray = None  # ((num_frames + num_files) * BLOCK_SIZE,) int16, memory-mapped
    codes: np.ndarray = None  # (num_frames, INDEX_DIMENSIONS) float32: the frames, compressed
    components: np.ndarray = None  # (INDEX_DIMENSIONS, NUM_FEATURES) float32: frames -> codes
    beats: np.ndarray = None  # (num_frames, 2) float32: phase in the beat (0-1), period (s); nan
    # where the music has no steady beat
    chroma: np.ndarray = None  # (num_frames, 12) float32: each frame's pitch classes (unit length)

    @property
    def normalisation(self):  # the frames' own: what a new network is trained in
        return Normalisation(self.mean, self.std)

    def grain(self, index):
        """Frame `index`'s 0.5 s of recorded audio, (WINDOW_SIZE,) float32 in [-1, 1]."""
        start = (index + np.searchsorted(self.file_starts, index, side="right") - 1) * BLOCK_SIZE
        return read_span(self.audio, start, WINDOW_SIZE).astype(np.float32) / np.float32(32768)


def read_span(array, start, count):
    """array[start : start + count] of a memory-mapped .npy, read with a plain read: pages of a
    memory map stay counted as the process's memory while it is mapped, so reading scattered
    rows of it (grains, chosen frames) would grow with the music's length. A JoinedRows reads
    from whichever of its two arrays holds the span (a span never crosses from one to the
    other: each holds whole files)."""
    if isinstance(array, JoinedRows):
        first = len(array.first)
        return read_span(array.first, start, count) if start < first \
            else read_span(array.second, start - first, count)
    if not isinstance(array, np.memmap):
        return np.asarray(array[start : start + count])
    row_bytes = array.itemsize * int(np.prod(array.shape[1:], dtype=np.int64))
    out = np.empty((count, *array.shape[1:]), array.dtype)
    with open(array.filename, "rb") as handle:
        handle.seek(array.offset + start * row_bytes)
        handle.readinto(memoryview(out).cast("B"))
    return out


def preprocessing_settings(kind):
    return {"cache_version": CACHE_VERSION, "sample_rate": SAMPLE_RATE, "block_size": BLOCK_SIZE,
            "frame": kind}


def dataset_fingerprint(music_paths, kind=DEFAULT_FRAMES):
    """A hash of each file's name, size and modification time, and of the settings."""
    listing = []
    for path in music_paths:
        try:
            info = os.stat(path)
            listing.append([path.name, info.st_size, info.st_mtime_ns])
        except OSError:
            listing.append([path.name, None, None])  # a broken link still counts as present
    text = json.dumps({"files": listing, "settings": preprocessing_settings(kind)},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_cache(cache_dir, fingerprint):
    """The cache for this fingerprint, or None when it is missing, stale or incomplete."""
    try:
        manifest = json.loads((Path(cache_dir) / CACHE_MANIFEST).read_text())
        if manifest.get("fingerprint") != fingerprint:
            return None
        folder = Path(cache_dir) / manifest["folder"]
        frames = np.load(folder / "frames.npy", mmap_mode="r", allow_pickle=False)
        file_starts = np.load(folder / "file_starts.npy", allow_pickle=False)
        mean = np.load(folder / "mean.npy", allow_pickle=False)
        std = np.load(folder / "std.npy", allow_pickle=False)
        mel = {name: np.load(folder / f"{name}.npy", allow_pickle=False)
               for name in ("mel_mean", "mel_cov", "mel_seconds", "mel_second_starts")}
        audio = np.load(folder / "audio.npy", mmap_mode="r", allow_pickle=False)
        codes = np.load(folder / "codes.npy", allow_pickle=False)
        components = np.load(folder / "components.npy", allow_pickle=False)
        levels = np.load(folder / "levels.npy", allow_pickle=False)
        beats = np.load(folder / "beats.npy", allow_pickle=False)
        chroma = np.load(folder / "chroma.npy", allow_pickle=False)
        kind, pitch_clarity = manifest["settings"]["frame"], float(manifest["pitch_clarity"])
        onset_rate = float(manifest["note_rate"]) \
            if manifest.get("notes_version") == NOTES_VERSION else math.nan
        rhythm = (float(manifest["pulse"]), float(manifest["tempo_kept"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    expected = (manifest.get("num_frames"), NUM_FEATURES)
    num_files = len(file_starts) - 1
    if frames.shape != expected or file_starts[-1] != frames.shape[0] or mean.shape != std.shape \
            or mel["mel_second_starts"][-1] != len(mel["mel_seconds"]) or kind not in FRAME_KINDS \
            or audio.shape != ((expected[0] + num_files) * BLOCK_SIZE,) \
            or codes.shape != (expected[0], len(components)) or levels.shape != expected[:1] \
            or components.shape[1:] != (NUM_FEATURES,) or beats.shape != (expected[0], 2) \
            or chroma.shape != (expected[0], 12):
        return None
    if math.isnan(onset_rate):  # a cache from before notes and the pulse were read as now:
        notes = cached_note_figures(audio, file_starts)  # again, from the music it holds
        onset_rate, rhythm = notes["note_rate"], (notes["pulse"], notes["tempo_kept"])
        try:  # and kept, where the folder can be written (else counted again next time)
            write_json_atomically(Path(cache_dir) / CACHE_MANIFEST, {**manifest, **notes})
        except OSError:
            pass
    starts = mel["mel_second_starts"]
    reference = MusicReference(manifest["rms_db"], mel["mel_mean"], mel["mel_cov"],
                               [mel["mel_seconds"][a:b] for a, b in zip(starts[:-1], starts[1:])],
                               pitch_clarity, onset_rate, levels, *rhythm)
    return FrameCache(frames, file_starts, mean, std, manifest["files"], fingerprint,
                      manifest["rms_db"], kind, reference, audio, codes, components, beats,
                      chroma)


NOTES_VERSION = 2  # how notes and the pulse are read from the music (NOTE_LAG, NOTE_FLAT_DB)


def cached_note_figures(audio, file_starts):
    """The music's notes a second, pulse and tempo kept, read from the cache's own audio
    (audio.npy, file by file, from where its padding ends) as the quality report reads them."""
    filters, notes, pulses, kept = mel_filterbank(), 0, [], []
    for file, (start, end) in enumerate(zip(file_starts[:-1], file_starts[1:])):
        first = (start + file) * BLOCK_SIZE + BLOCK_SIZE // 2

        def read(low, high, first=first):
            return read_span(audio, first + low, high - low).astype(np.float32) / 32768

        stats = log_mel_stats(read, int(end - start) * BLOCK_SIZE, filters)
        notes += stats.onsets()
        file_pulses, file_kept = rhythm_windows(stats.note_envelope(), NOTE_FLAT_DB)
        pulses.extend(file_pulses)
        kept.extend(file_kept)
    return {"note_rate": notes / max(file_starts[-1] / FRAMES_PER_SECOND, 1e-9),
            **rhythm_figures(pulses, kept), "notes_version": NOTES_VERSION}


def write_npy(path, array):
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_dir(path):
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


NPY_HEADER_BYTES = 128  # what NumPy writes for the frames' and the audio's arrays


def npy_header(shape, descr="<f4"):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False,
                                                  "shape": shape})
    if len(buffer.getvalue()) != NPY_HEADER_BYTES:
        raise ValueError(f"unexpected .npy header size for shape {shape}")
    return buffer.getvalue()


def window_levels(padded):
    """(num_frames,) float32: the RMS level in dB of each frame's 0.5 s window."""
    blocks = padded.reshape(-1, BLOCK_SIZE).astype(np.float64)
    energy = np.einsum("ij,ij->i", blocks, blocks)
    return (10 * np.log10((energy[:-1] + energy[1:]) / WINDOW_SIZE + 1e-20)).astype(np.float32)


def write_raw_frames(music_paths, folder, kind):
    """Pass 1: read each file and append its un-normalised frames behind a placeholder .npy
    header, and its audio to audio.npy, gathering the statistics on the way: the frames' mean
    and variance, and the music's level, log-mel figures and pitch clarity, which the quality
    report measures pieces against.

    Streams file by file, so memory stays near the size of the largest single file.
    """
    from concurrent.futures import ThreadPoolExecutor

    stats, file_starts, used, skipped = RunningStats(NUM_FEATURES), [0], [], []
    sum_squares, num_samples, pitch_counts, onsets, levels = 0.0, 0, np.zeros(2), [0], []
    beats, pulses, tempo_kept, chroma = [], [], [], []
    filters, mel_total, mel_seconds = mel_filterbank(), LogMelStats(), []
    # Three threads share the work of a file about equally: this one reads the next file and
    # makes its frames, a writer puts the last file's frames and audio on disk and gathers its
    # log-mel figures, and a third measures its pitch clarity.
    with open(folder / "frames.npy", "wb") as raw, open(folder / "audio.npy", "wb") as pcm, \
            ThreadPoolExecutor(max_workers=1) as writer, \
            ThreadPoolExecutor(max_workers=1) as pitch_thread, QuitAtSafePoints() as ctrl_c:
        raw.write(bytes(NPY_HEADER_BYTES))
        pcm.write(bytes(NPY_HEADER_BYTES))
        pending = pending_pitch = writer.submit(lambda: None)
        for path in music_paths:
            ctrl_c.check()
            try:
                audio, notes = read_audio(path)
            except UnusableAudio as reason:
                warn(f"skipping {path}: {reason}")
                skipped.append(path.name)
                continue
            for note in notes:
                warn(f"{path}: {note}")
            frames = frames_from_audio(audio, kind)
            pending.result()  # at most one file's frames and audio wait in memory
            pending_pitch.result()

            def write_and_measure(frames=frames, audio=audio):
                raw.write(frames)
                padded = padded_audio(audio)
                pcm.write(to_pcm16(padded))
                levels.append(window_levels(padded))
                file_mel = log_mel_stats(lambda start, stop: audio[start:stop], len(audio),
                                         filters, into=mel_total)
                mel_seconds.append(file_mel.second_means())
                onsets[0] += file_mel.onsets()
                beats.append(frame_beats(file_mel.onset_envelope(), len(frames))[0])
                file_pulses, file_kept = rhythm_windows(file_mel.note_envelope(), NOTE_FLAT_DB)
                pulses.extend(file_pulses)
                tempo_kept.extend(file_kept)

            def measure_pitch(audio=audio, frames=frames):
                pitch_counts[:] += pitch_clarity_counts(lambda start, stop: audio[start:stop],
                                                        len(audio))
                chroma.append(frame_chroma(frames, kind))

            pending = writer.submit(write_and_measure)
            pending_pitch = pitch_thread.submit(measure_pitch)
            stats.add(frames)
            sum_squares += float(np.dot(audio, audio))
            num_samples += len(audio)
            file_starts.append(file_starts[-1] + len(frames))
            used.append((path.name, len(audio) / SAMPLE_RATE))
        pending.result()
        pending_pitch.result()
        ctrl_c.check()
        pcm.seek(0)
        pcm.write(npy_header(((file_starts[-1] + len(used)) * BLOCK_SIZE,), "<i2"))
        pcm.flush()
        os.fsync(pcm.fileno())
    rms_db = 10 * math.log10(max(sum_squares / max(num_samples, 1), 1e-20))
    reference = MusicReference(rms_db, *mel_total.mean_and_cov(), mel_seconds,
                               pitch_counts[0] / max(pitch_counts[1], 1),
                               onsets[0] / max(num_samples / SAMPLE_RATE, 1e-9),
                               np.concatenate(levels),
                               **rhythm_figures(pulses, tempo_kept)) if used else None
    return stats, (beats, chroma), np.array(file_starts, dtype=np.int64), used, skipped, reference


INDEX_DIMENSIONS = 64  # principal components kept in the compressed index of the frames
INDEX_SAMPLE = 1024  # frames, evenly spaced, from which the principal axes are found


def read_rows(handle, rows, mean, std):
    """Rows of the raw frames file, normalised: (len(rows), NUM_FEATURES) float32."""
    out = np.empty((len(rows), NUM_FEATURES), np.float32)
    for position, row in enumerate(rows):
        handle.seek(NPY_HEADER_BYTES + int(row) * NUM_FEATURES * 4)
        handle.readinto(memoryview(out[position]).cast("B"))
    return normalise(out, mean, std)


def principal_axes(sample, dimensions=INDEX_DIMENSIONS):
    """(dimensions, features) float32: the directions along which the normalised frames
    `sample` (n, features) vary most, through the small n x n Gram matrix."""
    from scipy import linalg

    gram = (sample @ sample.T).astype(np.float64)  # float32 products: the sample stays 45 MB
    # Only the largest eigenpairs (LAPACK's evr driver): a tenth of a full eigh's time.
    wanted = min(dimensions, len(sample))
    values, vectors = linalg.eigh(gram, subset_by_index=[len(sample) - wanted, len(sample) - 1],
                                  driver="evr")
    keep = np.argsort(values)[::-1]
    keep = keep[values[keep] > 1e-6 * max(values.max(), 1e-30)]
    axes = (vectors[:, keep].T.astype(np.float32) @ sample) / np.sqrt(values[keep])[:, None]
    return axes.astype(np.float32)


def normalise_npy_in_place(npy_path, num_frames, mean, std, chunk_frames=256):
    """Pass 2: write the real header and normalise the frames in place a chunk at a time,
    while another thread finds the principal axes from a sample of them; then compress every
    frame into the index. Returns (components, codes).

    Plain reads and writes rather than a memory map, so resident memory stays one chunk (and
    the sample the principal axes are found from)."""
    from concurrent.futures import ThreadPoolExecutor

    chunk = np.empty((chunk_frames, NUM_FEATURES), np.float32)

    def chunks():  # (offset in the file, rows) of each chunk
        for start in range(0, num_frames, chunk_frames):
            yield NPY_HEADER_BYTES + start * NUM_FEATURES * 4, min(chunk_frames, num_frames - start)

    with open(npy_path, "r+b") as handle, ThreadPoolExecutor(max_workers=1) as axes_thread:
        sample = np.unique(np.linspace(0, num_frames - 1, min(num_frames, INDEX_SAMPLE))
                           .astype(int))
        axes = axes_thread.submit(principal_axes, read_rows(handle, sample, mean, std))
        handle.seek(0)
        handle.write(npy_header((num_frames, NUM_FEATURES)))
        for offset, rows in chunks():
            handle.seek(offset)
            handle.readinto(memoryview(chunk[:rows]).cast("B"))
            np.subtract(chunk[:rows], mean, out=chunk[:rows])  # normalise(), in place
            np.divide(chunk[:rows], std, out=chunk[:rows])
            handle.seek(offset)
            handle.write(chunk[:rows])
        handle.flush()
        os.fsync(handle.fileno())
        components, codes = axes.result(), []
        for offset, rows in chunks():  # read back from the page cache
            handle.seek(offset)
            handle.readinto(memoryview(chunk[:rows]).cast("B"))
            codes.append(chunk[:rows] @ components.T)
    return components, np.concatenate(codes).astype(np.float32)


def build_cache(dataset_dir, cache_dir, music_paths, fingerprint, kind=DEFAULT_FRAMES):
    """Preprocess every usable WAV into a new cache folder, then switch the manifest to it."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    folder_name = f"frames-{fingerprint}"
    partial = cache_dir / f"{folder_name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:  # made inside the try: a Ctrl-C just after mkdir must not leave the folder behind
        partial.mkdir()
        stats, (beats, chroma), file_starts, used, skipped, reference = write_raw_frames(
            music_paths, partial, kind)
        if not used:
            raise UserError(no_music_message(dataset_dir, music_paths, skipped,
                                             list_music_folder(dataset_dir)[1]))
        if dataset_fingerprint(find_music_files(dataset_dir), kind) != fingerprint:
            raise UserError(f"The music in {dataset_dir} changed while it was being read; "
                            f"the cache was not saved. Run again once the folder is settled.")
        mean, std = stats.mean_and_std()
        components, codes = normalise_npy_in_place(partial / "frames.npy", int(file_starts[-1]),
                                                   mean, std)
        seconds = reference.second_means
        for name, array in [("file_starts", file_starts), ("mean", mean), ("std", std),
                            ("components", components), ("codes", codes),
                            ("levels", reference.frame_levels),
                            ("beats", np.concatenate(beats).astype(np.float32)),
                            ("chroma", np.concatenate(chroma)),
                            ("mel_mean", reference.mel_mean), ("mel_cov", reference.mel_cov),
                            ("mel_seconds", np.concatenate(seconds)),
                            ("mel_second_starts", np.cumsum([0] + [len(s) for s in seconds]))]:
            write_npy(partial / f"{name}.npy", array)
        fsync_dir(partial)
        final = cache_dir / folder_name
        shutil.rmtree(final, ignore_errors=True)  # a leftover not named by any manifest
        os.replace(partial, final)
        manifest = {"fingerprint": fingerprint, "folder": folder_name, "settings":
                    preprocessing_settings(kind), "num_frames": int(file_starts[-1]),
                    "files": [name for name, _ in used], "rms_db": reference.rms_db,
                    "pitch_clarity": reference.pitch_clarity,
                    "note_rate": reference.onset_rate, "notes_version": NOTES_VERSION,
                    "pulse": reference.pulse, "tempo_kept": reference.tempo_kept}
        write_json_atomically(cache_dir / CACHE_MANIFEST, manifest)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    remove_stale_cache_folders(cache_dir, keep=folder_name)
    return used, skipped


def write_json_atomically(path, data):
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "w") as handle:
            json.dump(data, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_dir(path.parent)


def remove_stale_cache_folders(cache_dir, keep):
    """Old caches and partial folders of killed runs; only folders that this tool names."""
    for entry in Path(cache_dir).iterdir():
        if entry.name.startswith("frames-") and entry.name != keep and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def no_music_message(dataset_dir, music_paths, skipped, others=()):
    found = (f"found {plural(len(music_paths), 'music file')}, none usable" if music_paths
             else f"found no music files ({FORMATS_READ})")
    return (f"No usable music in {dataset_dir}: {found}"
            + (f" (skipped: {', '.join(skipped)})" if skipped else "")
            + (f"; it holds {', '.join(path.name for path in others)}, which this tool does not "
               f"read" if others else "")
            + f". Copy some music files ({FORMATS_READ}) into {dataset_dir} and run again, or "
              f"try the built-in demo: python3 music-composer.py --demo")


def prepare_cache(dataset_dir, cache_dir, kind=DEFAULT_FRAMES):
    """Reuse the cache when the music and settings are unchanged, otherwise rebuild it."""
    music_paths, others = list_music_folder(dataset_dir)
    if not music_paths:
        raise UserError(no_music_message(dataset_dir, music_paths, [], others))
    if others:
        warn(f"not read, as they are not in a format this tool reads ({FORMATS_READ}): "
             f"{', '.join(path.name for path in others)}")
    fingerprint = dataset_fingerprint(music_paths, kind)
    cache = load_cache(cache_dir, fingerprint)
    if cache is not None:
        say(f"Reusing the frame cache in {cache_dir}: {plural(len(cache.file_names), 'file')}, "
            f"{len(cache.frames)} frames ({len(cache.frames) / FRAMES_PER_SECOND / 60:.1f} min).")
        return cache
    older = older_cache_version(cache_dir)
    if older is not None:
        say(f"The frame cache in {cache_dir} was made by an older version of this tool "
            f"(cache version {older}, now {CACHE_VERSION}: it now keeps "
            f"the music's beat, so that grains keep it); rebuilding it.")
    say(f"Building the frame cache in {cache_dir} from "
        f"{plural(len(music_paths), 'music file')}...")
    started = time.perf_counter()
    with disk_space_for(cache_dir, "the frame cache", "-t/--traindata-folder-path",
                        cache_bytes(music_paths)):
        used, skipped = build_cache(dataset_dir, cache_dir, music_paths, fingerprint, kind)
    cache = load_cache(cache_dir, fingerprint)
    minutes = sum(seconds for _, seconds in used) / 60
    say(f"Cached {len(cache.frames)} frames from {plural(len(used), 'file')}, {minutes:.1f} min "
        f"of music{f', {len(skipped)} skipped' if skipped else ''}, in "
        f"{time.perf_counter() - started:.1f} s.")
    return cache


def cache_bytes(music_paths):
    """About what the cache of this music takes on disk, from the files' sizes: per second of
    music 4 frames of 44 KB and 88 KB of 16-bit audio; the files are taken as 16-bit stereo
    WAV (compressed formats hold more music per byte, so this is a floor for them)."""
    seconds = sum(path.stat().st_size for path in music_paths if path.is_file()) / (4 * SAMPLE_RATE)
    return int(seconds * (FRAMES_PER_SECOND * NUM_FEATURES * 4 + 2 * SAMPLE_RATE))


def older_cache_version(cache_dir):
    """The version of a cache made by an older version of this tool, else None."""
    try:
        version = json.loads((Path(cache_dir) / CACHE_MANIFEST).read_text())["settings"][
            "cache_version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return version if isinstance(version, int) and version < CACHE_VERSION else None


def check_dataset_folder(dataset_dir):
    """First run: create the folder and say what to put in it."""
    dataset_dir = Path(dataset_dir)
    if dataset_dir.exists() and not dataset_dir.is_dir():
        raise UserError(f"{dataset_dir} is a file, not a folder. Give a folder of music files "
                        f"with -d/--datasets-folder-path.")
    if not dataset_dir.exists():
        dataset_dir.mkdir(parents=True)
        raise UserError(f"Created the folder {dataset_dir}. Copy your music ({FORMATS_READ}) into "
                        f"it and run again. To see the tool at work first, on a built-in "
                        f"piece of music, run: python3 music-composer.py --demo")


# -----------------------------------------------------------------------------
# Training sequences: L consecutive frames in, the same L shifted one frame later out, the loss
# at every step. Long sequences (8 s by default) let the network learn in the state it carries
# while generating; a new one starts every L / 4 frames, so each frame is a target about as often
# as with the original's 1 s windows that started at every frame, and an epoch costs the same.

TARGET_REPEATS = 4  # how many training sequences each frame is a target in


def split_windows(file_starts, length=WINDOW_FRAMES, stride=1,
                  validation_fraction=VALIDATION_FRACTION):
    """Start indices of training and validation sequences of `length` frames, one every `stride`
    frames; no sequence crosses a file boundary.

    Each file's last tenth (at least length + 1 frames) is held out for validation, when the
    file is long enough to keep a training sequence as well. When no file is, the last file
    that holds a sequence is held out whole instead.
    """
    span = length + 1  # frames one sequence touches, its last target included
    train, validation = [], []
    for start, end in zip(file_starts[:-1], file_starts[1:]):
        held_out = max(span, int(round((end - start) * validation_fraction)))
        split = end - held_out if end - start >= 2 * span else end
        train.append(np.arange(start, split - span + 1, stride))
        validation.append(np.arange(split, end - span + 1, stride))
    if not any(len(part) for part in validation):
        with_windows = [index for index, part in enumerate(train) if len(part)]
        if len(with_windows) >= 2:
            validation[with_windows[-1]], train[with_windows[-1]] = train[with_windows[-1]], []
    return (np.concatenate(train).astype(np.int64),
            np.concatenate(validation).astype(np.int64))


def sequence_length(file_starts, seconds):
    """Frames in a training sequence: `seconds` of music, halved while the music is too short
    to give both training and validation sequences that long (down to WINDOW_FRAMES)."""
    length = max(WINDOW_FRAMES, int(round(seconds * FRAMES_PER_SECOND)))
    while length > WINDOW_FRAMES and not all(map(len, split_windows(file_starts, length))):
        length = max(WINDOW_FRAMES, length // 2)
    return length


def training_stride(length):
    return max(1, length // TARGET_REPEATS)


def gather_windows(frames, window_starts, length=WINDOW_FRAMES):
    """(batch,) starts -> inputs and targets, each (batch, length, NUM_FEATURES)."""
    order = np.argsort(window_starts)  # reading the memory map in order is kinder to the disk
    rows = window_starts[order][:, None] + np.arange(length + 1)
    windows = np.empty((len(window_starts), length + 1, frames.shape[1]), np.float32)
    windows[order] = frames[rows.ravel()].reshape(len(window_starts), length + 1, -1)
    return windows[:, :-1], windows[:, 1:]


def minimum_music_message(file_starts):
    seconds = (file_starts[-1]) / FRAMES_PER_SECOND
    need = 2 * (WINDOW_FRAMES + 1) / FRAMES_PER_SECOND
    return (f"Too little music to train: found {seconds:.2f} s, but training and validation "
            f"together need at least {need:.1f} s in one file ({2 * (WINDOW_FRAMES + 1)} blocks "
            f"of {BLOCK_SIZE / SAMPLE_RATE} s), or two files of at least {need / 2:.2f} s. "
            f"Add longer music files.")


# -----------------------------------------------------------------------------
# The model: time-distributed Dense -> stacked LSTM -> time-distributed Dense


def import_keras():
    """Keras (and its backend) is imported only here, so --help and user errors answer at
    once."""
    if "keras" not in sys.modules:
        backend = check_keras_backend(os.environ.get("KERAS_BACKEND"))
        os.environ["KERAS_BACKEND"] = backend  # whatever ~/.keras/keras.json says
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        split_jax_cpu_for_tests(backend)
        with native_stderr_silenced():  # the backends' C++ start-up chatter, not for users
            import keras

            if backend == "tensorflow":
                import tensorflow as tf

                tf.config.list_physical_devices("GPU")  # probes CUDA once, quietly
                split_cpu_for_tests(tf)
            elif importlib.util.find_spec("tensorflow") is not None:
                import tensorflow  # noqa: F401  Keras's saving imports it where installed:
                # here, quietly, not with its chatter in the middle of training
    import keras

    register_fused_adam(keras)
    register_unit_loss(keras)
    register_unit_prior(keras)
    return keras


KERAS_BACKENDS = {"tensorflow": "requirements.txt", "jax": "requirements-jax.txt",
                  "torch": "requirements-torch.txt"}  # Keras 3's backends, and what installs each


def keras_backend():
    """The Keras backend this run computes with: KERAS_BACKEND, else TensorFlow (whose fast CPU
    path, several GPUs and TensorBoard are the tool's own)."""
    return (os.environ.get("KERAS_BACKEND") or "tensorflow").strip().lower()


def check_keras_backend(asked):
    """The backend KERAS_BACKEND asks for (tensorflow without it), checked before anything is
    imported: one the tool runs on, and installed."""
    backend = (asked or "tensorflow").strip().lower()
    if backend not in KERAS_BACKENDS:
        raise UserError(f"KERAS_BACKEND is set to {asked!r}: music-composer runs on "
                        f"{', '.join(KERAS_BACKENDS)}. Set one of those, or unset it for "
                        f"TensorFlow.")
    if importlib.util.find_spec(backend) is None:
        raise UserError(f"KERAS_BACKEND={backend} asks for {backend}, which is not installed "
                        f"here. Install it with: pip install -r {KERAS_BACKENDS[backend]}")
    return backend


TEST_REPLICAS = "MUSIC_COMPOSER_TEST_CPU_REPLICAS"  # tests only: split the CPU into N devices


def split_cpu_for_tests(tf):
    """With TEST_REPLICAS set to N > 1 (tests only), the CPU becomes N logical devices, so that
    training on several devices (MirroredStrategy) is tested on a machine without GPUs. Must
    run before TensorFlow starts its runtime."""
    count = int(os.environ.get(TEST_REPLICAS) or 0)
    if count > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def split_jax_cpu_for_tests(backend):
    """TEST_REPLICAS under JAX: the CPU as N devices (XLA's flag, set before JAX starts)."""
    count = int(os.environ.get(TEST_REPLICAS) or 0)
    if backend == "jax" and count > 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={count}").strip()


def replica_devices(gpus_wanted=None):
    """The devices to train on together: every visible GPU (at most `gpus_wanted`) when there
    are two or more; else [] for the one-device path, unchanged (no strategy object). Several
    devices on TensorFlow (MirroredStrategy) and JAX (keras.distribution); PyTorch trains on
    one."""
    backend, testing = keras_backend(), int(os.environ.get(TEST_REPLICAS) or 0) > 1
    if backend == "jax":
        import jax

        gpus = jax.devices("cpu") if testing else [device for device in jax.devices()
                                                   if device.platform == "gpu"]
    elif backend == "tensorflow":
        import tensorflow as tf

        if testing:
            return [device.name for device in tf.config.list_logical_devices("CPU")]
        gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    else:
        return []
    chosen = gpus[: gpus_wanted or len(gpus)]
    return chosen if len(chosen) > 1 else []


def training_scope(devices):
    """MirroredStrategy's scope over `devices` (a replica of the model on each, gradients summed
    across them every step), or on JAX keras.distribution's DataParallel (the same, each step's
    batch split across them), or no scope at all for one device. The model, its optimizer,
    compile and a checkpoint loaded to resume must all be made inside it."""
    if not devices:
        return contextlib.nullcontext()
    if keras_backend() == "jax":
        keras = import_keras()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return contextlib.nullcontext()
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(devices).scope()


def register_fused_adam(keras):
    """Adam whose update is TensorFlow's fused ResourceApplyAdam kernel: one pass over each
    weight instead of keras.optimizers.Adam's half-dozen elementwise passes, and clipping whose
    norm is one fused reduction (tf.nn.l2_loss) instead of square-then-sum. On the default
    network's 56 M weights: about 0.05 s instead of 0.18 s a step on 2 CPU cores, with the
    same arithmetic (a test compares the two). Registered so that checkpoints load."""
    if keras.saving.get_registered_object("music_composer>FusedAdam") is not None:
        return
    if keras.backend.backend() != "tensorflow":
        @keras.saving.register_keras_serializable(package="music_composer", name="FusedAdam")
        class PlainAdam(keras.optimizers.Adam):
            """Keras's own Adam, under the name checkpoints give it (any backend reads them)."""
        return
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="music_composer")
    class FusedAdam(keras.optimizers.Adam):
        def _clip_gradients(self, grads):
            if not self.clipnorm:
                return super()._clip_gradients(grads)
            clipped = []
            for gradient in grads:  # each gradient's norm at most clipnorm, as in Keras
                norm = tf.sqrt(2.0 * tf.nn.l2_loss(gradient))
                clipped.append(gradient * (self.clipnorm / tf.maximum(norm, self.clipnorm)))
            return clipped

        def update_step(self, gradient, variable, learning_rate):
            def cast(value):
                return tf.cast(value, variable.dtype)

            step = cast(self.iterations + 1)
            index = self._get_variable_index(variable)
            tf.raw_ops.ResourceApplyAdam(
                var=variable.handle, m=self._momentums[index].handle,
                v=self._velocities[index].handle, beta1_power=tf.pow(cast(self.beta_1), step),
                beta2_power=tf.pow(cast(self.beta_2), step), lr=cast(learning_rate),
                beta1=cast(self.beta_1), beta2=cast(self.beta_2), epsilon=cast(self.epsilon),
                grad=gradient)


class native_stderr_silenced:
    """Point file descriptor 2 at /dev/null for a moment; Python exceptions still surface."""

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)

    def __exit__(self, *exc_info):
        os.dup2(self.saved, 2)
        os.close(self.saved)


# What the network predicts. A point head predicts the frame itself: trained by mean squared
# error (the original's) it predicts the average of the futures it cannot tell apart, a blurred
# spectrum, which the spectra way sounds. The units head predicts which of the music's own units
# of sound comes next, a distribution over real sounds that grains play. (A median head and a
# mixture of Gaussians were measured and retired: tests/FINDINGS.md.)

HEADS = {"average": "a frame: the average of the likely next frames (mean squared error, the "
                    "original's)",
         "units": "which of the music's own units of sound comes next (the frames clustered; "
                  "cross-entropy), a distribution over real sounds that grains sample"}
RETIRED_HEADS = {"median": "the median head", "mixture": "the mixture head"}  # see FINDINGS
# A new model's head, by its synthesis: with grains the units head came nearest the walk
# (README, tests/FINDINGS.md); spectra sound a predicted frame, so they need one.
DEFAULT_HEAD = {"grains": "units", "spectra": "average"}


class PointHead:
    """The output is the predicted frame; sampling adds one of the network's real errors."""

    predicts_frames = True  # its outputs are a frame (a step may fold them: output_fold)
    uses_errors = True  # sampling adds the network's own errors (prediction_errors)

    name, loss, components = "average", "mse", 1

    def outputs(self, num_features):
        return num_features

    def mode(self, outputs):
        return outputs

    def sampling(self, predict_next, errors, temperature, rng, watch=None):
        """predict_next sampled: the network's prediction (seen by `watch`, a wrapper that
        takes the network's own prediction, when given) plus a sampled error."""
        return with_sampled_errors(watch(predict_next) if watch else predict_next, errors,
                                   temperature, rng)


UNITS = 256  # units of sound in the units head at most...
FRAMES_PER_UNIT = 30  # ...and one for every this many frames of music, at least MIN_UNITS:
MIN_UNITS = 32  # 256 units for 8 minutes (7 frames a unit) were too many to learn which follows
# which; 64 (30 frames a unit) the network predicted held-out music better than counting did


def units_for(num_frames):
    """How many units of sound a new units head clusters this much music into."""
    return int(np.clip(num_frames // FRAMES_PER_UNIT, MIN_UNITS, UNITS))


class UnitsHead:
    """The output is one logit per unit of the music's sound: the cache's frames clustered by
    k-means on their index numbers (music_units). Trained by cross-entropy on the next frame's
    unit, it predicts a distribution over real sounds, several futures at once, never their
    average; grains sample a unit and play, within it, the frame that joins best (see
    NetworkUnits). centroids: (units, INDEX_DIMENSIONS), from the checkpoint."""

    name, loss = "units", "music_composer>unit_nll"
    predicts_frames = uses_errors = False

    def __init__(self, components=UNITS, centroids=None, prior=True):
        self.components, self.centroids = components, centroids
        self.prior = prior  # the network's logits are added to counting's (UnitPrior)

    def outputs(self, num_features):
        return self.components


def make_head(name, components=None):
    return UnitsHead(components or UNITS) if name == "units" else PointHead()


def head_of(model):
    """The head a model was built with, read from its output layer."""
    features = model.get_layer("project_in").input.shape[-1]
    if model.get_layer("project_out").units == features:
        return PointHead()
    return UnitsHead(model.get_layer("project_out").units,
                     prior=unit_prior_of(model) is not None)


def music_units(codes, count, seed=0, rounds=25):
    """(count, dimensions) centroids of the frames' index numbers (codes, (frames, dimensions)):
    k-means, started by k-means++ (seeded: the same music gives the same units)."""
    rng = np.random.default_rng(seed)
    codes = np.asarray(codes, np.float32)
    count = max(2, min(count, len(codes) // 4))
    centroids = [codes[rng.integers(len(codes))]]
    nearest = np.sum(np.square(codes - centroids[0]), axis=1)
    for _ in range(count - 1):
        chosen = rng.choice(len(codes), p=nearest / nearest.sum()) if nearest.sum() > 0 \
            else rng.integers(len(codes))
        centroids.append(codes[chosen])
        nearest = np.minimum(nearest, np.sum(np.square(codes - codes[chosen]), axis=1))
    centroids = np.array(centroids)
    for _ in range(rounds):
        labels = unit_labels(codes, centroids)
        for unit in range(count):
            members = codes[labels == unit]
            if len(members):
                centroids[unit] = members.mean(axis=0)
    return centroids.astype(np.float32)


def unit_labels(codes, centroids):  # (frames, dimensions) -> (frames,) int32: nearest unit
    distances = (np.sum(np.square(centroids), axis=1)[None] - 2 * codes @ centroids.T)
    return np.argmin(distances, axis=1).astype(np.int32)


def unit_prior_of(model):  # a units model's UnitPrior layer, or None
    return next((layer for layer in model.layers if layer.name == "unit_prior"), None)


def register_unit_prior(keras):
    """UnitPrior, registered so that checkpoints load (see UnitsHead)."""
    if keras.saving.get_registered_object("music_composer>UnitPrior") is not None:
        return
    ops = keras.ops

    @keras.saving.register_keras_serializable(package="music_composer", name="UnitPrior")
    class UnitPrior(keras.layers.Layer):
        """What counting knows, as logits: log p(next unit | this frame's unit), a bigram
        counted on the training part of the music (unit_counting). The frame's unit is found
        as the cache finds it, the nearest centroid to its index numbers. Its weights are
        counted, never trained: the network's own logits are added to these, so it starts
        where counting is and learns only what counting misses."""

        def __init__(self, dimensions, units, **kwargs):
            super().__init__(**{"dtype": "float32", **kwargs})
            self.dimensions, self.units = dimensions, units

        def build(self, input_shape):
            def constant(name, shape):
                return self.add_weight(shape=shape, initializer="zeros", trainable=False,
                                       name=name)

            self.components = constant("components", (input_shape[-1], self.dimensions))
            self.centroids = constant("centroids", (self.units, self.dimensions))
            self.log_bigram = constant("log_bigram", (self.units, self.units))

        def call(self, frames):  # (..., features) normalised -> (..., units) log-probabilities
            codes = ops.matmul(ops.cast(frames, "float32"), self.components)
            distances = (ops.sum(ops.square(self.centroids), axis=-1)
                         - 2 * ops.matmul(codes, ops.transpose(self.centroids)))
            return ops.take(self.log_bigram, ops.argmin(distances, axis=-1), axis=0)

        def get_config(self):
            return {**super().get_config(), "dimensions": self.dimensions, "units": self.units}


def register_unit_loss(keras):
    """unit_nll, registered so that checkpoints load."""
    if keras.saving.get_registered_object("music_composer>unit_nll") is not None:
        return
    ops = keras.ops

    @keras.saving.register_keras_serializable(package="music_composer", name="unit_nll")
    def unit_nll(targets, logits):
        """-log p(the next frame's unit): targets (batch, time) unit numbers."""
        return ops.sparse_categorical_crossentropy(ops.cast(targets, "int32"),
                                                   ops.cast(logits, "float32"), from_logits=True)


def build_model(num_features, hidden_neurons, hidden_layers, head=None):
    keras = import_keras()
    layers = keras.layers
    # Dense on a (batch, time, features) input acts on each time step alone: it is the
    # original's TimeDistributed(Dense), as one matrix product. (Keras 3's TimeDistributed gets
    # the same numbers through a vectorised loop, 1.9x slower on the two 11 026-wide layers.)
    frames = keras.Input(shape=(None, num_features), name="frames")  # (batch, time, features)
    x = layers.Dense(hidden_neurons, name="project_in")(frames)  # (batch, time, neurons)
    for index in range(hidden_layers):
        # Default activations and no recurrent dropout keep TensorFlow's cuDNN LSTM on a GPU.
        x = layers.LSTM(hidden_neurons, return_sequences=True, name=f"lstm_{index}")(x)
    head = head or PointHead()
    counted = getattr(head, "prior", False)  # a units head's logits go on from counting's:
    # from zero, so that a new network predicts what counting does and moves where it learns
    next_frames = layers.Dense(head.outputs(num_features), name="project_out",
                               kernel_initializer="zeros" if counted else "glorot_uniform")(x)
    if counted:
        prior = keras.saving.get_registered_object("music_composer>UnitPrior")(
            np.shape(head.centroids)[1], head.components, name="unit_prior")(frames)
        next_frames = layers.Add(name="with_prior", dtype="float32")([next_frames, prior])
    model = keras.Model(frames, next_frames, name="music_composer")
    # Adam adapts each weight's step size, reaching a lower loss in far fewer epochs than the
    # original's Adadelta; clipping the gradient norm guards the LSTMs against blow-ups.
    optimizer = keras.saving.get_registered_object("music_composer>FusedAdam")
    loss = keras.saving.get_registered_object(head.loss) or head.loss  # ours, or Keras's name
    # A network that starts where counting is leaves it slowly: at 1e-3 one epoch took it
    # further from the held-out music than counting, at 1e-4 it stayed level (FINDINGS).
    learning_rate = 1e-4 if counted else 1e-3
    model.compile(optimizer=optimizer(learning_rate=learning_rate, clipnorm=1.0), loss=loss)
    return use_fastest_lstm_kernel(model, gpu_available())


# Precision of training. Mixed precision keeps the weights, Adam's state, the sums and the
# LSTM's gates and carry in float32 and takes the matrix products, nearly all the arithmetic,
# in 16 bits where the hardware multiplies them natively: bfloat16 on a CPU with AVX512-BF16 or
# AMX, float16 with loss scaling (its range is narrow) on a GPU with tensor cores. Checkpoints
# hold float32 weights either way, so a model trained one way resumes and generates the other.

PRECISIONS = {"float32": "float32 throughout",
              "bfloat16": "mixed bfloat16: matrix products in bfloat16; weights, Adam, sums and "
                          "the LSTM gates in float32",
              "float16": "mixed float16: matrix products in float16 with loss scaling; weights "
                         "and Adam in float32"}
KERAS_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def multiplies_bfloat16_natively(cpuinfo="/proc/cpuinfo"):
    """Whether this CPU has bfloat16 dot-product instructions (AVX512-BF16 or AMX-BF16), with
    which oneDNN multiplies bfloat16 matrices at twice float32's speed rather than emulating."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def gpu_compute_capability():
    """The first GPU's CUDA compute capability (major, minor), or None without a GPU (or on
    a backend other than TensorFlow, which trains in float32: see training_precision)."""
    if keras_backend() != "tensorflow":
        return None
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    return tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))


def training_precision(requested="auto", capability=None, native_bfloat16=None):
    """(precision, why): the one asked for, or by the hardware. A CPU with native bfloat16
    products trains in mixed bfloat16 (measured 1.72 times float32's frames a second at the
    default size, side by side; the README's Precision). A GPU with tensor cores (compute
    capability 7.0 or more) trains in mixed float16: cuDNN's LSTM kernel takes float16, and
    float16 has tensor cores on every such card. Anything else trains in float32."""
    if requested != "auto":
        return requested, "asked for with --precision"
    if keras_backend() != "tensorflow":
        return "float32", (f"Keras on {keras_backend()} trains in float32 unless --precision "
                           f"asks: the tool's mixed-precision LSTM is TensorFlow's, and Keras's "
                           f"own LSTM in mixed bfloat16 failed on a GPU under JAX")
    if capability is not None:
        if tuple(capability) >= (7, 0):
            return "float16", (f"this GPU has float16 tensor cores (compute capability "
                               f"{capability[0]}.{capability[1]})")
        return "float32", "this GPU has no float16 tensor cores"
    if multiplies_bfloat16_natively() if native_bfloat16 is None else native_bfloat16:
        return "bfloat16", "this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX)"
    return "float32", "this CPU has no native bfloat16 products"


def use_precision(model, precision):
    """Train `model` in `precision` (a key of PRECISIONS): the Dense layers take Keras's mixed
    policy; the LSTM layers multiply in it inside unrolled_lstm_loop on a CPU, or take the
    policy too on a GPU (cuDNN) for float16; float16 wraps Adam in Keras's loss scaling (and
    anything else unwraps it). Only how the model computes changes: its variables stay float32.
    Call use_fastest_lstm_kernel after it."""
    keras = import_keras()
    policy = KERAS_POLICIES[precision]
    for layer in model.layers:
        if layer.name.startswith("project_"):
            layer.dtype_policy = policy
        elif layer.name.startswith("lstm_"):  # cuDNN takes float16 (bfloat16: unverified)
            layer.dtype_policy = layer.cell.dtype_policy = \
                policy if precision == "float16" else "float32"
            layer.products_dtype = precision  # for unrolled_lstm_loop
    scaling = keras.optimizers.LossScaleOptimizer
    if precision == "float16" and not isinstance(model.optimizer, scaling):
        model.optimizer = scaling(model.optimizer)
    elif precision != "float16" and isinstance(model.optimizer, scaling):
        model.optimizer = model.optimizer.inner_optimizer
    model.train_function = model.test_function = model.predict_function = None  # retraced
    return model


UNROLL_UP_TO = 32  # frames: longer training sequences run the LSTMs in a loop on a CPU


def use_fastest_lstm_kernel(model, on_gpu, length=WINDOW_FRAMES):
    """On a GPU, unroll=False lets TensorFlow run the cuDNN kernel. On a CPU, unrolling the
    steps skips the while-loop's bookkeeping (a tenth of a training step with 32 frames), and
    the unrolled steps take their input products all at once (unrolled_lstm_loop); much
    longer sequences would only make a huge graph. Only the way of computing changes, not
    the arithmetic. Other backends keep Keras's own LSTM (cuDNN where the backend has it)."""
    if keras_backend() != "tensorflow":
        return model
    for layer in model.layers:
        if layer.name.startswith("lstm_"):
            layer.unroll = not on_gpu and length <= UNROLL_UP_TO
            if layer.unroll:
                layer.inner_loop = unrolled_lstm_loop(layer)
            else:
                layer.__dict__.pop("inner_loop", None)  # Keras's own: cuDNN, or a loop
    return model


def unrolled_lstm_loop(layer):
    """An LSTM layer's inner loop (LSTM.inner_loop's contract) for a CPU: lstm_sequence, with
    the layer's weights. Every step's input product x K + b is taken in one matrix product over
    the whole sequence before the steps, so that only h R is left to each step; the backward
    pass does the same for the gradients (see lstm_sequence). The matrix products are taken in
    the layer's products_dtype (set by use_precision); the gates and the carry in float32."""
    import tensorflow as tf

    cell = layer.cell
    if (cell.activation.__name__, cell.recurrent_activation.__name__) != ("tanh", "sigmoid"):
        raise ValueError("unrolled_lstm_loop: tanh and sigmoid activations only")

    def inner_loop(sequences, initial_state, mask=None, training=False):
        if mask is not None or layer.go_backwards or (training and layer.dropout):
            raise ValueError("unrolled_lstm_loop: no masks, dropout or backward layers")
        h, c = (tf.cast(state, tf.float32) for state in initial_state)
        weights = [tf.cast(weight.value, tf.float32)  # read here: lstm_sequence takes tensors
                   for weight in (cell.kernel, cell.recurrent_kernel, cell.bias)]
        outputs, h, c = lstm_sequence(tf.cast(sequences, tf.float32), h, c, *weights,
                                      getattr(layer, "products_dtype", "float32"))
        return h, outputs, [h, c]

    return inner_loop


def lstm_sequence(x, h, c, kernel, recurrent, bias, dtype="float32"):
    """Keras's LSTM (LSTMCell, implementation 2: z = x K + h R + b, gates i, f, c, o, tanh and
    sigmoid) over a whole sequence x (batch, time, inputs) from states h, c, unrolled, with its
    backward pass written out: (outputs (batch, time, units), last h, last c).

    Automatic differentiation of the unrolled steps adds each step's h^T dz to dR as it goes:
    at the default size, 32 rank-10 updates of a 16 MB matrix per layer, bound by memory and
    half of a training step on a CPU. Here the steps only carry dh back through R; dR, dK and
    db are each one matrix product over the whole sequence afterwards. The matrix products run
    in `dtype` (float32, or bfloat16 for mixed precision); everything else in float32."""
    import tensorflow as tf

    dtype = tf.as_dtype(dtype)
    cast = (lambda t: t) if dtype == tf.float32 else (lambda t: tf.cast(t, dtype))

    def product(a, b, **transposes):  # float32 in and out, multiplied in `dtype`
        return tf.cast(tf.matmul(cast(a), cast(b), **transposes), tf.float32)

    @tf.custom_gradient
    def sequence(x, h, c, kernel, recurrent, bias):
        batch, time = tf.shape(x)[0], x.shape[1]
        flat_x = tf.reshape(x, [batch * time, -1])
        projected = tf.reshape(product(flat_x, kernel) + bias, [batch, time, -1])
        recurrent_cast = cast(recurrent)
        saved, hs = [], [h]  # hs: the states before each step, then the last
        for t in range(time):
            z = projected[:, t] + tf.cast(tf.matmul(cast(h), recurrent_cast), tf.float32)
            z_i, z_f, z_c, z_o = tf.split(z, 4, axis=-1)
            i, f, g, o = tf.sigmoid(z_i), tf.sigmoid(z_f), tf.tanh(z_c), tf.sigmoid(z_o)
            c_before, c = c, f * c + i * g
            tanh_c = tf.tanh(c)
            h = o * tanh_c
            saved.append((i, f, g, o, c_before, tanh_c))
            hs.append(h)

        def gradient(d_outputs, d_h, d_c):
            d_h = tf.zeros_like(h) if d_h is None else d_h
            d_c = tf.zeros_like(c) if d_c is None else d_c
            d_zs = [None] * time
            for t in reversed(range(time)):
                i, f, g, o, c_before, tanh_c = saved[t]
                d_h = d_h + d_outputs[:, t]
                d_c = d_c + d_h * o * (1.0 - tanh_c * tanh_c)
                d_zs[t] = tf.concat([d_c * g * i * (1.0 - i), d_c * c_before * f * (1.0 - f),
                                     d_c * i * (1.0 - g * g), d_h * tanh_c * o * (1.0 - o)],
                                    axis=-1)
                d_c = d_c * f
                d_h = tf.cast(tf.matmul(cast(d_zs[t]), recurrent_cast, transpose_b=True),
                              tf.float32)
            d_z = tf.reshape(tf.stack(d_zs, axis=1), [batch * time, -1])
            d_x = tf.reshape(product(d_z, kernel, transpose_b=True), tf.shape(x))
            d_kernel = product(flat_x, d_z, transpose_a=True)
            d_recurrent = product(tf.reshape(tf.stack(hs[:-1], axis=1), [batch * time, -1]),
                                  d_z, transpose_a=True)
            return d_x, d_h, d_c, d_kernel, d_recurrent, tf.reduce_sum(d_z, axis=0)

        return (tf.stack(hs[1:], axis=1), h, c), gradient

    return sequence(x, h, c, kernel, recurrent, bias)


def lstm_gates(cell, z, c):
    """Keras's LSTMCell after its products (implementation 2): z = x K + h R + b, (batch,
    4 units), gates i, f, c, o in that order; c the carry. Returns the new (h, c)."""
    from keras import ops

    z_i, z_f, z_c, z_o = ops.split(z, 4, axis=-1)
    c = ops.add(ops.multiply(cell.recurrent_activation(z_f), c),
                ops.multiply(cell.recurrent_activation(z_i), cell.activation(z_c)))
    return ops.multiply(cell.recurrent_activation(z_o), cell.activation(c)), c


def visible_gpus():
    """The names of the GPUs this run's Keras backend sees."""
    backend = keras_backend()
    if backend == "jax":
        import jax

        return [str(device) for device in jax.devices() if device.platform == "gpu"]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
    import tensorflow as tf

    return [gpu.name for gpu in tf.config.list_physical_devices("GPU")]


def gpu_available():
    return bool(visible_gpus())


def as_numpy(tensor):  # a backend's tensor (on any device) as a NumPy array
    return import_keras().ops.convert_to_numpy(tensor)


def model_shape(model):
    """(hidden_neurons, hidden_layers) of a model made by build_model."""
    lstms = [layer for layer in model.layers if layer.name.startswith("lstm_")]
    return lstms[0].units, len(lstms)


def trained_parameters(model):  # what training changes: a UnitPrior's counts are not among them
    return int(sum(np.prod(weight.shape) for weight in model.trainable_weights))


def count_parameters(num_features, hidden_neurons, hidden_layers, outputs=None):
    """Parameters of build_model's network, by formula (no TensorFlow needed); outputs: the
    head's (default: a frame)."""
    outputs = outputs or num_features
    project_in = num_features * hidden_neurons + hidden_neurons
    lstm = 4 * (2 * hidden_neurons * hidden_neurons + hidden_neurons)
    project_out = hidden_neurons * outputs + outputs
    return project_in + hidden_layers * lstm + project_out


# -----------------------------------------------------------------------------
# Checkpoints: the Keras model file plus everything generation needs, in one atomic file


def read_checkpoint_metadata(path):
    """Our metadata and normalisation from a checkpoint, without TensorFlow; UserError if foreign."""
    try:
        with zipfile.ZipFile(path) as archive:
            metadata = json.loads(archive.read(CHECKPOINT_METADATA))
            mean = np.load(io.BytesIO(archive.read("mean.npy")), allow_pickle=False)
            std = np.load(io.BytesIO(archive.read("std.npy")), allow_pickle=False)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise UserError(f"The checkpoint {path} is damaged or was not written by this tool "
                        f"({error}); it was left untouched. {how_to_go_on(path)}") from None
    if metadata.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"The checkpoint {path} has format version {metadata.get('version')}, "
                        f"this tool reads version {CHECKPOINT_VERSION}. Move it away to start anew.")
    return metadata, mean, std


def generating_checkpoint(cache_dir):
    """The checkpoint a units network generates from: the epoch that predicted the held-out
    music best (model-best.keras), where it is of the same training as the last (the same
    music, head and size); else the last (model.keras). A network of frames generates from the
    last epoch, as it always has."""
    last = Path(cache_dir) / CHECKPOINT_NAME
    best = last.with_name(BEST_CHECKPOINT_NAME)
    try:
        last_metadata = read_checkpoint_metadata(last)[0]
        best_metadata = read_checkpoint_metadata(best)[0] if best.exists() else None
    except UserError:
        return last
    same = ("cache_fingerprint", "head", "hidden_neurons", "hidden_layers", "frame")
    if best_metadata is None or last_metadata.get("head") != "units" or any(
            best_metadata.get(key) != last_metadata.get(key) for key in same):
        return last
    return best


def how_to_go_on(damaged):
    """What to do about a damaged checkpoint: go on from an intact model-best.keras beside it
    (named with its epoch and loss, and the one command that does it), or start anew."""
    best = Path(damaged).with_name(BEST_CHECKPOINT_NAME)
    fresh = ("Move it away to start a new model, or pass another folder with "
             "-t/--traindata-folder-path.")
    if Path(damaged).name == BEST_CHECKPOINT_NAME or not best.exists():
        return fresh
    try:
        with zipfile.ZipFile(best) as archive:
            if archive.testzip() is not None:  # every member read back against its checksum
                return fresh
        metadata, _, _ = read_checkpoint_metadata(best)
    except (OSError, zipfile.BadZipFile, UserError):
        return fresh
    import shlex

    loss = metadata.get("best_val_loss")
    return (f"{best} beside it is intact (epoch {metadata.get('epochs_done')}"
            + (f", val_loss {loss:.4f}" if loss is not None else "") + "). To go on from there, "
            f"copy it over the damaged one: cp {shlex.quote(str(best))} "
            f"{shlex.quote(str(damaged))}, then run again. Or: {fresh[0].lower()}{fresh[1:]}")


def checkpoint_frames(metadata):
    """The kind of frame a checkpoint was trained on (before --frames, always plain)."""
    saved = metadata.get("frame", "rfft-real-imag")
    return {"rfft-real-imag": "plain"}.get(saved, saved)


def check_checkpoint_frames(path, metadata, kind):
    saved = checkpoint_frames(metadata)
    if saved != kind:
        raise UserError(
            f"The checkpoint {path} was trained on {saved} frames, but this run uses {kind} "
            f"frames. Run with --frames {saved} to continue or use that model, or give another "
            f"-t/--traindata-folder-path to train a new one. The checkpoint was not changed.")


def check_checkpoint_shape(path, metadata, hidden_neurons, hidden_layers):
    saved = (metadata["hidden_neurons"], metadata["hidden_layers"])
    if saved != (hidden_neurons, hidden_layers):
        raise UserError(
            f"The checkpoint {path} holds a network of -n {saved[0]} -l {saved[1]}, but this run "
            f"asks for -n {hidden_neurons} -l {hidden_layers}. Run with -n {saved[0]} -l "
            f"{saved[1]} to continue that model, or give another -t/--traindata-folder-path to "
            f"train a new one. The checkpoint was not changed.")


def check_checkpoint_head(path, metadata, head):
    saved = metadata.get("head", "average")  # before --head, every network predicted averages
    if saved in RETIRED_HEADS:
        raise UserError(
            f"The checkpoint {path} holds a network with {RETIRED_HEADS[saved]}, which this "
            f"version no longer has: it lost to the average and units heads (tests/FINDINGS.md "
            f"has the figures). Train a new model in another folder (-t NEW_FOLDER), or use an "
            f"earlier version of music-composer for this one. The checkpoint was not changed.")
    if head is not None and saved != head:
        raise UserError(
            f"The checkpoint {path} holds a network that predicts {HEADS[saved]}, but this run "
            f"asks for --head {head}. Run with --head {saved} (or without --head) to continue or "
            f"use that model, or give another -t/--traindata-folder-path to train a new one. The "
            f"checkpoint was not changed.")


def save_checkpoint(path, model, metadata, mean, std):
    """Write model + metadata to a temporary file, then rename it over `path` in one step."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.tmp-{os.getpid()}.keras")  # Keras wants .keras
    with disk_space_for(path.parent, f"the checkpoint {path.name}", "-t/--traindata-folder-path",
                        12 * model.count_params()), contextlib.ExitStack() as cleanup:
        cleanup.callback(lambda: temporary.unlink(missing_ok=True))
        with adam_alone(model):
            model.save(temporary)
        with zipfile.ZipFile(temporary, "a") as archive:  # which Keras backend wrote it, too
            archive.writestr(CHECKPOINT_METADATA, json.dumps(
                {**metadata, "backend": keras_backend()}, indent=1))
            for name, array in [("mean.npy", mean), ("std.npy", std)]:
                buffer = io.BytesIO()
                np.save(buffer, array, allow_pickle=False)
                archive.writestr(name, buffer.getvalue())
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        fsync_dir(path.parent)


@contextlib.contextmanager
def adam_alone(model):
    """While saving, the model's optimizer is Adam itself, not float16's loss scaling around
    it: a checkpoint holds the same state whatever the precision, so it resumes in any (the
    loss scale starts again from Keras's default and adapts within a few steps)."""
    wrapper = model.optimizer
    inner = getattr(wrapper, "inner_optimizer", None)
    if inner is None:
        yield
        return
    model.optimizer = inner
    try:
        yield
    finally:
        model.optimizer = wrapper


def load_checkpoint_model(path):
    """The Keras model of a checkpoint; safe mode, so no code stored in a model file runs."""
    keras = import_keras()
    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except Exception as error:  # Keras raises many kinds for a damaged file
        raise UserError(f"Could not load the model in {path} ({type(error).__name__}: {error}); "
                        f"it was left untouched. {how_to_go_on(path)}") from None
    return use_fastest_lstm_kernel(use_precision(model, "float32"), gpu_available())


# -----------------------------------------------------------------------------
# Training


def make_batches(frames, window_starts, batch_size, rng, shuffle, input_noise=0.0, multiple=1,
                 length=WINDOW_FRAMES, labels=None):
    """A keras.utils.PyDataset over the memory-mapped frames: nothing loaded whole.

    shuffle: training batches, endless, to be fit() with steps_per_epoch. Batch i, counted from
    start_at(epoch, batch) across epochs, is batch i % len(self) of epoch i // len(self), whose
    order of windows and noise are seeded by the epoch's number: a batch is the same whenever
    it is drawn (tf.data draws the next epoch's first batches before Keras says that epoch
    began) and in a run that resumes from a saved position() mid-epoch. Without shuffle
    (validation): one epoch of batches in the order given, the same every time.

    multiple: every batch holds a multiple of this many windows (the devices training together,
    which share each batch evenly); the fewer than `multiple` windows left over at the end of
    an epoch wait for the next (shuffled) one; fewer windows than that in all are repeated.
    input_noise and labels: see training_pairs."""
    keras = import_keras()
    if 0 < len(window_starts) < multiple:
        window_starts = np.resize(window_starts, multiple)

    class WindowBatches(keras.utils.PyDataset):
        usable = len(window_starts) - len(window_starts) % multiple
        first = 0  # the batch, counted across epochs, that index 0 is (start_at)
        ordered = (None, window_starts)  # (epoch, its order of windows)

        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.shuffle_seed, self.noise_seed = (int(rng.integers(2**63)) for _ in range(2))
            self.batch_size, self.length = batch_size, length

        def __len__(self):  # batches in an epoch
            return -(-self.usable // batch_size)

        @property
        def num_batches(self):  # for Keras: None, endless
            return None if shuffle else len(self)

        def start_at(self, epoch, batch=0):
            self.first = epoch * len(self) + batch

        def order(self, epoch):
            if shuffle and self.ordered[0] != epoch:
                epoch_rng = np.random.default_rng((self.shuffle_seed, epoch))
                self.ordered = (epoch, epoch_rng.permutation(window_starts))
            return self.ordered[1]

        def __getitem__(self, index):
            epoch, index = divmod(self.first + index, len(self))
            starts = self.order(epoch)[index * batch_size :
                                       min((index + 1) * batch_size, self.usable)]
            # Noise seeded per batch: repeatable whichever thread asks, and when resumed.
            return training_pairs(frames, starts, length, labels, input_noise,
                                  np.random.default_rng((self.noise_seed, epoch, index)))

        def samples(self, batches_done):  # sequences in an epoch's first batches_done batches
            return min(batches_done * batch_size, self.usable)

        def position(self, epoch, batches_done):
            """Where training is, after batches_done batches of epoch (counted from 0)."""
            return {"epoch": epoch, "batches_done": batches_done, "batches": len(self),
                    "batch_size": batch_size, "sequence_frames": length,
                    "windows": len(window_starts), "shuffle_seed": self.shuffle_seed,
                    "noise_seed": self.noise_seed}

        def resume(self, position):
            self.shuffle_seed, self.noise_seed = position["shuffle_seed"], position["noise_seed"]

    return WindowBatches()


def training_pairs(frames, starts, length, labels=None, input_noise=0.0, noise_rng=None):
    """(inputs, targets) of the windows of `length` frames at `starts`: the frames, and the
    frames after them, (batch, length, features) each.

    labels: (num_frames,) int32, each frame's unit (a units head): the targets are then the
    next frames' units, (batch, length). input_noise: the standard deviation of Gaussian noise
    (from noise_rng) added to the inputs, not the targets, in normalised units. Fed its own
    imperfect output when generating, a network trained only on clean inputs drifts to a fixed
    point: a held chord that fades. Trained on noisy inputs, it learns to steer back towards
    the music."""
    inputs, targets = gather_windows(frames, starts, length)
    if labels is not None:
        targets = labels[np.asarray(starts)[:, None] + 1 + np.arange(length)]
    if input_noise:  # a new array: inputs and targets are views of the same windows
        inputs = inputs + input_noise * noise_rng.standard_normal(inputs.shape, np.float32)
    return inputs, targets


class TrainingStopped(Exception):
    """Ctrl-C or SIGTERM taken at a safe point of training, once the batch reached is saved."""


class StopOnCtrlC(QuitAtSafePoints):
    """While training: the first Ctrl-C or SIGTERM is noted, and the checkpoint callback saves
    the batch reached and stops training after the current batch; a second one quits at once.
    (Left to Python, the KeyboardInterrupt can land inside TensorFlow's input pipeline, which
    swallows it: training then simply went on.)"""

    def handle(self, signum, frame):
        super().handle(signum, frame)
        name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        more = "" if signum == signal.SIGTERM else " (press Ctrl-C again to quit)"
        say(f"\n{name}: stopping after this batch, which is saved{more}.")


def make_checkpoint_callback(cache_dir, metadata, mean, std, batches=None,
                             stop=lambda: False, save_every_s=math.inf, resumed=None,
                             end_epoch=None, patience=0):
    """After each epoch: stop on a NaN loss, else save the checkpoint (and the best one), and
    stop once `patience` epochs (0: never) have gone by without a better val_loss.
    During an epoch: save the weights, the optimizer's state and the position reached every
    save_every_s seconds, and when stop() says Ctrl-C or SIGTERM came, then end training with
    TrainingStopped. batches: the training PyDataset (make_batches); resumed: the position of
    an epoch that this run took up midway. After this run's first epoch, says how long the
    epochs left before end_epoch will take."""
    keras = import_keras()
    folder = Path(cache_dir)

    class SaveCheckpoint(keras.callbacks.Callback):
        diverged = stopped_early = False
        earlier = resumed  # where the current epoch was taken up, or None
        epoch, loss = 0, math.nan  # the epoch in progress, and its loss so far
        last_save = time.monotonic()

        def on_train_begin(self, logs=None):
            self.last_save = time.monotonic()

        estimated = False

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch, self.epoch_started = epoch, time.monotonic()

        def before(self):  # batches of this epoch trained by an earlier run
            return self.earlier["batches_done"] if self.earlier else 0

        def epoch_loss(self, loss, batches_done):
            """The loss over the epoch's first batches_done batches, counting those of an
            earlier run (Keras's own figure, `loss`, covers this run's batches only)."""
            if not self.earlier:
                return loss
            earlier = batches.samples(self.before())
            now = batches.samples(batches_done) - earlier
            return (self.earlier["loss"] * earlier + loss * now) / max(earlier + now, 1)

        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:  # the pace is timed from here: the first batch also compiles
                self.first_batch_done = time.monotonic()
            loss = (logs or {}).get("loss", 0.0)
            if not math.isfinite(loss):
                self.diverged = True
                self.model.stop_training = True
                return
            if batches is None:
                return
            done = self.before() + batch + 1
            self.loss = self.epoch_loss(loss, done)
            if stop() or (time.monotonic() - self.last_save >= save_every_s
                          and done < len(batches)):  # (an epoch's end saves anyway)
                self.save_position(done)

        def on_test_batch_end(self, batch, logs=None):
            if stop() and batches is not None:  # stopped while validating: the epoch's
                self.save_position(len(batches))  # training is done, its validation not

        def estimate(self, taken_up_at):
            """Once: the epochs left at the pace of this one (the part of it this run
            trained, where it took the epoch up midway)."""
            left = (end_epoch or 0) - metadata["epochs_done"]
            if self.estimated or left <= 0:
                return
            self.estimated = True
            if batches is None:
                seconds = time.monotonic() - self.epoch_started
            else:  # the epoch's batches after its first, this run's part of them, scaled
                timed = len(batches) - taken_up_at - 1
                seconds = (time.monotonic() - getattr(self, "first_batch_done",
                                                      self.epoch_started)) \
                    * len(batches) / max(timed, 1)
            say(f"{plural(left, 'more epoch')} to go at {duration(seconds)} each: "
                f"{time_left(left * seconds)}.")

        def out_of_patience(self):
            """Stops training, and says so, once the best epoch is `patience` behind."""
            best = min(metadata["history"], key=lambda entry: entry["val_loss"])["epoch"]
            since = metadata["epochs_done"] - best
            if not patience or since < patience or metadata["epochs_done"] >= (end_epoch or 0):
                return False
            self.stopped_early = self.model.stop_training = True
            say(f"The held-out music was predicted best after epoch {best}, and no better in "
                f"the {since} since: training stops here ({BEST_CHECKPOINT_NAME} generates). "
                f"--patience 0 trains every epoch asked for.")
            return True

        def save_position(self, done):
            path = folder / MIDEPOCH_CHECKPOINT_NAME
            position = {**batches.position(self.epoch, done), "loss": self.loss,
                        "cache_fingerprint": metadata.get("cache_fingerprint")}
            save_checkpoint(path, self.model, {**metadata, "midepoch": position}, mean, std)
            self.last_save = time.monotonic()
            say(f"epoch {self.epoch + 1} | batch {done} of {len(batches)} | saved {path}")
            if stop():
                raise TrainingStopped

        def on_epoch_end(self, epoch, logs=None):
            loss, val_loss = logs.get("loss", math.nan), logs.get("val_loss", math.nan)
            if batches is not None:
                loss = self.epoch_loss(loss, len(batches))
            taken_up_at, self.earlier = self.before(), None
            if self.diverged or not (math.isfinite(loss) and math.isfinite(val_loss)):
                self.diverged = True
                self.model.stop_training = True
                return
            metadata["epochs_done"] += 1
            metadata["history"].append({"epoch": metadata["epochs_done"], "loss": loss,
                                        "val_loss": val_loss})
            path = folder / CHECKPOINT_NAME
            save_checkpoint(path, self.model, metadata, mean, std)
            (folder / MIDEPOCH_CHECKPOINT_NAME).unlink(missing_ok=True)  # now out of date
            self.last_save = time.monotonic()
            note = ""
            if val_loss < metadata.get("best_val_loss", math.inf):
                metadata["best_val_loss"] = val_loss
                save_checkpoint(path.with_name(BEST_CHECKPOINT_NAME), self.model, metadata,
                                mean, std)
                note = f" (best so far, also saved as {BEST_CHECKPOINT_NAME})"
            say(f"epoch {metadata['epochs_done']} | loss {loss:.4f} | val_loss {val_loss:.4f}"
                f" | saved {path}{note}")
            if self.out_of_patience():
                return
            self.estimate(taken_up_at)
            if stop():
                raise TrainingStopped

    return SaveCheckpoint()


def resumable_position(metadata, batches, cache):
    """The position saved in a mid-epoch checkpoint, if this run can go on from it, else None
    (saying why the epoch starts again)."""
    position = metadata.pop("midepoch", None)
    if position is None:
        return None
    epoch, done = position["epoch"] + 1, position["batches_done"]
    if (position["cache_fingerprint"], position["batch_size"], position["sequence_frames"],
            position["windows"], position["epoch"]) != (
            cache.fingerprint, batches.batch_size, batches.length,
            batches.position(0, 0)["windows"], metadata["epochs_done"]):
        say(f"The music, the batch size or the sequence length changed since epoch {epoch} was "
            f"stopped at batch {done}: that epoch starts again from its first batch, with the "
            f"weights it had reached.")
        return None
    say(f"Going on with epoch {epoch} from batch {done} of {position['batches']}.")
    batches.resume(position)
    return position


def train(model, cache, metadata, config, rng, replicas=1):
    """Train config.epochs more epochs (an epoch stopped midway is finished first, and counts
    as one of them); return the model to generate with. With several replicas, each takes
    config.batch_size windows a step: the global batch is their sum."""
    training, validation = training_batches(model, cache, metadata, config, rng, replicas)
    position = resumable_position(metadata, training, cache)
    end_epoch = metadata["epochs_done"] + config.epochs

    def fit(epochs, batch=0):  # from batch `batch` of the next epoch
        epoch = metadata["epochs_done"]
        training.start_at(epoch, batch)
        model.fit(training, validation_data=validation, shuffle=False,  # (ours is seeded)
                  steps_per_epoch=len(training) - batch,
                  initial_epoch=epoch, epochs=epoch + epochs, callbacks=callbacks,
                  verbose=1 if sys.stdout.isatty() else 0)

    with StopOnCtrlC() as ctrl_c:
        callback = make_checkpoint_callback(
            config.cache_dir, metadata, cache.mean, cache.std, training,
            stop=lambda: ctrl_c.requested, resumed=position,
            save_every_s=60 * config.save_every_minutes or math.inf, end_epoch=end_epoch,
            patience=config.patience)
        callbacks = [callback, *watching_callbacks(cache, metadata, config)]
        try:
            if position is None:
                fit(config.epochs)
            elif position["batches_done"] < len(training):  # Keras counts an epoch's batches
                fit(1, position["batches_done"])  # once: the rest of the stopped one alone
            else:  # stopped while validating; the watching callbacks miss this epoch's end
                callback.set_model(model)
                callback.on_epoch_begin(metadata["epochs_done"])
                callback.on_epoch_end(metadata["epochs_done"], {
                    "loss": position["loss"], "val_loss": model.evaluate(validation, verbose=0)})
            if position is not None and metadata["epochs_done"] < end_epoch \
                    and not (callback.diverged or callback.stopped_early):
                fit(end_epoch - metadata["epochs_done"])
        except TrainingStopped:
            pass
    return model_after_training(model, ctrl_c, callback.diverged, metadata, config.cache_dir)


def training_batches(model, cache, metadata, config, rng, replicas):
    """The training and validation sequences (make_batches) of this music, the model set to
    train on them in the chosen precision; says what was chosen."""
    length = sequence_length(cache.file_starts, config.sequence_seconds)
    train_starts, validation_starts = split_windows(cache.file_starts, length,
                                                    training_stride(length))
    if len(train_starts) == 0 or len(validation_starts) == 0:
        raise UserError(minimum_music_message(cache.file_starts))
    if length < round(config.sequence_seconds * FRAMES_PER_SECOND):
        say(f"The music is too short for training sequences of {config.sequence_seconds:g} s: "
            f"training on sequences of {length / FRAMES_PER_SECOND:g} s.")
    metadata["sequence_frames"] = length
    precision, why = training_precision(config.precision, gpu_compute_capability())
    say(f"Training in {PRECISIONS[precision]} ({why}).")
    use_precision(model, precision)
    use_fastest_lstm_kernel(model, gpu_available(), length)
    batch_size = config.batch_size * replicas
    say(f"Training on {len(train_starts)} sequences of {length / FRAMES_PER_SECOND:g} s, "
        f"validating on {len(validation_starts)}, batch size {config.batch_size}"
        + (f" on each of {replicas} devices ({batch_size} a step)." if replicas > 1 else "."))
    # A units head learns each next frame's unit; the others, the frame itself.
    labels = unit_labels(cache.codes, np.array(metadata["units"], np.float32)) \
        if "units" in metadata else None
    if labels is not None:  # what counting reaches on the same held-out steps
        metadata["counting"], bigram = unit_counting(labels, train_starts, validation_starts,
                                                     length, len(metadata["units"]))
        if unit_prior_of(model) is not None:
            unit_prior_of(model).set_weights([
                cache.components.T, np.asarray(metadata["units"], np.float32),
                np.log(bigram).astype(np.float32)])
    training = make_batches(cache.frames, train_starts, batch_size, rng, shuffle=True,
                            input_noise=SAMPLING[config.frames]["input_noise"],
                            multiple=replicas, length=length, labels=labels)
    validation = make_batches(cache.frames, validation_starts, batch_size, rng, shuffle=False,
                              multiple=replicas, length=length, labels=labels)
    return training, validation


BIGRAM_SMOOTHING, BIGRAM_UNIGRAM_SHARE = 0.1, 0.3  # add-0.1 counts, mixed 0.3 with unigram


def unit_counting(labels, train_starts, validation_starts, length, units):
    """What counting predicts of the held-out music, beside the network: the held-out
    next-unit loss (nats, over the very steps val_loss averages) of a unigram (the units'
    frequencies) and a bigram (the next unit from the current frame's alone, add-0.1, mixed 0.3
    with the unigram), both counted on the training part; the uniform guess's; and how often the
    next unit is simply the current one ('stay'). labels: (num_frames,) each frame's unit.
    Returns those figures and the bigram, (units, units): row a, the chances of the unit after a."""
    def steps(starts, once=False):  # (current, next) unit of every step of these sequences
        frames = (np.asarray(starts)[:, None] + np.arange(length)).ravel()
        frames = np.unique(frames) if once else frames
        return labels[frames], labels[frames + 1]

    now, following = steps(train_starts, once=True)  # each training step counted once
    unigram = np.bincount(following, minlength=units) + BIGRAM_SMOOTHING
    unigram /= unigram.sum()
    pairs = np.full((units, units), BIGRAM_SMOOTHING)
    np.add.at(pairs, (now, following), 1.0)
    bigram = ((1 - BIGRAM_UNIGRAM_SHARE) * pairs / pairs.sum(axis=1, keepdims=True)
              + BIGRAM_UNIGRAM_SHARE * unigram)
    now, following = steps(validation_starts)
    return {"bigram": float(-np.mean(np.log(bigram[now, following]))),
            "unigram": float(-np.mean(np.log(unigram[following]))),
            "uniform": float(np.log(units)), "stay": float(np.mean(now == following))}, bigram


def held_out_prediction(metadata):
    """One line: how well the network predicts the held-out music (each file's last tenth),
    at the checkpoint that generates and at its best epoch, beside counting (unit_counting);
    None for a network that predicts frames, or before any epoch."""
    counting, history = metadata.get("counting"), metadata.get("history")
    if not counting or not history:
        return None
    best = min(history, key=lambda entry: entry["val_loss"])
    verdict = "better than" if history[-1]["val_loss"] < counting["bigram"] \
        else "not yet as good as"
    return (f"Held-out music (each file's last tenth): the network predicts the next unit at "
            f"{history[-1]['val_loss']:.2f} nats after epoch {history[-1]['epoch']} (best "
            f"{best['val_loss']:.2f}, epoch {best['epoch']}); counting: bigram "
            f"{counting['bigram']:.2f}, unigram {counting['unigram']:.2f}, uniform "
            f"{counting['uniform']:.2f}: {verdict} the bigram. Lower is better.")


def model_after_training(model, ctrl_c, diverged, metadata, cache_dir):
    """The model to generate with once training ended: on Ctrl-C or a NaN loss, the last
    checkpoint's; on SIGTERM, none (Terminated is raised)."""
    if ctrl_c.requested:  # Keras's input pipeline, left mid-epoch, is freed now: freed as the
        import gc  # interpreter shuts down, under MirroredStrategy it could hang the exit

        gc.collect()
    if ctrl_c.requested and ctrl_c.signum == signal.SIGTERM:
        raise Terminated
    if ctrl_c.requested:
        say(f"Training interrupted after {plural(metadata['epochs_done'], 'epoch')}; the next run "
            f"goes on from the batch reached. Moving on to generation (press Ctrl-C again to quit).")
        return reload_last_checkpoint(model, cache_dir)
    if diverged:
        warn("the loss became NaN; training stopped and the last good checkpoint was kept.")
        return reload_last_checkpoint(model, cache_dir)
    return use_precision(model, "float32")  # generation reads the float32 weights itself


PREVIEW_SECONDS = 5  # length of a --preview-every piece


def watching_callbacks(cache, metadata, config):
    """What lets a user watch a long run: TensorBoard logs (--tensorboard) and short previews
    (--preview-every), each only when asked for, so training is not slowed otherwise."""
    keras = import_keras()
    callbacks = []
    if config.tensorboard:
        # Epoch numbers go on across resumed runs (fit's initial_epoch); no graph is written.
        callbacks.append(keras.callbacks.TensorBoard(str(config.tensorboard), write_graph=False,
                                                     update_freq="epoch"))
    if config.preview_every:
        callbacks.append(make_preview_callback(cache, metadata, config))
    return callbacks


def make_preview_callback(cache, metadata, config):
    """Every config.preview_every finished epochs: a PREVIEW_SECONDS piece from a fixed seed,
    the first second of the first file, into the traindata folder as preview-epoch-K.wav with
    its quality report, printed and written beside it (and logged to TensorBoard)."""
    keras = import_keras()

    class WritePreview(keras.callbacks.Callback):
        written = 0

        def on_epoch_end(self, epoch, logs=None):
            done = metadata["epochs_done"]
            if done == self.written or done % config.preview_every:
                return  # an epoch the checkpoint callback did not keep, or not yet time
            self.written = done
            figures, path = write_preview(self.model, cache, config, done, metadata)
            if config.tensorboard:
                log_preview(config.tensorboard, path, figures, done)

    return WritePreview()


def write_preview(model, cache, config, epoch, metadata):
    path = config.cache_dir / f"preview-epoch-{epoch}.wav"
    if any(os.path.lexists(path.with_suffix(suffix)) for suffix in (".wav", ".json")):
        path = output_paths(path.with_suffix(""), 1)[0]  # never over an earlier run's preview
    length = min(seed_length(cache, config), int(cache.file_starts[1]))
    seeds = Seeds(cache.normalisation.denormalise(np.asarray(cache.frames[None, :length])),
                  [seed_origin(0, length, cache)])
    say(f"Preview after epoch {epoch}:")
    plan = GenerationPlan.from_config(config, seconds=PREVIEW_SECONDS)
    choice = network_choice(Network(model, cache.normalisation, metadata.get("units")))
    synthesis, (path,) = sound_pieces(plan, choice, cache, seeds, [path],
                                      np.random.default_rng(epoch))
    figures = report_piece(path, cache.reference, 0.0,
                           copy_figures(synthesis.copy_indices[0], cache.file_starts))
    return figures, path


def log_preview(folder, path, figures, epoch):
    """The preview's sound and figures in TensorBoard, under 'preview', at step `epoch`."""
    import tensorflow as tf

    wav = WavSamples(path)
    samples = wav[0 : len(wav)].astype(np.float32) / np.float32(32768)
    wav.close()
    with tf.summary.create_file_writer(str(Path(folder) / "preview")).as_default(step=epoch):
        tf.summary.audio("preview", samples[None, :, None], SAMPLE_RATE, step=epoch)
        for key in ("pitch_clarity", "onsets_per_s", "structure", "movement", "spectral_distance",
                    "last_second_db", "longest_verbatim_s"):
            tf.summary.scalar(f"preview/{key}", figures[key], step=epoch)


def reload_last_checkpoint(model, cache_dir):
    path = Path(cache_dir) / CHECKPOINT_NAME
    if not path.exists():
        raise UserError(f"Training stopped before the first epoch finished, so there is no "
                        f"checkpoint to generate from yet. The batch reached is saved in "
                        f"{path.with_name(MIDEPOCH_CHECKPOINT_NAME)}: run again to go on "
                        f"from there.")
    return load_checkpoint_model(path)


def describe_device(devices=()):
    gpus, backend = visible_gpus(), keras_backend()
    how = "MirroredStrategy" if backend == "tensorflow" else "keras.distribution"
    if len(devices) > 1:
        kind = "GPUs" if gpus else "CPU devices (a test)"
        return (f"{len(devices)} {kind} training together ({how}), each on -b windows a step; "
                f"generation on one; Keras on {backend}")
    if gpus:
        return f"GPU ({', '.join(gpus)}), Keras on {backend}"
    return f"CPU ({os.cpu_count()} cores; no GPU visible), Keras on {backend}"


def default_head(config):
    """What a new model predicts: --head, else what its synthesis can play best."""
    return config.head or DEFAULT_HEAD[config.synthesis]


def music_units_head(cache, metadata):
    """A units head of this music (found once, kept in the checkpoint's metadata, updated)."""
    head = UnitsHead(centroids=music_units(cache.codes, units_for(len(cache.codes))))
    head.components = len(head.centroids)
    metadata.update(head_components=head.components, units=head.centroids.tolist())
    say(f"The music's frames clustered into {head.components} units of sound.")
    return head


def with_new_units(model, metadata, cache):
    """A units model on changed music: its units were the old music's, so the new music is
    clustered anew and the output layer starts afresh on its units; the rest of the network
    (what it learned of the music's course) goes on from the checkpoint."""
    fresh = build_model(NUM_FEATURES, metadata["hidden_neurons"], metadata["hidden_layers"],
                        music_units_head(cache, metadata))
    kept = {layer.name for layer in model.layers} - {"project_out", "unit_prior"}
    for layer in fresh.layers:
        if layer.weights and layer.name in kept:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    say("Its units of sound are the new music's: the network's last layer learns them anew.")
    return fresh


def new_metadata(config, cache, head):
    return {"version": CHECKPOINT_VERSION, "hidden_neurons": config.hidden_neurons,
            "hidden_layers": config.hidden_layers, "block_size": BLOCK_SIZE,
            "sample_rate": SAMPLE_RATE, "num_features": NUM_FEATURES,
            "sequence_frames": None, "frame": config.frames, "epochs_done": 0,
            "head": head.name, "head_components": head.components,
            "cache_fingerprint": cache.fingerprint, "train_rms_db": cache.rms_db,
            "batch_size": config.batch_size, "history": []}


def prepare_model(config, cache, checkpoint):
    """A new model, or the checkpoint's (the last epoch's, or a mid-epoch one), ready to train;
    and the metadata to save with it."""
    if checkpoint is None:
        head = make_head(default_head(config))
        metadata = new_metadata(config, cache, head)
        if head.name == "units":
            head = music_units_head(cache, metadata)
        say(f"No checkpoint yet: starting a new model that predicts {HEADS[head.name]}.")
        return build_model(NUM_FEATURES, config.hidden_neurons, config.hidden_layers, head), \
            metadata
    path, metadata, _, _ = checkpoint
    model = load_checkpoint_model(path)
    say(f"Resuming from {path}, " + (f"in epoch {metadata['epochs_done'] + 1}."
                                      if "midepoch" in metadata else
                                      f"after epoch {metadata['epochs_done']}."))
    if metadata.get("cache_fingerprint") != cache.fingerprint:
        say("The music changed since that checkpoint was trained: training continues from it "
            "on the new music, with the new normalisation statistics.")
        if "units" in metadata:
            model = with_new_units(model, metadata, cache)
        metadata.update(cache_fingerprint=cache.fingerprint, train_rms_db=cache.rms_db)
        metadata.pop("best_val_loss", None)  # val_loss on other music is not comparable
    metadata["batch_size"] = config.batch_size
    return model, metadata


# -----------------------------------------------------------------------------
# Generation: a step function carries the LSTM states forward one frame at a time


def generation_dtype(on_gpu):
    """The precision the generation step multiplies in. On a CPU with native bfloat16 a step
    reads half the bytes: at the default size it is bound by reading the 225 MB of weights
    (measured: 1.5x faster). Rounding the weights and inputs to 8 significant bits moves a
    prediction by far less than the network's own error, which sampling adds back in anyway
    (the README has the figures). A GPU, or a CPU without bfloat16, stays in float32."""
    return "bfloat16" if not on_gpu and multiplies_bfloat16_natively() else "float32"


def compile_step(model, dtype=None, fold=None):
    """The trained network as two functions that carry the LSTM states (h, c per layer):
    step(frames (batch, features), states) -> (next frames, states), one frame; and
    read(frames (batch, time, features), states) -> (the frame after the last, states), a
    whole seed at once. Each costs the same however long the piece grows.

    The cells' arithmetic is Keras's LSTMCell's (implementation 2: z = x K + h R + b, gates
    i, f, c, o), written out so that the weights can be multiplied in `dtype` (see
    generation_dtype); in float32 they are the trained variables themselves, nothing copied.
    A step is bound by reading the weights: float32 steps are XLA-compiled (fusing the gate
    arithmetic takes about a tenth off), bfloat16 ones are not (oneDNN's bfloat16 products are
    faster than XLA's). `read` goes layer by layer, so each layer's input products for the
    whole seed are one matrix product and only h R is left in the loop, and it skips the
    output layer for all but the last frame: a 32-frame seed costs a few steps, not 32.

    fold: (matrix (outputs, k), offset (k,)), an affine map of the outputs that is all the
    caller reads of them (GrainSynthesis.folding): it is folded into the output layer, so the
    step returns (batch, k) and reads a kernel k wide instead of the outputs' width.
    On a Keras backend other than TensorFlow, a NumpyStep.
    """
    if keras_backend() != "tensorflow":
        return NumpyStep(model, fold)
    import tensorflow as tf

    dtype = tf.as_dtype(dtype or generation_dtype(gpu_available()))
    project_in = model.get_layer("project_in")
    project_out = model.get_layer("project_out")
    cells = [layer.cell for layer in model.layers if layer.name.startswith("lstm_")]

    # bfloat16 copies are stored transposed, (outputs, inputs): oneDNN multiplies a few rows
    # by them faster than by (inputs, outputs) (measured 3.4 against 4.4 ms, the input layer's).
    transposed = dtype != tf.float32

    def weight(variable):
        if dtype == tf.float32:
            return variable
        return tf.constant(tf.cast(tf.transpose(variable), dtype))

    def product(x, kernel):  # float32 in and out, multiplied in `dtype`
        return tf.cast(tf.matmul(tf.cast(x, dtype), kernel, transpose_b=transposed), tf.float32)

    def dense(kernel, bias):
        def apply(x):  # (rows, inputs) float32 -> (rows, outputs) float32
            return product(x, kernel) + bias
        return apply

    out_kernel, out_bias = project_out.kernel, project_out.bias
    if fold is not None:  # (h W + b) M + m = h (W M) + (b M + m)
        matrix, offset = (tf.constant(array, tf.float32) for array in fold)
        out_kernel, out_bias = tf.matmul(out_kernel, matrix), tf.linalg.matvec(
            matrix, out_bias, transpose_a=True) + offset
    into = dense(weight(project_in.kernel), project_in.bias)
    projected_out, prior = dense(weight(out_kernel), out_bias), unit_prior_of(model)

    def out_of(hidden, frames):  # the output layer, plus counting's logits where there are any
        outputs = projected_out(hidden)
        return outputs if prior is None else outputs + prior.call(frames)
    lstms = [(cell, weight(cell.kernel), weight(cell.recurrent_kernel)) for cell in cells]

    def cell_step(cell, recurrent, projected, h, c):  # projected: x K + b, (batch, 4 units)
        return lstm_gates(cell, projected + product(h, recurrent), c)

    @tf.function(jit_compile=dtype == tf.float32)
    def step(frames, states):
        hidden, new_states = into(frames), []
        for (cell, kernel, recurrent), (h, c) in zip(lstms, states):
            projected = product(hidden, kernel) + cell.bias
            hidden, c = cell_step(cell, recurrent, projected, h, c)
            new_states.append([hidden, c])
        return out_of(hidden, frames), new_states

    @tf.function
    def read(frames, states):
        batch, time = tf.shape(frames)[0], tf.shape(frames)[1]
        hidden = into(tf.reshape(frames, [batch * time, -1]))  # time-major below
        hidden = tf.reshape(tf.transpose(tf.reshape(hidden, [batch, time, -1]), [1, 0, 2]),
                            [batch * time, -1])
        new_states = []
        for (cell, kernel, recurrent), (h, c) in zip(lstms, states):
            projected = tf.reshape(product(hidden, kernel) + cell.bias, [time, batch, -1])
            outputs = tf.TensorArray(tf.float32, size=time)
            for t in tf.range(time):
                h, c = cell_step(cell, recurrent, projected[t], h, c)
                outputs = outputs.write(t, h)
            hidden = tf.reshape(outputs.stack(), [batch * time, -1])
            new_states.append([h, c])
        return out_of(h, frames[:, -1]), new_states

    step.read, step.num_layers, step.units = read, len(cells), cells[0].units
    return step


class NumpyStep:
    """compile_step's step for any Keras backend: the same arithmetic in NumPy, float32, from
    the model's weights read once (a step reads them all, as TensorFlow's does: it is bound by
    memory, not by the framework). It runs on the CPU whatever trained the model."""

    def __init__(self, model, fold=None):
        self.into = model.get_layer("project_in").get_weights()  # kernel, bias
        self.lstms = [layer.get_weights() for layer in model.layers  # kernel, recurrent, bias
                      if layer.name.startswith("lstm_")]
        kernel, bias = model.get_layer("project_out").get_weights()
        if fold is not None:  # (h W + b) M + m = h (W M) + (b M + m), as compile_step does
            kernel, bias = kernel @ fold[0], bias @ fold[0] + fold[1]
        self.out = kernel, bias
        prior = unit_prior_of(model)
        self.prior = prior.get_weights() if prior is not None else None  # components, ...
        self.num_layers, self.units = len(self.lstms), self.lstms[0][1].shape[0]

    def zeros(self, batch_size):
        zeros = np.zeros((batch_size, self.units), np.float32)
        return [[zeros, zeros] for _ in range(self.num_layers)]

    def outputs(self, hidden, frames):  # the output layer, plus counting's logits
        outputs = hidden @ self.out[0] + self.out[1]
        if self.prior is None:
            return outputs
        components, centroids, log_bigram = self.prior
        codes = frames @ components
        distances = np.sum(np.square(centroids), axis=-1) - 2 * codes @ centroids.T
        return outputs + log_bigram[np.argmin(distances, axis=-1)]

    def __call__(self, frames, states):  # (batch, features) -> (outputs, states)
        return self.read(frames[:, None], states)

    def read(self, frames, states):  # (batch, time, features) -> (last outputs, states)
        hidden = frames @ self.into[0] + self.into[1]
        new_states = []
        for (kernel, recurrent, bias), (h, c) in zip(self.lstms, states):
            projected, outputs = hidden @ kernel + bias, []
            for t in range(frames.shape[1]):
                h, c = numpy_lstm_gates(projected[:, t] + h @ recurrent, c)
                outputs.append(h)
            hidden = np.stack(outputs, axis=1)
            new_states.append([h, c])
        return self.outputs(h, frames[:, -1]).astype(np.float32), new_states


def numpy_lstm_gates(z, c):
    """lstm_gates in NumPy (tanh and sigmoid, Keras's defaults)."""
    z_i, z_f, z_c, z_o = np.split(z, 4, axis=-1)
    c = sigmoid(z_f) * c + sigmoid(z_i) * np.tanh(z_c)
    return sigmoid(z_o) * np.tanh(c), c


def sigmoid(x):
    return 0.5 * (np.tanh(0.5 * x) + 1)  # 1 / (1 + e^-x), without overflow


def make_step_function(model, batch_size, step=None):
    """predict_next(frames) -> the next frames (batch, features), carrying the LSTM states from
    call to call, starting from zero. frames: one frame per piece (batch, features), or a
    whole seed (batch, time, features), read at once. `step` reuses a compiled step (see
    compile_step)."""
    step = step or compile_step(model)
    if isinstance(step, NumpyStep):
        return numpy_step_function(step, batch_size)
    import tensorflow as tf

    zeros = tf.zeros((batch_size, step.units))
    states = [[zeros, zeros] for _ in range(step.num_layers)]

    def predict_next(frames):
        nonlocal states
        frames = tf.convert_to_tensor(frames, tf.float32)
        next_frames, states = (step.read if frames.shape.rank == 3 else step)(frames, states)
        return next_frames.numpy()

    return predict_next


def numpy_step_function(step, batch_size):
    states = step.zeros(batch_size)

    def predict_next(frames):
        nonlocal states
        frames = np.asarray(frames, np.float32)
        next_frames, states = (step.read if frames.ndim == 3 else step)(frames, states)
        return next_frames

    return predict_next


def generate(predict_next, seeds, num_frames):
    """Yield num_frames frames (batch, features), each fed back in to make the next one.

    seeds: (batch, seed_frames, features), read in one call: it warms the states up, and the
    prediction after its last frame is the first new frame. Each frame is computed once.
    """
    next_frames = predict_next(seeds)
    for index in range(num_frames):
        yield next_frames
        if index + 1 < num_frames:
            next_frames = predict_next(next_frames)


def prediction_errors(model, cache, rng, count=256, with_errors=True):
    """What the network gets wrong on music it was not trained on: target minus prediction for
    the last frame of up to `count` validation windows, (count, features), normalised; and
    those targets, real frames of music. with_errors=False: only the targets (errors None)."""
    _, validation_starts = split_windows(cache.file_starts)
    if len(validation_starts) == 0:
        return np.zeros((1, NUM_FEATURES), np.float32), np.zeros((1, NUM_FEATURES), np.float32)
    chosen = np.sort(rng.choice(validation_starts, size=min(count, len(validation_starts)),
                                replace=False))
    inputs, targets = gather_windows(cache.frames, chosen)
    if not with_errors:
        return None, targets[:, -1]
    # Direct calls rather than model.predict, whose input pipeline can swallow a Ctrl-C.
    predictions = np.concatenate([as_numpy(model(inputs[start : start + 32], training=False))
                                  for start in range(0, len(inputs), 32)])
    return (targets[:, -1] - predictions[:, -1]).astype(np.float32), targets[:, -1]


def with_sampled_errors(predict_next, errors, temperature, rng):
    """predict_next that adds one of the network's real errors, times the temperature, to each
    prediction: a sample from the spread of futures the network cannot tell apart, rather than
    their average (a mean of log-spectra is a quieter, blurred spectrum, and the loop settles
    on it). Each error is a whole frame, so what is added has the shape of real music."""
    if temperature == 0:
        return predict_next

    def predict(frames):
        predicted = predict_next(frames)
        return predicted + temperature * errors[rng.integers(len(errors), size=len(predicted))]

    return predict


def within_music_levels(predict_next, music_frames):
    """predict_next whose frames stay within what real music does: no bin louder than it ever is
    in `music_frames`, and a frame's mean log-magnitude (normalised) no higher than the loudest
    of theirs nor lower than the quietest (moved uniformly to that bound), for the audio and for
    what is fed back in. Sampling can otherwise push the loop into a runaway to full-scale noise
    (seen in the demo at temperature 0.75), or let it sink into silence."""
    ceiling = music_frames.max(axis=0)
    levels = music_frames.mean(axis=1)
    low, high = float(levels.min()), float(levels.max())

    def predict(frames):
        predicted = np.minimum(predict_next(frames), ceiling)
        level = predicted.mean(axis=1, keepdims=True)
        return predicted - np.maximum(level - high, 0) + np.maximum(low - level, 0)

    return predict


def seed_length(cache, config):
    """Frames in a seed: a training sequence's, so the seed warms the state up as training did."""
    return sequence_length(cache.file_starts, config.sequence_seconds)


def seed_starts(file_starts, count, rng, length=WINDOW_FRAMES):
    """The first frames of `count` different random clips of `length` frames, none crossing
    files."""
    starts = np.concatenate([np.arange(start, end - length + 1)
                             for start, end in zip(file_starts[:-1], file_starts[1:])])
    if len(starts) == 0:
        raise UserError(f"No file is long enough for a seed of {length} blocks "
                        f"({length / FRAMES_PER_SECOND:g} s).")
    return rng.choice(starts, size=count, replace=count > len(starts))


def pick_seeds(frames, file_starts, count, rng, length=WINDOW_FRAMES, starts=None):
    """`count` different random clips of `length` frames, none crossing files (or those that
    start at `starts`)."""
    if starts is None:
        starts = seed_starts(file_starts, count, rng, length)
    return np.stack([frames[start : start + length] for start in starts])


def seed_origin(start, length, cache):
    """Where a clip of the training music comes from, in words."""
    file = int(np.searchsorted(cache.file_starts, start, side="right") - 1)
    second = (start - cache.file_starts[file]) / FRAMES_PER_SECOND
    return (f"seeded with {length / FRAMES_PER_SECOND:g} s of {cache.file_names[file]} from "
            f"{second // 60:.0f}:{second % 60:04.1f}")


def seed_frames(ending, kind, count=WINDOW_FRAMES):
    """The last `count` blocks of a seed's audio as raw frames of the given kind. Magnitude
    windows reach a block further back, so the last one ends where the audio ends."""
    if kind == "plain":
        return frames_from_blocks(ending[-count * BLOCK_SIZE:].reshape(count, -1))
    from scipy import fft

    needed = (count + 1) * BLOCK_SIZE
    ending = np.concatenate([np.zeros(max(needed - len(ending), 0), np.float32), ending])[-needed:]
    windows = np.lib.stride_tricks.sliding_window_view(ending, WINDOW_SIZE)[::BLOCK_SIZE]
    spectra = fft.rfft(windows * sqrt_hann(), axis=-1)
    return np.log(np.abs(spectra) + MAGNITUDE_FLOOR).astype(np.float32)


@dataclasses.dataclass
class SeedWavs:
    """The --seed-wav files, read: what seeds the network, starts each piece, and joins the
    music that its piece's grains choose from."""

    frames: np.ndarray  # (pieces, seed_frames, NUM_FEATURES) raw: the last seconds of each
    prefixes: list  # per piece, its last SEED_PREFIX_SECONDS of audio, which start its file
    endings: np.ndarray  # (pieces, WINDOW_SIZE): the last 0.5 s, where the new music starts
    audios: list  # per piece, the whole file's audio (mono float32 at SAMPLE_RATE)
    names: list  # the files' names


def read_seed_wavs(paths, kind, seconds=WINDOW_FRAMES / FRAMES_PER_SECOND):
    """--seed-wav files -> a SeedWavs: their last `seconds` (or as much as the shortest file
    has, at least 1 s) as raw frames, the last SEED_PREFIX_SECONDS of each, which starts its
    piece, and the last 0.5 s, which starts the phase of magnitude frames. Read before any
    training, so that a bad file costs nothing."""
    seed_samples = WINDOW_FRAMES * BLOCK_SIZE  # 1 s
    audios, prefixes, endings = [], [], []
    for path in paths:
        try:
            audio, _ = read_audio(Path(path))
        except UnusableAudio as reason:
            raise UserError(f"Cannot use --seed-wav {path}: {reason}.") from None
        if len(audio) < seed_samples:
            raise UserError(f"--seed-wav {path} is {len(audio) / SAMPLE_RATE:.2f} s long; a seed "
                            f"needs at least {seed_samples / SAMPLE_RATE:.0f} s of music.")
        audios.append(audio)
        prefixes.append(audio[-int(SEED_PREFIX_SECONDS * SAMPLE_RATE):])
        endings.append(audio[-WINDOW_SIZE:])
    count = min([round(seconds * FRAMES_PER_SECOND)] + [len(a) // BLOCK_SIZE for a in audios])
    count = max(count, WINDOW_FRAMES)
    frames = [seed_frames(audio[-(count + 1) * BLOCK_SIZE:], kind, count) for audio in audios]
    return SeedWavs(np.stack(frames), prefixes, np.stack(endings), audios,
                    [Path(path).name for path in paths])


class JoinedRows:
    """Two arrays read as one along their first axis by read_span: the cache's (memory-mapped)
    and a run's own (the --seed-wav music, in memory), without copying the cache's."""

    def __init__(self, first, second):
        self.first, self.second = first, second
        self.shape = (len(first) + len(second), *first.shape[1:])
        self.dtype = first.dtype

    def __len__(self):
        return self.shape[0]


def with_seed_music(cache, seeds):
    """The cache's music with each --seed-wav file's after it, as the grains see music: its
    frames (normalised as the cache's), index codes, audio, beats, pitch classes and levels.
    Returns (that FrameCache, each seed's (first, last + 1) frame). Each file is cut at its
    start so that its last frame's window ends where it ends: the piece then goes on from the
    seed's very end, in its beat. Kept in memory for this run only."""
    parts, ranges, start = [], [], int(cache.file_starts[-1])
    after = BLOCK_SIZE - BLOCK_SIZE // 2  # the last window's reach past its block's start
    for audio in seeds.audios:
        count = max((len(audio) - after) // BLOCK_SIZE, 1)
        length = count * BLOCK_SIZE + after  # padded_audio then fills (count + 1) blocks exactly
        audio = np.concatenate([np.zeros(max(length - len(audio), 0), np.float32), audio])[-length:]
        raw = frames_from_audio(audio, cache.kind)[:count]
        padded = padded_audio(audio)[: (count + 1) * BLOCK_SIZE]
        envelope = log_mel_stats(lambda a, b: audio[a:b], len(audio), mel_filterbank()) \
            .onset_envelope()
        frames = normalise(raw, cache.mean, cache.std)
        parts.append((frames, frames @ cache.components.T, to_pcm16(padded),
                      frame_beats(envelope, count)[0], frame_chroma(raw, cache.kind),
                      window_levels(padded)))
        ranges.append((start, start + count))
        start += count
    frames, codes, audio, beats, chroma, levels = (np.concatenate(column)
                                                   for column in zip(*parts))
    file_starts = np.concatenate([cache.file_starts, [stop for _, stop in ranges]])
    reference = dataclasses.replace(cache.reference, frame_levels=np.concatenate(
        [cache.reference.frame_levels, levels]))
    joined = dataclasses.replace(
        cache, frames=JoinedRows(cache.frames, frames), audio=JoinedRows(cache.audio, audio),
        codes=np.concatenate([cache.codes, codes]), file_starts=file_starts,
        beats=np.concatenate([cache.beats, beats]), chroma=np.concatenate([cache.chroma, chroma]),
        reference=reference, file_names=list(cache.file_names) + list(seeds.names))
    return joined, ranges


def output_paths(output_name, count, first=0):
    """NAME-i.wav for the first `count` numbers from `first` whose .wav, .png and .json are all
    free: nothing is overwritten."""
    paths, index = [], first
    while len(paths) < count:
        path = Path(f"{output_name}-{index}.wav")
        if not any(os.path.lexists(path.with_suffix(suffix)) for suffix in (".wav", ".png", ".json")):
            paths.append(path)
        index += 1
    return paths


def next_free_path(path):
    """The next NAME-i.wav after `path` (NAME-j.wav, j < i) whose three names are free."""
    stem, _, number = path.stem.rpartition("-")
    return output_paths(path.with_name(stem), 1, int(number) + 1)[0]


def to_pcm16(blocks):
    """float32 blocks -> little-endian 16-bit PCM bytes, clipped (never wrapped) to full scale."""
    return (np.clip(blocks, -1.0, 1.0) * 32767.0).round().astype("<i2")


class WavWriters:
    """One 16-bit mono WAV per piece, written as it goes under a temporary name and renamed to
    its final name only when complete; an interrupted run leaves no half-written output."""

    def __init__(self, paths):
        import wave

        self.paths = paths
        self.temporary = [path.with_name(f".{path.name}.partial-{os.getpid()}") for path in paths]
        self.files = []
        for temporary in self.temporary:
            handle = wave.open(str(temporary), "wb")
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(SAMPLE_RATE)
            self.files.append(handle)

    def write(self, blocks):  # (pieces, samples) float32
        for handle, samples in zip(self.files, to_pcm16(blocks)):
            handle.writeframes(samples.tobytes())

    def finish(self):
        """Each piece under its final name; where another run took that name meanwhile, under
        the next free number, said so. Returns the final paths."""
        final = []
        for handle, temporary, path in zip(self.files, self.temporary, self.paths):
            handle.close()
            taken = path
            while True:
                try:
                    os.link(temporary, path)  # fails rather than overwrite a file made meanwhile
                    break
                except FileExistsError:
                    path = next_free_path(path)
            if path != taken:
                say(f"{taken} was written by another run meanwhile: this piece is {path}.")
            temporary.unlink()
            final.append(path)
        return final

    def discard(self):
        for handle, temporary in zip(self.files, self.temporary):
            handle.close()
            temporary.unlink(missing_ok=True)


ESTIMATE_AFTER_S = 3.0  # generation says how long it will take once it has taken this long


def progress_reporter(total):
    """Keras's progress bar on a terminal; in a log, a line at each quarter."""
    if sys.stdout.isatty():
        progress = import_keras().utils.Progbar(total, unit_name="frame")
        return lambda done: progress.update(done) if done % 20 == 0 or done == total else None
    marks = {math.ceil(total * quarter / 4): quarter * 25 for quarter in (1, 2, 3, 4)}
    started = time.monotonic()

    def report(done):  # at each quarter; how long the rest takes, unless it is a moment
        if done in marks:
            spent = time.monotonic() - started
            say(f"generated {marks[done]}% ({done}/{total} frames)"
                + (f", {time_left(spent * (total - done) / done)}"
                   if done < total and spent >= ESTIMATE_AFTER_S else ""))

    return report


def rms_db(samples):
    samples = samples.astype(np.float64)
    return 10 * math.log10(max(float(np.mean(samples**2)) if len(samples) else 0.0, 1e-20))


def wait_quietly(future):
    try:
        future.result()
    except BaseException:  # the error that matters is already on its way up
        pass


def write_pieces(predict_next, seeds, normalisation, synthesis, paths, seconds, ctrl_c=None):
    """Generate every piece together, one frame at a time, from Seeds, predict_next working in
    `normalisation`, and stream them into WAV files, each after its seed's prefix (the end of a
    --seed-wav file) when there is one. Returns the paths written (see WavWriters.finish).

    With overlapping frames the first generated block overlaps the prefix's last one: the prefix
    is written up to there, and that block fades from it into the new music."""
    num_frames = int(round(seconds * FRAMES_PER_SECOND))
    prefixes = seeds.prefixes
    if prefixes and synthesis.overlap:
        num_frames += synthesis.overlap // BLOCK_SIZE
    from concurrent.futures import ThreadPoolExecutor

    writers = WavWriters(paths)
    report = progress_reporter(num_frames)

    def write(frames):
        writers.write(synthesis.push(normalisation.denormalise(frames)))

    # One thread turns frame i into audio while the network computes frame i + 1.
    pending = None
    # ctrl_c: a QuitAtSafePoints already in force (compose's), else one of our own.
    guard = contextlib.nullcontext(ctrl_c) if ctrl_c else QuitAtSafePoints()
    with ThreadPoolExecutor(max_workers=1) as audio_thread, guard as ctrl_c:
        try:
            for handle, prefix in zip(writers.files, prefixes or []):
                handle.writeframes(to_pcm16(prefix[: len(prefix) - synthesis.overlap]).tobytes())
            first = normalisation.normalise(seeds.frames)
            for index, frames in enumerate(generate(predict_next, first, num_frames)):
                ctrl_c.check()
                if pending is not None:
                    pending.result()
                pending = audio_thread.submit(write, frames)
                report(index + 1)
            pending.result()
            ctrl_c.check()
            return writers.finish()
        except BaseException:
            if pending is not None:
                wait_quietly(pending)  # the thread must be done with the files first
            writers.discard()
            raise


# -----------------------------------------------------------------------------
# Measuring the sound: level, clicks, spectral distance and movement (NumPy and SciPy only)

MEL_BANDS = 64
MEL_WINDOW = 2048  # samples per log-mel frame
MEL_HOP = 1024
MEL_FLOOR = 1e-4  # power floor: about 16-bit quantisation noise, 94 dB below a full-scale sine


def mel_filterbank(num_bands=MEL_BANDS, window=MEL_WINDOW, rate=SAMPLE_RATE):
    """(window // 2 + 1, num_bands) triangular filters evenly spaced on the mel scale, one per
    column: a power spectrum times this matrix is its mel spectrum (stored in that order, the
    product runs at BLAS's full speed: a fifth of the log-mel's time saved)."""
    def mel(hz):
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    edges_hz = 700.0 * (10 ** (np.linspace(0, mel(rate / 2), num_bands + 2) / 2595.0) - 1.0)
    bins = np.fft.rfftfreq(window, 1.0 / rate)
    rising = (bins[None, :] - edges_hz[:-2, None]) / (edges_hz[1:-1] - edges_hz[:-2])[:, None]
    falling = (edges_hz[2:, None] - bins[None, :]) / (edges_hz[2:] - edges_hz[1:-1])[:, None]
    return np.ascontiguousarray(np.maximum(0.0, np.minimum(rising, falling)).T, np.float32)


def log_mel_frames(audio, filters):
    """(samples,) -> (frames, MEL_BANDS) log-mel power in dB, Hann windows of MEL_WINDOW."""
    if len(audio) < MEL_WINDOW:
        audio = np.pad(audio, (0, MEL_WINDOW - len(audio)))
    count = 1 + (len(audio) - MEL_WINDOW) // MEL_HOP
    from scipy import fft

    audio = np.asarray(audio, np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(audio, MEL_WINDOW)[::MEL_HOP][:count]
    spectrum = fft.rfft(windows * mel_window(), axis=-1, workers=-1)  # float32 throughout
    power = np.square(spectrum.real) + np.square(spectrum.imag)
    return 10 * np.log10(np.maximum(power @ filters, MEL_FLOOR))


@functools.cache
def mel_window():
    return np.hanning(MEL_WINDOW).astype(np.float32)


MEL_FRAMES_PER_SECOND = round(SAMPLE_RATE / MEL_HOP)  # 43 frames make one "second"


def log_mel_stream(read_samples, num_samples, filters, chunk_frames=1024):
    """Log-mel frames of a signal of any length, a chunk at a time, so memory stays flat.

    read_samples(start, stop) returns float samples; chunks start at multiples of MEL_HOP and
    overlap by MEL_WINDOW - MEL_HOP, so the frames are exactly those of the whole signal."""
    chunk = chunk_frames * MEL_HOP
    for start in range(0, max(num_samples - MEL_WINDOW, 0) + 1, chunk):
        yield log_mel_frames(read_samples(start, min(start + chunk + MEL_WINDOW - MEL_HOP,
                                                     num_samples)), filters)


# A note starts where the bands it sounds in get louder. Soft music rises slowly (a string's
# attack takes 50-150 ms) and in few bands (a tone's partials), so notes are counted on their
# own envelope: each band's rise over NOTE_LAG log-mel hops, the NOTE_BANDS bands that rose
# most averaged (of those within NOTE_RANGE_DB of the loudest), and a peak that stands
# NOTE_RISE_DB above the median of the second around it.
# On slow-attack tones at -30 dB this counts the notes written to within 11 %, and drum loops
# to 1 %, where one hop's rise averaged over every band found a tenth of the soft notes.
NOTE_LAG = 3  # log-mel hops (70 ms) a note's rise is measured over
NOTE_BANDS = 8  # of MEL_BANDS: the bands that rose most
NOTE_RISE_DB = 4.0  # how far a note's rise stands above the running median of the envelope
NOTE_RANGE_DB = 50.0  # bands further than this below a frame's loudest are not heard rising:
# a held chord's leakage into far bands flickers by tens of dB with its phase


class LogMelStats:
    """Mean and covariance of log-mel frames, each second's average spectrum, and the spectral
    flux (how much louder the bands got since the last frame), gathered chunk by chunk."""

    def __init__(self):
        self.count, self.total = 0, np.zeros(MEL_BANDS)
        self.products = np.zeros((MEL_BANDS, MEL_BANDS))
        self.pending, self.seconds = np.empty((0, MEL_BANDS)), []
        self.last, self.flux, self.rises = np.empty((0, MEL_BANDS)), [], []

    def add(self, log_mel):
        frames = log_mel.astype(np.float64)
        joined = np.concatenate([self.last, frames])
        if len(self.last):
            self.flux.append(np.maximum(joined[-len(frames):] - joined[-len(frames) - 1 : -1],
                                        0).mean(axis=1).astype(np.float32))
        else:
            self.flux.append(np.maximum(np.diff(frames, axis=0), 0).mean(axis=1)
                             .astype(np.float32))
        heard = np.maximum(joined, joined.max(axis=1, keepdims=True) - NOTE_RANGE_DB)
        rise = np.maximum(heard[NOTE_LAG:] - heard[:-NOTE_LAG], 0)  # (hops, bands)
        rise = np.sort(rise, axis=1)[:, -NOTE_BANDS:].mean(axis=1).astype(np.float32)
        self.rises.append(rise[max(len(joined) - NOTE_LAG - len(frames), 0):])
        self.last = joined[-NOTE_LAG:]
        self.count += len(frames)
        self.total += frames.sum(axis=0)
        self.products += frames.T @ frames
        pending = np.concatenate([self.pending, frames])
        whole = len(pending) // MEL_FRAMES_PER_SECOND * MEL_FRAMES_PER_SECOND
        self.seconds.append(pending[:whole].reshape(-1, MEL_FRAMES_PER_SECOND, MEL_BANDS)
                            .mean(axis=1))
        self.pending = pending[whole:]
        return self

    def mean_and_cov(self):
        mean = self.total / self.count
        cov = (self.products - self.count * np.outer(mean, mean)) / max(self.count - 1, 1)
        return mean, cov

    def second_means(self):
        return np.concatenate(self.seconds) if self.seconds else np.empty((0, MEL_BANDS))

    def onsets(self):
        """How many notes start: peaks of the note envelope (see NOTE_LAG) that stand
        NOTE_RISE_DB above its median over the second around them, at least 70 ms apart."""
        from scipy.ndimage import median_filter
        from scipy.signal import find_peaks

        rises = self.note_envelope()
        if len(rises) < 3:
            return 0
        threshold = median_filter(rises, MEL_FRAMES_PER_SECOND, mode="nearest") + NOTE_RISE_DB
        return len(find_peaks(rises, height=threshold, distance=3)[0])

    def onset_envelope(self):
        """(values,) float32: the spectral flux, ONSETS_PER_SECOND values a second."""
        return np.concatenate(self.flux) if self.flux else np.zeros(0, np.float32)

    def note_envelope(self):
        """(values,) float32: how much the bands that rose most rose (see NOTE_LAG), as many a
        second as the flux: what notes and the pulse figure are read from."""
        return np.concatenate(self.rises) if self.rises else np.zeros(0, np.float32)

    def rhythm(self):
        """The pulse and tempo kept figures (rhythm_figures), read from the note envelope, so
        that soft music's beat is heard as its notes are."""
        return rhythm_figures(*rhythm_windows(self.note_envelope(), NOTE_FLAT_DB))


def log_mel_stats(read_samples, num_samples, filters, into=None):
    """The LogMelStats of one signal; `into` (another LogMelStats) gathers them as well."""
    stats = LogMelStats()
    for log_mel in log_mel_stream(read_samples, num_samples, filters):
        stats.add(log_mel)
        if into is not None:
            into.add(log_mel)
    return stats


# Rhythm: the onset envelope is the spectral flux above, one value per log-mel hop (43 a
# second): how much louder the bands got. A beat repeats in it, so its autocorrelation peaks at
# the beat's period; the beats themselves are found by dynamic programming (Ellis, 2007, "Beat tracking
# by dynamic programming"): the best chain of strong onsets about a period apart, each beat's
# own position kept, so a piece that drifts or changes tempo is followed.

ONSETS_PER_SECOND = SAMPLE_RATE / MEL_HOP  # onset envelope values a second: 43.07
ONSET_DELAY_S = (MEL_HOP + MEL_WINDOW / 2) / SAMPLE_RATE + 0.008  # flux[t] measures the change
# from log-mel window t to t + 1: a sound starting at time x shows at about t = x - this (the
# 8 ms measured on click tracks)
BEAT_PERIODS_S = (0.3, 1.2)  # beat periods looked for: 200 down to 50 beats a minute
PULSE_WINDOW_S = 6.0  # the pulse figure's windows, 3 s apart
STEADY_PULSE = 0.2  # a file whose pulse is below this has no steady beat: no beat rule for it
TEMPO_TOLERANCE = 0.04  # two tempos within 4 % are one
BEAT_ONSET_DB = 1.0  # an onset envelope varying less than this (std, dB) has no notes to beat:
# a held chord's (0.3) or noise's (0.25) against 2 to 7 for music
NOTE_FLAT_DB = 1.5  # the same for the note envelope: a held chord's 0.2, noise's 1.0; slow
# notes at -30 dB 2 to 7 (the flux had them at 0.1 to 0.4, and their pulse at 0)
BEAT_TIGHTNESS = 100.0  # how dearly the beat tracker pays for a beat off the period (Ellis)


def autocorrelation(envelope):
    """The envelope's autocorrelation, its mean removed, normalised by lag 0 (zeros if flat)."""
    from scipy import fft

    if len(envelope) < 2:  # a file shorter than two log-mel hops
        return np.zeros(len(envelope))
    centred = np.asarray(envelope, np.float64) - np.mean(envelope)
    power = np.abs(fft.rfft(centred, 2 * len(centred))) ** 2
    correlation = fft.irfft(power)[: len(centred)]
    return correlation / correlation[0] if correlation[0] > 0 else np.zeros_like(correlation)


def beat_lag(correlation, weighted=False):
    """(lag in envelope values, fractional, and the correlation there) of the highest peak at
    beat periods; weighted: favouring periods near 0.5 s (120 a minute) by a log-Gaussian an
    octave wide, as a listener taps (Ellis) -- the pulse figure itself is unweighted."""
    low = int(math.ceil(BEAT_PERIODS_S[0] * ONSETS_PER_SECOND))
    high = min(int(BEAT_PERIODS_S[1] * ONSETS_PER_SECOND), len(correlation) - 2)
    if high <= low:
        return math.nan, 0.0
    lags = np.arange(low, high + 1)
    values = correlation[low : high + 1]
    if weighted:
        values = values * np.exp(-0.5 * np.log2(lags / (0.5 * ONSETS_PER_SECOND)) ** 2)
    peak = int(lags[np.argmax(values)])
    before, at, after = correlation[peak - 1 : peak + 2]
    curvature = before - 2 * at + after
    offset = 0.5 * (before - after) / curvature if curvature < 0 else 0.0
    return peak + float(np.clip(offset, -0.5, 0.5)), float(at)


def same_tempo(lag, reference_lag):
    """Whether a beat lag is the reference's tempo, or twice or half of it (a listener may tap
    either), within TEMPO_TOLERANCE."""
    return any(abs(lag / (reference_lag * factor) - 1) <= TEMPO_TOLERANCE
               for factor in (0.5, 1.0, 2.0))


def rhythm_windows(envelope, flat_below=BEAT_ONSET_DB):
    """Per 6-s window (3 s apart) of an onset envelope: its pulse, the autocorrelation's highest
    peak at beat periods (near 0 without a beat, about 0.5 for music driven by drums), and
    whether its tempo (the peak nearest a listener's 120 a minute, see beat_lag) is the whole
    signal's. Empty lists for a signal shorter than one window."""
    size, hop = int(PULSE_WINDOW_S * ONSETS_PER_SECOND), int(PULSE_WINDOW_S / 2 * ONSETS_PER_SECOND)
    whole, _ = beat_lag(autocorrelation(envelope), weighted=True)
    pulses, kept = [], []
    for start in range(0, max(len(envelope) - size, 0) + 1, hop):
        window = envelope[start : start + size]
        if len(window) == size:
            correlation = autocorrelation(window)
            pulses.append(beat_lag(correlation)[1] if np.std(window) >= flat_below else 0.0)
            kept.append(same_tempo(beat_lag(correlation, weighted=True)[0], whole))
    return pulses, kept


def rhythm_figures(pulses, kept):
    """The pulse (median over the windows) and the share of the windows that keep the tempo."""
    if not pulses:
        return {"pulse": math.nan, "tempo_kept": math.nan}
    return {"pulse": float(np.median(pulses)), "tempo_kept": float(np.mean(kept))}


def local_periods(envelope, period):
    """The beat period (in envelope values) at each value of the envelope: each 6-s window's
    autocorrelation peak within 0.7 to 1.4 times the whole signal's `period` (so a window never
    jumps an octave), median-filtered over three windows, interpolated between their centres."""
    from scipy.signal import medfilt

    size, hop = int(PULSE_WINDOW_S * ONSETS_PER_SECOND), int(PULSE_WINDOW_S / 2 * ONSETS_PER_SECOND)
    low, high = int(0.7 * period), int(math.ceil(1.4 * period))
    centres, lags = [], []
    for start in range(0, max(len(envelope) - size, 0) + 1, hop):
        correlation = autocorrelation(envelope[start : start + size])
        if len(correlation) > high + 1:
            centres.append(start + size / 2)
            lags.append(low + int(np.argmax(correlation[low : high + 1])))
    if len(lags) < 2:
        return np.full(len(envelope), period)
    lags = medfilt(np.array(lags, np.float64), 3) if len(lags) >= 3 else np.array(lags, float)
    return np.interp(np.arange(len(envelope)), centres, lags)


def track_beats(envelope):
    """Beat times in seconds of a signal's onset envelope (empty when it has no steady beat),
    and its pulse. Dynamic programming over the envelope: each value's best score is its own
    onset strength plus the best earlier beat's score, less BEAT_TIGHTNESS times the squared
    log of that beat's distance over the local period (Ellis, 2007, with the period followed
    over time, so a tempo change is followed too)."""
    pulse = rhythm_figures(*rhythm_windows(envelope))["pulse"]
    period, _ = beat_lag(autocorrelation(envelope), weighted=True)
    if not pulse >= STEADY_PULSE or math.isnan(period):
        return np.zeros(0), pulse
    periods = local_periods(envelope, period)
    strength = np.asarray(envelope, np.float64) / max(float(np.std(envelope)), 1e-12)
    nearest = max(int(periods.min() / 2), 1)
    farthest = int(math.ceil(2 * periods.max()))
    offsets = np.arange(farthest, nearest - 1, -1)  # how far back a previous beat may lie
    score, back = strength.copy(), np.full(len(strength), -1)
    padded = np.concatenate([np.full(farthest, -np.inf), score])
    for start in range(nearest, len(score), nearest):  # a block's beats look back past it
        stop = min(start + nearest, len(score))
        rows = np.arange(start, stop)
        # rows: t in the block; columns: t - farthest ... t - nearest, in padded coordinates
        previous = np.lib.stride_tricks.sliding_window_view(
            padded[start : stop + farthest - nearest + 1], len(offsets))[: stop - start]
        ratio = offsets[None, :] / periods[rows, None]
        candidates = previous - BEAT_TIGHTNESS * np.log(ratio) ** 2
        candidates[(ratio < 0.5) | (ratio > 2)] = -np.inf
        best = np.argmax(candidates, axis=1)
        gain = candidates[np.arange(stop - start), best]
        better = gain > 0
        score[rows[better]] += gain[better]
        back[rows[better]] = rows[better] - offsets[best[better]]
        padded[farthest + start : farthest + stop] = score[start:stop]
    tail = max(len(score) - int(round(periods[-1])), 0)
    beat, beats = tail + int(np.argmax(score[tail:])), []
    while beat >= 0:
        beats.append(beat)
        beat = back[beat]
    return refined_peaks(strength, np.array(beats[::-1])) / ONSETS_PER_SECOND + ONSET_DELAY_S, \
        pulse


def refined_peaks(values, indices):
    """Indices moved by a fraction of a value towards where a parabola through each one and its
    neighbours peaks (when it is a peak): beats finer than the envelope's 23 ms steps."""
    inside = (indices > 0) & (indices < len(values) - 1)
    at = indices[inside]
    before, centre, after = values[at - 1], values[at], values[at + 1]
    curvature = before - 2 * centre + after
    peak = (curvature < 0) & (centre >= before) & (centre >= after)
    offset = np.where(peak, 0.5 * (before - after) / np.where(peak, curvature, -1), 0.0)
    refined = indices.astype(np.float64)
    refined[inside] += np.clip(offset, -0.5, 0.5)
    return refined


def beat_phases(beat_times, times):
    """(phase in beats 0 to 1, period in seconds) of the beat at each of `times` (seconds),
    interpolated between the beats and extrapolated past the first and last; nan where there
    is no beat."""
    times = np.asarray(times, np.float64)
    if len(beat_times) < 2:
        return np.full(len(times), np.nan, np.float32), np.full(len(times), np.nan, np.float32)
    count = np.interp(times, beat_times, np.arange(len(beat_times)),
                      left=np.nan, right=np.nan)
    first, last = beat_times[1] - beat_times[0], beat_times[-1] - beat_times[-2]
    before, after = times < beat_times[0], times > beat_times[-1]
    count[before] = (times[before] - beat_times[0]) / first
    count[after] = len(beat_times) - 1 + (times[after] - beat_times[-1]) / last
    periods = np.diff(beat_times)
    period = periods[np.clip(np.floor(count).astype(int), 0, len(periods) - 1)]
    return np.mod(count, 1.0).astype(np.float32), period.astype(np.float32)


def frame_beats(envelope, num_frames):
    """Each frame's place in its file's beat, (num_frames, 2) float32: the phase (0 to 1) and
    the period (s) at the first sample of the frame's window (where a grain chosen for it
    starts), nan for music with no steady beat; and the file's pulse."""
    beat_times, pulse = track_beats(envelope)
    starts = (np.arange(num_frames) * BLOCK_SIZE - BLOCK_SIZE / 2) / SAMPLE_RATE
    return np.stack(beat_phases(beat_times, starts), axis=1), pulse


def movement_of(second_means):
    """How much the one-second-averaged spectrum changes: its standard deviation over time,
    averaged over the bands. Near 0 for noise, silence or a held chord."""
    return float(second_means.std(axis=0).mean()) if len(second_means) >= 2 else 0.0


STRUCTURE_LAGS = range(2, 9)  # seconds apart at which the structure figure compares a piece


def structure_of(second_means):
    """How a piece returns to what it played 2-8 s before: the correlation of each second's
    log-mel spectrum with the one `lag` seconds later (both less the piece's mean spectrum),
    averaged over the seconds, at the lag where it is highest (a phrase repeats at its own
    length, and anti-correlates half-way). A piece that repeats phrases or a chord sequence
    scores high; a wander that never comes back, or noise, near 0."""
    if len(second_means) <= min(STRUCTURE_LAGS):
        return math.nan  # too short to come back to anything
    centred = second_means - second_means.mean(axis=0)
    norms = np.maximum(np.linalg.norm(centred, axis=1), 1e-9)
    values = [float(np.mean(np.einsum("ij,ij->i", centred[:-lag], centred[lag:])
                            / (norms[:-lag] * norms[lag:])))
              for lag in STRUCTURE_LAGS if len(centred) > lag]
    return max(values) if values else math.nan


def click_ratio(samples, block_size=BLOCK_SIZE, neighbours=4):
    """Mean absolute sample-to-sample jump at block boundaries over the mean jump elsewhere:
    1.0 when the joins are as smooth as the rest, far above 1 when every join clicks.

    "Elsewhere" is the `neighbours` jumps on either side of each boundary, where the waveform
    moves as it does at the boundary: a held chord then scores 1.01 whatever its phase there
    (against the whole piece's mean, a 10 s chord scored 1.34 from phase alone). Only the
    samples around the boundaries are read."""
    boundaries = np.arange(block_size, len(samples) - neighbours, block_size)
    if len(boundaries) == 0:
        return math.nan
    around = np.stack([np.asarray(samples[boundary - neighbours - 1 : boundary + neighbours + 1],
                                  np.float64) for boundary in boundaries])
    jumps = np.abs(np.diff(around, axis=1))  # column j: the jump from sample j to j + 1
    at_boundary = jumps[:, neighbours]
    beside = np.delete(jumps, neighbours, axis=1).mean()
    return float(at_boundary.mean() / beside) if beside > 0 else math.nan


def frechet_distance(mean_a, cov_a, mean_b, cov_b):
    """Between two Gaussians fitted to log-mel frames (as in the Frechet audio distance)."""
    from scipy.linalg import sqrtm

    ridge = 1e-6 * np.eye(len(cov_a))  # bands without variance (silence) stay well posed
    cov_a, cov_b = cov_a + ridge, cov_b + ridge
    root = sqrtm(cov_a @ cov_b)
    root = root.real if np.iscomplexobj(root) else root
    return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * root))


PITCH_WINDOW = 4096  # samples per pitch-clarity frame (93 ms; bins 10.8 Hz apart), no overlap
PITCH_BAND = (50.0, 5000.0)  # Hz: where the fundamentals and strong partials of music lie
PITCH_NEIGHBOURS = 10  # bins either side (about 110 Hz) that a partial must stand out from
PITCH_PROMINENCE_DB = 20.0  # how far a partial stands above its neighbourhood's mean level
PITCH_CLEAR = 0.5  # share of a frame's energy in partials for the frame to count as pitched
PITCH_AUDIBLE_DB = -50.0  # frames quieter than this (RMS, dB full scale) are not counted


def tonal_shares(audio):
    """(samples,) -> per PITCH_WINDOW frame, the share of its energy (in PITCH_BAND) that lies in
    partials: spectral peaks standing PITCH_PROMINENCE_DB above the mean log level of the bins
    around them; and whether the frame is loud enough to count. A note or a chord puts nearly
    all its energy in partials, noise almost none, and a blurred spectrum (the average of
    several) smears its peaks into their neighbourhood, so they no longer stand out."""
    from scipy import fft
    from scipy.ndimage import maximum_filter1d, uniform_filter1d

    count = len(audio) // PITCH_WINDOW
    windows = np.asarray(audio[: count * PITCH_WINDOW], np.float32).reshape(count, PITCH_WINDOW)
    low, high = (max(int(hz * PITCH_WINDOW / SAMPLE_RATE), PITCH_NEIGHBOURS) for hz in PITCH_BAND)
    spectrum = fft.rfft(windows * np.hanning(PITCH_WINDOW).astype(np.float32), axis=-1)
    power = (np.square(spectrum.real) + np.square(spectrum.imag))[:, low - PITCH_NEIGHBOURS :
                                                                    high + PITCH_NEIGHBOURS]
    level = 10 * np.log10(power + 1e-12)
    neighbourhood = uniform_filter1d(level, 2 * PITCH_NEIGHBOURS + 1, axis=-1, mode="nearest")
    peaks = (level == maximum_filter1d(level, 5, axis=-1)) \
        & (level - neighbourhood >= PITCH_PROMINENCE_DB)
    partials = maximum_filter1d(peaks, 5, axis=-1)  # a peak and the two bins either side
    inside = slice(PITCH_NEIGHBOURS, -PITCH_NEIGHBOURS)
    total = power[:, inside].sum(axis=-1)
    shares = (power * partials)[:, inside].sum(axis=-1) / np.maximum(total, 1e-30)
    audible = 10 * np.log10(np.mean(np.square(windows, dtype=np.float64), axis=-1) + 1e-20) \
        >= PITCH_AUDIBLE_DB
    return shares, audible


def pitch_clarity_counts(read_samples, num_samples, chunk_windows=256):
    """[clearly pitched frames, audible frames] of a signal of any length, a chunk at a time."""
    counts = np.zeros(2)
    chunk = chunk_windows * PITCH_WINDOW
    for start in range(0, num_samples - PITCH_WINDOW + 1, chunk):
        shares, audible = tonal_shares(read_samples(start, min(start + chunk, num_samples)))
        counts += [np.count_nonzero(audible & (shares >= PITCH_CLEAR)), np.count_nonzero(audible)]
    return counts


def pitch_clarity(audio):
    """The share of a signal's audible time that is clearly pitched, 0 to 1 (nan if silent)."""
    clear, audible = pitch_clarity_counts(lambda start, stop: audio[start:stop], len(audio))
    return clear / audible if audible else math.nan


def verbatim_stretches(indices, file_starts):
    """Lengths, in frames, of the runs in which each index is the one before plus one in the
    same file: stretches of the training music played back as it was recorded."""
    indices = np.asarray(indices)
    if len(indices) == 0:
        return np.zeros(0, int)
    files = np.searchsorted(file_starts, indices, side="right")
    follows = (np.diff(indices) == 1) & (np.diff(files) == 0)
    breaks = np.flatnonzero(~follows) + 1
    return np.diff(np.concatenate([[0], breaks, [len(indices)]]))


def copy_figures(indices, file_starts):
    """The longest verbatim stretch in seconds, and the share of the time spent in verbatim
    stretches of 2 s or more."""
    stretches = verbatim_stretches(indices, file_starts)
    if len(stretches) == 0:
        return {"longest_verbatim_s": 0.0, "verbatim_2s_share": 0.0}
    long_ones = stretches[stretches >= 2 * FRAMES_PER_SECOND]
    return {"longest_verbatim_s": float(stretches.max() / FRAMES_PER_SECOND),
            "verbatim_2s_share": float(long_ones.sum() / stretches.sum())}


def seed_share(indices, seed_range):
    """How much of a continuation sounded its seed's own recording: the share of its chosen
    frames within the seed's (first, last + 1) frames of the joined music."""
    indices = np.asarray(indices)
    first, stop = seed_range
    share = float(np.mean((indices >= first) & (indices < stop))) if len(indices) else 0.0
    return {"seed_share": share}


def seed_figures(piece, seed, cache):
    """How a continuation follows its seed (both mono float32 audio): seed_key, the cosine of
    their pitch classes (averaged over each), beside music_seed_key, the training music's with
    the seed's; seed_timbre, the cosine of how each one's average log-mel spectrum departs from
    the training music's: above 0 when the piece leans the seed's way."""
    def key(audio):
        chroma = frame_chroma(frames_from_audio(audio, cache.kind), cache.kind).mean(axis=0)
        return chroma / max(float(np.linalg.norm(chroma)), 1e-12)

    def timbre(audio):
        return log_mel_frames(audio, mel_filterbank()).mean(axis=0) - cache.reference.mel_mean

    def cosine(a, b):
        return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))

    music_key = cache.chroma.mean(axis=0)
    seed_key = key(seed)
    return {"seed_key": cosine(key(piece), seed_key), "music_seed_key": cosine(music_key, seed_key),
            "seed_timbre": cosine(timbre(piece), timbre(seed))}


@dataclasses.dataclass
class MusicReference:
    """What a piece is measured against: figures of the training music, gathered while the frame
    cache is built (write_raw_frames) and kept in it."""

    rms_db: float
    mel_mean: np.ndarray  # (MEL_BANDS,)
    mel_cov: np.ndarray  # (MEL_BANDS, MEL_BANDS)
    second_means: list  # per file: (seconds, MEL_BANDS) one-second-averaged log-mel
    pitch_clarity: float = math.nan  # share of the music's audible time that is clearly pitched
    onset_rate: float = math.nan  # notes starting per second in the music
    frame_levels: np.ndarray = None  # (num_frames,) RMS dB of each frame's window
    pulse: float = math.nan  # the music's pulse (see rhythm_windows)
    tempo_kept: float = math.nan  # share of the music's 6-s windows that keep its file's tempo

    def movement(self, seconds):
        """The training music's movement in pieces of `seconds` (whole files when shorter)."""
        return self.over_pieces(movement_of, seconds)

    def structure(self, seconds):
        """The training music's structure figure in pieces of `seconds`."""
        return self.over_pieces(structure_of, seconds)

    def over_pieces(self, figure, seconds):
        figures = [figure(means[start : start + seconds])
                   for means in self.second_means
                   for start in range(0, max(len(means) - seconds, 0) + 1, seconds)
                   if len(means[start : start + seconds]) >= 2]
        figures = [value for value in figures if not math.isnan(value)]
        return float(np.mean(figures)) if figures else math.nan


def measure_piece(samples, reference, scale=1.0):
    """The quality figures of one piece against the music. samples: anything sliceable (an
    array, or a memory-mapped WAV), scale: what turns them into [-1, 1] floats."""
    def read_samples(start, stop):
        return np.asarray(samples[start:stop], np.float32) * np.float32(scale)

    stats = log_mel_stats(read_samples, len(samples), mel_filterbank())
    mel_mean, mel_cov = stats.mean_and_cov()
    clear, audible = pitch_clarity_counts(read_samples, len(samples))
    seconds = len(samples) / SAMPLE_RATE
    reference_movement = reference.movement(len(samples) // SAMPLE_RATE)
    movement = movement_of(stats.second_means())
    return {"seconds": len(samples) / SAMPLE_RATE,
            "first_second_db": rms_db(read_samples(0, SAMPLE_RATE)),
            "last_second_db": rms_db(read_samples(max(len(samples) - SAMPLE_RATE, 0),
                                                  len(samples))),
            "music_db": reference.rms_db,
            "clicks": click_ratio(samples),
            "spectral_distance": frechet_distance(mel_mean, mel_cov, reference.mel_mean,
                                                  reference.mel_cov),
            "movement": movement / reference_movement if reference_movement > 0 else math.nan,
            "pitch_clarity": float(clear / audible) if audible else math.nan,
            "music_pitch_clarity": reference.pitch_clarity,
            "onsets_per_s": stats.onsets() / seconds if seconds else math.nan,
            "music_onsets_per_s": reference.onset_rate,
            "structure": structure_of(stats.second_means()),
            "music_structure": reference.structure(len(samples) // SAMPLE_RATE),
            **stats.rhythm(),
            "music_pulse": reference.pulse, "music_tempo_kept": reference.tempo_kept}


class WavSamples:
    """A 16-bit mono WAV of our own, read on demand: len() and slices, like an array, but
    without keeping the file in memory (a memory map's pages would count while mapped)."""

    def __init__(self, path, skip_samples=0):
        import wave

        self.handle = wave.open(str(path), "rb")
        self.skip = skip_samples
        self.length = max(self.handle.getnframes() - skip_samples, 0)

    def __len__(self):
        return self.length

    def __getitem__(self, index):  # slices only, step 1
        start, stop, _ = index.indices(self.length)
        self.handle.setpos(self.skip + start)
        return np.frombuffer(self.handle.readframes(max(stop - start, 0)), "<i2")

    def close(self):
        self.handle.close()


FROZEN_MOVEMENT = 0.3  # a piece that moves less than this, against the music's 1, is frozen


def report_quality(paths, reference, skip_seconds, copies):
    """Print each piece's figures and write them beside it as NAME-i.json. Only what the
    network wrote is measured: a --seed-wav prefix is skipped. copies: each piece's
    copy_figures (and, for a continuation, its seed_figures)."""
    say(f"Quality against the training music ({reference.rms_db:.1f} dB RMS, "
        f"{100 * reference.pitch_clarity:.0f}% clearly pitched, {reference.onset_rate:.1f} "
        f"notes/s): level of the first and last second, clicks (1.0 = none), spectral distance "
        f"(lower is closer), movement (about 1 for music, near 0 for noise or a held chord), "
        f"pitch clarity (share of the time with clear pitch), notes starting per second, the "
        f"pulse (how strongly it beats: music {reference.pulse:.2f}) and the share of 6-s "
        f"windows that keep the piece's tempo (music {100 * reference.tempo_kept:.0f}%), and "
        f"the longest stretch of the training music played back verbatim.")
    return [report_piece(path, reference, skip, copied)
            for path, skip, copied in zip(paths, skip_seconds, copies)]


def report_piece(path, reference, skip_seconds, copied):
    """One piece's figures: printed, written beside it as NAME.json, and returned."""
    samples = WavSamples(path, int(skip_seconds * SAMPLE_RATE))  # read a chunk at a time
    figures = {**measure_piece(samples, reference, scale=1 / 32768), **copied}
    samples.close()
    # A figure a piece is too short for (structure under 3 s, pulse under 6 s) is null in the
    # JSON and "too short" on the terminal.
    write_json_atomically(path.with_suffix(".json"), {"file": path.name, **{
        name: None if isinstance(value, float) and math.isnan(value) else value
        for name, value in figures.items()}})

    def shown(value, form, unit=""):
        return "too short" if math.isnan(value) else format(value, form) + unit

    say(f"  {path}: {figures['seconds']:.2f} s | level {figures['first_second_db']:.1f} -> "
        f"{figures['last_second_db']:.1f} dB | clicks {figures['clicks']:.2f} | "
        f"distance {figures['spectral_distance']:.1f} | movement "
        f"{shown(figures['movement'], '.2f')} | "
        f"pitch clarity {100 * figures['pitch_clarity']:.0f}% | "
        f"{figures['onsets_per_s']:.1f} notes/s | structure {shown(figures['structure'], '.2f')} "
        f"(music {shown(figures['music_structure'], '.2f')}) | pulse "
        f"{shown(figures['pulse'], '.2f')}, tempo kept "
        f"{shown(100 * figures['tempo_kept'], '.0f', '%')} | verbatim: longest "
        f"{figures['longest_verbatim_s']:.2f} s, {100 * figures['verbatim_2s_share']:.0f}% "
        f"in stretches of 2 s or more"
        + (f" | follows its seed: key {figures['seed_key']:.2f} (the music's "
           f"{figures['music_seed_key']:.2f}), timbre {figures['seed_timbre']:.2f}"
           if "seed_key" in figures else "")
        + (f", {100 * figures['seed_share']:.0f}% of it played from the seed's own recording"
           if "seed_share" in figures else ""))
    if figures["movement"] < FROZEN_MOVEMENT:
        say(f"  {path} hardly moves (movement {figures['movement']:.2f}, the music's is about "
            f"1): it holds one sound, a drone or a loop, not music.")
    return figures


# -----------------------------------------------------------------------------
# Composing: a plan built once from the settings, who chooses each next frame (the network, or
# the join alone), and the pieces written with their reports


STEERS = {"network": "the network chooses each next frame from all it has heard",
          "join": "no network, the walk: the recording goes on until the copy guard, then jumps "
                  "to the frame that joins best on the beat (needs no trained model: a remix "
                  "in seconds, and the control the network's pieces are measured against)"}


@dataclasses.dataclass(frozen=True)
class GenerationPlan:
    """How pieces are made, resolved once from the settings and handed on: what a generation
    reads of them, and nothing of training."""

    frames: str  # the kind of frame: a key of FRAME_KINDS
    synthesis: str  # how frames sound: a key of SYNTHESES
    steer: str = "network"  # who chooses each next frame: a key of STEERS
    temperature: float = 1.0  # scale of the sampled errors (or of a units network's logits)
    postfilter: bool = False  # sharpen predicted spectra before sounding them (spectra only)
    copy_limit: float = COPY_LIMIT_SECONDS  # seconds: longest verbatim stretch (grains)
    seconds: float = 10  # length of each piece

    @classmethod
    def from_config(cls, config, seconds=None):
        return cls(config.frames, config.synthesis, config.steer, config.temperature,
                   config.postfilter, config.copy_limit,
                   config.seconds if seconds is None else seconds)

    def make_synthesis(self, real, pieces, seed_ranges=None):
        return make_synthesis(self.frames, pieces, self.synthesis, real, self.copy_limit,
                              seed_ranges)


@dataclasses.dataclass
class Seeds:
    """Where each piece starts: a clip of the training music, or the end of a --seed-wav file."""

    frames: np.ndarray  # (pieces, seed_frames, NUM_FEATURES) raw: what the network reads first
    origins: list  # per piece, where its seed comes from, in words
    prefixes: list = None  # per piece, audio its file starts with (a --seed-wav file's end)
    endings: np.ndarray = None  # (pieces, WINDOW_SIZE): the last 0.5 s of each, where the new
    # music starts; None: the seeds are clips of the training music
    music: tuple = None  # (FrameCache, seed ranges) that grains choose from, when the seeds'
    # own recordings join the cache's (see with_seed_music); None: the cache's alone

    @property
    def seconds_before(self):  # per piece, seconds of its file before the new music
        return [0.0 if prefix is None else len(prefix) / SAMPLE_RATE
                for prefix in self.prefixes or [None] * len(self.frames)]


def seeds_from_music(cache, count, length, rng):
    """`count` random clips of `length` frames of the training music."""
    starts = seed_starts(cache.file_starts, count, rng, length)
    frames = cache.normalisation.denormalise(
        pick_seeds(cache.frames, cache.file_starts, count, rng, length, starts))
    return Seeds(frames, [seed_origin(start, length, cache) for start in starts])


def seeds_from_wavs(seed_wavs, cache, plan):
    """The --seed-wav files (a SeedWavs) as Seeds; with grains, each one's own recording joins
    the music its piece chooses from."""
    music = with_seed_music(cache, seed_wavs) if plan.synthesis == "grains" else None
    return Seeds(seed_wavs.frames, [f"continues {name}; the first {SEED_PREFIX_SECONDS:g} s are "
                                    f"its end" for name in seed_wavs.names],
                 seed_wavs.prefixes, seed_wavs.endings, music)


class Network:
    """A trained model and what goes everywhere with it: the normalisation of the frames it
    reads and writes, and its head (what its outputs are)."""

    def __init__(self, model, normalisation, units=None):
        self.model, self.normalisation, self.head = model, normalisation, head_of(model)
        if units is not None:  # a units head's centroids, from its checkpoint's metadata
            self.head.centroids = np.asarray(units, np.float32)

    def predictor(self, pieces, fold=None):
        """predict_next for `pieces` pieces at once (see make_step_function)."""
        return make_step_function(self.model, pieces, compile_step(self.model, fold=fold))


class NetworkChoice:
    """--steer network: the network predicts each next frame from all it has heard, sampled as
    its head says, and the synthesis sounds the prediction (spectra) or plays the real frame
    chosen for it (grains)."""

    def __init__(self, network):
        self.network, self.normalisation = network, network.normalisation

    def predict_next(self, plan, synthesis, cache, pieces, rng):
        """The network's step with the wrappers the plan asks for, innermost first: the
        postfilter's watch on its own prediction, the head's sampling, the synthesis's steer."""
        head, normalisation = self.network.head, self.normalisation
        fold = output_fold(synthesis, head)
        predict_next = self.network.predictor(pieces, fold)
        errors = music_frames = sharpening = None
        if plan.temperature or plan.frames == "magnitude" or not head.uses_errors:
            errors, music_frames = prediction_errors(self.network.model, cache, rng,
                                                     with_errors=head.uses_errors)
            if plan.postfilter:
                sharpening = Sharpening(Postfilter.from_music(
                    normalisation.denormalise(music_frames)), normalisation)
                sharpening = sharpening if synthesis.sharpen_with(sharpening) else None
            predict_next = head.sampling(predict_next, folded_errors(errors, fold),
                                         plan.temperature, rng,
                                         sharpening.watch if sharpening else None)
        return synthesis.steer(predict_next, music_frames)


@dataclasses.dataclass
class UnitSteering:
    """What GrainSynthesis needs to choose by units, besides its MusicIndex: randomness."""

    rng: np.random.Generator


class NetworkUnits(NetworkChoice):
    """A units network (--head units): it gives each unit of the music's sound a chance of
    coming next; grains keep the recording until the copy guard ends it, then sample a unit
    (softmax at the temperature; 0: the likeliest) among those that can follow there
    (joinable_units) and play the frame of it that joins best on the beat. Grains only."""

    def predict_next(self, plan, synthesis, cache, pieces, rng):
        if plan.synthesis != "grains":
            raise UserError("This model predicts units of your music's own sound, which only "
                            "grains can play: leave out --synthesis spectra.")
        head, step = self.network.head, self.network.predictor(pieces)
        synthesis.index = MusicIndex(unit_labels(synthesis.real.cache.codes, head.centroids),
                                     head.centroids)
        synthesis.units = UnitSteering(rng)
        return synthesis.steer(lambda frames: unit_chances(step(frames), plan.temperature))


def unit_chances(logits, temperature):  # (..., units) -> the same, softmax at the temperature
    logits = np.asarray(logits, np.float64)
    if temperature == 0:
        return np.eye(logits.shape[-1])[np.argmax(logits, axis=-1)]
    scaled = logits / temperature
    odds = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    return odds / odds.sum(axis=-1, keepdims=True)


def network_choice(network):
    """Who chooses for a trained network: by its head."""
    if network.head.name == "units":
        return NetworkUnits(network)
    return NetworkChoice(network)


class JoinAlone:
    """--steer join, the walk: no network. GrainSynthesis chooses with the prediction's term left
    out of its cost, so each next frame is the real successor of the last while the copy guard
    allows, else the frame that joins it best on the beat (with the same beat rule, level term,
    silence rule and copy guard). It needs the cache, never a trained model."""

    def __init__(self, normalisation):
        self.normalisation = normalisation

    def predict_next(self, plan, synthesis, cache, pieces, rng):
        if len(synthesis.real.cache.codes) > WALK_CANDIDATES:  # where its jumps look
            synthesis.index = MusicIndex.of_music(synthesis.real.cache.codes)
        return synthesis.steer(lambda frames: None)  # no prediction: the join alone chooses


def output_fold(synthesis, head):
    """What the generation step may fold into its output layer (see compile_step): the
    synthesis's map of a prediction to all it reads of it, when it has one (grains: the
    index's numbers) and the head's outputs are the prediction itself (not units' chances)."""
    folding = getattr(synthesis, "folding", None)
    return folding() if folding is not None and head.predicts_frames else None


def folded_errors(errors, fold):
    """The network's errors as a folded step's outputs see them: the map's linear part only."""
    return errors if errors is None or fold is None else errors @ fold[0]


def sound_pieces(plan, choice, cache, seeds, paths, rng):
    """Generate a piece from each of the Seeds the planned way, chosen by `choice` (a
    NetworkChoice or JoinAlone), into `paths`. Returns the synthesis, which knows the pieces'
    copy indices, and the paths written."""
    music, seed_ranges = seeds.music or (cache, None)
    pieces, normalisation = len(seeds.frames), choice.normalisation
    synthesis = plan.make_synthesis(RealFrames(music, normalisation), pieces, seed_ranges)
    synthesis.prime(seeds.frames)
    if seeds.endings is not None:
        synthesis.prime_with_audio(seeds.endings)
    with QuitAtSafePoints() as ctrl_c:
        predict_next = choice.predict_next(plan, synthesis, cache, pieces, rng)
        paths = write_pieces(predict_next, seeds, normalisation, synthesis, paths, plan.seconds,
                             ctrl_c)
    return synthesis, paths


def announce(plan, seeds):
    if seeds.endings is not None:
        say(f"Continuing {plural(len(seeds.frames), 'piece')} of your own for {plan.seconds} s "
            f"each; every file starts with the last {SEED_PREFIX_SECONDS:.0f} s of its seed"
            + (", and goes on from its very end into your music." if seeds.music else "."))
    else:
        say(f"Generating {plural(len(seeds.frames), 'piece')} of {plan.seconds} s, seeded with "
            f"random {seeds.frames.shape[1] / FRAMES_PER_SECOND:g} s clips of the training music, "
            f"sounded as {plan.synthesis}" + (", chosen by the join alone (no network)..."
                                              if plan.steer == "join" else "..."))


def compose(config, choice, cache, rng, seed_wavs=None, metadata=None):
    """Write the pieces, their reports and pictures, and the run's listening page (returned):
    seeded from --seed-wav files (a SeedWavs) when given, else from the training music.
    metadata: the checkpoint's, for the page (None: no network)."""
    plan = GenerationPlan.from_config(config)
    if seed_wavs is not None:
        seeds = seeds_from_wavs(seed_wavs, cache, plan)
    else:
        seeds = seeds_from_music(cache, config.num_pieces, seed_length(cache, config), rng)
    announce(plan, seeds)
    paths = output_paths(config.output_name, len(seeds.frames))
    synthesis, paths = sound_pieces(plan, choice, cache, seeds, paths, rng)
    say(f"Wrote {plural(len(paths), 'piece')}.")
    reports = report_quality(paths, cache.reference, seeds.seconds_before,
                             piece_extras(synthesis, cache, seeds, paths, seed_wavs))
    if config.plots:
        for path, seed_end in zip(paths, seeds.seconds_before):
            say(f"Spectrogram: {plot_spectrogram(path, path.with_suffix('.png'), seed_end)}")
    page = write_listening_page(config, cache, metadata, [
        Piece(path, report, origin, seed_end) for path, report, origin, seed_end
        in zip(paths, reports, seeds.origins, seeds.seconds_before)])
    say(f"Listen: {page}")
    return page


def piece_extras(synthesis, cache, seeds, paths, seed_wavs):
    """Per piece, the figures only the run knows: how much was played verbatim, and for a
    continuation how much came from its seed's recording and how it follows the seed."""
    file_starts = (seeds.music or (cache,))[0].file_starts
    extras = [copy_figures(indices, file_starts) for indices in synthesis.copy_indices]
    if seeds.music is not None:  # grains continuing --seed-wav files, their recordings among them
        extras = [{**extra, **seed_share(indices, seed_range)} for extra, indices, seed_range
                  in zip(extras, synthesis.copy_indices, seeds.music[1])]
    if seed_wavs is not None:
        extras = [{**extra, **seed_figures(read_wav(path)[0][int(skip * SAMPLE_RATE):], audio,
                                           cache)}
                  for extra, path, skip, audio in zip(extras, paths, seeds.seconds_before,
                                                      seed_wavs.audios)]
    return extras


# -----------------------------------------------------------------------------
# Pictures: the loss curve and a spectrogram of each piece (matplotlib, imported when used)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen needed
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path):
    """Saved under a temporary name, then renamed: no half-written picture."""
    temporary = Path(path).with_name(f".{Path(path).name}.partial-{os.getpid()}.png")
    try:
        figure.savefig(temporary, dpi=100)
        os.replace(temporary, path)
    finally:
        pyplot().close(figure)
        temporary.unlink(missing_ok=True)
    return path


LOSS_LABELS = {"average": "mean squared error (normalised frames)",
               "units": "cross-entropy of the next unit (nats)"}


def plot_loss_curve(metadata, path):
    """Training and validation loss of every epoch so far, across resumed runs too, labelled
    as the head's loss; a units model's beside what counting reaches on the held-out music."""
    plt = pyplot()
    history = metadata["history"]
    epochs = [entry["epoch"] for entry in history]
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(epochs, [entry["loss"] for entry in history], "o-", label="training loss")
    axes.plot(epochs, [entry["val_loss"] for entry in history], "s-",
              label="validation loss (held-out music)")
    for name, style in (("bigram", "--"), ("unigram", ":")):
        if name in metadata.get("counting", {}):
            axes.axhline(metadata["counting"][name], color="grey", linestyle=style,
                         label=f"{name} on the held-out music (counting)")
    head = metadata.get("head", "average")
    axes.set(xlabel="epoch", ylabel=LOSS_LABELS.get(head, "loss"),
             yscale="linear" if head == "units" else "log", title="Training progress")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return save_figure(figure, path)


def spectrogram_columns(samples, rate, max_columns=1000, window_size=2048, hop=512,
                        num_rows=256, lowest_hz=30.0):
    """Power in dB, (num_rows, columns), on log-spaced frequency rows, from at most max_columns
    Hann windows spread evenly over the piece: the same picture size and cost for 10 s or 10 h.

    Returns (times of the columns in s, row frequencies in Hz, dB)."""
    last_start = max(len(samples) - window_size, 0)
    count = min(max_columns, last_start // hop + 1)
    starts = np.linspace(0, last_start, count).astype(np.int64)
    windows = np.stack([np.asarray(samples[start : start + window_size], np.float32)
                        for start in starts]) / 32768.0  # only these samples are read
    if windows.shape[1] < window_size:
        windows = np.pad(windows, ((0, 0), (0, window_size - windows.shape[1])))
    power = np.abs(np.fft.rfft(windows * np.hanning(window_size), axis=1)) ** 2
    bin_hz = rate / window_size
    edges = np.unique(np.geomspace(lowest_hz, rate / 2, num_rows + 1) // bin_hz).astype(int)
    rows = np.add.reduceat(power, edges[:-1], axis=1) / np.diff(edges)[None, :]
    decibels = 10 * np.log10(rows.T + 1e-12)
    return (starts + window_size / 2) / rate, edges[:-1] * bin_hz, decibels


def plot_spectrogram(wav_path, png_path, seed_end_seconds):
    """Log-frequency spectrogram in dB (2048-sample Hann windows), with a line where the seed
    ends and the network's music begins."""
    samples = WavSamples(wav_path)  # only the windows drawn are read
    times, frequencies, decibels = spectrogram_columns(samples, SAMPLE_RATE)
    samples.close()
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(8, 4))
    loudest = float(decibels.max())
    image = axes.pcolormesh(times, frequencies, decibels, shading="nearest", cmap="magma",
                            vmin=loudest - 80, vmax=loudest)  # an 80 dB range below the peak
    axes.set(yscale="log", xlabel="time (s)", ylabel="frequency (Hz)", title=Path(wav_path).name)
    axes.axvline(seed_end_seconds, color="cyan", linestyle="--", label="seed ends")
    axes.legend(loc="upper right")
    figure.colorbar(image, ax=axes, label="power (dB)")
    figure.tight_layout()
    return save_figure(figure, png_path)


# -----------------------------------------------------------------------------
# The listening page: one HTML file per generation run, beside its pieces, to listen and look


@dataclasses.dataclass(frozen=True)
class Piece:
    """What the page shows of one piece."""

    path: Path  # its WAV
    report: dict  # its figures, as in its JSON report
    origin: str  # where its seed came from, in words
    seed_end: float  # seconds of the user's own file at its start (0 without --seed-wav)


# Each figure the page shows: (its key in the report, its name, the music's key or None, its
# format, what it means, when it is far from the music's: a test of (value, music's value)).
PAGE_FIGURES = [
    ("first_second_db", "level, first second", "music_db", ".1f", " dB",
     "RMS level of the first second", lambda value, music: abs(value - music) > 6),
    ("last_second_db", "level, last second", "music_db", ".1f", " dB",
     "RMS level of the last second", lambda value, music: abs(value - music) > 6),
    ("clicks", "clicks", None, ".2f", "",
     "jumps at the 0.25 s joins over the jumps beside them: 1.0 means none",
     lambda value, music: value > 1.2),
    ("spectral_distance", "spectral distance", None, ",.0f", "",
     "how far the piece's sound is from the music's (Fréchet distance of log-mel spectra): "
     "lower is closer", None),
    ("movement", "movement", None, ".2f", "",
     "how much the sound changes, over the music's: about 1 for music, near 0 for a held chord",
     lambda value, music: not 0.7 <= value <= 1.4),
    ("pitch_clarity", "pitch clarity", "music_pitch_clarity", ".0%", "",
     "share of the time with a clear pitch", lambda value, music: value < 0.9 * music),
    ("onsets_per_s", "notes per second", "music_onsets_per_s", ".1f", "",
     "notes starting per second", lambda value, music: not 0.7 * music <= value <= 1.4 * music),
    ("structure", "structure", "music_structure", ".2f", "",
     "how the piece comes back to what it played 2 to 8 s before", None),
    ("pulse", "pulse", "music_pulse", ".2f", "",
     "how strongly it beats: near 0 without a beat", lambda value, music: value < 0.8 * music),
    ("tempo_kept", "tempo kept", "music_tempo_kept", ".0%", "",
     "share of its 6-s windows that keep one tempo", lambda value, music: value < 0.8 * music),
    ("longest_verbatim_s", "longest verbatim", None, ".2f", " s",
     "the longest stretch of your music played back as recorded", None),
    ("verbatim_2s_share", "in verbatim stretches of 2 s or more", None, ".0%", "",
     "share of the piece's time", None),
    ("seed_key", "follows its seed: key", "music_seed_key", ".2f", "",
     "cosine of its pitch classes with its seed's (the music's beside)", None),
    ("seed_timbre", "follows its seed: timbre", None, ".2f", "",
     "above 0 when its sound leans from the music's towards its seed's", None),
    ("seed_share", "played from its seed", None, ".0%", "",
     "share of its frames taken from the seed file's own recording", None),
]
PAGE_STYLE = """body { font-family: sans-serif; max-width: 60em; margin: 1em auto; padding: 0 1em; }
section { border-top: 1px solid #ccc; margin-top: 1.5em; }
img { max-width: 100%; height: auto; }
table { border-collapse: collapse; } td, th { padding: 0.2em 0.6em; text-align: left; }
td.far { background: #fde4c8; } tr.music td { font-style: italic; background: #f3f3f3; }
div.wide { overflow-x: auto; } table.summary td, table.summary th { font-size: 90%; }
code { background: #f3f3f3; padding: 0 0.2em; }"""
EXCERPT_SECONDS = 6.0  # of the training music, on the page, to compare by ear


def missing(value):  # a figure a piece is too short for: null in the JSON, nan in memory
    return value is None or (isinstance(value, float) and math.isnan(value))


def shown_figure(value, spec, unit):
    return "too short" if missing(value) else format(value, spec) + unit


def figure_cell(report, key, music_key, spec, unit, far):
    """One figure of a report as a table cell, marked when far from the music's."""
    value, music = report[key], report.get(music_key) if music_key else None
    is_far = (far is not None and not missing(value)
              and (music_key is None or not missing(music)) and far(value, music))
    marked = ' class="far"' if is_far else ""
    return (f'<td data-key="{key}"{marked}>{shown_figure(value, spec, unit)}'
            f"{'*' if is_far else ''}</td>")


def summary_table(pieces):
    """One row per piece, the music's on top, a column per figure the reports hold; a figure
    far from the music's is marked (shaded, and a star). Below it, what each figure means."""
    figures = [figure for figure in PAGE_FIGURES
               if any(figure[0] in piece.report for piece in pieces)]
    first = pieces[0].report
    header = "".join(f"<th>{html.escape(name)}</th>" for _, name, *_ in figures)
    music = "".join(f"<td>{shown_figure(first.get(music_key), spec, unit)}</td>"
                    if music_key else "<td></td>"
                    for _, _, music_key, spec, unit, _, _ in figures)
    rows = [f'<tr data-piece="{html.escape(piece.path.stem, quote=True)}"><td><a href="#'
            f'{html.escape(piece.path.stem, quote=True)}">{html.escape(piece.path.name)}</a></td>'
            + "".join(figure_cell(piece.report, key, music_key, spec, unit, far)
                      if key in piece.report else "<td></td>"
                      for key, _, music_key, spec, unit, _, far in figures) + "</tr>"
            for piece in pieces]
    meanings = "".join(f"<li><b>{html.escape(name)}</b>: {html.escape(meaning)}</li>"
                       for _, name, _, _, _, meaning, _ in figures)
    return "\n".join([
        '<div class="wide"><table class="summary">', f"<tr><th>piece</th>{header}</tr>",
        f'<tr class="music"><td>the music</td>{music}</tr>', *rows, "</table></div>",
        "<p>Each figure is measured on the new music only; * marks one far from the "
        "music's.</p>", f"<ul>{meanings}</ul>"])


def relative_link(path, page):
    return html.escape(Path(os.path.relpath(Path(path).resolve(), page.resolve().parent))
                       .as_posix(), quote=True)


def piece_section(piece, page, plan):
    seed = (f" The first {piece.seed_end:g} s are your own file; the continuation starts at "
            f"0:{piece.seed_end:02.0f}, where the spectrogram's dashed line is."
            if piece.seed_end else "")
    picture = piece.path.with_suffix(".png")
    return "\n".join([
        f'<section id="{html.escape(piece.path.stem, quote=True)}">',
        f"<h3>{html.escape(piece.path.name)}</h3>",
        f"<p>{html.escape(piece.origin)}; {piece.report['seconds']:g} s of new music, sounded "
        f"as {plan.synthesis}.{html.escape(seed)}</p>",
        f'<p><audio controls="controls" preload="metadata" '
        f'src="{relative_link(piece.path, page)}"></audio></p>',
        f'<p><img src="{relative_link(picture, page)}" alt="spectrogram of '
        f'{html.escape(piece.path.name, quote=True)}" /></p>' if picture.exists() else "",
        "</section>"])


def page_html(config, cache, metadata, pieces, page, excerpt):
    plan = GenerationPlan.from_config(config)
    """The whole page, well-formed XHTML: nothing from the network, the pieces, their pictures
    and the excerpt by relative paths (the page's own folder), the loss curve inside it."""
    import base64
    import shlex

    seconds = (len(cache.frames)) / FRAMES_PER_SECOND
    loss = config.cache_dir / "loss.png"
    checkpoint = config.cache_dir / (metadata or {}).get("generated_from", CHECKPOINT_NAME)
    prediction = held_out_prediction(metadata) if metadata else None
    model = (f"-n {metadata['hidden_neurons']} -l {metadata['hidden_layers']}, trained for "
             f"{plural(metadata['epochs_done'], 'epoch')} (Keras on "
             f"{html.escape(metadata.get('backend', 'tensorflow'))}), from <code>"
             f"{html.escape(str(checkpoint))}</code>" if metadata else "")
    names = ", ".join(cache.file_names[:12]) + (f" and {len(cache.file_names) - 12} more"
                                                 if len(cache.file_names) > 12 else "")
    return "\n".join([
        '<?xml version="1.0" encoding="utf-8"?>', "<!DOCTYPE html>",
        '<html xmlns="http://www.w3.org/1999/xhtml" lang="en"><head>',
        '<meta charset="utf-8" />',
        f"<title>music-composer: {html.escape(page.stem)}</title>",
        f"<style>{PAGE_STYLE}</style></head><body>",
        f"<h1>{plural(len(pieces), 'piece')} by music-composer</h1>",
        f"<p>Made by <code>{html.escape(shlex.join(['python3', *sys.argv]))}</code> on "
        f"{time.strftime('%Y-%m-%d %H:%M')}.</p>",
        "<h2>The run</h2><ul>",
        f"<li>The model: {model}.</li>" if model else "",
        f"<li>{html.escape(prediction)}</li>" if prediction else "",
        f"<li>The training music: {plural(len(cache.file_names), 'file')}, {seconds / 60:.1f} min "
        f"({html.escape(names)}); level {cache.reference.rms_db:.1f} dB.</li>",
        f"<li>Sounded as {plan.synthesis}, "
        + ("chosen by the join alone, no network" if plan.steer == "join"
           else f"temperature {plan.temperature:g}")
        + (f", at most {plan.copy_limit:g} s of your music verbatim"
           if plan.synthesis == "grains" else "") + ".</li></ul>",
        f'<p>A few seconds of the training music, to compare by ear: <audio controls="controls" '
        f'preload="metadata" src="{relative_link(excerpt, page)}"></audio></p>'
        if excerpt else "",
        f'<p><img src="data:image/png;base64,{base64.b64encode(loss.read_bytes()).decode()}" '
        f'alt="the loss curve" /></p>' if loss.exists() else "",  # in the page: -t is elsewhere
        "<h2>The pieces</h2>", summary_table(pieces),
        *(piece_section(piece, page, plan) for piece in pieces), "</body></html>", ""])


def page_paths(output_name):
    """NAME.html and NAME.music-excerpt.wav (its excerpt of the training music), or the next
    free NAME-run-K.html and NAME.music-excerpt-K.wav: an earlier run's page is never
    overwritten, and no NAME-*.wav, the pieces' own pattern, names a piece of the music."""
    index = 1
    while True:
        stem = output_name if index == 1 else f"{output_name}-run-{index}"
        number = "" if index == 1 else f"-{index}"
        page, excerpt = Path(f"{stem}.html"), Path(f"{output_name}.music-excerpt{number}.wav")
        if not (os.path.lexists(page) or os.path.lexists(excerpt)):
            return page, excerpt
        index += 1


def write_excerpt(cache, path):
    """EXCERPT_SECONDS from the middle of the longest file, from the cache's own copy of the
    music (the music folder is never read for it); None without one."""
    if cache.audio is None:
        return None
    file = int(np.argmax(np.diff(cache.file_starts)))
    frames = int(cache.file_starts[file + 1] - cache.file_starts[file])
    count = min(int(EXCERPT_SECONDS * SAMPLE_RATE), frames * BLOCK_SIZE)
    middle = (cache.file_starts[file] + file + frames // 2) * BLOCK_SIZE
    start = max((cache.file_starts[file] + file) * BLOCK_SIZE, middle - count // 2)
    writer = WavWriters([path])
    try:
        writer.write(read_span(cache.audio, start, count)[None].astype(np.float32) / 32768)
        return writer.finish()[0]
    except BaseException:
        writer.discard()
        raise


def write_listening_page(config, cache, metadata, pieces):
    """The run's page, written atomically beside its pieces; returns its path."""
    page, excerpt = page_paths(config.output_name)
    excerpt = write_excerpt(cache, excerpt)
    temporary = page.with_name(f".{page.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(page_html(config, cache, metadata, pieces, page, excerpt))
            handle.flush()
            os.fsync(handle.fileno())
        while True:
            try:
                os.link(temporary, page)  # fails rather than overwrite a page made meanwhile
                break
            except FileExistsError:
                page = page_paths(config.output_name)[0]
    finally:
        temporary.unlink(missing_ok=True)
    fsync_dir(page.parent)
    return page


# -----------------------------------------------------------------------------
# Before any work: the traindata folder's lock, and what the run will need of the machine


class FolderLock:
    """An exclusive lock on the traindata folder for the whole run, so two runs never write the
    same cache or checkpoint. The kernel drops it when the process ends, however it ends, so a
    killed run never leaves it stuck."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def __enter__(self):
        import fcntl

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.folder / ".lock", "a+")
        except OSError as error:
            raise UserError(f"Cannot write in the traindata folder {self.folder} "
                            f"({error.strerror}). Choose another with "
                            f"-t/--traindata-folder-path.") from None
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            owner = self.handle.read().strip()
            self.handle.close()
            raise UserError(f"Another music-composer run (process {owner or 'unknown'}) is "
                            f"using {self.folder}. Wait for it to finish, or give this run "
                            f"another -t/--traindata-folder-path.") from None
        with disk_space_for(self.folder, "the lock file", "-t/--traindata-folder-path"):
            self.handle.truncate(0)
            self.handle.write(f"{os.getpid()}\n")
            self.handle.flush()
        return self

    def __exit__(self, *exc_info):
        self.handle.close()  # closing releases the lock


def check_music_folder_is_left_alone(config):
    """The music folder is only ever read: no cache, checkpoint or output may go inside it."""
    music = config.dataset_dir.resolve()
    for flag, path in [("-t/--traindata-folder-path", config.cache_dir),
                       ("-o/--output-music-name", Path(config.output_name).parent),
                       ("--tensorboard", config.tensorboard)]:
        if path is None:
            continue
        if path.resolve() == music or music in path.resolve().parents:
            raise UserError(f"{flag} points inside the music folder {config.dataset_dir}, which "
                            f"this tool never writes into. Choose a place outside it.")


def process_is_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process: leave its files alone
    return True


def remove_leftovers(cache_dir, output_name):
    """Temporary files of runs that were killed: partial checkpoints and loss curves in the
    (locked) traindata folder, and partial WAVs whose writing process has gone."""
    for pattern in (".*.tmp-*", ".*.partial-*"):
        for path in Path(cache_dir).glob(pattern):
            path.unlink(missing_ok=True)
    import re

    output = Path(output_name)
    for path in output.parent.glob(f".{output.name}[-.]*"):  # WAV, picture, report temporaries
        match = re.search(r"\.(?:partial|tmp)-(\d+)(?:\.png)?$", path.name)
        if match and not process_is_alive(int(match.group(1))):
            path.unlink(missing_ok=True)


def format_bytes(count):
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if count < 1000 or unit == "PB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000


def training_memory_bytes(hidden_neurons, hidden_layers, batch_size, length=WINDOW_FRAMES,
                          outputs=NUM_FEATURES):
    """A floor on training memory: float32 weights, gradients and Adam's two moments, plus
    the activations of one batch of sequences of `length` frames."""
    parameters = count_parameters(NUM_FEATURES, hidden_neurons, hidden_layers, outputs)
    per_window = (length + 1) * (6 * NUM_FEATURES + 2 * outputs
                                 + 12 * hidden_neurons * hidden_layers)
    return 4 * (4 * parameters + batch_size * per_window)


def generation_memory_bytes(hidden_neurons, hidden_layers, num_pieces, outputs=NUM_FEATURES):
    parameters = count_parameters(NUM_FEATURES, hidden_neurons, hidden_layers, outputs)
    per_piece = (8 * NUM_FEATURES + 4 * BLOCK_SIZE + 4 * hidden_neurons * hidden_layers
                 + 8 * WINDOW_SIZE)  # the phase rebuilding's spectra and windows
    error_bank = 2 * 256 * (WINDOW_FRAMES + 1) * NUM_FEATURES  # prediction_errors' windows
    bfloat16_copies = parameters // 2  # of the weights, where generation_dtype is bfloat16
    return 4 * (parameters + bfloat16_copies + error_bank + num_pieces * per_piece)


def output_bytes(seconds, num_pieces):
    return num_pieces * (44 + seconds * SAMPLE_RATE * 2)  # 16-bit mono WAV


def check_resources(config, total_memory, free_disk):
    """Refuse at once what could only fail hours later: too little memory or disk."""
    outputs = make_head(default_head(config)).outputs(NUM_FEATURES)
    if config.epochs > 0:
        memory = training_memory_bytes(config.hidden_neurons, config.hidden_layers,
                                       config.batch_size,
                                       round(config.sequence_seconds * FRAMES_PER_SECOND), outputs)
        asked, advice = (f"-n {config.hidden_neurons} -l {config.hidden_layers} "
                         f"-b {config.batch_size}"), "a smaller -n, -l or -b"
    else:
        memory = generation_memory_bytes(config.hidden_neurons, config.hidden_layers,
                                         config.num_pieces, outputs)
        asked, advice = f"-g {config.num_pieces}", "a smaller -g"
    if total_memory is not None and memory > total_memory:
        raise UserError(f"{asked} needs at least {format_bytes(memory)} of memory, but this "
                        f"machine has {format_bytes(total_memory)}. Use {advice}.")
    disk = output_bytes(config.seconds, config.num_pieces)
    if disk > free_disk:
        raise UserError(f"-s {config.seconds} -g {config.num_pieces} would write "
                        f"{format_bytes(disk)} of WAV files, but only {format_bytes(free_disk)} "
                        f"is free where they go. Ask for fewer or shorter pieces.")


def machine_memory_bytes():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


# -----------------------------------------------------------------------------
# The command line


def whole_number_at_least(smallest):
    """An argparse type: a whole number of at least `smallest`, else a message naming both."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < smallest:
            raise argparse.ArgumentTypeError(f"must be {smallest} or more, got {value}")
        return value

    return parse


positive_int = whole_number_at_least(1)
non_negative_int = whole_number_at_least(0)


def random_seed(text):
    value = non_negative_int(text)
    if value >= 2**32:
        raise argparse.ArgumentTypeError(f"must be below 2**32, got {value}")
    return value


def number_between(low, high, example):
    """An argparse type: a number from `low` to `high`, else a message naming both."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number such as {example}, "
                                             f"got {text!r}") from None
        if not low <= value <= high:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be from {low:g} to {high:g}, got {text}")
        return value

    return parse


temperature = number_between(0, 4, "0.5")
save_every_minutes = number_between(0, 24 * 60, "5")  # the scale of the sampled errors
copy_limit = number_between(1 / FRAMES_PER_SECOND, 3600, "4")  # seconds: at least one frame
sequence_seconds = number_between(WINDOW_FRAMES / FRAMES_PER_SECOND, 600, "8")


def output_name(text):
    if not text or text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"expected a file name without .wav, got {text!r}")
    return text


def described(choices):
    """'name: what it does; ...' for a flag's help, from a {name: description} table."""
    return "; ".join(f"{name}: {text}" for name, text in choices.items())


def make_parser():
    parser = argparse.ArgumentParser(
        prog="music-composer.py",
        description="Learn the style of a folder of music with a recurrent network and "
                    "compose new music in that style.")
    for add_flags in (folder_flags, network_flags, training_flags, generation_flags,
                      watching_flags):
        add_flags(parser)
    return parser


def folder_flags(parser):
    folders = parser.add_argument_group("folders and files")
    folders.add_argument("-d", "--datasets-folder-path",
                         help=f"folder of your music ({FORMATS_READ}), only ever read "
                              "(default: input_music_dataset/)")
    folders.add_argument("-t", "--traindata-folder-path",
                         help="folder for the frame cache, the checkpoints and the loss curve "
                              "(default: train_data/)")
    folders.add_argument("-o", "--output-music-name", type=output_name,
                         help="pieces are NAME-0.wav, NAME-1.wav, ...; existing files are never "
                              "overwritten: numbering goes on (default: output)")


def network_flags(parser):
    network = parser.add_argument_group("network")
    network.add_argument("-n", "--hidden-layer-neurons", type=positive_int,
                         help="LSTM units in each layer (default: 1024, or the checkpoint's when "
                              "neither -n nor -l is given; --demo: 256)")
    network.add_argument("-l", "--hidden-layer-count", type=positive_int,
                         help="number of stacked LSTM layers (default: 4, or the checkpoint's "
                              "when neither -n nor -l is given; --demo: 2)")


def training_flags(parser):
    training = parser.add_argument_group("training")
    training.add_argument("-e", "--epochs", type=non_negative_int,
                          help="epochs to train in this run; 0 generates from the checkpoint "
                               "(default: 20; --demo: 40)")
    training.add_argument("-b", "--batch-size", type=positive_int,
                          help="training sequences per batch (default: 10)")
    training.add_argument("--gpus", type=positive_int, metavar="N",
                          help="train on at most N of the visible GPUs; with two or more, "
                               "-b sequences go to each GPU every step (default: all; "
                               "CUDA_VISIBLE_DEVICES chooses which are visible)")
    training.add_argument("--head", choices=list(HEADS),
                          help="what the network predicts: " + described(HEADS)
                          + " (default: the checkpoint's; for a new model, units with grains, "
                            "average with --synthesis spectra)")
    training.add_argument("--sequence-seconds", type=sequence_seconds, metavar="SECONDS",
                          help=f"length of the music the network learns from at a time (and of "
                               f"a seed), at least 1; shortened when the music is too short "
                               f"(default: {SEQUENCE_SECONDS:g}; the original: 1)")
    training.add_argument("--save-every-minutes", type=save_every_minutes, metavar="M",
                          help=f"during an epoch, save the batch reached every M minutes "
                               f"(model-midepoch.keras), so that a run killed or stopped goes on "
                               f"from there; 0: only at the end of each epoch and on Ctrl-C or "
                               f"SIGTERM (default: {SAVE_EVERY_MINUTES:g})")
    training.add_argument("--patience", type=non_negative_int, metavar="EPOCHS",
                          help=f"stop training once the held-out music (each file's last tenth) "
                               f"has not been predicted better for EPOCHS epochs: the best "
                               f"epoch's checkpoint generates; 0: train every epoch of -e "
                               f"(default: {PATIENCE_EPOCHS})")
    training.add_argument("--precision", choices=["auto", *PRECISIONS], default="auto",
                          help="arithmetic of training: " + described(PRECISIONS) + " (default: "
                               "auto, mixed where the hardware multiplies 16 bits natively: "
                               "bfloat16 on a CPU with AVX512-BF16 or AMX, float16 on a GPU "
                               "with tensor cores; float32 elsewhere)")
    training.add_argument("--random-seed", type=random_seed,
                          help="make initialisation, shuffling and seeds repeatable on a CPU "
                               "(default: none)")


def generation_flags(parser):
    generation = parser.add_argument_group("generation")
    generation.add_argument("-s", "--seconds-to-generate", type=positive_int,
                            help="length of each generated piece in seconds (default: 10)")
    generation.add_argument("-g", "--generated-music-num", type=positive_int,
                            help="how many pieces to generate (default: 10; --demo: 3)")
    generation.add_argument("--seed-wav", nargs="+", metavar="FILE",
                            help="continue these music files (any format -d reads) instead of "
                                 "clips of the training "
                                 "music: one piece each, starting with the file's last 2 s")
    generation.add_argument("--temperature", type=temperature,
                            help="how freely each next frame is sampled: 0 takes the "
                                 "network's most likely frame, higher is freer; it scales the "
                                 "network's own errors added back to a predicted frame, or "
                                 "sharpens or flattens a units network's chances "
                                 "(default: 1; 0 with --frames plain, as the original)")
    generation.add_argument("--synthesis", choices=list(SYNTHESES),
                            help="how predicted frames become sound: " + described(SYNTHESES)
                            + " (default: grains; spectra with --frames plain)")
    generation.add_argument("--steer", choices=list(STEERS), default="network",
                            help="who chooses each next frame (grains): " + described(STEERS)
                            + " (default: network)")
    generation.add_argument("--copy-limit", type=copy_limit, metavar="SECONDS",
                            help=f"with grains, the longest stretch of your music played back "
                                 f"verbatim, in seconds, at least 0.25 (default: "
                                 f"{COPY_LIMIT_SECONDS:g})")
    generation.add_argument("--postfilter", action="store_true",
                            help="with --synthesis spectra, give each predicted spectrum back "
                                 "the music's detail before it is sounded: clearer pitch, fewer "
                                 "notes starting, a weaker beat (default: off)")
    generation.add_argument("--frames", choices=list(FRAME_KINDS),
                            help="how audio becomes frames: " + described(FRAME_KINDS))


def watching_flags(parser):
    watching = parser.add_argument_group("watching a long run")
    watching.add_argument("--tensorboard", metavar="DIR", type=Path,
                          help="write TensorBoard logs into DIR: loss and val_loss per epoch "
                               "(going on across resumed runs), and the previews' sound and "
                               "figures; needs: pip install tensorboard (default: none)")
    watching.add_argument("--preview-every", metavar="N", type=positive_int,
                          help=f"every N epochs, write a {PREVIEW_SECONDS} s piece from a fixed "
                               f"seed into the traindata folder as preview-epoch-K.wav, with "
                               f"its quality figures (default: never)")
    extras = parser.add_argument_group("demo and pictures")
    extras.add_argument("--demo", action="store_true",
                        help=f"train on a built-in piece of music, with everything in "
                             f"{DEMO_FOLDER}/ and a smaller network")
    extras.add_argument("--no-plots", action="store_true",
                        help="write no loss curve or spectrogram pictures")


def config_from_args(args, parser):
    if args.demo and args.datasets_folder_path is not None:
        parser.error("--demo trains on its own piece of music; leave out -d/--datasets-folder-path")
    defaults = DEMO_DEFAULTS if args.demo else DEFAULTS

    def setting(name):
        value = getattr(args, name)
        return defaults[name] if value is None else value

    seed_wavs = tuple(Path(path) for path in args.seed_wav or ())
    frames = args.frames or DEFAULT_FRAMES
    if args.tensorboard is not None and importlib.util.find_spec("tensorboard") is None:
        parser.error("--tensorboard needs the tensorboard package, which TensorFlow no longer "
                     "installs: pip install tensorboard")
    if args.synthesis == "grains" and frames == "plain":
        parser.error("--synthesis grains needs magnitude frames: it finds the real frame of your "
                     "music that sounds nearest to each prediction, and plain frames hold the "
                     "phase, which says little of the sound. Use --synthesis spectra with "
                     "--frames plain, or leave out --frames plain.")
    if args.head == "units" and (frames == "plain" or args.synthesis == "spectra"):
        parser.error("--head units predicts units of your music's own sound, which grains play: "
                     "leave out --synthesis spectra and --frames plain.")
    if args.steer != "network" and (frames == "plain" or args.synthesis == "spectra"):
        parser.error(f"--steer {args.steer} chooses among the recordings of your music, so it "
                     f"sounds grains of magnitude frames: leave out --synthesis spectra and "
                     f"--frames plain.")
    return Config(dataset_dir=Path(setting("datasets_folder_path")),
                  cache_dir=Path(setting("traindata_folder_path")),
                  output_name=setting("output_music_name"),
                  hidden_neurons=setting("hidden_layer_neurons"),
                  hidden_layers=setting("hidden_layer_count"), epochs=0 if args.steer == "join" else setting("epochs"),
                  batch_size=setting("batch_size"), seconds=setting("seconds_to_generate"),
                  num_pieces=len(seed_wavs) or setting("generated_music_num"),
                  random_seed=args.random_seed, seed_wavs=seed_wavs, plots=not args.no_plots,
                  frames=frames, temperature=SAMPLING[frames]["temperature"]
                  if args.temperature is None else args.temperature,
                  synthesis=args.synthesis or DEFAULT_SYNTHESIS[frames],
                  copy_limit=COPY_LIMIT_SECONDS if args.copy_limit is None else args.copy_limit,
                  tensorboard=args.tensorboard, preview_every=args.preview_every or 0,
                  gpus=args.gpus, head=args.head,
                  sequence_seconds=SEQUENCE_SECONDS if args.sequence_seconds is None
                  else args.sequence_seconds,
                  demo=args.demo, size_from_checkpoint=args.hidden_layer_neurons is None
                  and args.hidden_layer_count is None,
                  save_every_minutes=SAVE_EVERY_MINUTES if args.save_every_minutes is None
                  else args.save_every_minutes, postfilter=args.postfilter,
                  patience=PATIENCE_EPOCHS if args.patience is None else args.patience,
                  precision=args.precision, steer=args.steer)


def print_settings(config):
    say("music-composer settings: " + ", ".join(
        f"{field.name}={getattr(config, field.name)}" for field in dataclasses.fields(config)))


def find_checkpoint(config, name=CHECKPOINT_NAME):
    """(path, metadata, mean, std) of the checkpoint in the traindata folder, or None.

    Checked before any work, so that a mismatch costs the user nothing.
    """
    path = config.cache_dir / name
    if not path.exists():
        return None
    metadata, mean, std = read_checkpoint_metadata(path)
    check_checkpoint_frames(path, metadata, config.frames)
    if not config.size_from_checkpoint:
        check_checkpoint_shape(path, metadata, config.hidden_neurons, config.hidden_layers)
    check_checkpoint_head(path, metadata, config.head)
    return path, metadata, mean, std


def find_midepoch_checkpoint(config, checkpoint):
    """(path, metadata, mean, std) of the epoch in progress when a run was stopped, or
    None. One older than the last finished epoch (the run was killed between saving that and
    removing this) is removed."""
    midepoch = find_checkpoint(config, MIDEPOCH_CHECKPOINT_NAME)
    if midepoch is None:
        return None
    path, metadata = midepoch[:2]
    if checkpoint is not None and checkpoint[1]["epochs_done"] > metadata["epochs_done"]:
        path.unlink()
        return None
    return midepoch


def run(config):
    print_settings(config)
    check_keras_backend(os.environ.get("KERAS_BACKEND"))  # before any music is read
    limit_blas_threads()
    if config.demo:
        write_demo_music(config.dataset_dir)
    check_dataset_folder(config.dataset_dir)
    output_folder = Path(config.output_name).resolve().parent
    if not output_folder.is_dir():
        raise UserError(f"The output name {config.output_name!r} is in a folder that does not "
                        f"exist. Create it first, or choose another -o/--output-music-name.")
    check_music_folder_is_left_alone(config)
    check_resources(config, machine_memory_bytes(), shutil.disk_usage(output_folder).free)
    with FolderLock(config.cache_dir):
        remove_leftovers(config.cache_dir, config.output_name)
        compose_from_folder(config)


def compose_from_folder(config):
    """The whole job, once the traindata folder is ours."""
    if config.steer == "join":
        return walk_from_folder(config)
    checkpoint = find_checkpoint(config)
    midepoch = find_midepoch_checkpoint(config, checkpoint)
    latest = midepoch or checkpoint
    if latest is not None and config.size_from_checkpoint:
        size = latest[1]["hidden_neurons"], latest[1]["hidden_layers"]
        if size != (config.hidden_neurons, config.hidden_layers):
            say(f"Using the checkpoint's network size, -n {size[0]} -l {size[1]} (no -n or -l "
                f"given).")
        config = dataclasses.replace(config, hidden_neurons=size[0], hidden_layers=size[1])
    # a checkpoint's head (find_checkpoint refused any other --head), else a new model's
    units = (latest[1].get("head") if latest else default_head(config)) == "units"
    if units and config.synthesis != "grains":
        raise UserError(f"The model in {config.cache_dir} predicts units of your music's own "
                        f"sound, which only grains can play: leave out --synthesis spectra, or "
                        f"train a model of spectra in another folder (-t OTHER_FOLDER "
                        f"--synthesis spectra).")
    if config.epochs == 0 and checkpoint is None:
        stopped = " (the first epoch was stopped midway: leave out -e 0 to go on with it)" \
            if midepoch else ""
        raise UserError(f"-e 0 generates from a trained model, but there is no checkpoint in "
                        f"{config.cache_dir}{stopped}. Train first (leave out -e 0), or write "
                        f"pieces without a network: --steer join.")
    seed_wavs = read_seed_wavs(config.seed_wavs, config.frames, config.sequence_seconds) \
        if config.seed_wavs else None
    cache = prepare_cache(config.dataset_dir, config.cache_dir, config.frames)
    training_rng = seeded_randomness(config)
    if config.epochs > 0:
        network, metadata = train_network(config, cache, latest, training_rng)
    else:
        path = generating_checkpoint(config.cache_dir)
        metadata, mean, std = read_checkpoint_metadata(path)
        metadata["generated_from"] = path.name  # for the page; not saved
        say(f"Device: {describe_device()}.")
        say(f"Generating from {path}, trained for {plural(metadata['epochs_done'], 'epoch')}"
            + (" (the epoch that predicts the held-out music best)."
               if path.name == BEST_CHECKPOINT_NAME else "."))
        if line := held_out_prediction(metadata):
            say(line)
        network = Network(load_checkpoint_model(path), Normalisation(mean, std),
                          metadata.get("units"))
    with disk_space_for_pieces(config):
        return compose(config, network_choice(network), cache,
                       generation_randomness(config), seed_wavs, metadata)


def walk_from_folder(config):
    """--steer join: the pieces chosen by the join alone, from the cache; no network is trained
    or read (the checkpoints are left as they are)."""
    say("--steer join: no network is trained or read; each piece walks the recordings of your "
        "music, jumping where the join is best.")
    seed_wavs = read_seed_wavs(config.seed_wavs, config.frames, config.sequence_seconds) \
        if config.seed_wavs else None
    cache = prepare_cache(config.dataset_dir, config.cache_dir, config.frames)
    with disk_space_for_pieces(config):
        return compose(config, JoinAlone(cache.normalisation), cache,
                       generation_randomness(config), seed_wavs)


def generation_randomness(config):
    """Generation's own NumPy generator, apart from training's: a seed gives the same pieces
    whether the model was just trained or read back (-e 0), and the walk (--steer join) the
    same seed clips as the network."""
    return np.random.default_rng(config.random_seed)


def seeded_randomness(config):
    """A NumPy generator, with Keras's randomness seeded too when --random-seed is given."""
    keras = import_keras()
    if config.random_seed is not None:
        keras.utils.set_random_seed(config.random_seed)
    return np.random.default_rng(config.random_seed)


def train_network(config, cache, latest, rng):
    """Train (on every GPU asked for), plot the loss curve, and return the trained Network (its
    last checkpoint's) and its metadata."""
    devices = replica_devices(config.gpus)
    say(f"Device: {describe_device(devices)}.")
    with training_scope(devices):
        model, metadata = prepare_model(config, cache, latest)
        say(f"Model: {trained_parameters(model):,} parameters (-n {config.hidden_neurons} "
            f"-l {config.hidden_layers})" + (", its logits added to counting's" if
                                              unit_prior_of(model) is not None else "") + ".")
        model = train(model, cache, metadata, config, rng, replicas=max(len(devices), 1))
    path = generating_checkpoint(config.cache_dir)
    if devices or path.name != CHECKPOINT_NAME:  # one device, or the best epoch's weights
        model = load_checkpoint_model(path)
    metadata, mean, std = read_checkpoint_metadata(path)
    metadata["generated_from"] = path.name  # for the page; not saved
    if path.name != CHECKPOINT_NAME:
        say(f"Generating from {path}: epoch {metadata['epochs_done']} predicts the held-out "
            f"music best.")
    if line := held_out_prediction(metadata):
        say(line)
    if config.plots:  # every epoch's, the last checkpoint's history
        last = read_checkpoint_metadata(config.cache_dir / CHECKPOINT_NAME)[0]
        with disk_space_for(config.cache_dir, "the loss curve", "-t/--traindata-folder-path"):
            curve = plot_loss_curve(last, config.cache_dir / "loss.png")
        say(f"Loss curve: {curve}")
    return Network(model, Normalisation(mean, std), metadata.get("units")), metadata


def disk_space_for_pieces(config):
    return disk_space_for(Path(config.output_name).resolve().parent, "the pieces, their reports "
                          "and spectrograms", "-o/--output-music-name",
                          output_bytes(config.seconds + 2 * bool(config.seed_wavs),
                                       config.num_pieces))


def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    config = config_from_args(args, parser)
    # Ctrl-C (SIGINT) always stops the run cleanly, even when the shell that started it told its
    # children to ignore SIGINT, as non-interactive shells do for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, raise_stop_signal)  # else SIGTERM ends the run unannounced
    try:
        run(config)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Terminated:
        print("\nStopped by SIGTERM. Finished checkpoints and outputs are kept.", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("\nStopped by Ctrl-C. Finished checkpoints and outputs are kept.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    status = main()
    if status in (130, 143):  # stopped: everything is saved and closed. Skip the 2 s that
        # freeing TensorFlow's memory takes at exit, inside a preemption's grace (SIGTERM), and
        # the interpreter's shutdown, which once hung for minutes after a second Ctrl-C had
        # interrupted a training step (a CI run: the message printed, the process alive)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
