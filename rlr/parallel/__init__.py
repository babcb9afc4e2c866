"""Meshes, logical-axis rules, sharded initialisation and batch placement."""
from rlr.parallel.mesh import (abstract_sharded_params, batch_sharding, gather_rows,
                               host_local_rows, init_model_params, init_sharded,
                               initialize_distributed, logical_to_sharding, make_mesh,
                               param_shardings, process_mean, process_rows, replicate,
                               shard_batch)
from rlr.parallel.rules import BATCH_AXES, DEFAULT_RULES, MESH_AXES, rules_without
