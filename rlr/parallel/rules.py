"""Logical axis names and the one table that maps them onto the mesh axes (data, fsdp, tensor).

Model code names logical axes only (as MaxText's base.yml does); changing how a model is split
means changing this table, never the model. Parameter axes and activation (`act_*`) axes are kept
apart, as Levanter keeps parameter and compute mappings apart: an `embed` parameter axis is split
over fsdp, while activations stay whole along their embedding axis.
"""
MESH_AXES = ("data", "fsdp", "tensor")

# (logical axis, mesh axis or axes or None), first match wins.
DEFAULT_RULES = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)

BATCH_AXES = ("data", "fsdp")  # the mesh axes a batch dimension is split over


def rules_without(rules, mesh_axis: str) -> tuple:
    """`rules` with `mesh_axis` taken out of every mapping: what it split stays whole (e.g. the
    sampler's weights gathered over fsdp, split over tensor only)."""
    def drop(axes):
        if axes is None or isinstance(axes, str):
            return None if axes == mesh_axis else axes
        kept = tuple(a for a in axes if a != mesh_axis)
        return kept[0] if len(kept) == 1 else (kept or None)

    return tuple((name, drop(axes)) for name, axes in rules)
