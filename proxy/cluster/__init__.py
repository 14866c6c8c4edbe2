"""Key ownership across proxy replicas: the store port (store.py), etcd behind it (etcd.py), the
ownership rules (owner.py) and forwarding to the owner (forward.py)."""
