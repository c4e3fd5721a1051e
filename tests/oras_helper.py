#!/usr/bin/env python3
"""oras-py (PyPI `oras`) as the independent OCI client of the registry tests and the benchmark.

  push-seed REF WASM CONFIG   the seed workflow: one wasm layer, runtime config as manifest config
  push-file REF FILE MEDIATYPE  one layer of FILE with MEDIATYPE (config: the runtime config type)
  pull REF OUTDIR             oras pull; prints the files written, one a line
  manifest REF                prints the sha256 digest of the raw manifest, then the manifest JSON

Registries are spoken to over plain HTTP (tests run them on 127.0.0.1). Prints the pushed
manifest digest for the push commands.
"""
import hashlib
import os
import sys

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


def main(argv):
    cmd = argv[1]
    if cmd == "push-seed":
        push(argv[2], argv[3], SOLO_LAYER, argv[4])
    elif cmd == "push-file":
        push(argv[2], argv[3], argv[4], argv[5])
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
