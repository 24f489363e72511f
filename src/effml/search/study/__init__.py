"""Black-box search: a study samples specs from a space (Optuna strategies: random, TPE, NSGA-II,
evolution, REINFORCE), trains each on a proxy task, scores it (reward, cost), stores it (SQLite or
a database URL), runs trials locally or on Ray, and reports."""
