"""Meshes, sharding rules, ring attention and multi-host start-up (see mesh.py for the axes)."""
from jaxformer.parallel.distributed import initialize_distributed, is_main_process
from jaxformer.parallel.mesh import (
                                     AXES,
                                     RULES,
                                     MeshError,
                                     batch_spec,
                                     check_batch,
                                     make_mesh,
                                     mesh_sizes,
                                     put_global_batch,
                                     shard_batch,
                                     spec_for,
                                     state_shardings,
                                     tree_shardings,
)

__all__ = ["AXES", "RULES", "MeshError", "batch_spec", "check_batch", "initialize_distributed", "is_main_process",
           "make_mesh", "mesh_sizes", "put_global_batch", "shard_batch", "spec_for", "state_shardings", "tree_shardings"]
