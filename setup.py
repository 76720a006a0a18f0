"""Kept for tools that still run ``setup.py``: sever's metadata lives in ``pyproject.toml``."""

from setuptools import setup

setup()
