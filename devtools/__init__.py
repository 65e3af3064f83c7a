"""Development tooling: the servers that ./run, the tests and the benchmarks start, the demo behind
./run, and the README generators. Not part of any installed package."""
