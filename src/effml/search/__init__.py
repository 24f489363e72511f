"""AutoML: search spaces over the spec, objectives, strategies, studies and runners."""

from effml.search.space import Choice, HyperChoice, Sample, SearchSpace, compound_grid, space_from_dict
from effml.search.spaces import SPACES, named_space

__all__ = ["SPACES", "Choice", "HyperChoice", "Sample", "SearchSpace", "compound_grid", "named_space",
           "space_from_dict"]
