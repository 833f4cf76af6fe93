"""Cluster mode: the Redis directory (who is online where, node liveness, notes between
nodes), rate-limit buckets on Redis, and node-to-node delivery over grpclib — the peer
links (client side, peers.py) and the servicer (server side, node_rpc.py), two halves of
one adapter."""
