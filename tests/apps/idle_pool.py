"""The app stand-in: redis-py's cluster client (not this project's code) with TLS, AUTH and a
pool per node. It fills its pools, leaves them idle, then uses them again, and prints what
the first command after the idle met: "ok", or "error <class>: <message>".

    python idle_pool.py HOST PORT PASSWORD CA_FILE IDLE_SECONDS
"""

import sys
import time

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

host, port, password, ca, idle = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
client = RedisCluster(
    host=host,
    port=port,
    password=password,
    ssl=True,
    ssl_ca_certs=ca,
    ssl_check_hostname=False,
    # No retries, as an app whose command fails the request: the reset is seen, not hidden.
    retry=Retry(NoBackoff(), 0),
)
for i in range(60):
    client.set(f"key:{i}", i)
print("warm", flush=True)
time.sleep(idle)
try:
    for i in range(60):
        client.get(f"key:{i}")
    print("ok", flush=True)
except redis.exceptions.RedisError as e:
    print(f"error {type(e).__name__}: {e}", flush=True)
