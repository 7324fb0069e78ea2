"""Developer tools: the local cluster launcher (`make up`/`down`/`status`) and the
process helpers it shares with the tests and benches.

Never imported by a component (an import contract in `make check` enforces it);
tools may import components, as a user of them would.
"""
