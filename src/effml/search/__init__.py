"""AutoML, in three rooms: ``spaces`` (what can be searched), ``study`` (black-box search: a
proxy training per trial) and ``oneshot`` (weight sharing: BigNAS, AutoHAS).

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

from effml.search.oneshot.autohas import AutoHASResult, load_autohas_config, run_autohas
from effml.search.spaces.catalog import SPACES, load_space, named_space
from effml.search.spaces.search_space import Choice, HyperChoice, Sample, SearchSpace, compound_grid, space_from_dict
from effml.search.study.config import SearchConfig, build_space, load_search_config
from effml.search.study.cost import LatencyModel, reference_latency, spec_cost
from effml.search.study.detection_proxy import search_network
from effml.search.study.reward import mnasnet_reward
from effml.search.study.runner import SearchResult, run_search
from effml.search.study.storage import choose_trial, load_study
from effml.search.study.strategies import STRATEGIES, make_sampler

__all__ = ["SPACES", "STRATEGIES", "AutoHASResult", "Choice", "HyperChoice", "LatencyModel", "Sample", "SearchConfig", "SearchResult",
           "SearchSpace", "build_space", "choose_trial", "compound_grid", "load_autohas_config", "load_search_config", "load_space",
           "load_study", "make_sampler", "mnasnet_reward", "named_space", "reference_latency", "run_autohas", "run_search",
           "search_network", "space_from_dict", "spec_cost"]
