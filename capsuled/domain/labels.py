"""Docker label keys. Every Docker object Capsuled makes carries these; nothing else is touched."""

from __future__ import annotations

PREFIX = "capsuled."
INSTANCE = "capsuled.instance"        # which Capsuled deployment owns the object
CAPSULE = "capsuled.capsule"          # capsule uuid; on a bare container its own uuid (the unit
                                      # the agent syncs, watches and removes as a whole)
CONTAINER = "capsuled.container"      # container uuid (absent on the sandbox)
NAME = "capsuled.name"                # container name within the capsule
ROLE = "capsuled.role"                # sandbox | init | app | bare
SPEC_HASH = "capsuled.spec-hash"      # recreate when the spec changes
SANDBOX_START = "capsuled.sandbox-start"  # the sandbox start a member joined; stale when it differs
PORTS = "capsuled.ports"              # on a sandbox: the host ports it publishes (domain.ports.fingerprint)
SANDBOX_EPOCH = "capsuled.sandbox-epoch"  # on a sandbox: the spec's sandbox_epoch it was made for
VOLUME = "capsuled.volume"            # template volume name
AUTO_REMOVE = "capsuled.auto-remove"  # "true" on volumes removed with their capsule
PROJECT = "capsuled.project"          # owning project: on project networks and on containers
NETWORK_ID = "capsuled.network-id"    # a project network's uuid (domain.addresses.network_uuid)
POOL_HOSTS = "capsuled.pool-hosts"    # on a pooled sandbox: the /etc/hosts lines it was made with
                                      # (agent/sandbox_pool.hosts_fingerprint)

ROLE_SANDBOX = "sandbox"
ROLE_BARE = "bare"
# An idle sandbox of the warm pool (agent/sandbox_pool.py). It keeps this role once a
# capsule claims it (Docker cannot relabel): the agent's claim record names the capsule.
ROLE_POOL = "pool"
