"""Networks, losses, metrics, optimisers and schedules; each kind's registry is in :mod:`sever.registries`."""
