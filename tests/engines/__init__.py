"""The backends and the proxy on real runtimes (markers docker, podman, swarm, etcd, faults): the Backend contract,
lifecycle, pulls, networks, the pause tier, clustering on etcd."""
