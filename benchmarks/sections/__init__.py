"""The benchmark suite's sections, grouped by what they measure: training (train), the commands a user
runs on a trained model (inference) and the CLI's start-up (cli). Each section is `bench_NAME(ctx) -> dict`;
suite.py runs the chosen ones and writes results/bench_NAME.json.
"""
