"""Fleet mode: several workers behind one load balancer, one decision per call among them.

Everything here runs on a worker's I/O loop (its counters are read from any thread). The
worker asks its mode (:mod:`.mode`: fleet mode, or a lone worker that adds nothing) for
whatever differs; fleet mode is made of the shared store (:mod:`.store`, its Lua
:mod:`.scripts`, the :mod:`.breaker` its clients share, the :mod:`.signed` values it reads
and writes, the :mod:`.stats` it counts), the claims on the decision path (:mod:`.claims`),
the heartbeat and take-over (:mod:`.watch`, which sees a :mod:`.census` of the fleet),
forwarding (:mod:`.forwarding`) and what a worker trusts of the others (:mod:`.trust`). The
fleet knows nothing of the webhook, nor the webhook of the fleet: the forwarder satisfies
the webhook's hook.
"""
