"""The simulation harness, apart from the federated library: a training loop that runs
FedAvg, Ferret and a zeroth-order baseline on the same clients (loop), small tasks and
models for tests and benchmarks (tasks), non-IID data splits (data) and a local Flower
deployment of real SuperLink / SuperNode processes (flower_local). Nothing in
ferret_kernels.fl imports it; the demo, benchmarks and tests do."""
