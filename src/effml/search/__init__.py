"""AutoML: search spaces over the spec, objectives, strategies, studies and runners.

Three lines of Python run what ``effml search CONFIG`` runs::

    cfg = load_search_config("configs/search_digits.yaml", ["search.trials=8"])
    result = run_search(cfg, build_space(cfg))
    print(choose_trial(result.study).spec)

A detection-backbone search (MobileDets) differs only in its config (``search.detector: ssdlite``,
a detection proxy data set): ``configs/search_mobiledet_shapes.yaml``.

AutoHAS (architecture and training hyper-parameters in one run with shared weights)::

    result = run_autohas(load_autohas_config("configs/autohas_fashion_mnist.yaml"))
    print(result.spec, result.hyper, result.config_path)   # chosen.yaml: `effml train` from scratch
"""

from effml.search.autohas import AutoHASResult, load_autohas_config, run_autohas
from effml.search.config import SearchConfig, load_search_config
from effml.search.detector import search_network
from effml.search.objectives import LatencyModel, mnasnet_reward, reference_latency, spec_cost
from effml.search.runner import SearchResult, run_search
from effml.search.space import Choice, HyperChoice, Sample, SearchSpace, compound_grid, space_from_dict
from effml.search.spaces import SPACES, named_space
from effml.search.strategies import STRATEGIES, make_sampler
from effml.search.study import build_space, choose_trial, load_space, load_study

__all__ = ["SPACES", "STRATEGIES", "AutoHASResult", "Choice", "HyperChoice", "LatencyModel", "Sample", "SearchConfig", "SearchResult",
           "SearchSpace", "build_space", "choose_trial", "compound_grid", "load_autohas_config", "load_search_config", "load_space",
           "load_study", "make_sampler", "mnasnet_reward", "named_space", "reference_latency", "run_autohas", "run_search",
           "search_network", "space_from_dict", "spec_cost"]
