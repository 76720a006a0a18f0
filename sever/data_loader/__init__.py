"""Reading, augmenting and batching steel images with their masks or boxes.

The transform sets, samplers and data loaders are registered in :mod:`sever.registries`.
"""
