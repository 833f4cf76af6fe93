"""Cluster mode: the Redis directory (who is online where, node liveness, notes between
nodes; redis.py, over the connection of redis_client.py), rate-limit buckets on Redis, and
node-to-node delivery over grpclib — the router and its peer links (client side, peers.py
and peer_link.py) and the servicer (server side, node_rpc.py), two halves of one
adapter."""
