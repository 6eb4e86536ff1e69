"""Tools for development: benchmarks and R's own nnet as a reference. They may import anything;
nothing in `sweeps` or `analysis` imports them (run them with `python -m sweeps.tools.NAME`)."""
