#!/usr/bin/env python3
"""What music-composer.py's music sounds like, in figures: the quality benchmark (issue 7).

    python3 tests/quality.py                    # all three sets, both kinds of frame: 2 h on a CPU
    python3 tests/quality.py --temperatures 0,1 # also generate with these temperatures
    python3 tests/quality.py --frames magnitude --variants "grains=--synthesis grains" \
        --variants "spectra=--synthesis spectra"   # also generate with these flags
    python3 tests/quality.py --sets synthetic   # only the synthetic melody
    python3 tests/quality.py --frames plain     # only the original frames
    python3 tests/quality.py -e 2 -n 64 -l 1    # a smoke run, in minutes

For each training set and each kind of frame it runs the real command line at the default
network size (unless told otherwise), generates 30-second pieces and collects the quality
report the tool writes beside each piece (NAME-i.json). The sets:

- synthetic: the demo's piano-like melody over C-G-Am-F, 150 s (notes of 0.25 and 0.5 s),
  made by the tool's own demo_piece(); another 30 s rendition with different notes is held out.
- soundtrack: the music of Debian's extremetuxracer-data package, fetched with
  `apt-get download` (no root needed) and unpacked with dpkg-deb; its OGG files are converted
  to 16-bit WAV with soundfile (libsndfile). race1-jt.ogg is held out of training.
- beat: the music of Debian's xmoto-data package (GPL-2+), 11 minutes of rock and electronic
  game music with drums and a steady beat, fetched and converted the same way; speeditup.ogg
  is held out of training.

The held-out piece is measured against the training music exactly as a generated piece is: its
spectral distance is the target a generated piece should reach. Beside every row, the control
whose answer is known: 20 random 30-s excerpts of the training music itself, measured and
judged as pieces (what any piece made of the music can reach on each figure). Not part of the CI suite.
Everything goes into --work (default: quality-runs/, ignored by git); a summary is printed and
written to WORK/quality.json.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy.io import wavfile

HERE = Path(__file__).resolve().parent
SCRIPT = HERE.parent / "music-composer.py"
RATE = 44_100
PIECE_SECONDS = 30
HELD_OUT_SOUNDTRACK = "race1-jt"
HELD_OUT_BEAT = "speeditup"
TARGETS = "level within 6 dB of the music, |last - first| <= 3 dB, clicks <= 1.2, " \
          "movement 0.7-1.4, distance <= the held-out piece's, pitch clarity within 10 % of " \
          "the music's, longest verbatim stretch <= 5 s, time in verbatim stretches of 2 s or " \
          "more <= 25 %"


def load_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("music_composer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -----------------------------------------------------------------------------
# The training sets


def write_wav(path, audio):
    """Written once: rewriting it would change its time stamp, and the tool's cache with it."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    wavfile.write(path, RATE, (np.clip(audio, -1, 1) * 32767).round().astype(np.int16))


def synthetic_set(tool, folder):
    """150 s of the demo melody to train on, and 30 s with other notes held out."""
    write_wav(folder / "train" / "melody.wav", tool.demo_piece(150.0))
    write_wav(folder / "held-out" / "melody-other-notes.wav",
              tool.demo_piece(float(PIECE_SECONDS), seed=2024))
    return folder / "train", folder / "held-out" / "melody-other-notes.wav"


# The sets of real music: a Debian package of game music, its files converted to WAV, one held
# out. name: (package, where its music lies inside it, the held-out file's stem)
DEBIAN_SETS = {"soundtrack": ("extremetuxracer-data", "usr/share/games/etr/music/*.ogg",
                              HELD_OUT_SOUNDTRACK),
               "beat": ("xmoto-data", "usr/share/games/xmoto/Textures/Musics/*.ogg",
                        HELD_OUT_BEAT)}


def debian_set(folder, package, pattern, held_out):
    """A Debian package's OGG music as 16-bit WAV files, the piece `held_out` kept apart."""
    try:
        import soundfile
    except ImportError:
        sys.exit("The sets of real music need soundfile: pip install -r requirements-test.txt")
    download = folder / "download"
    download.mkdir(parents=True, exist_ok=True)
    if not list(download.glob(f"{package}_*.deb")):
        print(f"Fetching {package} with apt-get download...", flush=True)
        fetched = subprocess.run(["apt-get", "download", package], cwd=download,
                                 capture_output=True, text=True)
        if fetched.returncode != 0:
            sys.exit(f"apt-get download {package} failed (try `apt-get update` "
                     f"first):\n{fetched.stderr}")
    deb = next(download.glob(f"{package}_*.deb"))
    unpacked = folder / "unpacked"
    if not unpacked.exists():
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
    oggs = sorted(unpacked.glob(pattern))
    if not oggs:
        sys.exit(f"No OGG files in {unpacked}/{pattern}")
    for ogg in oggs:
        part = "held-out" if ogg.stem == held_out else "train"
        wav = folder / part / f"{ogg.stem}.wav"
        if not wav.exists():
            audio, rate = soundfile.read(ogg, dtype="float32")
            wav.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(wav, audio, rate, subtype="PCM_16")
    return folder / "train", folder / "held-out" / f"{held_out}.wav"


# -----------------------------------------------------------------------------
# Runs and figures


def run_tool(train_folder, run_folder, frames, args, temperature=None, variant=None):
    """Train from scratch and write the pieces, or with a temperature or a variant (a name and
    extra flags), generate more from the trained model; returns the report of each piece and
    the run's seconds."""
    name = "piece" if temperature is None else f"t{temperature}"
    generate_only = temperature is not None or variant is not None
    if variant is not None:
        name = variant[0]
    if not generate_only:
        shutil.rmtree(run_folder, ignore_errors=True)
        run_folder.mkdir(parents=True)
    for stale in run_folder.glob(f"{name}-[0-9]*"):
        stale.unlink()
    command = [sys.executable, str(args.script), "-d", str(train_folder),
               "-t", str(run_folder / "train_data"), "-o", str(run_folder / name),
               "-s", str(PIECE_SECONDS), "-g", str(args.pieces), "--frames", frames,
               "--random-seed", str(args.random_seed), "--no-plots"]
    options = [("-e", args.epochs), ("-n", args.neurons), ("-l", args.layers)]
    if generate_only:
        options = [("-e", 0), ("-n", args.neurons), ("-l", args.layers),
                   ("--temperature", temperature)]
    for flag, value in options:
        if value is not None:
            command += [flag, str(value)]
    command += args.tool_flags.split()
    if variant is not None:
        command += variant[1].split()
    print("$ " + " ".join(command), flush=True)
    started = time.perf_counter()
    with open(run_folder / f"log-{name}.txt", "w") as log:
        finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if finished.returncode != 0:
        sys.exit(f"music-composer.py failed (exit {finished.returncode}); see "
                 f"{run_folder}/log-{name}.txt")
    return reports_of(run_folder, name), seconds


def reports_of(run_folder, name):
    return [json.loads(path.read_text()) for path in sorted(run_folder.glob(f"{name}-[0-9]*.json"))]


def remeasured(tool, reports, run_folder, reference):
    """The reports with every sound figure measured again from the WAVs by this checkout's
    tool (figures added since they were written come in); the copy figures are kept."""
    fresh = []
    for report in reports:
        _, samples = wavfile.read(run_folder / report["file"])
        fresh.append({**report, **tool.measure_piece(samples, reference, scale=1 / 32768)})
    return fresh


def held_out_figures(tool, cache, held_out, frames):
    """The held-out piece (its first 30 s) measured against the training music's figures,
    which the tool keeps in its cache; and the same piece turned into frames of this kind and
    back, as generation does: what a network that predicted every frame perfectly would reach."""
    audio, _ = tool.read_wav(held_out)
    audio = audio[: PIECE_SECONDS * RATE]
    synthesis = tool.make_synthesis(frames, 1)
    raw_frames = tool.frames_from_audio(audio, frames)
    rebuilt = np.concatenate([synthesis.push(frame[None])[0] for frame in raw_frames])
    rebuilt = rebuilt[synthesis.overlap // 2 :][: len(audio)]  # windows are centred on blocks
    real = tool.RealFrames(cache, cache.normalisation)
    nearest = np.concatenate([real.nearest(raw_frames[start : start + 64])
                              for start in range(0, len(raw_frames), 64)])
    return ({**tool.measure_piece(audio, cache.reference),
             **tool.copy_figures(nearest, cache.file_starts)},
            tool.measure_piece(rebuilt, cache.reference))


EXCERPTS = 20  # the control's pieces: more than a run's, so that its medians hold still


def music_excerpts(tool, train_folder, run_folder, reference, count, seed=1):
    """The control whose answer is known: `count` random PIECE_SECONDS excerpts of the training
    music itself (a piece that copied the music without a join), written into the run folder
    as excerpt-i.wav and measured as a piece is. What any piece made of the music can reach on
    a figure; and the judge should tell them apart at chance or below."""
    rng = np.random.default_rng(seed)
    audios = [tool.read_wav(path)[0] for path in sorted(train_folder.glob("*.wav"))]
    audios = [audio for audio in audios if len(audio) >= PIECE_SECONDS * RATE] or audios
    reports = []
    for number in range(count):
        audio = audios[rng.integers(len(audios))]
        start = rng.integers(max(len(audio) - PIECE_SECONDS * RATE, 0) + 1)
        excerpt = audio[start : start + PIECE_SECONDS * RATE]
        name = f"excerpt-{number}.wav"
        write_wav(run_folder / name, excerpt)
        reports.append({"file": name, **tool.measure_piece(excerpt, reference),
                        "longest_verbatim_s": len(excerpt) / RATE, "verbatim_2s_share": 1.0})
    return reports


# -----------------------------------------------------------------------------
# Can the pieces be told from the music? A classifier on 3-s stretches, and on 10-s ones (where
# a network that remembers 8 s should beat a walk that remembers nothing)

STRETCH_SECONDS = 3
LONG_STRETCH_SECONDS = 10


def stretch_features(tool, audio, seconds=STRETCH_SECONDS):
    """(stretches, features): each stretch's log-mel mean and spread per band, and the mean,
    spread and 90th percentile of its onset envelope (how its notes start and its joins show)."""
    filters, size = tool.mel_filterbank(), seconds * RATE
    rows = []
    for start in range(0, len(audio) - size + 1, size):
        mel = tool.log_mel_frames(audio[start : start + size], filters)
        flux = np.maximum(np.diff(mel, axis=0), 0).mean(axis=1)
        rows.append(np.concatenate([mel.mean(axis=0), mel.std(axis=0),
                                    [flux.mean(), flux.std(), np.percentile(flux, 90)]]))
    return np.array(rows)


def music_stretches(tool, train_folder, count, seed=0, seconds=STRETCH_SECONDS, folds=5):
    """`count` random stretches of the training music, from its WAV files: (features, groups).
    A stretch's group is its file, so that no file's sound is on both sides of a fold; where the
    music has fewer files than `folds`, its file's 30-s span (a piece's length) instead."""
    rng = np.random.default_rng(seed)
    audios = [tool.read_wav(path)[0] for path in sorted(train_folder.glob("*.wav"))]
    audios = [audio for audio in audios if len(audio) > seconds * RATE]
    stretches, groups = [], []
    for _ in range(count):
        index = rng.integers(len(audios))
        start = rng.integers(len(audios[index]) - seconds * RATE)
        stretches.append(audios[index][start : start + seconds * RATE])
        groups.append(index if len(audios) >= folds else
                      index * 10_000 + start // (PIECE_SECONDS * RATE))
    return stretch_features(tool, np.concatenate(stretches), seconds), np.array(groups)


def piece_stretches(tool, audios, seconds=STRETCH_SECONDS):
    """The stretches of each audio in turn: (features, groups), a stretch's group its audio."""
    features = [stretch_features(tool, audio, seconds) for audio in audios]
    groups = np.concatenate([np.full(len(rows), index) for index, rows in enumerate(features)])
    return np.concatenate(features), groups


def grouped_told_apart(pieces, piece_groups, music, music_groups, folds=5):
    """How often a classifier tells the pieces' stretches (features, one row each) from the
    music's: the better of a logistic regression and a random forest, cross-validated with
    folds grouped by piece and by the music's file (StratifiedGroupKFold): no piece or file is on
    both sides of a fold, so the classifier cannot learn each piece's own sound and tell it by
    that. 0.5 is chance; nan when there are too few pieces or files to fold."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(folds, len(np.unique(piece_groups)), len(np.unique(music_groups)))
    if folds < 2:
        return float("nan")
    features = np.concatenate([pieces, music])
    labels = np.r_[np.ones(len(pieces)), np.zeros(len(music))]
    # Groups of the two sides never share a number: the music's are offset past the pieces'.
    groups = np.r_[piece_groups, np.max(piece_groups) + 1 + music_groups]
    split = StratifiedGroupKFold(folds, shuffle=True, random_state=0)
    return max(float(np.mean(cross_val_score(model, features, labels, groups=groups, cv=split)))
               for model in (make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
                             RandomForestClassifier(200, random_state=0)))


def told_apart(tool, audios, train_folder, seconds=STRETCH_SECONDS):
    """How often stretches of `audios` (each one piece) are told from as many random stretches
    of the training music, with grouped folds (grouped_told_apart)."""
    pieces, piece_groups = piece_stretches(tool, audios, seconds)
    if len(pieces) < 2:
        return float("nan")
    music, music_groups = music_stretches(tool, train_folder, len(pieces), seconds=seconds)
    return grouped_told_apart(pieces, piece_groups, music, music_groups)


HELD_OUT_SPAN_SECONDS = 10


def held_out_parts(audio):
    """The held-out piece cut into spans of HELD_OUT_SPAN_SECONDS, judged as that many pieces:
    one file of real music the network never heard, the told-apart a real new piece gets."""
    size = HELD_OUT_SPAN_SECONDS * RATE
    return [audio[start : start + size] for start in range(0, len(audio) - size + 1, size)]


# -----------------------------------------------------------------------------
# Continuing held-out music: does a continuation follow the piece it continues?

CONTINUATIONS = 5
CONTINUATION_SEED_SECONDS = 16


def continuation_seeds(audio, folder):
    """CONTINUATIONS seed files cut from the held-out piece at evenly spaced places, each
    followed in the piece by PIECE_SECONDS of music that really came next: (paths, truths)."""
    span = (CONTINUATION_SEED_SECONDS + PIECE_SECONDS) * RATE
    if len(audio) < span:
        return [], []
    paths, truths = [], []
    for index, start in enumerate(np.linspace(0, len(audio) - span, CONTINUATIONS).astype(int)):
        seed_end = start + CONTINUATION_SEED_SECONDS * RATE
        paths.append(folder / f"seed-{index}.wav")
        write_wav(paths[-1], audio[start:seed_end])
        truths.append(audio[seed_end : start + span])
    return paths, truths


def following(tool, pieces, truths, train_folder, reference):
    """Per piece, how much closer it is to the music that really followed its seed than to
    other music (10 random stretches of the training music), in key (cosine of the mean pitch
    classes) and in timbre (cosine of the mean log-mel spectrum, less the training music's)."""
    rng = np.random.default_rng(0)
    audios = [tool.read_wav(path)[0] for path in sorted(train_folder.glob("*.wav"))]
    audios = [audio for audio in audios if len(audio) > PIECE_SECONDS * RATE]
    others = []
    for _ in range(10):
        audio = audios[rng.integers(len(audios))]
        start = rng.integers(len(audio) - PIECE_SECONDS * RATE)
        others.append(audio[start : start + PIECE_SECONDS * RATE])

    def key(audio):
        chroma = tool.frame_chroma(tool.frames_from_audio(audio, "magnitude"), "magnitude")
        return chroma.mean(axis=0)

    def timbre(audio):
        return tool.log_mel_frames(audio, tool.mel_filterbank()).mean(axis=0) - reference.mel_mean

    def cosine(a, b):
        return float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))

    figures = []
    for piece, truth in zip(pieces, truths):
        figures.append({figure: cosine(describe(piece), describe(truth)) - np.mean(
            [cosine(describe(piece), describe(other)) for other in others])
            for figure, describe in (("key", key), ("timbre", timbre))})
    return figures


def continuation_rows(tool, args, train_folder, run_folder, held_out, frames, random_pieces):
    """Continue seeds cut from the held-out piece with each way of sounding; the figures of
    following() for the continuations, for the seeds themselves (the most to expect), and for
    pieces from random seeds (nothing to follow: their spread is the noise)."""
    folder = run_folder / "continuations"
    folder.mkdir(exist_ok=True)
    seeds, truths = continuation_seeds(tool.read_wav(held_out)[0], folder)
    if not seeds:
        return {}
    reference = tool.prepare_cache(train_folder, run_folder / "train_data", frames).reference

    def medians(figures):
        return {name: round(float(np.median([f[name] for f in figures])), 3)
                for name in ("key", "timbre")} | {
            f"{name}_spread": round(float(np.std([f[name] for f in figures])), 3)
            for name in ("key", "timbre")}

    rows = {"seeds": medians(following(tool, [tool.read_wav(seed)[0] for seed in seeds], truths,
                                       train_folder, reference)),
            "random seeds": medians(following(tool, random_pieces, truths, train_folder,
                                              reference))}
    ways = {"grains": "--synthesis grains", "spectra": "--synthesis spectra",
            "walk": "--steer join"}
    model = run_folder / "train_data" / "model.keras"
    if tool.read_checkpoint_metadata(model)[0].get("head") == "units":
        del ways["spectra"]  # a units model predicts no spectrum to sound (grains only)
    for label, flags in ways.items():
        name = f"continue-{label}"
        reports, _ = run_tool(train_folder, run_folder, frames, args,
                              variant=(name, f"{flags} --seed-wav {' '.join(map(str, seeds))}"))
        pieces = [tool.read_wav(run_folder / report["file"])[0][2 * RATE :] for report in reports]
        rows[label] = {**medians(following(tool, pieces, truths, train_folder, reference)),
                       **{key: round(float(np.median([r[key] for r in reports])), 3)
                          for key in ("pulse", "tempo_kept", "onsets_per_s", "longest_verbatim_s",
                                      "first_second_db", "last_second_db", "seed_key",
                                      "music_seed_key", "seed_timbre", "seed_share")
                          if key in reports[0]}}
    return rows


def held_out_prediction(tool, run_folder):
    """The trained network's held-out next-unit loss (nats) at its last epoch and its best,
    beside counting's (the tool's unit_counting), from its checkpoint; {} for a model of
    frames."""
    model = run_folder / "train_data" / "model.keras"
    if not model.exists():
        return {}
    metadata = tool.read_checkpoint_metadata(model)[0]
    if "counting" not in metadata or not metadata.get("history"):
        return {}
    history = metadata["history"]
    best = min(history, key=lambda entry: entry["val_loss"])
    return {"held_out_loss": round(history[-1]["val_loss"], 3),
            "best_held_out_loss": round(best["val_loss"], 3), "best_epoch": best["epoch"],
            "units": len(metadata["units"]),
            **{f"{name}_loss": round(metadata["counting"][name], 3)
               for name in ("bigram", "unigram", "uniform")},
            "stay": round(metadata["counting"]["stay"], 3)}


def summary(reports, held_out_pair, seconds):
    """Medians over the pieces, and how many pieces meet each target."""
    held_out, rebuilt = held_out_pair

    def median(key):
        return statistics.median(report[key] for report in reports)

    music_db = reports[0]["music_db"]
    music_pitch = reports[0].get("music_pitch_clarity", float("nan"))

    def share(key):
        values = [r.get(key, float("nan")) for r in reports]
        return statistics.median(values)

    level_ok = [abs(r["first_second_db"] - music_db) <= 6 and abs(r["last_second_db"] - music_db)
                <= 6 for r in reports]
    return {"pieces": len(reports), "run_seconds": None if seconds != seconds else round(seconds),
            "music_db": round(music_db, 1),
            "first_second_db": round(median("first_second_db"), 1),
            "last_second_db": round(median("last_second_db"), 1),
            "fade_db": round(statistics.median(r["last_second_db"] - r["first_second_db"]
                                               for r in reports), 1),
            "clicks": round(median("clicks"), 2),
            "movement": round(median("movement"), 2),
            "spectral_distance": round(median("spectral_distance")),
            "held_out_distance": round(held_out["spectral_distance"]),
            "held_out_movement": round(held_out["movement"], 2),
            "held_out_first_last_db": [round(held_out["first_second_db"], 1),
                                       round(held_out["last_second_db"], 1)],
            "held_out_rebuilt_distance": round(rebuilt["spectral_distance"]),
            "pitch_clarity": round(share("pitch_clarity"), 3),
            "music_pitch_clarity": round(music_pitch, 3),
            "held_out_pitch_clarity": round(held_out["pitch_clarity"], 3),
            "held_out_rebuilt_pitch_clarity": round(rebuilt["pitch_clarity"], 3),
            "onsets_per_s": round(share("onsets_per_s"), 2),
            "structure": round(share("structure"), 3),
            "music_structure": round(reports[0].get("music_structure", float("nan")), 3),
            "held_out_structure": round(held_out.get("structure", float("nan")), 3),
            "music_onsets_per_s": round(reports[0].get("music_onsets_per_s", float("nan")), 2),
            "held_out_onsets_per_s": round(held_out["onsets_per_s"], 2),
            "longest_verbatim_s": share("longest_verbatim_s"),
            "verbatim_2s_share": round(share("verbatim_2s_share"), 3),
            "held_out_longest_verbatim_s": held_out["longest_verbatim_s"],
            "held_out_rebuilt_clicks": round(rebuilt["clicks"], 2),
            "pulse": round(share("pulse"), 2),
            "music_pulse": round(reports[0].get("music_pulse", float("nan")), 2),
            "held_out_pulse": round(held_out.get("pulse", float("nan")), 2),
            "tempo_kept": round(share("tempo_kept"), 2),
            "music_tempo_kept": round(reports[0].get("music_tempo_kept", float("nan")), 2),
            "held_out_tempo_kept": round(held_out.get("tempo_kept", float("nan")), 2),
            "meet": {"level": sum(level_ok),
                     "fade": sum(abs(r["last_second_db"] - r["first_second_db"]) <= 3
                                 for r in reports),
                     "clicks": sum(r["clicks"] <= 1.2 for r in reports),
                     "movement": sum(0.7 <= r["movement"] <= 1.4 for r in reports),
                     "distance": sum(r["spectral_distance"] <= held_out["spectral_distance"]
                                     for r in reports),
                     "pitch": sum(abs(r.get("pitch_clarity", 0) - music_pitch)
                                  <= 0.1 * music_pitch for r in reports),
                     "copy": sum(r.get("longest_verbatim_s", 99) <= 5
                                 and r.get("verbatim_2s_share", 1) <= 0.25 for r in reports)}}


def mark_matched_walk(results, name, frames):
    """The walk row whose copying is nearest the network's (the default row): the share of time
    in verbatim stretches of 2 s or more, then the longest stretch. That row is the control the
    network's figures are read against (matched: true)."""
    network = results.get((name, frames, "default"))
    walks = [key for key in results if key[:2] == (name, frames) and key[2].startswith("walk")]
    if network is None or not walks:
        return
    nearest = min(walks, key=lambda key: (
        abs(results[key]["verbatim_2s_share"] - network["verbatim_2s_share"]),
        abs(results[key]["longest_verbatim_s"] - network["longest_verbatim_s"])))
    results[nearest]["matched"] = True


def print_table(results):
    print(f"\nTargets for {PIECE_SECONDS}-s pieces: {TARGETS}. Medians over the pieces; "
          f"'meet' counts the pieces meeting each target.")
    print("held-out: the distance of a held-out piece of the same music; rebuilt: that piece "
          "turned into frames and back, as generation does.")
    print("pitch: share of the time clearly pitched, piece / music / held-out / rebuilt; "
          "notes/s: onsets per second, piece / music / held-out; structure: correlation of the "
          "1-s spectra 2-8 s apart, piece / music / held-out; verbatim: longest stretch (s) "
          "and share of time in stretches of 2 s or more; pulse and tempo: the beat's strength and "
          "the share of 6-s windows keeping the piece's tempo, piece / music / held-out; told "
          "apart: how often a classifier tells 3-s stretches from the training music, folds "
          "grouped by piece, pieces / held-out piece (0.5: chance), then 10-s stretches, pieces / "
          "held-out piece. 'walk G s': no "
          "network (--steer join) with a copy guard of G s; * marks the walk whose copying is "
          "nearest the network's, the control its row is read against.")
    header = (f"{'set':<11}{'frames':<10}{'sampling':<10}{'music dB':>9}{'first':>7}{'last':>7}"
              f"{'clicks':>7}{'move':>6}{'distance':>9}{'held-out':>9}{'rebuilt':>8}"
              f"{'pitch':>22}{'notes/s':>15}{'structure':>16}{'verbatim':>11}{'pulse':>16}"
              f"{'tempo':>16}{'told apart 3s 10s':>21}"
              f"  meet (level/fade/clicks/movement/distance/pitch/copy)")
    print(header)
    for (name, frames, label), figures in results.items():
        meet = "/".join(str(figures["meet"][key]) for key in
                        ("level", "fade", "clicks", "movement", "distance", "pitch", "copy"))
        pitch = "/".join(f"{100 * figures[key]:.0f}" for key in (
            "pitch_clarity", "music_pitch_clarity", "held_out_pitch_clarity",
            "held_out_rebuilt_pitch_clarity"))
        verbatim = f"{figures['longest_verbatim_s']:.1f}/{100 * figures['verbatim_2s_share']:.0f}%"
        pulse = "/".join(f"{figures[key]:.2f}" for key in ("pulse", "music_pulse",
                                                          "held_out_pulse"))
        tempo = "/".join(f"{100 * figures[key]:.0f}" for key in ("tempo_kept", "music_tempo_kept",
                                                                "held_out_tempo_kept"))
        told = (f"{figures['told_apart']:.2f}/{figures['held_out_told_apart']:.2f} "
                f"{figures.get('told_apart_10s', float('nan')):.2f}/"
                f"{figures.get('held_out_told_apart_10s', float('nan')):.2f}")
        label = label + ("*" if figures.get("matched") else "")
        structure = "/".join(f"{figures[key]:.2f}" for key in (
            "structure", "music_structure", "held_out_structure"))
        notes = "/".join(f"{figures[key]:.1f}" for key in (
            "onsets_per_s", "music_onsets_per_s", "held_out_onsets_per_s"))
        print(f"{name:<11}{frames:<10}{label:<10}{figures['music_db']:>9}"
              f"{figures['first_second_db']:>7}{figures['last_second_db']:>7}"
              f"{figures['clicks']:>7}{figures['movement']:>6}"
              f"{figures['spectral_distance']:>9}{figures['held_out_distance']:>9}"
              f"{figures['held_out_rebuilt_distance']:>8}{pitch:>22}{notes:>15}{structure:>16}"
              f"{verbatim:>11}{pulse:>16}{tempo:>16}{told:>21}  "
              f"{meet} of {figures['pieces']}")


def frontier_rows(results, guard_labels):
    """The frontier: per set, the network and the walk at each copy guard, side by side (the
    same seed clips), as (set, guard, network figures or None, walk figures or None).
    guard_labels: {guard in seconds, as written: the network's sampling label at that guard}."""
    rows = []
    for name in dict.fromkeys(key[0] for key in results):
        for guard, label in guard_labels.items():
            rows.append((name, guard, results.get((name, "magnitude", label)),
                         results.get((name, "magnitude", f"walk {guard} s"))))
    return [row for row in rows if row[2] or row[3]]


def print_frontier(results, guard_labels):
    """Told apart (3 s / 10 s), pulse, pitch and the time in verbatim stretches of 2 s or more,
    network beside walk at each copy guard, with the held-out piece's told apart beside."""
    def cells(figures):
        if figures is None:
            return "-"
        return (f"{figures['told_apart']:.2f}/{figures.get('told_apart_10s', float('nan')):.2f}"
                f" p{figures['pulse']:.2f} {100 * figures['pitch_clarity']:.0f}% "
                f"{100 * figures['verbatim_2s_share']:.0f}%")

    print("\nThe frontier: told apart 3 s / 10 s (grouped folds), pulse, pitch clarity, time "
          "in verbatim stretches >= 2 s; network | walk (--steer join), same seed clips; "
          "beside: the held-out piece's told apart, the music's pulse and pitch, and the "
          "control: excerpts of the music itself, measured as pieces.")
    for name, guard, network, walk in frontier_rows(results, guard_labels):
        real = network or walk
        excerpts = results.get((name, "magnitude", "music excerpts"))
        print(f"{name:<11}guard {guard:>3} s  {cells(network):<30}| {cells(walk):<30}"
              f"held-out {real['held_out_told_apart']:.2f}/"
              f"{real.get('held_out_told_apart_10s', float('nan')):.2f}, music pulse "
              f"{real['music_pulse']:.2f}, pitch {100 * real['music_pitch_clarity']:.0f}%, "
              f"excerpts {cells(excerpts)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="synthetic,soundtrack,beat")
    parser.add_argument("--frames", default="magnitude,plain",
                        help="kinds of frame to compare (the tool's --frames)")
    parser.add_argument("--work", type=Path, default=HERE.parent / "quality-runs")
    parser.add_argument("--pieces", type=int, default=5)
    parser.add_argument("--random-seed", type=int, default=1)
    parser.add_argument("-e", "--epochs", type=int, help="default: the tool's")
    parser.add_argument("-n", "--neurons", type=int, help="default: the tool's")
    parser.add_argument("-l", "--layers", type=int, help="default: the tool's")
    parser.add_argument("--temperatures", default="",
                        help="also generate from each trained model with these --temperature "
                             "values, e.g. 0,0.5,1 (generation only, -e 0)")
    parser.add_argument("--variants", action="append", default=[], metavar="NAME=FLAGS",
                        help="also generate from each trained model with these extra flags, "
                             "e.g. 'grains=--synthesis grains' (generation only, -e 0)")
    parser.add_argument("--walk-guards", default="1,2,4", metavar="SECONDS",
                        help="also write pieces with no network (--steer join) at these copy "
                             "guards, and mark the one whose copying is nearest the network's: "
                             "the control (default: 1,2,4; '' for none)")
    parser.add_argument("--network-guards", default="1,2", metavar="SECONDS",
                        help="also generate from each trained model at these copy guards "
                             "(generation only, -e 0): with the default row (the tool's guard) "
                             "and the walk's, the frontier (default: 1,2; '' for none)")
    parser.add_argument("--tool-flags", default="", metavar="FLAGS",
                        help="flags for every run of the tool, training included, e.g. "
                             "'--head average --sequence-seconds 1' (a candidate to compare)")
    parser.add_argument("--script", type=Path, default=SCRIPT,
                        help="the music-composer.py to run (default: this checkout's)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the trained models and pieces in --work; only generate the "
                             "--temperatures rows not there yet")
    parser.add_argument("--remeasure", action="store_true",
                        help="measure the pieces' sound again from their WAVs (with --reuse or "
                             "--report-only: figures added since they were written come in)")
    parser.add_argument("--continuations", action="store_true",
                        help=f"also continue {CONTINUATIONS} seeds cut from the held-out piece "
                             f"with each way of sounding, and say how the continuations follow "
                             f"the music that really came next (generation only, -e 0)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: measure again and summarise the pieces in --work")
    args = parser.parse_args()

    tool = load_tool()
    results, continuations, predictions = {}, {}, {}
    for name in args.sets.split(","):
        if name == "synthetic":
            train_folder, held_out = synthetic_set(tool, args.work / "synthetic")
        elif name in DEBIAN_SETS:
            train_folder, held_out = debian_set(args.work / name, *DEBIAN_SETS[name])
        else:
            sys.exit(f"unknown set {name!r}: choose from synthetic, {', '.join(DEBIAN_SETS)}")
        for frames in args.frames.split(","):
            run_folder = args.work / f"{name}-{frames}"
            if args.report_only or args.reuse:
                reports = reports_of(run_folder, "piece")
                seconds = json.loads((run_folder / "run.json").read_text())["seconds"] \
                    if (run_folder / "run.json").exists() else float("nan")
            else:
                reports, seconds = run_tool(train_folder, run_folder, frames, args)
                (run_folder / "run.json").write_text(json.dumps({"seconds": seconds}))
            cache = tool.prepare_cache(train_folder, run_folder / "train_data", frames)
            held_out_pair = held_out_figures(tool, cache, held_out, frames)
            prediction = held_out_prediction(tool, run_folder)
            if prediction:
                predictions[(name, frames)] = prediction
                print(json.dumps({"set": name, "frames": frames, "prediction": prediction}),
                      flush=True)
            runs = [("default", reports, seconds)]
            for temperature in filter(None, args.temperatures.split(",")):
                done = reports_of(run_folder, f"t{temperature}")
                if args.report_only or (args.reuse and done):
                    runs.append((f"T={temperature}", reports_of(run_folder, f"t{temperature}"),
                                 float("nan")))
                else:
                    runs.append((f"T={temperature}",
                                 *run_tool(train_folder, run_folder, frames, args, temperature)))
            for variant in args.variants:
                label, _, flags = variant.partition("=")
                done = reports_of(run_folder, label)
                if args.report_only or (args.reuse and done):
                    runs.append((label, done, float("nan")))
                else:
                    runs.append((label, *run_tool(train_folder, run_folder, frames, args,
                                                  variant=(label, flags))))
            if frames == "magnitude":  # the guards and the walk are grains' (magnitude frames)
                guarded = [(f"network {guard} s", f"net{guard}", f"--copy-limit {guard}")
                           for guard in filter(None, args.network_guards.split(","))]
                guarded += [(f"walk {guard} s", f"walk{guard}",
                             f"--steer join --copy-limit {guard}")
                            for guard in filter(None, args.walk_guards.split(","))]
                for label, stem, flags in guarded:
                    done = reports_of(run_folder, stem)
                    if args.report_only or (args.reuse and done):
                        runs.append((label, done, float("nan")))
                    else:
                        runs.append((label, *run_tool(train_folder, run_folder, frames, args,
                                                      variant=(stem, flags))))
            reference = cache.reference
            if args.remeasure:
                runs = [(label, remeasured(tool, reports, run_folder, reference), seconds)
                        for label, reports, seconds in runs]
            if frames == "magnitude":
                runs.append(("music excerpts", music_excerpts(
                    tool, train_folder, run_folder, reference, EXCERPTS), float("nan")))
            real_parts = held_out_parts(tool.read_wav(held_out)[0])
            held_out_told = [round(told_apart(tool, real_parts, train_folder, seconds), 2)
                             for seconds in (STRETCH_SECONDS, LONG_STRETCH_SECONDS)]
            if args.continuations and not args.report_only:
                random_pieces = [tool.read_wav(run_folder / report["file"])[0]
                                 for report in reports]
                rows = continuation_rows(tool, args, train_folder, run_folder, held_out, frames,
                                         random_pieces)
                continuations[(name, frames)] = rows
                print(json.dumps({"set": name, "frames": frames, "continuations": rows}),
                      flush=True)
            for label, reports, seconds in runs:
                if not reports:  # --report-only: that row was never generated
                    continue
                figures = summary(reports, held_out_pair, seconds)
                pieces = [tool.read_wav(run_folder / report["file"])[0] for report in reports]
                figures.update(told_apart=round(told_apart(tool, pieces, train_folder), 2),
                               told_apart_10s=round(told_apart(tool, pieces, train_folder,
                                                               LONG_STRETCH_SECONDS), 2),
                               held_out_told_apart=held_out_told[0],
                               held_out_told_apart_10s=held_out_told[1])
                results[(name, frames, label)] = figures
                print(json.dumps({"set": name, "frames": frames, "sampling": label, **figures}),
                      flush=True)
            mark_matched_walk(results, name, frames)
    print_table(results)
    guards = {guard: f"network {guard} s" for guard in filter(None, args.network_guards.split(","))}
    print_frontier(results, {**guards, f"{tool.COPY_LIMIT_SECONDS:g}": "default"})
    settings = {key: getattr(args, key) for key in ("epochs", "neurons", "layers", "pieces",
                                                    "random_seed", "tool_flags")}
    for (name, frames), prediction in predictions.items():
        print(f"{name:<11}{frames:<10}held-out next-unit loss (nats): network "
              f"{prediction['held_out_loss']:.2f} at the last epoch (best "
              f"{prediction['best_held_out_loss']:.2f}, epoch {prediction['best_epoch']}); "
              f"bigram {prediction['bigram_loss']:.2f}, unigram {prediction['unigram_loss']:.2f}"
              f", uniform {prediction['uniform_loss']:.2f} ({prediction['units']} units); the "
              f"next unit is the current one {100 * prediction['stay']:.0f} % of the time")
    (args.work / "quality.json").write_text(json.dumps(
        {"settings": settings, "results": [{"set": name, "frames": frames, "sampling": label,
                                            **figures}
                                           for (name, frames, label), figures in results.items()],
         "continuations": [{"set": name, "frames": frames, **rows}
                           for (name, frames), rows in continuations.items()],
         "prediction": [{"set": name, "frames": frames, **prediction}
                        for (name, frames), prediction in predictions.items()]},
        indent=1))


if __name__ == "__main__":
    main()
