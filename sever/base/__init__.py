"""Base classes every model and trainer builds on."""

from sever.base.base_model import BaseModel  # noqa: F401
