#!/usr/bin/env python3
"""Push and pull time of `wasmctl` against oras-py, side by side in one run, on a local CNCF
Distribution registry (Debian docker-registry) on 127.0.0.1. Modules of 1 MB and 20 MB (the
project's filter padded with a custom section: valid wasm). Each operation runs REPS times into
a fresh repository (so every blob is really uploaded) and the median is reported.

wasmctl is timed as a subprocess (process start included). oras-py is timed twice: in-process
(interpreter start and imports NOT included, which favours it) and as a process running the same
call (`python3 bench_oci.py --oras ...`, as a Python CLI runs), so both views are side by side.

usage: bench_oci.py WASMCTL FILTER_WASM [REPS]
       bench_oci.py --oras push|pull HOST REF FILE|OUTDIR CONFIG   (one oras-py operation)
"""
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import oras.client

SOLO_CONFIG = "application/vnd.module.wasm.config.v1+json"
SOLO_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"


def padded(filter_bytes, size):
    name = b"padding"
    payload = max(0, size - len(filter_bytes))
    body = 1 + len(name) + payload
    leb = bytearray()
    while True:
        b = body & 0x7F
        body >>= 7
        if body:
            leb.append(b | 0x80)
        else:
            leb.append(b)
            break
    return filter_bytes + b"\x00" + bytes(leb) + bytes([len(name)]) + name + bytes(i % 251 for i in range(payload))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_registry(tmp):
    port = free_port()
    cfg = os.path.join(tmp, "config.yml")
    with open(cfg, "w") as f:
        f.write(
            f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {tmp}/storage\nhttp:\n  addr: 127.0.0.1:{port}\n"
        )
    proc = subprocess.Popen(["docker-registry", "serve", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
            return proc, f"127.0.0.1:{port}"
        except Exception:
            time.sleep(0.05)
    proc.kill()
    sys.exit("registry did not start within 20 s")


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def oras_once(op, host, ref, path, cfg):
    client = oras.client.OrasClient(hostname=host, insecure=True)
    if op == "push":
        os.chdir(os.path.dirname(path))
        client.push(target=ref, files=[f"{os.path.basename(path)}:{SOLO_LAYER}"],
                    manifest_config=f"{cfg}:{SOLO_CONFIG}", disable_path_validation=True, quiet=True)
    else:
        client.pull(target=ref, outdir=path)


def main():
    if sys.argv[1] == "--oras":
        oras_once(*sys.argv[2:7])
        return
    wasmctl, filter_path = sys.argv[1], sys.argv[2]
    reps = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    tmp = tempfile.mkdtemp(prefix="bench-oci-")
    proc, host = start_registry(tmp)
    try:
        base = open(filter_path, "rb").read()
        cfg = os.path.join(tmp, "runtime-config.json")
        with open(cfg, "w") as f:
            f.write('{"type":"envoy_proxy","abiVersions":["proxy_abi_version_0_2_1"],"config":{"rootIds":[]}}')
        client = oras.client.OrasClient(hostname=host, insecure=True)
        env = dict(os.environ, DOCKER_CONFIG=os.path.join(tmp, "docker"))
        print(f"registry {host}, {reps} runs each, median seconds (lower is better)")
        print(f"{'size':>6} {'op':>5} {'wasmctl':>9} {'oras-py':>9} {'oras/wasmctl':>13} {'oras-py process':>16} {'ratio':>7}")
        for label, size in (("1MB", 1_000_000), ("20MB", 20_000_000)):
            d = os.path.join(tmp, label)
            os.makedirs(d)
            wasm = os.path.join(d, "filter.wasm")
            with open(wasm, "wb") as f:
                f.write(padded(base, size))
            os.chdir(d)
            res = {(op, who): [] for op in ("push", "pull") for who in ("w", "o", "p")}
            me = os.path.abspath(__file__)
            for i in range(reps):
                wref, oref = f"{host}/w{label.lower()}{i}/f:v1", f"{host}/o{label.lower()}{i}/f:v1"
                pref = f"{host}/p{label.lower()}{i}/f:v1"
                # Alternate the order so neither client always runs on a warm cache.
                runs = [
                    ("w", lambda: subprocess.run([wasmctl, "push", wref, wasm, "--plain-http", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)),
                    ("o", lambda: client.push(target=oref, files=[f"filter.wasm:{SOLO_LAYER}"], manifest_config=f"{cfg}:{SOLO_CONFIG}", disable_path_validation=True, quiet=True)),
                    ("p", lambda: subprocess.run([sys.executable, me, "--oras", "push", host, pref, wasm, cfg], check=True, stdout=subprocess.DEVNULL)),
                ]
                for who, fn in (runs if i % 2 == 0 else runs[::-1]):  # rotate the order
                    res[("push", who)].append(timed(fn))
                wout, oout = os.path.join(d, f"w{i}.wasm"), os.path.join(d, f"o{i}")
                pout = os.path.join(d, f"p{i}")
                pulls = [
                    ("w", lambda: subprocess.run([wasmctl, "pull", wref, "-o", wout, "--plain-http", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)),
                    ("o", lambda: client.pull(target=oref, outdir=oout)),
                    ("p", lambda: subprocess.run([sys.executable, me, "--oras", "pull", host, pref, pout, cfg], check=True, stdout=subprocess.DEVNULL)),
                ]
                for who, fn in (pulls if i % 2 == 0 else pulls[::-1]):
                    res[("pull", who)].append(timed(fn))
                assert open(wout, "rb").read() == open(os.path.join(oout, "filter.wasm"), "rb").read()
                assert open(wout, "rb").read() == open(os.path.join(pout, "filter.wasm"), "rb").read()
            for op in ("push", "pull"):
                w, o, p = (statistics.median(res[(op, who)]) for who in ("w", "o", "p"))
                print(f"{label:>6} {op:>5} {w:>9.3f} {o:>9.3f} {o / w:>12.2f}x {p:>16.3f} {p / w:>6.2f}x")
    finally:
        proc.kill()
        proc.wait()
        os.chdir("/")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
