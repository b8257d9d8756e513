"""`engine: swarm`: the same inventory, preflight and supply chain, with Docker Swarm running the release (docs/swarm.md).

render.py turns a phase into a stack (pure); commands.py builds each `docker` argv (pure);
remote.py runs them on a host over fleetroll's strict SSH; form.py forms and leaves the swarm;
observe.py reads and judges what Swarm did (pure judging); deploy.py rolls a swarm phase out
through the same preflight, security gate, freezes, hooks and ending as the SSH push.
"""
