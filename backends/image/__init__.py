"""Image tooling, apart from the runtime adapters: pack the host's Python and an app into a rootfs tar
(rootfs.py) and import it into docker/podman or push it to a registry (build.py).

    python -m backends.image build|plan|push ...   (see backends/image/build.py)
"""
