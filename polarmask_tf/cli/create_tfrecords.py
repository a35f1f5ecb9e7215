"""polarmask-create-tfrecords: COCO instances json + images -> sharded TFRecords for training.

    polarmask-create-tfrecords --annotations instances_train2017.json --images-dir train2017 \\
        --output-prefix data/coco/train --num-shards 8 [--num-workers 4] [--min-area 16] [--skip-empty]

Writes PREFIX-00000-of-00008.tfrecord ..., PREFIX-labels.json (label -> category id and name) and
PREFIX-report.json (written and skipped, by reason, with example ids); see
polarmask_tf.data.records_writer for the rules (shard assignment, atomic shards, workers).
An output prefix that holds an earlier conversion's files (PREFIX-*-of-*.tfrecord of any shard
count, PREFIX-labels.json, PREFIX-report.json) is refused unless --overwrite is given, which deletes
the old shards of that prefix once the new conversion has completed. Malformed annotations never
stop the conversion: they are skipped and counted by reason in the report (see polarmask_tf.data.coco).
Exit status: 0 if at least one image was written, 1 if none was (nothing is written then but the
report), 2 if the json is missing, not JSON or not COCO instances, the output prefix holds an earlier
conversion (without --overwrite) or its directory is a file or not writable, 130 on Ctrl-C and 143 on
SIGTERM (no shard written, no temporary left).
"""

import argparse
import sys

from polarmask_tf.cli import common


def _workers_argument(text):
    if text == "auto":
        return text
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 'auto' or a non-negative integer")
    return value


def build_parser():
    parser = common.parser(__doc__)
    parser.add_argument("--annotations", required=True, help="COCO instances json")
    parser.add_argument("--images-dir", required=True, help="directory the json's file_name entries are relative to")
    parser.add_argument("--output-prefix", required=True, help="e.g. out/train -> out/train-00000-of-00004.tfrecord")
    parser.add_argument("--num-shards", type=common.positive_int, default=1)
    parser.add_argument("--num-workers", type=_workers_argument, default="auto",
                        help="processes converting images; 0 = this process; auto (default) = several only for "
                             "large datasets on 4+ CPUs (data.records_writer.resolve_num_workers)")
    parser.add_argument("--min-area", type=float, default=None,
                        help="drop annotations with a smaller COCO area, px^2 "
                             "(default: data.coco.DEFAULT_MIN_AREA, 16)")
    parser.add_argument("--skip-empty", action="store_true", help="drop images with no instance left (for training)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files of an earlier conversion into the same prefix (its shards of any "
                             "shard count are deleted once this conversion has completed)")
    common.add_label_map(parser, "reuse the PREFIX-labels.json of an earlier conversion (the same labels for "
                                 "train and val jsons)")
    return parser


TERMINATED = 128 + 15
"""Exit status after SIGTERM (the shell's 128 + signal number)."""


def create_tfrecords(args, stream):
    if args.min_area is not None and args.min_area < 0:
        raise common.UsageError("--min-area must be non-negative")
    from polarmask_tf.data import coco, records_writer

    try:
        with records_writer.sigterm_raises():
            report = records_writer.convert(
                args.annotations, args.images_dir, args.output_prefix, args.num_shards, num_workers=args.num_workers,
                min_area=coco.DEFAULT_MIN_AREA if args.min_area is None else args.min_area,
                skip_empty=args.skip_empty, label_map_path=args.label_map, overwrite=args.overwrite,
            )
    except records_writer.Terminated:
        print("terminated: no shard was written", file=sys.stderr)
        return TERMINATED
    except KeyboardInterrupt:
        print("interrupted: no shard was written", file=sys.stderr)
        return common.INTERRUPTED
    except OSError as error:
        if error.filename != args.annotations:
            raise
        raise common.UsageError(f"cannot read annotations {error.filename}: {error.strerror}") from None
    print(records_writer.format_report(report), file=stream)
    return 0 if report["images"]["written"] else 1


def main(argv=None, stream=None):
    return common.guarded(create_tfrecords, common.parse(build_parser(), argv), stream or sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
