"""COCO instances json + images -> sharded TFRecords (the schema of polarmask_tf.data.tfrecord);
the command is polarmask-create-tfrecords (cli/create_tfrecords.py).

    report = convert("instances_train2017.json", "train2017", "out/train", num_shards=8)

Writes {prefix}-00000-of-00008.tfrecord ..., {prefix}-labels.json (label -> category id and name)
and {prefix}-report.json (what was written and what was skipped, by reason, with example ids).
What is skipped, re-encoded or clipped, and why: see polarmask_tf.data.coco.

- Image i in increasing image-id order (counting every image of the json, skipped or not) goes to
  shard i % N, so the assignment never depends on what else was skipped or on num_workers.
- A shard is written whole or not at all: every shard is written to `<name>.tmp-<pid>` and moved
  into place only after every image has been processed; on an error or Ctrl-C the temporaries
  are removed and no shard is written. A shard is empty when there are fewer images than shards.
  Every path may be a URI (gs://, ram://...: tf.io.gfile). On object stores the move is a
  server-side copy: each shard appears complete, but the shards appear one after another.
- An output prefix that already holds an earlier conversion's files (PREFIX-*-of-*.tfrecord for any
  shard count, PREFIX-labels.json, PREFIX-report.json) is refused with OutputExistsError naming
  them: a glob over PREFIX-* would read the images of both. With overwrite=True they are replaced:
  once this conversion has completed, the old files it did not rewrite (shards of another shard
  count) are deleted; a failed or interrupted run leaves them untouched.
- The output directory is created; one that is a file or not writable is an OutputPathError
  naming it, raised before any work.
- `sigterm_raises` (used by the command) turns SIGTERM into `Terminated`, a KeyboardInterrupt, so
  that a terminated conversion removes its temporaries like an interrupted one.
- With num_workers W > 0 the images are converted in W spawned processes (each imports
  TensorFlow, ~3 s, and runs it single-threaded); the main process only writes. 0 converts in the
  main process, which is faster for small datasets or few CPUs (see AUTO_WORKERS_MIN_IMAGES).
"""

import contextlib
import multiprocessing
import os
import re
import signal
import threading
import time

import tensorflow as tf

from polarmask_tf import fileio
from polarmask_tf.data import coco, tfrecord
from polarmask_tf.progress import ProgressBar

AUTO_WORKERS_MIN_IMAGES = 2000
AUTO_WORKERS_MIN_CPUS = 4
"""num_workers "auto" converts in the main process unless there are at least this many images and
CPUs. Measured on 2 CPUs: ~270 COCO images/s in the main process (half of it JPEG decoding), while
starting a worker (it imports TensorFlow) takes ~3 s and 2 workers were no faster than none."""


class OutputExistsError(FileExistsError):
    """The output prefix holds files of an earlier conversion; the message names them."""


class OutputPathError(ValueError):
    """The output prefix cannot be written (its directory is a file or not writable); the message
    names the path."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by the handler `sigterm_raises` installs (a KeyboardInterrupt, so every
    cleanup that runs on Ctrl-C runs)."""


@contextlib.contextmanager
def sigterm_raises():
    """While active (in the main thread; elsewhere it does nothing), SIGTERM raises Terminated in
    the main thread. After the first SIGTERM further ones are ignored so that the cleanup
    (removing temporaries) is not itself interrupted; the previous handler is restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def existing_outputs(output_prefix):
    """The files an earlier conversion into `output_prefix` left: its shards of any shard count
    (PREFIX-<i>-of-<N>.tfrecord, digits only, so PREFIX-extra-... of another prefix is not one),
    PREFIX-labels.json and PREFIX-report.json; sorted paths."""
    directory, base = os.path.split(output_prefix)
    shard = re.compile(re.escape(base) + r"-\d+-of-\d+\.tfrecord")
    if not tf.io.gfile.isdir(directory or "."):
        return []
    names = [name.rstrip("/") for name in tf.io.gfile.listdir(directory or ".")]
    side_files = {f"{base}-labels.json", f"{base}-report.json"}
    return sorted(os.path.join(directory, name) for name in names if shard.fullmatch(name) or name in side_files)


def prepare_output(output_prefix, overwrite=False):
    """Creates the output directory and checks it can be written; returns the earlier outputs of
    the prefix (existing_outputs) to delete after the conversion (overwrite) or raises
    OutputExistsError naming them (no overwrite); OutputPathError for an unusable path."""
    if not os.path.basename(output_prefix):
        raise OutputPathError(f"output prefix {output_prefix!r} names a directory; give a file name prefix "
                              "such as out/train")
    directory = fileio.parent(fileio.absolute(output_prefix))
    try:
        fileio.makedirs(directory)
    except NotADirectoryError:
        raise OutputPathError(f"cannot write to {directory}: it (or a parent) is a file, not a directory") from None
    except PermissionError:
        raise OutputPathError(f"cannot create the output directory {directory}: permission denied") from None
    except OSError as error:
        raise OutputPathError(str(error)) from None
    if not fileio.is_remote(directory) and not os.access(directory, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write to the output directory {directory}: it is not writable")
    earlier = existing_outputs(output_prefix)
    if earlier and not overwrite:
        shown = ", ".join(earlier[:6]) + (f" and {len(earlier) - 6} more" if len(earlier) > 6 else "")
        raise OutputExistsError(
            f"output prefix {output_prefix} already holds files of an earlier conversion: {shown}; pass "
            "--overwrite (overwrite=True) to replace them (a glob over the prefix would read both)"
        )
    return earlier


def shard_paths(output_prefix, num_shards):
    """The shard file names, `{prefix}-{i:05d}-of-{N:05d}.tfrecord` for i in 0..N-1."""
    return [f"{output_prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]


class ShardWriter:
    """N TFRecord shards written to temporaries and moved into place by `commit`.

    Use as a context manager: leaving it without `commit` (an exception, KeyboardInterrupt, or a
    deliberate `abort`) removes the temporaries and leaves any existing shard untouched.
    """

    def __init__(self, output_prefix, num_shards):
        self.paths = shard_paths(output_prefix, num_shards)
        self.temporaries = [f"{path}.tmp-{os.getpid()}" for path in self.paths]
        self.counts = [0] * num_shards
        self._writers = []
        self._done = False
        try:
            for temporary in self.temporaries:
                try:
                    self._writers.append(tf.io.TFRecordWriter(temporary))
                except tf.errors.OpError as error:
                    raise OSError(f"cannot write {temporary}: {error.message}") from None
        except BaseException:
            self.abort()
            raise

    def write(self, shard, serialized):
        """Appends one serialised example to shard `shard`."""
        self._writers[shard].write(serialized)
        self.counts[shard] += 1

    def commit(self):
        """Closes every shard and moves it to its final name."""
        for writer in self._writers:
            writer.close()
        for temporary, path in zip(self.temporaries, self.paths, strict=True):
            tf.io.gfile.rename(temporary, path, overwrite=True)
        self._done = True

    def abort(self):
        """Closes and removes every temporary; no shard is written."""
        for writer in self._writers:
            try:
                writer.close()
            except Exception:  # already failing: removing the temporaries matters more
                pass
        for temporary in self.temporaries:
            if tf.io.gfile.exists(temporary):
                tf.io.gfile.remove(temporary)
        self._done = True

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if not self._done:
            self.abort()
        return False


class ImageConverter:
    """Converts one (image entry, annotations) task to (serialised example or None, instance
    count, Skips). Picklable, so the same object runs in the main process or in workers."""

    def __init__(self, images_dir, label_map, min_area, skip_empty):
        self.images_dir = images_dir
        self.label_map = label_map
        self.min_area = min_area
        self.skip_empty = skip_empty

    def __call__(self, task):
        image, annotations = task
        skips = coco.Skips()
        record = coco.image_record(image, annotations, self.images_dir, self.label_map, self.min_area, skips)
        if record is None:
            return None, 0, skips
        if self.skip_empty and len(record["labels"]) == 0:
            skips.images.add("no_instances", image["id"])
            return None, 0, skips
        return tfrecord.encode_example(record), len(record["labels"]), skips


_worker_converter = None


def _init_worker(converter):
    """Pool initializer: one TensorFlow and OpenCV thread per worker (the workers are the
    parallelism), and the converter kept for `_convert_in_worker`."""
    global _worker_converter
    import cv2

    cv2.setNumThreads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    _worker_converter = converter


def _convert_in_worker(task):
    return _worker_converter(task)


def _tasks(dataset):
    """(image entry, its annotations) in increasing image-id order."""
    return [(dataset.imgs[image_id], dataset.imgToAnns.get(image_id, [])) for image_id in sorted(dataset.imgs)]


def _results(converter, tasks, num_workers):
    """Yields converter(task) for every task, in order, in `num_workers` spawned processes
    (spawn: a forked child would inherit TensorFlow's threads and locks) or in this one."""
    if num_workers == 0:
        yield from map(converter, tasks)
        return
    context = multiprocessing.get_context("spawn")
    chunksize = max(1, min(16, len(tasks) // (4 * num_workers)))
    with context.Pool(num_workers, initializer=_init_worker, initargs=(converter,)) as pool:
        yield from pool.imap(_convert_in_worker, tasks, chunksize=chunksize)


def resolve_num_workers(num_workers, num_images):
    """"auto" -> min(CPUs - 1, 8) workers for at least AUTO_WORKERS_MIN_IMAGES images on at least
    AUTO_WORKERS_MIN_CPUS CPUs, else 0 (the main process); ints pass through."""
    if num_workers != "auto":
        return int(num_workers)
    cpus = os.cpu_count() or 1
    if num_images < AUTO_WORKERS_MIN_IMAGES or cpus < AUTO_WORKERS_MIN_CPUS:
        return 0
    return min(cpus - 1, 8)


def _write_shards(converter, tasks, num_workers, output_prefix, num_shards, skips, progress_stream):
    """Converts every task and writes its example to shard (task index % num_shards); merges
    the skips into `skips`. Returns (ShardWriter, images written, instances written); the shards
    are committed only if at least one image was written."""
    images_written = instances_written = 0
    bar = ProgressBar(len(tasks), desc="tfrecords", stream=progress_stream)
    results = _results(converter, tasks, num_workers)
    # closing() stops the worker pool as soon as anything fails, before the shards are removed.
    with ShardWriter(output_prefix, num_shards) as shards, contextlib.closing(results):
        for index, (serialized, num_instances, image_skips) in enumerate(results):
            skips.merge(image_skips)
            if serialized is not None:
                shards.write(index % num_shards, serialized)
                images_written += 1
                instances_written += num_instances
            bar.update(1, written=images_written, skipped=skips.images.total())
        bar.close()
        if images_written:
            shards.commit()
        else:
            shards.abort()
    return shards, images_written, instances_written


def convert(annotations, images_dir, output_prefix, num_shards, num_workers="auto", min_area=coco.DEFAULT_MIN_AREA,
            skip_empty=False, progress_stream=None, label_map_path=None, overwrite=False):
    """Converts a COCO instances json and its images into `num_shards` TFRecord shards.

    Writes the shards, `{output_prefix}-labels.json` and `{output_prefix}-report.json`; returns the
    report (a dict: counts written, skipped by reason with example ids, shard paths, seconds).
    No shard and no label map are written when no image was. Raises coco.InvalidAnnotationsError
    (naming the file) for an invalid json, OSError when it cannot be read.
    label_map_path: reuse this label map (written by an earlier conversion) instead of deriving one
    from the json's categories, so that several jsons (train and val, or merged subsets) share
    labels; annotations of categories outside it are skipped as unknown categories.
    overwrite: replace an earlier conversion's files of `output_prefix` (see the module docstring);
    without it they raise OutputExistsError. OutputPathError for an output directory that is a file
    or not writable. Both are raised before any image is read.
    """
    start = time.monotonic()
    earlier = prepare_output(output_prefix, overwrite)
    dataset = coco.load_coco(annotations)
    if label_map_path:
        label_map = coco.read_label_map(label_map_path)
    else:
        label_map = coco.LabelMap.from_coco_categories(dataset.dataset["categories"])
    tasks = _tasks(dataset)
    num_workers = resolve_num_workers(num_workers, len(tasks))
    skips = coco.Skips()
    for annotation in dataset.dataset["annotations"]:
        if annotation["image_id"] not in dataset.imgs:
            skips.annotations.add("unknown_image", annotation["id"])
    converter = ImageConverter(images_dir, label_map, min_area, skip_empty)
    shards, images_written, instances_written = _write_shards(
        converter, tasks, num_workers, output_prefix, num_shards, skips, progress_stream
    )
    labels_path = f"{output_prefix}-labels.json" if images_written else None
    if labels_path:
        coco.write_label_map(label_map, labels_path)
    report = {
        "annotations_file": fileio.absolute(annotations),
        "images_dir": fileio.absolute(images_dir),
        "output_prefix": output_prefix,
        "num_shards": num_shards,
        "num_workers": num_workers,
        "min_area": min_area,
        "skip_empty": skip_empty,
        "shards": shards.paths if images_written else [],
        "records_per_shard": shards.counts if images_written else [],
        "label_map": labels_path,
        "num_classes": label_map.num_classes,
        "images": {"total": len(tasks), "written": images_written, "skipped": skips.images.to_dict()},
        "annotations": {
            "total": len(dataset.dataset["annotations"]),
            "written": instances_written,
            "skipped": skips.annotations.to_dict(),
        },
        "dropped_parts_of_kept_annotations": skips.parts.to_dict(),
        "reencoded_images": skips.reencoded.to_dict(),
        "seconds": round(time.monotonic() - start, 3),
    }
    fileio.write_json(f"{output_prefix}-report.json", report, indent=2)
    written = {fileio.absolute(path) for path in [*report["shards"], labels_path, f"{output_prefix}-report.json"]
               if path}
    for path in earlier:
        if fileio.absolute(path) not in written and tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    return report


def _reasons(log):
    counts = log["counts"]
    return ", ".join(f"{reason}: {n} (e.g. {log['examples'][reason]})" for reason, n in counts.items()) or "none"


def format_report(report):
    """A few lines for the terminal: what was written, skipped (by reason) and where."""
    images, annotations = report["images"], report["annotations"]
    lines = [
        f"images written: {images['written']} of {images['total']}; "
        f"instances written: {annotations['written']} of {annotations['total']} annotations "
        f"({report['seconds']:.1f} s)",
        f"skipped images: {_reasons(images['skipped'])}",
        f"skipped annotations: {_reasons(annotations['skipped'])}",
    ]
    if report["dropped_parts_of_kept_annotations"]["counts"]:
        lines.append("dropped polygon parts of kept annotations: "
                     f"{_reasons(report['dropped_parts_of_kept_annotations'])}")
    if report["reencoded_images"]["counts"]:
        lines.append(f"images re-encoded as PNG: {_reasons(report['reencoded_images'])}")
    lines += [f"shard: {path} ({n} records)"
              for path, n in zip(report["shards"], report["records_per_shard"], strict=True)]
    if report["label_map"]:
        lines.append(f"label map: {report['label_map']} ({report['num_classes']} classes)")
    lines.append(f"report: {report['output_prefix']}-report.json")
    return "\n".join(lines)
