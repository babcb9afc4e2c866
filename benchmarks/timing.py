"""Wall-clock timing shared by the benchmark scripts (no jax or torch import)."""
import statistics
import time


def median_seconds(fn, runs: int) -> float:
    """Median wall time of fn() (which must block until its work is done) over `runs` calls."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
