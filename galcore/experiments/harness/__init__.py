"""The harness every notebook trains through: data, configs, the one training loop, cache, paired comparisons and statistics, optimizers, progress, plots, results, profile."""
