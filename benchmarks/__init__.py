"""batchrun's benchmark suite (`make bench`): servers, prompt sets, clients, measurements and
the results document. Not part of the installed package; run it as `python -m benchmarks.bench`.
"""
