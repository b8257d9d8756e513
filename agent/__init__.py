"""fleetroll's host agent.

Shipped by the controller as a zipapp named by its content hash and run over SSH with one
JSON request on stdin; it answers with one JSON document on stdout. It never imports
controller code (it ships alone) and needs nothing on the host but python3.
"""

PROTOCOL = 1
