"""The allocator-workload benchmark: realalloc against glibc, jemalloc, mimalloc, tcmalloc.

The workload drivers themselves (larson, mstress, xmalloc-test, alloc-test,
large) live in the package, realalloc/tools/workloads/, where ``realalloc
compare`` runs them on the seed's designs too.  Here:

* ``common``: how each allocator is loaded (realalloc, glibc, and the peers
  through LD_PRELOAD), and the C extension that stamps and checks objects;
* ``run``: the runner; see bench/README.md, section "Allocator workloads".
"""
