"""Search spaces: a base spec plus choices (``search_space``), the named spaces of the papers
(``catalog``), SpineNet's scale-permuted block tables (``scale_permuted``) and AutoHAS's joint
architecture and hyper-parameter space (``joint``). Every sample is a plain spec."""
