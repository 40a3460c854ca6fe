#!/usr/bin/env python3
"""Captures the remote-write requests ../shared/bench/gen_load.py would send, into one file,
so that a load can be replayed without the (single-threaded, Python) generator competing for
the same 2 cores as the server under test.

usage: capture_load.py OUT.bin [gen_load.py arguments, e.g. --instances 200 --duration 6h --end T]

File format: repeated records of
  worker <u32 LE>  (gen_load's group index; the replayer sends group g on worker g % workers)
  samples <u32 LE> (samples + stale markers in the request)
  len <u32 LE>, body <len bytes> (snappy-compressed prometheus.WriteRequest, as sent)
Replay with `cargo run --release --example remote_write_replay -- OUT.bin URL`.
"""
import os
import struct
import sys

BENCH = os.environ.get("BENCH_DIR", os.path.join(os.path.dirname(__file__), "../../../shared/bench"))
sys.path.insert(0, os.path.abspath(BENCH))
import gen_load  # noqa: E402

OUT = open(sys.argv[1], "wb")


class CaptureSender:
    def __init__(self, url, workers, timeout, retries, verbose):
        self.url = url
        self.ok = 0
        self.samples_ok = 0
        self.bytes_sent = 0
        self.non2xx = {}
        self.errors = []

    def submit(self, worker, body, nsamples):
        OUT.write(struct.pack("<III", worker, nsamples, len(body)))
        OUT.write(body)
        self.ok += 1
        self.samples_ok += nsamples
        self.bytes_sent += len(body)

    def close(self):
        OUT.flush()


gen_load.Sender = CaptureSender
sys.exit(gen_load.main(sys.argv[2:] + ["--url", "capture:"]))
