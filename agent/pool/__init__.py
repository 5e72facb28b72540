"""Pool work: a Stratum V1 client (TCP and TLS, BIP 310 version rolling, failover) whose jobs the
chain hashes and to which the nonces that verify are submitted as shares.

* `header`: coinbase, merkle root, the 80 header bytes from a `mining.notify`;
* `message`: pool lines parsed and checked, client lines built;
* `session`: one connection's protocol without I/O (handshake, jobs, difficulty, mask, shares);
* `failover`: which pools to be connected to and which one the chips mine for;
* `client`: the network thread (asyncio) running the sessions and the failover;
* `source`: the chain's `WorkSource` on top of it, and `work_source(config, ...)` for the agent.

Device side: this package imports neither the operator side nor the command line nor `hil`.
"""

from agent.pool.client import PoolClient, PoolState, PoolTiming
from agent.pool.endpoint import PoolEndpoint
from agent.pool.source import PoolMining, PoolWork, PoolWorkSource, pool_endpoints, work_source

__all__ = ["PoolClient", "PoolEndpoint", "PoolMining", "PoolState", "PoolTiming", "PoolWork",
           "PoolWorkSource", "pool_endpoints", "work_source"]
