"""Serving under load: the tiny quickstart-size export behind the loopback REST and gRPC test doubles
(tests/tf_serving_double.py), hammered by concurrent clients with a mix of good and bad requests.

    python benchmarks/serving_load.py [--requests 1000] [--threads 8] [--bad-fraction 0.2] [--deadline 900]

One process: export (configs/quickstart.yaml at 128 x 128 with tiny heads, masks 8 x 8, random
weights with prior_prob 0.2 so images have detections), reload it, compute the in-process answer of
every distinct good request with the reloaded serving_default signature, then per transport
(REST, then gRPC) send --requests requests from --threads client threads. Every 1/--bad-fraction-th
request is bad, in rotation: random bytes, a truncated JPEG, a PNG whose header claims 20000 x 20000
pixels (a few hundred KB; must be rejected by its header, without decoding), zero images, and
malformed JSON (REST) / a string tensor of the wrong shape (gRPC). Checked per request:
- good (1 or 2 PNG/JPEG images): every output equal to the in-process answer (to 1e-6; REST carries
  float32 through JSON exactly), else "wrong";
- zero images: empty outputs of the right shapes (REST: the columnar {"inputs": ...} format, since
  the row format rejects an empty "instances" list);
- bad: REST HTTP 400 with a JSON error / gRPC INVALID_ARGUMENT, else "wrong";
- a missing answer (timeout, dropped connection, other error) is "missing".
Reported: throughput (requests/s over the whole mix), p50/p99 latency of the good requests, and
the process's VmRSS (server and clients share it) after a warm-up and after the load, with growth %.
Exit status 1 when any answer is wrong or missing, or RSS grew by 10 % or more.
"""

import argparse
import concurrent.futures
import json
import os
import pathlib
import shutil
import struct
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from polarmask_tf import config as cfg  # noqa: E402
from polarmask_tf.data import coco, synthetic  # noqa: E402
from polarmask_tf.modeling.model import build_model  # noqa: E402
from polarmask_tf.serving import client, export  # noqa: E402

import tf_serving_double  # noqa: E402

TINY = ["data.image_size=[128, 128]", "model.prior_prob=0.2", "postprocess.max_detections=12",
        "model.fpn_channels=16", "model.head_channels=16", "model.head_convs=1", "model.group_norm_groups=4"]
BAD_KINDS = ("random_bytes", "truncated_jpeg", "huge_header_png", "zero_images", "malformed")


def vm_rss_mib():
    with open("/proc/self/status") as stream:
        return next(int(line.split()[1]) for line in stream if line.startswith("VmRSS:")) / 1024


def huge_png(width, height):
    """A valid grayscale PNG of zeros; 20000 x 20000 compresses to about 390 KB."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(6)
    row = bytes(width + 1)
    idat = b"".join([compressor.compress(row) for _ in range(height)] + [compressor.flush()])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def export_tiny(directory):
    config = export.inference_config(cfg.load_config(str(ROOT / "configs" / "quickstart.yaml"), TINY))
    model = build_model(config)
    label_map = coco.LabelMap(tuple(coco.Category(k, 10 * k, f"shape {k}") for k in range(1, 8)))
    return export.export(config, model, label_map, directory, version=1, mask_size=8, overwrite=True)


def good_requests():
    """Six distinct good requests: 1 or 2 synthetic scenes of different sizes, PNG or JPEG."""
    encoded = []
    for index, (width, height) in enumerate(((160, 120), (90, 200), (128, 128), (240, 180))):
        image = synthetic.draw_image(np.random.default_rng((5, index)), width, height)[0]
        extension = ".png" if index % 2 == 0 else ".jpg"
        encoded.append(cv2.imencode(extension, np.ascontiguousarray(image[..., ::-1]))[1].tobytes())
    return [[encoded[0]], [encoded[1]], [encoded[2]], [encoded[3]], [encoded[0], encoded[1]], [encoded[2], encoded[3]]]


def schedule(count, bad_fraction):
    """Request kinds in order: ("good", i) or (bad kind, 0); every round(1/bad_fraction)-th is bad."""
    period = max(1, round(1 / bad_fraction)) if bad_fraction > 0 else 0
    plan, bad = [], 0
    for index in range(count):
        if period and index % period == period - 1:
            plan.append((BAD_KINDS[bad % len(BAD_KINDS)], 0))
            bad += 1
        else:
            plan.append(("good", index % 6))
    return plan


def same(outputs, reference):
    if set(outputs) != set(reference):
        return False
    for key, value in reference.items():
        got = np.asarray(outputs[key])
        if value.dtype == object:
            got = np.array([v.encode() if isinstance(v, str) else v for v in got.ravel()], object).reshape(got.shape)
            if got.shape != value.shape or not (got == value).all():
                return False
        elif got.shape != value.shape or not np.allclose(got.astype(value.dtype), value, rtol=0, atol=1e-6):
            return False
    return True


def rest_columns(answer):
    rows = answer["predictions"]
    return {key: np.array([row[key] for row in rows], dtype=object if key == "detection_class_names" else None)
            for key in rows[0]}


def rest_post(url, data, timeout):
    """(HTTP status, parsed JSON body) of a raw POST; raises on a dropped connection or timeout."""
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read().decode("utf-8", "replace"))
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read().decode("utf-8", "replace"))


class Transport:
    """Sends one planned request and judges its answer: "good", "bad", or "wrong" (raises on missing)."""

    def __init__(self, name, goods, references, empty, bad_inputs, timeout):
        self.name, self.goods, self.references, self.empty = name, goods, references, empty
        self.bad_inputs, self.timeout = bad_inputs, timeout


class Rest(Transport):
    def __init__(self, url, *args):
        super().__init__("REST", *args)
        self.url = client.predict_url(url)

    def body(self, images):
        return json.dumps(client.predict_request(images)).encode()

    def send(self, kind, index):
        if kind == "good":
            status, answer = rest_post(self.url, self.body(self.goods[index]), self.timeout)
            return "good" if status == 200 and same(rest_columns(answer), self.references[index]) else "wrong"
        if kind == "zero_images":
            data = json.dumps({"inputs": {"image_bytes": []}}).encode()
            status, answer = rest_post(self.url, data, self.timeout)
            ok = status == 200 and same({k: np.asarray(v).reshape(self.empty[k].shape)
                                         for k, v in answer.get("outputs", {}).items()}, self.empty)
            return "bad" if ok else "wrong"
        data = b'{"instances": [{"b64": "' if kind == "malformed" else self.body([self.bad_inputs[kind]])
        status, answer = rest_post(self.url, data, self.timeout)
        return "bad" if status == 400 and isinstance(answer.get("error"), str) else "wrong"


class Grpc(Transport):
    def __init__(self, target, *args):
        super().__init__("gRPC", *args)
        import grpc

        self.target = target
        self.channel = grpc.insecure_channel(target, options=client.GRPC_OPTIONS)

    def outputs(self, request):
        return client.predict_grpc_outputs(self.target, request, self.timeout, self.channel)

    def send(self, kind, index):
        if kind == "good":
            return "good" if same(self.outputs(client.grpc_request(self.goods[index])), self.references[index]) \
                else "wrong"
        if kind == "zero_images":
            return "bad" if same(self.outputs(client.grpc_request([])), self.empty) else "wrong"
        request = client.grpc_request([self.bad_inputs.get(kind, b"")])
        if kind == "malformed":  # a [1, 1] string tensor where the signature takes [B]
            request.inputs["image_bytes"].tensor_shape.dim.add(size=1)
        try:
            self.outputs(request)
        except client.ServingError as error:
            return "bad" if "gRPC INVALID_ARGUMENT" in str(error) else "wrong"
        return "wrong"


def run_load(transport, plan, threads, deadline):
    counts = {"good": 0, "bad": 0, "wrong": 0, "missing": 0}
    latencies, lock = [], threading.Lock()
    stop = time.monotonic() + deadline

    def one(item):
        kind, index = item
        if time.monotonic() > stop:
            verdict, seconds = "missing", None
        else:
            start = time.perf_counter()
            try:
                verdict = transport.send(kind, index)
            except Exception as error:  # noqa: BLE001 (a missing answer, whatever the reason)
                print(f"  {transport.name} {kind}: no answer: {type(error).__name__}: {str(error)[:160]}")
                verdict = "missing"
            seconds = time.perf_counter() - start
        with lock:
            counts[verdict] += 1
            if kind == "good" and verdict == "good":
                latencies.append(seconds)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, plan))
    wall = time.perf_counter() - start
    return counts, np.array(latencies), wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per transport")
    parser.add_argument("--threads", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--bad-fraction", type=float, default=0.2)
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds per transport; later requests count "
                                                                      "as missing")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="serving_load_")
    version = export_tiny(os.path.join(workdir, "export"))
    loaded = tf.saved_model.load(version)
    served = loaded.signatures["serving_default"]
    goods = good_requests()
    references = [{k: v.numpy() for k, v in served(image_bytes=tf.constant(images)).items()} for images in goods]
    empty = {k: v.numpy() for k, v in served(image_bytes=tf.constant([], tf.string)).items()}
    jpeg = goods[1][0]
    bad_inputs = {"random_bytes": np.random.default_rng(0).bytes(4096), "truncated_jpeg": jpeg[: len(jpeg) // 2],
                  "huge_header_png": huge_png(20000, 20000)}
    plan = schedule(args.requests, args.bad_fraction)
    warm = [("good", i) for i in range(6)] + [(kind, 0) for kind in BAD_KINDS]
    common = (goods, references, empty, bad_inputs, args.timeout)
    rows = []
    with tf_serving_double.serve(version, loaded=loaded) as url, \
            tf_serving_double.serve_grpc(version, loaded=loaded, workers=args.threads) as target:
        for transport in (Rest(url, *common), Grpc(target, *common)):
            run_load(transport, warm * 3, args.threads, args.deadline)  # warm-up, not counted
            before = vm_rss_mib()
            counts, latencies, wall = run_load(transport, plan, args.threads, args.deadline)
            after = vm_rss_mib()
            rows.append((transport.name, counts, latencies, wall, before, after))
    print(f"\n{args.requests} requests per transport from {args.threads} threads, "
          f"{sum(kind != 'good' for kind, _ in plan)} bad ({', '.join(BAD_KINDS)}), tiny export "
          f"(128 x 128, K 12, masks 8 x 8), {os.cpu_count()} CPU cores\n")
    header = ("transport", "good ok", "bad ok", "wrong", "missing", "req/s", "p50 ms", "p99 ms",
              "RSS before MiB", "RSS after MiB", "growth")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    failed = False
    for name, counts, latencies, wall, before, after in rows:
        growth = 100 * (after - before) / before
        p50, p99 = (np.percentile(latencies, [50, 99]) * 1000) if latencies.size else (float("nan"),) * 2
        print(f"| {name} | {counts['good']} | {counts['bad']} | {counts['wrong']} | {counts['missing']} | "
              f"{sum(counts.values()) / wall:.1f} | {p50:.1f} | {p99:.1f} | {before:.0f} | {after:.0f} | "
              f"{growth:+.1f} % |")
        failed |= counts["wrong"] > 0 or counts["missing"] > 0 or growth >= 10
    shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
