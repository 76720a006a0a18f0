# The types of sever's public names, which sever/__init__.py imports lazily (on first use).
from sever.api.model import Model as Model, load as load
from sever.api.results import Result as Result, Results as Results
from sever.api.scoring import Scores as Scores, Tuning as Tuning, evaluate as evaluate, tune as tune
from sever.api.training import AutoRun as AutoRun, Run as Run, auto as auto, train as train
from sever.exceptions import SeverError as SeverError

__version__: str
__all__: list[str]
