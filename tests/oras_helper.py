#!/usr/bin/env python3
"""oras-py (PyPI `oras`) as the independent OCI client of the registry tests and the benchmark.

  push-seed REF WASM CONFIG   the seed workflow: one wasm layer, runtime config as manifest config
  push-file REF FILE MEDIATYPE  one layer of FILE with MEDIATYPE (config: the runtime config type)
  pull REF OUTDIR             oras pull; prints the files written, one a line
  manifest REF                prints the sha256 digest of the raw manifest, then the manifest JSON
  push-docker REF WASM        a Docker schema 2 image as `docker build` makes one FROM scratch
                              with plugin.wasm: an image config and one tar+gzip rootfs layer
  push-raw REF MANIFEST_TYPE CONFIG:TYPE [LAYER:TYPE ...]
                              any layout: each file uploaded as a blob, then a manifest of
                              MANIFEST_TYPE listing them with their media types, in order

Registries are spoken to over plain HTTP (tests run them on 127.0.0.1). Prints the pushed
manifest digest for the push commands.
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile

import oras.client
import oras.defaults

SOLO_CONFIG = "application/vnd.module.wasm.config.v1+json"
SOLO_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"


def client(ref):
    return oras.client.OrasClient(hostname=ref.split("/")[0], insecure=True)


def push(ref, path, media_type, config):
    # oras-py wants layer files relative to the working directory, and names them by basename.
    os.chdir(os.path.dirname(os.path.abspath(path)))
    name = os.path.basename(path)
    res = client(ref).push(
        target=ref,
        files=[f"{name}:{media_type}"],
        manifest_config=f"{os.path.abspath(config)}:{SOLO_CONFIG}",
        disable_path_validation=True,
        quiet=True,
    )
    print(res.headers.get("Docker-Content-Digest", ""))


DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def push_docker(ref, wasm):
    with open(wasm, "rb") as f:
        module = f.read()
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size = len(module)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(module))
    layer = gzip.compress(tar_bytes.getvalue(), mtime=0)
    diff_id = "sha256:" + hashlib.sha256(tar_bytes.getvalue()).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    with tempfile.TemporaryDirectory() as d:
        files = []
        for name, data, media_type in [("config", config, DOCKER_CONFIG), ("layer", layer, DOCKER_LAYER)]:
            path = os.path.join(d, name)
            with open(path, "wb") as f:
                f.write(data)
            files.append((path, media_type))
        push_raw(ref, DOCKER_MANIFEST, files[0], files[1:])


def push_raw(ref, manifest_type, config, layers):
    """Upload `config` and `layers` ((path, media type) pairs) as blobs and PUT a manifest of
    `manifest_type` naming them in this order, with nothing checked: for layouts no tool makes."""
    c = client(ref)
    container = c.get_container(ref)
    descriptors = []
    for path, media_type in [config] + list(layers):
        with open(path, "rb") as f:
            data = f.read()
        desc = {"mediaType": media_type, "size": len(data),
                "digest": "sha256:" + hashlib.sha256(data).hexdigest()}
        c.upload_blob(path, container, desc).raise_for_status()
        descriptors.append(desc)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": manifest_type,
                           "config": descriptors[0], "layers": descriptors[1:]}).encode()
    res = c.do_request(f"{c.prefix}://{container.manifest_url()}", "PUT",
                       headers={"Content-Type": manifest_type}, data=manifest)
    res.raise_for_status()
    print("sha256:" + hashlib.sha256(manifest).hexdigest())


def main(argv):
    cmd = argv[1]
    if cmd == "push-seed":
        push(argv[2], argv[3], SOLO_LAYER, argv[4])
    elif cmd == "push-file":
        push(argv[2], argv[3], argv[4], argv[5])
    elif cmd == "push-docker":
        push_docker(argv[2], argv[3])
    elif cmd == "push-raw":
        pair = lambda arg: tuple(arg.rsplit(":", 1))
        push_raw(argv[2], argv[3], pair(argv[4]), [pair(a) for a in argv[5:]])
    elif cmd == "pull":
        for f in client(argv[2]).pull(target=argv[2], outdir=argv[3]):
            print(f)
    elif cmd == "manifest":
        c = client(argv[2])
        container = c.get_container(argv[2])
        accept = ", ".join(oras.defaults.default_manifest_accepted_media_types)
        res = c.do_request(f"{c.prefix}://{container.manifest_url()}", "GET", headers={"Accept": accept})
        res.raise_for_status()
        print("sha256:" + hashlib.sha256(res.content).hexdigest())
        print(res.content.decode())
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv)
