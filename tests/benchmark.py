#!/usr/bin/env python3
"""Speed and memory of music-composer.py, measured with the tool's own functions.

    python3 tests/benchmark.py            # the default sizes: about 10 minutes on 2 CPU cores
    python3 tests/benchmark.py --json     # the same, and one JSON object on the last line
    python3 tests/benchmark.py --quick    # small sizes, a smoke run of a minute or two

It makes its own music (stereo 16-bit 44.1 kHz, a mixture of tones), so nothing is downloaded.
Every timing is the median of several repetitions, and ratios are measured side by side in the
same run, because shared machines are noisy.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.io import wavfile

HERE = Path(__file__).resolve().parent
SCRIPT = HERE.parent / "music-composer.py"
RATE = 44_100


def load_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("music_composer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -----------------------------------------------------------------------------
# Synthetic music: stereo, 16-bit, a few tones that change every half second


def write_music(folder, minutes, seconds_per_file=60, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(int(round(minutes * 60 / seconds_per_file))):
        t = np.arange(seconds_per_file * RATE) / RATE
        notes = rng.choice([220.0, 261.6, 329.6, 392.0, 440.0, 523.3], size=seconds_per_file * 2 + 1)
        left = 0.3 * np.sin(2 * np.pi * notes[(t * 2).astype(int)] * t)
        right = 0.2 * np.sin(2 * np.pi * 1.5 * notes[(t * 2).astype(int)] * t) + 0.1 * np.sin(
            2 * np.pi * 110.0 * t)
        stereo = np.stack([left, right], axis=1)
        wavfile.write(folder / f"{index:03d}.wav", RATE, (stereo * 32767).astype(np.int16))
    return folder


def warm_page_cache(folder):
    for path in folder.iterdir():
        path.read_bytes()


# -----------------------------------------------------------------------------
# Measurements


def median_time(function, repeats):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def help_seconds(repeats=5):
    return median_time(lambda: subprocess.run([sys.executable, str(SCRIPT), "--help"],
                                              capture_output=True, check=True), repeats)


def prep_x_realtime(tool, music, work, minutes, repeats):
    """Each repetition rebuilds the cache from scratch, as a run does when the music changed;
    the previous repetition's cache is deleted first, as the tool deletes a stale one."""
    cache = work / "prep-speed"

    def build():
        shutil.rmtree(cache, ignore_errors=True)
        paths = tool.find_music_files(music)
        tool.build_cache(music, cache, paths, tool.dataset_fingerprint(paths))

    warm_page_cache(music)
    return minutes * 60 / median_time(build, repeats)


PEAK_RSS_CODE = """
import runpy, sys
try:
    {body}
finally:
    status = open("/proc/self/status").read()
    peak_kb = int(status.split("VmHWM:")[1].split()[0])
    print("PEAK_RSS_KB", peak_kb, file=sys.stderr)
"""


def peak_rss_mb(body, cwd=None):
    """Peak resident memory of `body` run in a fresh process, read from its own VmHWM.

    (ru_maxrss from wait4 will not do: Linux carries the parent's peak over into the child.)"""
    result = subprocess.run([sys.executable, "-c", PEAK_RSS_CODE.format(body=body)], cwd=cwd,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return int(result.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0]) / 1024


def prep_peak_rss_mb(music, work):
    cache = work / f"rss-{music.name}"
    return peak_rss_mb(f"runpy.run_path({str(SCRIPT)!r})['prepare_cache']({str(music)!r}, "
                       f"{str(cache)!r})")


def matmul_gflops(size=2048, repeats=7, dtype="float32"):
    """The matrix-multiply peak in `dtype`, the products a precision of training takes."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal((size, size)), dtype)
    b = tf.cast(tf.random.normal((size, size)), dtype)

    @tf.function
    def multiply():
        return tf.matmul(a, b)

    multiply().numpy()
    seconds = median_time(lambda: multiply().numpy(), repeats)
    return 2 * size**3 / seconds / 1e9


class BatchTimes:
    """Wall time of each training step, from a Keras callback."""

    def __init__(self, keras):
        outer = self

        class Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                outer.stamps.append(time.perf_counter())

        self.stamps, self.callback = [], Callback()

    def median_step_seconds(self, warm_up):
        return statistics.median(np.diff(self.stamps[warm_up:]))


def train_throughput(tool, cache, neurons, layers, batch_size, blocks, steps, warm_up=5,
                     head=None, seconds=None, precisions=("float32",)):
    """Training frames per second and MFU with the tool's own model, batches and fit, for a
    head (default: the tool's), training sequences of `seconds` (default: the tool's) and each
    of `precisions` (one model each): {precision: (frames/s, peak GFLOP/s, MFU)}, and the
    Network of the first precision (a units head's with the music's units).

    After warm-up, `blocks` rounds; in each, every precision takes `steps` steps right after a
    matmul-peak block in its own products' dtype. A precision's MFU is its throughput over the
    peak measured next to it, and medians over the rounds are reported, so that a machine whose
    speed drifts still gives fair ratios."""
    keras = tool.import_keras()
    head = tool.make_head(head or tool.DEFAULT_HEAD[tool.DEFAULT_SYNTHESIS[tool.DEFAULT_FRAMES]])
    labels = bigram = None
    length = tool.sequence_length(cache.file_starts, seconds or tool.SEQUENCE_SECONDS)
    train_starts, validation_starts = tool.split_windows(cache.file_starts, length,
                                                         tool.training_stride(length))
    if head.name == "units":  # as prepare_model() and training_batches() do
        head = tool.music_units_head(cache, {})
        labels = tool.unit_labels(cache.codes, head.centroids)
        _, bigram = tool.unit_counting(labels, train_starts, validation_starts, length,
                                       head.components)
    batches = tool.make_batches(cache.frames, train_starts, batch_size,
                                np.random.default_rng(0), shuffle=True, length=length,
                                labels=labels)
    models = {}
    for precision in precisions:  # as train() does
        model = tool.build_model(tool.NUM_FEATURES, neurons, layers, head)
        if tool.unit_prior_of(model) is not None:  # counting's logits, as training sets them
            tool.unit_prior_of(model).set_weights([cache.components.T, head.centroids,
                                                   np.log(bigram).astype(np.float32)])
        tool.use_precision(model, precision)
        tool.use_fastest_lstm_kernel(model, tool.gpu_available(), length)
        model.fit(batches, epochs=1, steps_per_epoch=warm_up, verbose=0)
        models[precision] = model
    frames_per_step = batch_size * length
    flops_per_frame = 6 * tool.trained_parameters(models[precisions[0]])
    rounds = {precision: [] for precision in precisions}
    for _ in range(blocks):
        for precision, model in models.items():
            peak = matmul_gflops(dtype=precision)  # its products' dtype
            times = BatchTimes(keras)
            model.fit(batches, epochs=1, steps_per_epoch=steps + 1, verbose=0,
                      callbacks=[times.callback])
            rate = frames_per_step / times.median_step_seconds(0)
            rounds[precision].append((rate, peak, rate * flops_per_frame / (peak * 1e9)))
    figures = {precision: tuple(statistics.median(column) for column in zip(*measured))
               for precision, measured in rounds.items()}
    if len(precisions) > 1:  # each round's ratio, side by side
        figures["ratio"] = statistics.median(
            mixed[0] / plain[0] for mixed, plain in zip(*(rounds[p] for p in precisions[:2])))
    return figures, tool.Network(models[precisions[0]], cache.normalisation,
                                 getattr(head, "centroids", None))


def held_out_prediction(tool, network, cache, batch_size):
    """The benchmark's units network (after its few timed steps) on the held-out music, beside
    counting over the same steps, as a run reports them: {held_out_loss, bigram_loss,
    unigram_loss} in nats."""
    length = tool.sequence_length(cache.file_starts, tool.SEQUENCE_SECONDS)
    train, validation = tool.split_windows(cache.file_starts, length, tool.training_stride(length))
    labels = tool.unit_labels(cache.codes, network.head.centroids)
    counting, _ = tool.unit_counting(labels, train, validation, length,
                                     len(network.head.centroids))
    batches = tool.make_batches(cache.frames, validation, batch_size, np.random.default_rng(0),
                                shuffle=False, length=length, labels=labels)
    return {"held_out_loss": float(network.model.evaluate(batches, verbose=0)),
            "bigram_loss": counting["bigram"], "unigram_loss": counting["unigram"]}


def generation_seconds(tool, network, cache, pieces, seconds, repeats, work, kind, way,
                       postfilter=False, walk=False, seed_wavs=None):
    """Wall time of the tool's generation (stateful step, sampled errors, audio made for this
    kind of frame and way of sounding it, WAVs written), after the one-time set-up, as training
    is timed after warm-up:
    the step function's compile, and for magnitude frames the network's errors on held-out
    windows (compose() computes them once per run); for a units network or the walk, its
    MusicIndex. postfilter: with --postfilter (spectra). walk: --steer join (grains, no
    network). seed_wavs: a SeedWavs, continued as --seed-wav does (grains: their recordings
    join the music). Returns (median s, compile s, set-up s)."""
    rng = np.random.default_rng(0)
    length = tool.sequence_length(cache.file_starts, tool.SEQUENCE_SECONDS)  # as compose()'s
    seeds = tool.pick_seeds(cache.frames, cache.file_starts, pieces, rng, length)
    seeds = cache.normalisation.denormalise(seeds) if seed_wavs is None else seed_wavs.frames
    model, head = network.model, network.head
    started = time.perf_counter()
    music, ranges = (cache, None) if seed_wavs is None else tool.with_seed_music(cache, seed_wavs)
    real = tool.RealFrames(music, cache.normalisation)
    setup_seconds = time.perf_counter() - started
    fold = tool.output_fold(tool.make_synthesis(kind, pieces, way, real), head)  # as compose()'s
    step = tool.compile_step(model, fold=fold)
    started = time.perf_counter()
    if not walk:
        tool.make_step_function(model, pieces, step)(cache.normalisation.normalise(seeds))
        tool.make_step_function(model, pieces, step)(cache.normalisation.normalise(seeds[:, 0]))
    compile_seconds = time.perf_counter() - started
    errors, music_frames, index = None, None, None
    temperature = tool.SAMPLING[kind]["temperature"]
    started = time.perf_counter()
    if walk:  # as JoinAlone.predict_next() does
        if len(music.codes) > tool.WALK_CANDIDATES:
            index = tool.MusicIndex.of_music(music.codes)
    elif head.name == "units":  # as NetworkUnits.predict_next() does
        index = tool.MusicIndex(tool.unit_labels(music.codes, head.centroids), head.centroids)
    elif kind == "magnitude" or not head.uses_errors:  # as NetworkChoice.predict_next() does
        with_errors = head.uses_errors
        tool.prediction_errors(model, cache, rng, with_errors=with_errors)  # traces once
        started = time.perf_counter()
        errors, music_frames = tool.prediction_errors(model, cache, rng, with_errors=with_errors)
    setup_seconds += time.perf_counter() - started

    def generate():
        paths = [work / f"gen-{index}.wav" for index in range(pieces)]
        for path in paths:
            path.unlink(missing_ok=True)
        predict_next = tool.make_step_function(model, pieces, step)  # fresh states
        synthesis = tool.make_synthesis(kind, pieces, way, real, seed_ranges=ranges)
        synthesis.index = index
        sharpening = None
        if postfilter:  # as NetworkChoice.predict_next() does with --postfilter
            sharpening = tool.Sharpening(tool.Postfilter.from_music(
                cache.normalisation.denormalise(music_frames)), cache.normalisation)
            synthesis.sharpen_with(sharpening)
        if walk:
            predict_next = lambda frames: None  # noqa: E731
        elif head.name == "units":
            synthesis.units = tool.UnitSteering(rng)
            chances = predict_next
            predict_next = lambda frames: tool.unit_chances(chances(frames), temperature)  # noqa: E731
        elif music_frames is not None:
            predict_next = head.sampling(predict_next, tool.folded_errors(errors, fold),
                                         temperature, rng,
                                         sharpening.watch if sharpening else None)
        if seed_wavs is None:
            raw_seeds = tool.Seeds(seeds, ["a clip"] * pieces)
        else:
            raw_seeds = tool.Seeds(seeds, ["a file"] * pieces, seed_wavs.prefixes,
                                   seed_wavs.endings, (music, ranges))
        synthesis.prime(raw_seeds.frames)
        if seed_wavs is not None:
            synthesis.prime_with_audio(seed_wavs.endings)
        predict_next = synthesis.steer(predict_next, music_frames if kind == "magnitude" else None)
        tool.write_pieces(predict_next, raw_seeds, cache.normalisation, synthesis, paths, seconds)

    return median_time(generate, repeats), compile_seconds, setup_seconds


def index_seconds(tool, cache):
    """Clustering the music into units of sound and indexing its frames by them, as a new
    units network's training (music_units) and then its generation (MusicIndex) do."""
    started = time.perf_counter()
    centroids = tool.music_units(cache.codes, tool.units_for(len(cache.codes)))
    clustered = time.perf_counter() - started
    tool.MusicIndex(tool.unit_labels(cache.codes, centroids), centroids)
    return clustered, time.perf_counter() - started - clustered


def epoch_frames(tool, cache):
    length = tool.sequence_length(cache.file_starts, tool.SEQUENCE_SECONDS)
    return len(tool.split_windows(cache.file_starts, length,
                                  tool.training_stride(length))[0]) * length


def seed_files(work, pieces):
    """A SeedWavs of `pieces` files of music the caches do not hold (another seed)."""
    folder = write_music(work / "seeds", pieces * 0.5, seconds_per_file=30, seed=7)
    return folder, sorted(folder.iterdir())


def refeed_seconds(tool, model, cache, pieces, seconds):
    """The original tool's way: for every new frame, run the network over the whole sequence
    so far (seed included) and keep its last output frame. The audio is rebuilt as the tool's
    default frames need, so only the network's way of stepping differs."""
    import tensorflow as tf

    # Eager calls take every sequence length as it comes (a traced function would be traced
    # anew for each length); at this network size the per-call overhead is small.
    tool.use_fastest_lstm_kernel(model, on_gpu=True)  # a loop: the sequence length changes
    length = tool.sequence_length(cache.file_starts, tool.SEQUENCE_SECONDS)  # as compose()'s
    seeds = tool.pick_seeds(cache.frames, cache.file_starts, pieces, np.random.default_rng(0),
                            length)
    num_frames = int(seconds * tool.FRAMES_PER_SECOND)
    model(tf.constant(seeds), training=False)
    synthesis = tool.make_synthesis(tool.DEFAULT_FRAMES, pieces)
    started = time.perf_counter()
    sequence = seeds
    for _ in range(num_frames):
        next_frame = tool.head_of(model).mode(
            model(tf.constant(sequence), training=False)[:, -1].numpy())
        synthesis.push(tool.denormalise(next_frame, cache.mean, cache.std))
        sequence = np.concatenate([sequence, next_frame[:, None]], axis=1)
    elapsed = time.perf_counter() - started
    tool.use_fastest_lstm_kernel(model, on_gpu=False)
    return elapsed


def grain_workload(music, cache_folder, pieces=10, frames=40):
    """Choose and sound grains from the cache of this music, with random predictions in place
    of the network (whose memory does not depend on the music)."""
    tool = load_tool()
    cache = tool.prepare_cache(music, cache_folder)
    synthesis = tool.make_synthesis("magnitude", pieces, "grains",
                                    tool.RealFrames(cache, cache.normalisation))
    synthesis.prime(tool.denormalise(np.repeat(cache.frames[None, :4], pieces, axis=0),
                                     cache.mean, cache.std))
    rng = np.random.default_rng(0)
    predict = synthesis.steer(lambda batch: rng.standard_normal(batch.shape).astype(np.float32))
    batch = np.asarray(cache.frames[:pieces])
    for _ in range(frames):
        batch = predict(batch)
        synthesis.push(None)


def grain_peak_rss_mb(music, work):
    """Peak resident memory of grain_workload in a fresh process, on the cache that
    prep_peak_rss_mb built: what of generation grows with the music's length."""
    return peak_rss_mb(f"runpy.run_path({str(Path(__file__).resolve())!r})['grain_workload']("
                       f"{str(music)!r}, {str(work / ('rss-' + music.name))!r})")


def train_peak_rss_mb(music, work, neurons, layers, batch_size, steps):
    """Peak resident memory of training at this size on this music, in a fresh process: the
    tool's cache, batches and fit, for `steps` steps (memory is flat after the first few)."""
    body = (f"tool = runpy.run_path({str(SCRIPT)!r}); "
            f"cache = tool['prepare_cache']({str(music)!r}, {str(work / ('rss-' + music.name))!r}); "
            f"head = tool['make_head']('average'); "  # the widest output: a frame
            f"model = tool['build_model'](tool['NUM_FEATURES'], {neurons}, {layers}, head); "
            f"length = tool['sequence_length'](cache.file_starts, tool['SEQUENCE_SECONDS']); "
            f"tool['use_precision'](model, tool['training_precision']("
            f"'auto', tool['gpu_compute_capability']())[0]); "
            f"tool['use_fastest_lstm_kernel'](model, tool['gpu_available'](), length); "
            f"import numpy as np; starts, _ = tool['split_windows'](cache.file_starts, length, "
            f"tool['training_stride'](length)); "
            f"batches = tool['make_batches'](cache.frames, starts, {batch_size}, "
            f"np.random.default_rng(0), shuffle=True, length=length); "
            f"model.fit(batches, epochs=1, steps_per_epoch={steps}, verbose=0)")
    return peak_rss_mb(body)


def backend_speeds(music, cache_folder, sizes, rounds=2):
    """Training frames/s (batch -b) and generation x realtime under each installed Keras
    backend (tests/backend_speed.py, one process each, since a process holds one backend),
    in alternating rounds so that the machine's drift falls on all alike: {backend: medians}."""
    import importlib.util

    backends = [name for name in ("tensorflow", "jax", "torch")
                if importlib.util.find_spec(name) is not None]
    measured = {backend: [] for backend in backends}
    for _ in range(rounds):
        for backend in backends:
            done = subprocess.run(
                [sys.executable, str(HERE / "backend_speed.py"), "--json", "--music", str(music),
                 "--cache", str(cache_folder), "--neurons", str(sizes["neurons"]),
                 "--layers", str(sizes["layers"]), "--batches", str(sizes["batch"]),
                 "--steps", str(sizes["train_steps"]), "--pieces", str(sizes["pieces"]),
                 "--seconds", str(sizes["seconds"])], capture_output=True, text=True,
                env={**os.environ, "KERAS_BACKEND": backend}, check=True)
            measured[backend].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {backend: {key: statistics.median(run[key] for run in runs)
                      for key in ("train_frames_per_s_batch" + str(sizes["batch"]),
                                  "gen_x_realtime")}
            for backend, runs in measured.items()}


# -----------------------------------------------------------------------------
# The run


def measure(sizes, work):
    tool = load_tool()
    tool.limit_blas_threads()  # as the tool's run() does, first thing
    results = {"help_s": help_seconds()}
    print(f"help: {results['help_s']:.3f} s", flush=True)

    music10 = write_music(work / "music-10min", sizes["minutes"])
    music60 = write_music(work / "music-60min", sizes["minutes_long"])
    results["prep_x_realtime"] = prep_x_realtime(tool, music10, work, sizes["minutes"], 5)
    results["prep_peak_rss_mb_10min"] = prep_peak_rss_mb(music10, work)
    results["prep_peak_rss_mb_60min"] = prep_peak_rss_mb(music60, work)
    print(f"preprocessing: {results['prep_x_realtime']:.0f}x realtime, peak RSS "
          f"{results['prep_peak_rss_mb_10min']:.0f} / {results['prep_peak_rss_mb_60min']:.0f} MB",
          flush=True)

    cache = tool.prepare_cache(music10, work / "cache-10min")
    tool.import_keras()  # TensorFlow, imported the tool's way (quietly)
    neurons, layers, batch = sizes["neurons"], sizes["layers"], sizes["batch"]
    # The original layout first (1 s windows, a frame predicted by mean squared error), then
    # the default: an epoch holds the same number of target frames with either, so the ratio
    # of their frames per second is the ratio of an epoch's cost.
    # The precision a run chooses here, then float32 beside it (the same when it is float32).
    precision, why = tool.training_precision("auto", tool.gpu_compute_capability())
    print(f"training precision: {precision} ({why})", flush=True)
    figures, _ = train_throughput(tool, cache, neurons, layers, batch, sizes["train_blocks"],
                                  sizes["train_steps"], head="average", seconds=1.0,
                                  precisions=(precision,))
    fps_1s, _, mfu_1s = figures[precision]
    # The default (grains' units head), then the average head beside it, which predicts a
    # frame: the default before issue 34, and still --synthesis spectra's.
    figures, network = train_throughput(tool, cache, neurons, layers, batch,
                                        sizes["train_blocks"], sizes["train_steps"],
                                        precisions=(precision, "float32")
                                        if precision != "float32" else ("float32",))
    fps, gflops, mfu = figures[precision]
    tool.use_precision(network.model, "float32")  # as train() leaves it for generation
    results["matmul_gflops"] = figures.get("float32", figures[precision])[1]
    results[f"matmul_gflops_{precision}"] = gflops
    results["train_frames_per_s"] = fps
    results["params"] = tool.trained_parameters(network.model)
    results["units"] = network.head.components
    results.update(held_out_prediction(tool, network, cache, batch))
    print(f"held-out next-unit loss after the timed steps: {results['held_out_loss']:.2f} nats; "
          f"counting on the same steps: bigram {results['bigram_loss']:.2f}, unigram "
          f"{results['unigram_loss']:.2f}", flush=True)
    results["train_mfu"] = mfu
    results["train_frames_per_s_float32"], _, results["train_mfu_float32"] = figures["float32"]
    results["train_mixed_speedup"] = figures.get("ratio", 1.0)
    results["train_frames_per_s_1s_average"] = fps_1s
    results["train_mfu_1s_average"] = mfu_1s
    results["train_epoch_cost_vs_1s_average"] = fps_1s / fps
    figures, average = train_throughput(tool, cache, neurons, layers, batch,
                                        sizes["train_blocks"], sizes["train_steps"],
                                        head="average", precisions=(precision,))
    tool.use_precision(average.model, "float32")
    results["train_frames_per_s_average"] = figures[precision][0]
    results["train_units_vs_average"] = fps / results["train_frames_per_s_average"]
    results["prep_share_of_epoch"] = (sizes["minutes"] * 60 / results["prep_x_realtime"]) \
        / (epoch_frames(tool, cache) / fps)
    print(f"training ({precision}): {fps:.1f} frames/s, MFU {mfu:.3f} (its matmul peak "
          f"{gflops:.0f} GFLOP/s); float32 beside it {results['train_frames_per_s_float32']:.1f} "
          f"frames/s, MFU {results['train_mfu_float32']:.3f}: "
          f"{results['train_mixed_speedup']:.2f}x; the original layout (1 s windows, average "
          f"head) {fps_1s:.1f} frames/s, MFU {mfu_1s:.3f}: an epoch costs "
          f"{results['train_epoch_cost_vs_1s_average']:.2f}x as much now; the average head at "
          f"8 s {results['train_frames_per_s_average']:.1f} frames/s, the default units head "
          f"{results['train_units_vs_average']:.2f}x as fast; preprocessing the "
          f"music costs {100 * results['prep_share_of_epoch']:.1f} % of one epoch on it",
          flush=True)

    pieces, seconds = sizes["pieces"], sizes["seconds"]
    # Plain, then spectra, then the default. The old "half speed inside the benchmark" was
    # NumPy's spinning BLAS threads (limit_blas_threads); right after training, generation
    # still measures about a tenth slower than in a fresh process, for a reason not found.
    # Spectra with the average head (a frame to sound), grains with the default units head.
    stateful_plain, _, _ = generation_seconds(tool, average, cache, pieces, seconds, 5, work,
                                              "plain", "spectra")
    stateful_spectra, _, _ = generation_seconds(tool, average, cache, pieces, seconds, 5, work,
                                                "magnitude", "spectra")
    postfiltered, _, _ = generation_seconds(tool, average, cache, pieces, seconds, 5, work,
                                            "magnitude", "spectra", postfilter=True)
    stateful, results["gen_compile_s"], results["gen_setup_s"] = generation_seconds(
        tool, network, cache, pieces, seconds, 5, work, tool.DEFAULT_FRAMES,
        tool.DEFAULT_SYNTHESIS[tool.DEFAULT_FRAMES])
    stateful_average, _, _ = generation_seconds(tool, average, cache, pieces, seconds, 5, work,
                                                tool.DEFAULT_FRAMES,
                                                tool.DEFAULT_SYNTHESIS[tool.DEFAULT_FRAMES])
    refeed = refeed_seconds(tool, average.model, cache, pieces, seconds)
    results["gen_x_realtime"] = pieces * seconds / stateful
    results["gen_x_realtime_average"] = pieces * seconds / stateful_average
    results["gen_x_realtime_spectra"] = pieces * seconds / stateful_spectra
    results["gen_x_realtime_spectra_postfilter"] = pieces * seconds / postfiltered
    results["gen_x_realtime_plain"] = pieces * seconds / stateful_plain
    results["gen_speedup_vs_refeed"] = refeed / stateful
    print(f"generation: {results['gen_x_realtime']:.0f}x realtime (the average head's grains "
          f"{results['gen_x_realtime_average']:.0f}x) "
          f"({results['gen_x_realtime_spectra']:.0f}x sounding the spectra, "
          f"{results['gen_x_realtime_spectra_postfilter']:.0f}x with --postfilter, "
          f"{results['gen_x_realtime_plain']:.0f}x with plain frames, no phase to rebuild), "
          f"{results['gen_speedup_vs_refeed']:.1f}x faster than re-feeding", flush=True)
    # Hours of music (issue 41): the network's grains, the walk and a continuation on the
    # longest music, side by side with the same on 10 minutes (at least 0.8 of its speed).
    walk, _, _ = generation_seconds(tool, network, cache, pieces, seconds, 5, work,
                                    tool.DEFAULT_FRAMES, "grains", walk=True)
    seed_folder, seed_paths = seed_files(work, pieces)
    seed_wavs = tool.read_seed_wavs(seed_paths, tool.DEFAULT_FRAMES)
    going_on, _, _ = generation_seconds(tool, network, cache, pieces, seconds, 5, work,
                                        tool.DEFAULT_FRAMES, "grains", seed_wavs=seed_wavs)
    results["gen_x_realtime_walk"] = pieces * seconds / walk
    results["gen_x_realtime_continuation"] = pieces * seconds / going_on
    longest = write_music(work / "music-longest", sizes["minutes_longest"])
    cache_longest = tool.prepare_cache(longest, work / "cache-longest")
    clustered, indexed = index_seconds(tool, cache_longest)
    epoch_longest = epoch_frames(tool, cache_longest) / fps
    results["index_s_longest"] = clustered + indexed
    results["index_share_of_epoch_longest"] = (clustered + indexed) / epoch_longest
    print(f"on {sizes['minutes_longest']} min of music: clustering {clustered:.1f} s and "
          f"indexing {indexed:.2f} s, {100 * results['index_share_of_epoch_longest']:.2f} % of "
          f"one epoch on it ({epoch_longest / 60:.0f} min at {fps:.0f} frames/s)", flush=True)
    for name, options, on_10min in (("", {}, stateful), ("_walk", {"walk": True}, walk),
                                    ("_continuation", {"seed_wavs": seed_wavs}, going_on)):
        on_longest, _, setup = generation_seconds(
            tool, network, cache_longest, pieces, seconds, 5, work, tool.DEFAULT_FRAMES,
            "grains", **options)
        results[f"gen_x_realtime{name}_longest"] = pieces * seconds / on_longest
        results[f"gen{name}_longest_vs_10min"] = on_10min / on_longest
        print(f"generation{name.replace('_', ', ')} on {sizes['minutes_longest']} min of music: "
              f"{results[f'gen_x_realtime{name}_longest']:.0f}x realtime, "
              f"{results[f'gen{name}_longest_vs_10min']:.2f} of its speed on {sizes['minutes']} "
              f"min ({pieces * seconds / on_10min:.0f}x); set-up {setup:.1f} s", flush=True)
    del cache_longest
    for folder in (longest, work / "cache-longest", seed_folder):
        shutil.rmtree(folder, ignore_errors=True)
    # Each Keras backend installed, side by side (issue 42).
    for backend, figures in backend_speeds(music10, work / "cache-10min", sizes,
                                           sizes["backend_rounds"]).items():
        results[f"train_frames_per_s_{backend}"] = figures[f"train_frames_per_s_batch{sizes['batch']}"]
        results[f"gen_x_realtime_{backend}"] = figures["gen_x_realtime"]
        print(f"Keras on {backend}: training {results[f'train_frames_per_s_{backend}']:.0f} "
              f"frames/s, generation {results[f'gen_x_realtime_{backend}']:.0f}x realtime",
              flush=True)
    if "train_frames_per_s_jax" in results:
        results["train_jax_vs_tensorflow"] = results["train_frames_per_s_jax"] \
            / results["train_frames_per_s_tensorflow"]
    results["grain_peak_rss_mb_10min"] = grain_peak_rss_mb(music10, work)
    results["grain_peak_rss_mb_60min"] = grain_peak_rss_mb(music60, work)
    print(f"grains' peak RSS on {sizes['minutes']} / {sizes['minutes_long']} min of music: "
          f"{results['grain_peak_rss_mb_10min']:.0f} / {results['grain_peak_rss_mb_60min']:.0f} MB",
          flush=True)

    results["train_peak_rss_mb_60min"] = train_peak_rss_mb(music60, work, neurons, layers, batch,
                                                           sizes["rss_steps"])
    print(f"training peak RSS on {sizes['minutes_long']} min: "
          f"{results['train_peak_rss_mb_60min']:.0f} MB", flush=True)
    return results


DEFAULT_SIZES = {"minutes": 10, "minutes_long": 60, "minutes_longest": 240, "neurons": 1024, "layers": 4, "batch": 10,
                 "train_blocks": 7, "train_steps": 12, "rss_steps": 30, "pieces": 10,
                 "seconds": 10, "backend_rounds": 2}
QUICK_SIZES = {"minutes": 2, "minutes_long": 6, "minutes_longest": 12, "neurons": 64, "layers": 2, "batch": 10,
               "train_blocks": 2, "train_steps": 3, "rss_steps": 3, "pieces": 4, "seconds": 2,
               "backend_rounds": 1}
TARGETS = {"help_s": ("<", 0.5), "prep_x_realtime": (">=", 400),
           "prep_peak_rss_mb_60min": ("<=", 500), "train_mfu_float32": (">=", 0.40),
           "train_mixed_speedup": (">=", 1.6), "prep_share_of_epoch": ("<=", 0.05),
           "train_epoch_cost_vs_1s_average": ("<=", 1.5), "train_units_vs_average": (">=", 1.0),
           "gen_x_realtime": (">=", 100), "gen_speedup_vs_refeed": (">=", 10),
           "gen_x_realtime_spectra": (">=", 25), "gen_x_realtime_spectra_postfilter": (">=", 25),
           "gen_longest_vs_10min": (">=", 0.8), "gen_walk_longest_vs_10min": (">=", 0.8),
           "gen_x_realtime_walk": (">=", 100), "index_share_of_epoch_longest": ("<", 0.05),
           "train_jax_vs_tensorflow": (">=", 0.5)}


def print_table(results, sizes):
    print(f"\n{'key':<28} {'value':>12}  target")
    for key, value in results.items():
        operator, target = TARGETS.get(key, ("", ""))
        print(f"{key:<28} {value:>12.3f}  {operator} {target}")
    ratio = results["prep_peak_rss_mb_60min"] / results["prep_peak_rss_mb_10min"]
    print(f"{'prep RSS 60 min / 10 min':<28} {ratio:>12.3f}  <= 1.2")
    ratio = results["grain_peak_rss_mb_60min"] / results["grain_peak_rss_mb_10min"]
    print(f"{'grains RSS 60 min / 10 min':<28} {ratio:>12.3f}  <= 1.2")
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"sizes: {sizes}")
    print("train_mfu counts 6 x parameters FLOPs per training frame (forward 2, backward 4), "
          "over the matmul peak in the products' dtype (train_mfu_float32: in float32).")
    print("train_*_1s_average: the original layout, 1 s windows and a frame predicted by mean "
          "squared error, measured in the same run.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = parser.parse_args()
    sizes = QUICK_SIZES if args.quick else DEFAULT_SIZES
    with tempfile.TemporaryDirectory(prefix="music-composer-bench-") as folder:
        started = time.perf_counter()
        results = measure(sizes, Path(folder))
        results["benchmark_s"] = time.perf_counter() - started
    print_table(results, sizes)
    if args.json:
        print(json.dumps({key: round(value, 4) for key, value in results.items()}))


if __name__ == "__main__":
    main()
