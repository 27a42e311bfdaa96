"""The tensor-parallel device group: ranks, sharding, the over-the-air all-reduce and its design."""
