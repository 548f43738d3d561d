"""The teacher simulator (`gen sim`): real OpenAI and Anthropic servers on loopback, with injectable faults.

`server` holds the server and its fault injection, `instances` the JSON-Schema instance generator
behind its structured answers. The simulator is a test and dry-run tool, not a teacher client:
gen.teachers never imports it.
"""

from gen.sim.server import MALFORMED, SimConfig, SimServer, SimThread, perturbed, sample_from_schema, serve

__all__ = ["MALFORMED", "SimConfig", "SimServer", "SimThread", "perturbed", "sample_from_schema", "serve"]
